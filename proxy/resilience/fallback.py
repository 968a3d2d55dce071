"""Fallback: a degraded answer instead of an error (ResiliencePolicy ``fallback``).

Resilience4j's decorators call a fallback when the protected call throws: the call failed (after
its retries), timed out, or was refused by an open breaker (``CallNotPermittedException``) or a
full bulkhead (``BulkheadFullException``). meshlet maps those onto the local replies the sidecar
would otherwise send, by trigger name:

* ``connectFailure``: UF, UC, UH (no connection, reset before a response, no healthy endpoint)
* ``retriesExhausted``: URX, and an upstream 5xx answer that the retry policy gave up on
* ``timeout``: UT (route or per-try timeout)
* ``circuitOpen``: UO (breaker open, bulkhead or connection pool full: all "not permitted")

A rate-limited call (RL, 429) gets no fallback: the caller is the one over its quota, a
degraded answer would hide that. Two kinds of answer, tried in this order:

* ``stale``: for GET and HEAD, the last good (2xx) answer to a GET of the same authority,
  path and query (a HEAD gets its head), if younger than ``maxAge``; kept in a bounded LRU
  (``maxEntries``, and ``maxBodyBytes`` per body). It is a shared cache in RFC 9111's sense
  (one sidecar serves every user of its app), so a response is not kept when it says
  ``Cache-Control: no-store`` or ``private``, sets a cookie, or answers a request that carried
  ``Authorization``.
* ``static``: a configured status, headers and body.

Only the ``methods`` listed get a fallback (default GET and HEAD): a POST that failed may have
had its effect, and a made-up success would lie about it. Answers carry ``x-meshlet-fallback:
stale|static``, ``x-meshlet-response-flags: FB`` and ``x-meshlet-fallback-cause: <flag>``.

Sans-I/O: the clock is injected; nothing here touches a socket.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from ._duration import parse_duration

# A failure after retries carries both flags, as Envoy logs it ("UF,URX", "UC,URX"): either
# trigger answers it.
TRIGGERS: dict[str, frozenset[str]] = {
    "connectFailure": frozenset({"UF", "UC", "UH", "UF,URX", "UC,URX"}),
    "retriesExhausted": frozenset({"URX", "5xx", "UF,URX", "UC,URX"}),
    "timeout": frozenset({"UT"}),
    "circuitOpen": frozenset({"UO"}),
}
DEFAULT_METHODS = ("GET", "HEAD")
DEFAULTS: dict[str, Any] = {
    "triggers": list(TRIGGERS),
    "methods": list(DEFAULT_METHODS),
}
STALE_DEFAULTS: dict[str, Any] = {"maxAge": "60s", "maxEntries": 1000, "maxBodyBytes": 65536}

# not replayed from the cache: framing is recomputed, hop-by-hop headers belong to one hop
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "x-meshlet-response-flags",
        "x-envoy-upstream-service-time",
    }
)


class StaleCache:
    """Last good GET answers, LRU-bounded in entries and per-body size, aged by ``max_age``."""

    __slots__ = ("max_age", "max_entries", "max_body", "clock", "entries")

    def __init__(
        self,
        max_age: float,
        max_entries: int,
        max_body: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self.max_body = max_body
        self.clock = clock
        # key -> (stored_at, status, headers, body)
        self.entries: OrderedDict[tuple[str, str], tuple[float, int, tuple, bytes]] = (
            OrderedDict()
        )

    def store(
        self, authority: str, target: str, status: int, headers: list[tuple[str, str]],
        body: bytes,
    ) -> bool:
        """Keep a copy of a good answer; False when it must not (or cannot) be kept."""
        if not 200 <= status < 300 or len(body) > self.max_body or self.max_entries <= 0:
            return False
        kept = []
        for name, value in headers:
            if name == "cache-control":
                v = value.lower()
                if "no-store" in v or "private" in v:
                    self.entries.pop((authority, target), None)
                    return False
            elif name == "set-cookie":
                return False
            if name not in _HOP:
                kept.append((name, value))
        key = (authority, target)
        self.entries[key] = (self.clock(), status, tuple(kept), bytes(body))
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return True

    def lookup(self, authority: str, target: str) -> tuple[int, tuple, bytes, float] | None:
        """(status, headers, body, age in seconds) of a fresh enough entry, else None; an
        expired entry is dropped on the way."""
        key = (authority, target)
        e = self.entries.get(key)
        if e is None:
            return None
        age = self.clock() - e[0]
        if age > self.max_age:
            del self.entries[key]
            return None
        return e[1], e[2], e[3], age


class FallbackPolicy:
    """One destination's compiled ``fallback`` section (built once per config)."""

    __slots__ = ("flags", "methods", "static", "stale")

    def __init__(
        self,
        flags: frozenset[str],
        methods: frozenset[str],
        static: tuple[int, tuple[tuple[str, str], ...], bytes] | None,
        stale: StaleCache | None,
    ) -> None:
        self.flags = flags
        self.methods = methods
        self.static = static
        self.stale = stale

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any], clock: Callable[[], float] = time.monotonic
    ) -> FallbackPolicy:
        """From a validated ``fallback`` mapping (control_plane.api.extensions.FALLBACK)."""
        flags: set[str] = set()
        for name in spec.get("triggers") or DEFAULTS["triggers"]:
            flags |= TRIGGERS[name]
        methods = frozenset(m.upper() for m in (spec.get("methods") or DEFAULT_METHODS))
        static = None
        st = spec.get("static")
        if st is not None:
            headers = tuple(
                (str(k).lower(), str(v)) for k, v in (st.get("headers") or {}).items()
            )
            if not any(k == "content-type" for k, _ in headers):
                headers += (("content-type", "text/plain"),)
            static = (int(st.get("status", 200)), headers, str(st.get("body", "")).encode())
        stale = None
        sp = spec.get("stale")
        if sp is not None:
            merged = {**STALE_DEFAULTS, **sp}
            stale = StaleCache(
                parse_duration(merged["maxAge"], "fallback.stale.maxAge"),
                int(merged["maxEntries"]),
                int(merged["maxBodyBytes"]),
                clock,
            )
        return cls(frozenset(flags), methods, static, stale)

    def applies(self, flag: str, method: str) -> bool:
        return flag in self.flags and method in self.methods

    def caches(self, method: str, head_get: Callable[[str], Any]) -> bool:
        """Whether a GET answer to this request is worth keeping: a stale fallback exists and
        the request carried no credentials (a shared cache must not replay them)."""
        return (
            self.stale is not None
            and method == "GET"
            and head_get("authorization") is None
        )

    def answer(
        self, method: str, authority: str, target: str, cause: str
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """The fallback answer (status, headers, body) for a failed call, or None when there is
        none to give (a stale miss with no static answer)."""
        if self.stale is not None and method in ("GET", "HEAD"):
            hit = self.stale.lookup(authority, target)
            if hit is not None:
                status, headers, body, age = hit
                return (
                    status,
                    [
                        *headers,
                        ("age", str(int(age))),
                        ("x-meshlet-fallback", "stale"),
                        ("x-meshlet-fallback-cause", cause),
                        ("x-meshlet-response-flags", "FB"),
                    ],
                    body,
                )
        if self.static is not None:
            status, headers, body = self.static
            return (
                status,
                [
                    *headers,
                    ("x-meshlet-fallback", "static"),
                    ("x-meshlet-fallback-cause", cause),
                    ("x-meshlet-response-flags", "FB"),
                ],
                body,
            )
        return None
