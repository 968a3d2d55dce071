"""Parse the duration strings resilience config uses ("60s", "500ms", "1m30s", "0.5s") into seconds.

Strings go to the shared `control_plane.api.resources.parse_duration`, the same code that
validated the resource, so both sides agree on every value; the local grammar below (Go's
`time.ParseDuration`, a superset of protobuf's JSON "1.5s") is only a fallback for a tree
without the control-plane API package. Plain numbers are taken as seconds (handy for code and
tests; validated resources always carry strings). Negative durations and unknown units raise
`ValueError` naming the field, so a bad policy is refused at config time, never on a request.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_shared: Callable[[str], float] | None
try:
    from control_plane.api.resources import parse_duration as _shared
except ImportError:  # the sidecar can run from a tree without the API package
    _shared = None

_UNITS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "ns": 1e-9,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_WHOLE = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:h|ms|m|s|us|µs|ns))+")


def parse_duration(value: str | float | int | None, field: str = "duration") -> float:
    """Seconds for `value`; raises ValueError naming `field` if it is not a duration."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{field}: expected a duration such as '1s' or '500ms', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{field}: must not be negative, got {value!r}")
        return float(value)
    if _shared is not None:
        try:
            return _shared(value)
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
    text = value.strip()
    if text in ("0", "0s"):
        return 0.0
    if not text or not _WHOLE.fullmatch(text):
        raise ValueError(f"{field}: expected a duration such as '1s' or '500ms', got {value!r}")
    return sum(float(num) * _UNITS[unit] for num, unit in _PART.findall(text))


def parse_optional_duration(value: object, default: float | None, field: str) -> float | None:
    """`parse_duration`, or `default` when the field is absent (None)."""
    if value is None:
        return default
    return parse_duration(value, field)  # type: ignore[arg-type]
