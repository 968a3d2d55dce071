"""Which service ports carry opaque TCP, decided as Istio does ("protocol selection").

A port is HTTP when its protocol says HTTP, HTTP2, GRPC or GRPC-WEB; it is opaque (TCP, or TLS
when the bytes are a TLS stream routed by SNI) when it says anything else: ``TCP``, ``TLS``,
``HTTPS`` (passed through, not terminated), ``MONGO``, ``MYSQL``, ``REDIS``... The protocol
comes from, in order: the port's ``protocol`` field, its ``appProtocol`` (Kubernetes), the
prefix of its name (``tcp-redis``, ``mysql``, ``http-web``). A port that says nothing is
undeclared and keeps the sidecar's first-byte detection. Decided once at config time.
"""

from __future__ import annotations

HTTP = "http"
TCP = "tcp"
TLS = "tls"
UNDECLARED = ""

_HTTP = frozenset({"http", "http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c"})
_TLS = frozenset({"tls", "https", "kubernetes.io/wss"})
# name prefixes Istio recognises (istio/pkg/config/protocol): anything else is undeclared
_KNOWN = _HTTP | _TLS | frozenset({"tcp", "mongo", "mysql", "redis", "udp", "thrift", "dubbo"})


def _of(value: str) -> str:
    v = value.strip().lower()
    if v in _HTTP:
        return HTTP
    if v in _TLS:
        return TLS
    return TCP


def port_protocol(protocol: str | None, name: str | None, app_protocol: str | None) -> str:
    """``"http"``, ``"tcp"``, ``"tls"`` or ``""`` (undeclared: detect)."""
    if protocol:
        return _of(protocol)
    if app_protocol:
        return _of(app_protocol)
    prefix = (name or "").split("-", 1)[0].lower()
    if prefix in _KNOWN:
        return _of(prefix)
    return UNDECLARED


def is_opaque(protocol: str) -> bool:
    return protocol in (TCP, TLS)
