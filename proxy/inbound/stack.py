"""The inbound stack: a request from a peer (or a plaintext caller), admitted, then forwarded
to the local app. The last admission step is the caller's deadline (``grpc-timeout``,
``x-envoy-expected-rq-timeout-ms``): derived once here and set on the exchange
(``ex.deadline``), where it bounds the tries (proxy/transport/tries.attempts_for); a deadline
that has already passed is answered 504 UT (gRPC: DEADLINE_EXCEEDED) without calling the app."""

from __future__ import annotations

import time
from typing import Any

from proxy.server.policy import INBOUND_POLICY
from proxy.transport.exchange import Exchange, Side, scan
from proxy.transport.propagate import hop_headers
from proxy.transport.replies import local
from proxy.transport.tries import forward

from .admit import DEADLINE_PASSED, admit, caller_deadline, normalise, upstream_headers

_monotonic = time.monotonic


class InboundStack:
    """peer -> app. ``handle`` is the listener's request handler."""

    __slots__ = ("rt", "side")

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.side = Side(rt, "inbound", outbound=False)

    async def handle(self, down: Any, head: Any) -> None:
        rt = self.rt
        ex = Exchange(self.side, down, head, _monotonic())
        spoofed = scan(head.headers, ex)
        ex.service = rt.local_service_fqdn
        principal = down.peer_principal
        ex.peer = principal
        ex.mtls = down.tls and bool(principal)
        cluster = rt.inbound_cluster
        ex.cluster = cluster.name
        norm = normalise(head)
        if norm is None:
            return local(ex, 400, "DPE", "Bad Request")
        target, path, absolute = norm
        refused = admit(
            head, path, principal, down.peer[0], ex.mtls, cluster.port, rt.authz,
            rt.inbound_limits,
        )
        if refused is not None:
            status, flag, body, rule, subject = refused
            ex.route = rule
            if subject is not None:
                rt.count_protection(subject, "inbound_rate_limited")
            return local(ex, status, flag, body)
        left = caller_deadline(ex.hdrs)
        if left is not None:
            if left <= 0.0 or _monotonic() - ex.start >= left:
                status, flag, body, _, _ = DEADLINE_PASSED
                return local(ex, status, flag, body)
            ex.deadline = ex.start + left
        ex.target = target
        ex.headers = upstream_headers(head, spoofed, absolute)
        self._headers(ex, down)
        ex.policy = INBOUND_POLICY
        ex.upstream_cluster = cluster
        await forward(ex)

    def _headers(self, ex: Exchange, down: Any) -> None:
        """Trace, request id, X-Forwarded-For/-Proto, and the caller's identity (XFCC)."""
        rt = self.rt
        extra = hop_headers(rt, ex)
        hdrs = ex.hdrs
        xff = hdrs.get("x-forwarded-for")
        peer_ip = down.peer[0]
        extra.append("x-forwarded-for: " + (xff + ", " + peer_ip if xff else peer_ip))
        if hdrs.get("x-forwarded-proto") is None:
            extra.append("x-forwarded-proto: " + ("https" if down.tls else "http"))
        if down.peer_principal:
            extra.append(f"x-forwarded-client-cert: By={rt.spiffe_id};URI={down.peer_principal}")
