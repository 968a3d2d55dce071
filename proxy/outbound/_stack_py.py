# cython: annotation_typing=False
"""The outbound stack: a request from the local app, routed into the mesh.

Reads the route table (and the policies compiled with it) once at the start, before any await,
and keeps them (Envoy's rule), so a config swap never changes a request in flight. Every
failure becomes a local reply with a response flag; nothing raises past this boundary.


This file is compiled a second time by Cython as ``_stack_c`` (``_stack_c.py`` is a
symlink to it; ``_stack_c.pxd`` adds the C types); ``proxy/outbound/stack.py`` picks the build.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from proxy.server.policy import INBOUND_POLICY
from proxy.transport.exchange import Exchange, Side, scan
from proxy.transport.propagate import hop_headers
from proxy.transport.replies import local
from proxy.transport.tries import forward

from .protect import protected
from .route import DIRECT, FORWARD, NO_ROUTE, PASSTHROUGH, choose, rewrite

_rand = random.random
_monotonic = time.monotonic


class OutboundStack:
    """app -> mesh. ``handle`` is the listener's request handler."""

    __slots__ = ("rt", "side")

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.side = Side(rt, "outbound", outbound=True)

    async def handle(self, down: Any, head: Any) -> None:
        rt = self.rt
        ex = Exchange(self.side, down, head, _monotonic())
        scan(head.headers, ex)
        if head.method == "CONNECT":
            # No route ever matches a CONNECT here (tunnels are HBONE's, on their own port):
            # Envoy's answer without a connect_matcher route is 404 NR. Nothing is forwarded,
            # and the connection closes, since the client may already be sending tunnel bytes.
            ex.service = head.host
            down.keep_alive = False
            return local(ex, 404, "NR")
        kind, service, route, block, policy = choose(
            rt.table, rt.plans, head, down.original_dst, _rand
        )
        if kind == FORWARD:
            ex.service = service
            ex.route = route.name
            cluster = policy.cluster
            ex.cluster = cluster.name
            ex.policy = policy
            ex.upstream_cluster = cluster
            fault = policy.fault
            if fault is not None and await self._fault(ex, fault):
                return None
            self._prepare(ex, route, block, policy)
            return await protected(ex)
        if kind == PASSTHROUGH:
            return await self._passthrough(ex, service)
        ex.service = service
        if kind == NO_ROUTE:
            return local(ex, 404, "NR")
        ex.route = route.name
        if kind == DIRECT:
            status, body = route.direct_response
            return local(ex, status, "-", body)
        return local(ex, 503, "NC")

    async def _fault(self, ex: Exchange, fault: Any) -> bool:
        """The route's fault: a delay, then maybe an abort (answered here: True)."""
        delay, abort, grpc_abort = fault.decide(self.rt.random)
        if delay > 0:
            await asyncio.sleep(delay)
            ex.flags = "DI"
        if abort is None:
            return False
        local(ex, abort, "FI", grpc=grpc_abort)
        return True

    def _prepare(self, ex: Exchange, route: Any, block: Any, policy: Any) -> None:
        """What goes upstream: trace, request id and X-Forwarded-Proto lines, the rewritten
        target and headers, the response's header ops; a mirrored copy fired off."""
        rt = self.rt
        extra = hop_headers(rt, ex)
        if ex.hdrs.get("x-forwarded-proto") is None:
            extra.append("x-forwarded-proto: http")
        if policy.rewrites:  # decided at config time
            ex.target, ex.headers = rewrite(route, block, policy, ex.head)
        if route.mirror is not None:
            rt.mirror(route.mirror, ex.head, ex.target, ex.headers, ex.down.body)
        ex.resp_ops = policy.response_ops

    async def _passthrough(self, ex: Exchange, dst: tuple[str, int]) -> None:
        """A captured request for an address outside the mesh goes where the app sent it,
        unchanged but for hop-by-hop headers (Istio's PassthroughCluster, ALLOW_ANY)."""
        cluster = self.rt.passthrough_cluster(dst)
        ex.service = cluster.service
        ex.cluster = cluster.name
        ex.policy = INBOUND_POLICY
        ex.upstream_cluster = cluster
        await forward(ex)
