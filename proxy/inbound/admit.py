"""Admission of an inbound request, decided without I/O: normalise the target (what is
authorized is what is forwarded), then authorization, then the workload's own rate limits, then
the caller's deadline (:func:`caller_deadline`: one that has already passed is answered here,
504 UT, DEADLINE_EXCEEDED for gRPC, and never reaches the app).

PeerAuthentication (STRICT/PERMISSIVE/DISABLE) is enforced earlier, when the listener accepts
the connection (:func:`refuses_connection`); what reaches here carries the caller's verified
identity or none. ``/explain`` calls these same functions, with :class:`DryRunLimits` so that
explaining takes no permit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.authz.engine import RequestAttrs, merged_header_getter
from proxy.authz.normalize import normalize_path, normalize_target
from proxy.resilience.deadline import incoming_deadline
from proxy.server.h2.grpc import is_grpc
from proxy.server.headers import SPOOFABLE_INBOUND

# A refusal: (status, response flag, body, the rule that refused, limit subject or None)
Refusal = tuple[int, str, "str | None", str, Any]

BAD_TARGET: Refusal = (400, "DPE", "Bad Request", "", None)
#: the caller's deadline passed before the request could go to the app (Envoy's router timeout)
DEADLINE_PASSED: Refusal = (504, "UT", None, "", None)


def normalise(head: Any) -> tuple[str, str, bool] | None:
    """(target to forward, normalised path, absolute-form) or None when the target cannot be
    normalised (then 400). An absolute-form target is forwarded in origin-form."""
    target = head.target
    absolute = False
    if target[:1] == "/":
        norm = normalize_target(target)
    elif target == "*":
        norm = ("*", "")
    else:  # absolute-form: normalized the same way, forwarded in origin-form
        p = normalize_path(head.path)
        norm = (p, head.query) if p is not None else None
        absolute = True
    if norm is None:
        return None
    path, query = norm
    if path != head.path or target[:1] not in ("/", "*"):
        target = path + "?" + query if query else path
    return target, path, absolute


def refuses_connection(mode: str, tls: bool) -> bool:
    """PeerAuthentication at accept: STRICT refuses plaintext, DISABLE refuses TLS. Istio
    answers with a reset, not an HTTP error, so the listener closes the connection."""
    return (mode == "STRICT" and not tls) or (mode == "DISABLE" and tls)


def authorize(
    head: Any, path: str, principal: str, peer_ip: str, mtls: bool, port: int, authz: Any
) -> Any:
    """The AuthorizationPolicy decision for the request, or None when no policy applies."""
    if authz is None or authz.empty:
        return None
    return authz.check(
        RequestAttrs(
            source_principal=principal[9:] if principal.startswith("spiffe://") else principal,
            source_ip=peer_ip,
            method=head.method,
            host=head.host,
            port=port,
            path=path,
            headers=merged_header_getter(head.headers),
            mtls=mtls,
        )
    )


def admit(
    head: Any,
    path: str,
    principal: str,
    peer_ip: str,
    mtls: bool,
    port: int,
    authz: Any,
    limits: Any,
) -> Refusal | None:
    """None when the request may go on; else the refusal. Authorization first, then the
    workload's own rate limits (a denied call spends nothing)."""
    decision = authorize(head, path, principal, peer_ip, mtls, port, authz)
    if decision is not None and not decision.allowed:
        return (403, "RBAC", "RBAC: access denied", decision.policy, None)
    if limits is not None:
        refused = limits.check(head.method, path, principal)
        if refused is not None:
            return (429, "RL", None, refused[0], refused)
    return None


def caller_deadline(hdrs: Mapping[str, str]) -> float | None:
    """Seconds the caller has left, from ``grpc-timeout`` (a gRPC request only) and
    ``x-envoy-expected-rq-timeout-ms``, the smaller when both; None when neither is valid. 0
    means the deadline has passed (``grpc-timeout: 0m``, or a caller sidecar that had nothing
    left). Read once per request by the inbound stack, from the headers it already scanned."""
    expected = hdrs.get("x-envoy-expected-rq-timeout-ms")
    grpc_timeout = hdrs.get("grpc-timeout")
    if grpc_timeout is not None and not is_grpc(hdrs.get("content-type")):
        grpc_timeout = None  # as the attempt machine: only a gRPC caller's grpc-timeout counts
    if grpc_timeout is None and expected is None:
        return None
    return incoming_deadline(grpc_timeout, expected)


def upstream_headers(head: Any, spoofed: bool, absolute: bool) -> list[tuple[str, str]]:
    """The caller's headers as the app gets them: without sidecar-only headers a peer may not
    set, and with the authority an absolute-form target named (RFC 9112 §3.2.2: it replaces
    Host; the parser put it in head.host, which authorization saw)."""
    headers = head.headers
    if spoofed:
        headers = [(n, v) for n, v in headers if n not in SPOOFABLE_INBOUND]
    if absolute:
        headers = [(n, v) for n, v in headers if n != "host"]
        headers.insert(0, ("host", head.host))
    return headers


class DryRunLimits:
    """The workload's inbound rate limits, asked without taking a permit: the answer
    ``InboundLimits.check`` would give now (same policies, same order: the caller's own
    bucket, then the total). Buckets not yet made for a caller are full."""

    __slots__ = ("limits",)

    def __init__(self, limits: Any) -> None:
        self.limits = limits

    def check(self, method: str, path: str, principal: str) -> tuple[str, str] | None:
        for p in self.limits.policies:
            if p.applies(method, path):
                why = p.peek(principal)
                if why is not None:
                    return p.name, why
        return None
