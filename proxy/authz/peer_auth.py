"""PeerAuthentication for the inbound side: which mTLS mode is in force for a workload's port,
and, for PERMISSIVE, whether a new connection's first bytes are TLS or plaintext HTTP.

Precedence (security-ops.md 1.10, Istio's): a policy with a selector matching the workload, in the
workload's namespace > the namespace-wide policy (no selector) > the mesh-wide policy (root
namespace, no selector; selector policies there are ignored, as Istio does) > PERMISSIVE.
``UNSET`` (or no ``mtls``) inherits from the level above; an entry of the workload policy's
``portLevelMtls`` for the port overrides that policy's mode, and ``UNSET`` there inherits too.
``portLevelMtls`` keys are *workload* (application) ports, so pass the port the application
listens on, not the sidecar's inbound port.

When two policies sit at the same level Istio keeps the oldest; a resource carries no creation
time here, so the first by name wins, which is at least the same on every sidecar.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["classify_first_bytes", "resolve_mtls_mode"]

_MODES = ("STRICT", "PERMISSIVE", "DISABLE")


def resolve_mtls_mode(
    resources: Iterable[Any],
    workload_namespace: str,
    workload_labels: Mapping[str, str],
    port: int,
    root_namespace: str = "istio-system",
) -> str:
    """``"STRICT"``, ``"PERMISSIVE"`` or ``"DISABLE"`` for ``port`` of this workload."""
    mesh = namespace = workload = None
    for res in sorted(
        (r for r in resources if r.kind == "PeerAuthentication"), key=lambda r: r.name
    ):
        labels = ((res.spec.get("selector") or {}).get("matchLabels")) or {}
        if res.namespace == workload_namespace:
            if labels:
                if workload is None and all(
                    workload_labels.get(k) == v for k, v in labels.items()
                ):
                    workload = res
            elif namespace is None:
                namespace = res
        if res.namespace == root_namespace and not labels and mesh is None:
            mesh = res
    mode = "PERMISSIVE"
    for res in (mesh, namespace, workload):
        if res is not None:
            mode = _mode(res.spec.get("mtls"), mode)
    if workload is not None:
        port_level = workload.spec.get("portLevelMtls") or {}
        mode = _mode(port_level.get(str(port)), mode)
    return mode


def _mode(mtls: Any, inherited: str) -> str:
    mode = (mtls or {}).get("mode") or "UNSET"
    return mode if mode in _MODES else inherited


# A TLS record carrying a handshake: type 0x16, then version 3.0 to 3.4 (SSL 3.0 .. TLS 1.3's
# legacy field); an HTTP/1 request line starts with an upper-case method token and a space.
# "PRI * HTTP/2.0" (the h2c prior-knowledge preface) is such a line too.
_TLS = re.compile(rb"\x16\x03[\x00-\x04]")
_HTTP1 = re.compile(rb"[A-Z][A-Z0-9_-]{0,23} ")
_MAX_METHOD = 25


def classify_first_bytes(data: bytes) -> str:
    """``"tls"``, ``"http"`` or ``"unknown"`` from the first bytes a client sent.

    ``"unknown"`` means not recognized *yet*: fewer bytes than a decision needs (``b"GE"``, a
    lone ``0x16``) give it too, so a caller holding few bytes may peek again before treating the
    connection as opaque TCP.
    """
    if _TLS.match(data) is not None:
        return "tls"
    if _HTTP1.match(data, 0, _MAX_METHOD) is not None:
        return "http"
    return "unknown"
