"""gRPC awareness for the data path: deadlines, status codes and local replies as gRPC errors.

Semantics from research/traffic-features.md 3.9: the effective deadline is the smaller of the
route timeout and the caller's ``grpc-timeout``, and the header is rewritten to what is left
before each try; a status carried in response *headers* (a trailers-only response) can be
retried, one in trailers after data cannot; the sidecar's own answers to a gRPC caller are
trailers-only responses (HTTP 200 + ``grpc-status``), never opaque HTTP errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

from proxy.resilience.deadline import format_grpc_timeout, incoming_deadline, parse_grpc_timeout

OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# The sidecar's local replies (HTTP status, response flag) -> grpc-status. The gRPC spec's
# HTTP-to-gRPC table, refined by the flag where the flag says more than the status: a route or
# per-try timeout is DEADLINE_EXCEEDED (what the caller's own deadline would have produced), a
# local rate limit RESOURCE_EXHAUSTED.
_BY_STATUS = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    408: DEADLINE_EXCEEDED,
    429: RESOURCE_EXHAUSTED,
    431: INTERNAL,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}
_BY_FLAG = {"UT": DEADLINE_EXCEEDED, "RL": RESOURCE_EXHAUSTED, "RBAC": PERMISSION_DENIED,
            "NR": UNIMPLEMENTED, "UO": UNAVAILABLE, "UH": UNAVAILABLE, "UF": UNAVAILABLE,
            "URX": UNAVAILABLE, "UC": UNAVAILABLE, "NC": UNAVAILABLE}

# the codes as the `grpc_response_status` metric label and access log print them
NAMES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
         5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
         9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
         13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED"}


def is_grpc(content_type: str | None) -> bool:
    """``application/grpc`` and its ``+proto``/``+json``/``;`` variants (not grpc-web)."""
    if not content_type or not content_type.startswith("application/grpc"):
        return False
    rest = content_type[16:17]
    return rest in ("", "+", ";")


def status_for_local(status: int, flag: str = "") -> int:
    """The grpc-status a local reply with this HTTP status and response flag becomes."""
    code = _BY_FLAG.get(flag)
    if code is not None:
        return code
    return _BY_STATUS.get(status, UNKNOWN)


def encode_message(text: str) -> str:
    """``grpc-message`` is percent-encoded UTF-8 (PROTOCOL-HTTP2.md), printable ASCII kept."""
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def local_reply_headers(status: int, flag: str, message: str,
                        extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """The HEADERS of a trailers-only gRPC error answering for a local reply. A ``grpc-status``
    in ``extra`` (a fault abort's own code) replaces the one the status and flag map to."""
    extra = list(extra)
    code = next((v for n, v in extra if n == "grpc-status"), None)
    out = [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", code if code is not None else str(status_for_local(status, flag))),
    ]
    if message:
        out.append(("grpc-message", encode_message(message)))
    out.append(("x-meshlet-response-flags", flag))
    if flag == "UO":
        out.append(("x-envoy-overloaded", "true"))
    elif flag == "RL":
        out.append(("x-envoy-ratelimited", "true"))
    out.extend(kv for kv in extra if kv[0] != "grpc-status")
    return out


def status_of(headers: Iterable[tuple[str, str]] | None) -> int | None:
    """The grpc-status in a header list (response headers or trailers), None if absent/invalid."""
    if not headers:
        return None
    for name, value in headers:
        if name == "grpc-status":
            v = value.strip()
            if v.isascii() and v.isdigit() and len(v) <= 3:
                return int(v)
            return None
    return None


def response_status(resp_headers: Iterable[tuple[str, str]] | None,
                    trailers: Iterable[tuple[str, str]] | None) -> int | None:
    """grpc-status of a finished exchange: the trailers', else the headers' (trailers-only)."""
    code = status_of(trailers)
    return code if code is not None else status_of(resp_headers)


def request_deadline(grpc_timeout: str | None,
                     expected_rq_timeout_ms: str | None = None) -> float | None:
    """The caller's deadline in seconds (``grpc-timeout`` and/or Envoy's expected timeout)."""
    return incoming_deadline(grpc_timeout, expected_rq_timeout_ms)


def rewrite_timeout(headers: list[tuple[str, str]],
                    remaining: float | None) -> list[tuple[str, str]]:
    """``headers`` with ``grpc-timeout`` set to the remaining budget of this try.

    Only ever shortens: a present header larger than ``remaining`` is rewritten, a smaller one
    is kept; with no budget (None) the headers are returned unchanged.
    """
    if remaining is None:
        return headers
    out = []
    seen = False
    for name, value in headers:
        if name == "grpc-timeout":
            if seen:
                continue
            seen = True
            cur = parse_grpc_timeout(value)
            if cur is not None and cur <= remaining:
                out.append((name, value))
                continue
            value = format_grpc_timeout(remaining)
        out.append((name, value))
    if not seen:
        out.append(("grpc-timeout", format_grpc_timeout(remaining)))
    return out


def timeout_extra(head_grpc_timeout: str | None, remaining: float | None) -> str | None:
    """The ``grpc-timeout: ...`` line to send upstream for this try (None: leave as is).

    For callers that pass extra header lines: drop the client's ``grpc-timeout`` (``drop``) and
    append this instead.
    """
    if remaining is None:
        return None
    cur = parse_grpc_timeout(head_grpc_timeout) if head_grpc_timeout else None
    if cur is not None and cur <= remaining:
        return "grpc-timeout: " + head_grpc_timeout  # type: ignore[operator]
    return "grpc-timeout: " + format_grpc_timeout(remaining)
