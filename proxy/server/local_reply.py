"""Answers the sidecar makes itself, with Envoy's response flags.

Every local reply carries ``x-meshlet-response-flags`` (and the ``x-envoy-*`` header Envoy would
set for that case), so callers, dashboards and tests can tell a mesh decision from an app's answer.
Bodies are the short texts Envoy uses, so tools that grep for them keep working.
"""

from __future__ import annotations

from http import HTTPStatus

_RESET = "upstream connect error or disconnect/reset before headers. "

# flag -> default body, as Envoy words it
BODIES = {
    "NR": "",
    "UH": "no healthy upstream",
    "UF": _RESET + "reset reason: connection failure",
    "URX": _RESET + "retried and the latest reset reason: connection failure",
    "UF,URX": _RESET + "retried and the latest reset reason: connection failure",
    "UC": _RESET + "reset reason: connection termination",
    "UPE": _RESET + "reset reason: protocol error",
    "UC,URX": _RESET + "retried and the latest reset reason: connection termination",
    "UT": "upstream request timeout",
    "UO": "upstream overflow",
    "RL": "local_rate_limited",
    "RBAC": "RBAC: access denied",
    "DPE": "Bad Request",
    "FI": "fault filter abort",
    "NC": "cluster not found",
    "DC": "downstream disconnected",
}

_REASONS = {s.value: s.phrase for s in HTTPStatus}


def reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def render(
    status: int,
    flag: str,
    body: str | None = None,
    close: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
    head_only: bool = False,
    version: int = 11,
) -> bytes:
    """A complete HTTP/1.1 response for a local reply, as bytes."""
    text = (BODIES.get(flag, reason(status)) if body is None else body).encode()
    lines = [
        f"HTTP/{'1.1' if version == 11 else '1.0'} {status} {reason(status)}",
        "content-type: text/plain",
        f"content-length: {len(text)}",
        f"x-meshlet-response-flags: {flag}",
    ]
    if flag == "UO":
        lines.append("x-envoy-overloaded: true")
    elif flag == "RL":
        lines.append("x-envoy-ratelimited: true")
    for k, v in extra:
        lines.append(f"{k}: {v}")
    if close:
        lines.append("connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + text
