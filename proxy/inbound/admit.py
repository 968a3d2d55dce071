"""Admission of an inbound request, decided without I/O: normalise the target (what is
authorized is what is forwarded), then authorization, then the workload's own rate limits.

PeerAuthentication (STRICT/PERMISSIVE) is enforced earlier, at the TLS handshake of the
listener; what reaches here carries the caller's verified identity or none.
"""

from __future__ import annotations

from typing import Any

from proxy.authz.engine import RequestAttrs, merged_header_getter
from proxy.authz.normalize import normalize_path, normalize_target
from proxy.server.headers import SPOOFABLE_INBOUND

# A refusal: (status, response flag, body, the rule that refused, limit subject or None)
Refusal = tuple[int, str, "str | None", str, Any]

BAD_TARGET: Refusal = (400, "DPE", "Bad Request", "", None)


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
    if authz is not None and not authz.empty:
        decision = authz.check(
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
        if not decision.allowed:
            return (403, "RBAC", "RBAC: access denied", decision.policy, None)
    if limits is not None:
        refused = limits.check(head.method, path, principal)
        if refused is not None:
            return (429, "RL", None, refused[0], refused)
    return None


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
