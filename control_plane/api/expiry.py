"""Resources that expire: ``metadata.annotations["meshlet.dev/expires-at"]`` (RFC 3339).

Chaos experiments inject faults as VirtualServices carrying this annotation, so that an
experiment that crashes (or is killed) cannot leave a fault behind: every sidecar treats an
expired resource as absent (it recompiles its table when the earliest expiry passes, so the
request path never looks at a clock), and the control plane deletes expired resources from its
store. Both sides read the annotation with this one module.

An expiring VirtualService is a temporary overlay: its routes are matched before the routes of
the host's other VirtualServices (proxy/routes/compile.py), so a fault route written for a
header match singles out test traffic without hiding the service's regular routes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

EXPIRES_AT = "meshlet.dev/expires-at"


def parse_expires_at(value: str) -> float:
    """RFC 3339 (``2026-12-06T10:00:00Z``, or with an offset) -> Unix seconds; a time without
    an offset is refused rather than guessed. Raises ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be an RFC 3339 time such as 2026-12-06T10:00:00Z")
    text = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an RFC 3339 time such as 2026-12-06T10:00:00Z"
        ) from None
    if t.tzinfo is None:
        raise ValueError(f"{value!r} needs a time zone (Z or an offset such as +01:00)")
    return t.timestamp()


def format_expires_at(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expires_at(resource: Any) -> float | None:
    """When ``resource`` (a Resource or a resource dict) expires, or None. An unparsable
    value never reaches here: validation refuses it."""
    ann = getattr(resource, "annotations", None)
    if ann is None and isinstance(resource, dict):
        ann = (resource.get("metadata") or {}).get("annotations")
    value = (ann or {}).get(EXPIRES_AT)
    return parse_expires_at(value) if value else None


def live(resources: Iterable[Any], now: float) -> tuple[list[Any], float | None]:
    """The resources still in effect at ``now`` (Unix seconds), and the earliest expiry still
    ahead (when the caller must look again), or None."""
    out: list[Any] = []
    nxt: float | None = None
    for r in resources:
        t = expires_at(r)
        if t is None:
            out.append(r)
        elif t > now:
            out.append(r)
            nxt = t if nxt is None or t < nxt else nxt
    return out, nxt
