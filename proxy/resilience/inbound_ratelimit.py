"""Server-side (inbound) rate limits: meshlet's ``InboundRateLimit``, Linkerd 2.17's
HTTPLocalRateLimitPolicy semantics.

One policy protects this workload (all of it, or only the requests its ``match`` selects: the
per-route case) with up to three kinds of bucket, each a :class:`RateLimiter` of
``requestsPerSecond`` permits per second (the mesh's one token bucket):

* ``total``: one bucket for every caller together;
* ``identity``: one bucket per caller identity (the peer's SPIFFE ID; callers without one, i.e.
  plaintext under PERMISSIVE, share one bucket, so dropping mTLS is no way around the limit);
* ``overrides``: a bucket of its own rate for each listed ServiceAccount, instead of the
  identity bucket.

A request is checked against its own bucket (override or identity) first and only then against
the total, so a caller already over its own share does not spend the total that the others
share. Every policy that matches a request applies; all must allow it. The limit answered is
429 ``RL`` with ``x-envoy-ratelimited``. Buckets are per sidecar process, never coordinated
across replicas (as Linkerd and Envoy's local rate limits).

Compiled once per config (:func:`compile_limits`); a policy whose spec did not change keeps its
buckets across config swaps, so a push does not hand every caller a fresh second of permits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .ratelimit import RateLimiter

__all__ = ["InboundLimits", "InboundRateLimitPolicy", "compile_limits"]

MAX_IDENTITIES = 10_000
"""Per-identity buckets kept per policy; past it, idle ones are dropped (bounded memory even if
every caller presents a new certificate)."""


def _bucket(rps: int, clock: Callable[[], float]) -> RateLimiter:
    return RateLimiter(rps, 1.0, 0.0, clock)


def _sa_key(principal: str) -> str:
    """``spiffe://td/ns/N/sa/S`` (or ``td/ns/N/sa/S``) -> ``/ns/N/sa/S``: overrides name a
    ServiceAccount, whatever the trust domain."""
    i = principal.find("/ns/")
    return principal[i:] if i >= 0 else ""


class _PathMatcher:
    """Istio-style path patterns: exact, ``prefix*``, ``*suffix``, ``*``."""

    __slots__ = ("exact", "prefixes", "suffixes", "any")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.exact: frozenset[str] = frozenset(p for p in patterns if "*" not in p)
        self.prefixes = tuple(p[:-1] for p in patterns if p.endswith("*") and p != "*")
        self.suffixes = tuple(p[1:] for p in patterns if p.startswith("*") and p != "*")
        self.any = "*" in patterns

    def __call__(self, path: str) -> bool:
        return (
            self.any
            or path in self.exact
            or (bool(self.prefixes) and path.startswith(self.prefixes))
            or (bool(self.suffixes) and path.endswith(self.suffixes))
        )


class InboundRateLimitPolicy:
    """One compiled InboundRateLimit: its match and its buckets."""

    __slots__ = ("name", "spec_key", "matches", "total", "identity_rps", "identities",
                 "overrides", "_clock", "rejected")

    def __init__(
        self, name: str, spec: Mapping[str, Any], namespace: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.spec_key = json.dumps(spec, sort_keys=True, default=str)
        self._clock = clock
        self.matches: tuple[tuple[_PathMatcher | None, frozenset[str] | None], ...] = tuple(
            (
                _PathMatcher(m["paths"]) if m.get("paths") else None,
                frozenset(m["methods"]) if m.get("methods") else None,
            )
            for m in spec.get("match") or ()
        )
        total = spec.get("total")
        self.total = _bucket(int(total["requestsPerSecond"]), clock) if total else None
        ident = spec.get("identity")
        self.identity_rps = int(ident["requestsPerSecond"]) if ident else 0
        self.identities: dict[str, RateLimiter] = {}
        self.overrides: dict[str, RateLimiter] = {}
        for o in spec.get("overrides") or ():
            # one bucket per listed ServiceAccount, each at the override's rate
            for ref in o.get("clientRefs") or ():
                ns = ref.get("namespace") or namespace
                self.overrides[f"/ns/{ns}/sa/{ref['name']}"] = _bucket(
                    int(o["requestsPerSecond"]), clock)
        self.rejected = {"total": 0, "identity": 0, "override": 0}

    def applies(self, method: str, path: str) -> bool:
        if not self.matches:
            return True
        for paths, methods in self.matches:
            if (paths is None or paths(path)) and (methods is None or method in methods):
                return True
        return False

    def check(self, principal: str) -> str | None:
        """None: allowed (permits taken). Else which limit refused: total/identity/override."""
        own = self.overrides.get(_sa_key(principal)) if self.overrides and principal else None
        kind = "override"
        if own is None and self.identity_rps:
            kind = "identity"
            own = self.identities.get(principal)
            if own is None:
                if len(self.identities) >= MAX_IDENTITIES:
                    self._forget_idle()
                own = self.identities[principal] = _bucket(self.identity_rps, self._clock)
        if own is not None and own.acquire() < 0:
            self.rejected[kind] += 1
            return kind
        if self.total is not None and self.total.acquire() < 0:
            self.rejected["total"] += 1
            return "total"
        return None

    def peek(self, principal: str) -> str | None:
        """What :meth:`check` would answer now, taking no permit (``/explain``). Inbound
        buckets reserve nothing ahead, so no permit left is a refusal; a caller's bucket not yet
        made would be full."""
        own = self.overrides.get(_sa_key(principal)) if self.overrides and principal else None
        kind = "override"
        if own is None and self.identity_rps:
            kind = "identity"
            own = self.identities.get(principal)
        if own is not None and own.available_permits <= 0:
            return kind
        if self.total is not None and self.total.available_permits <= 0:
            return "total"
        return None

    def _forget_idle(self) -> None:
        """Drop the buckets that are full again (their callers are idle: a new bucket is the
        same); if none is, drop them all (a flood of identities resets, never grows)."""
        idle = [k for k, b in self.identities.items() if b.available_permits >= self.identity_rps]
        if not idle:
            self.identities.clear()
            return
        for k in idle:
            del self.identities[k]


class InboundLimits:
    """Every InboundRateLimit that selects this workload, in name order."""

    __slots__ = ("policies",)

    def __init__(self, policies: tuple[InboundRateLimitPolicy, ...]) -> None:
        self.policies = policies

    def check(self, method: str, path: str, principal: str) -> tuple[str, str] | None:
        """None: allowed. Else (policy name, which limit) that refused the request."""
        for p in self.policies:
            if p.applies(method, path):
                why = p.check(principal)
                if why is not None:
                    return p.name, why
        return None


def compile_limits(
    resources: Iterable[Any],
    namespace: str,
    labels: Mapping[str, str],
    previous: InboundLimits | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> InboundLimits | None:
    """The InboundRateLimits among ``resources`` that select this workload (same namespace,
    ``selector.matchLabels`` a subset of its labels; no selector: every workload there), or None
    when there are none. A policy whose name and spec are unchanged keeps its buckets."""
    kept = {(p.name, p.spec_key): p for p in previous.policies} if previous else {}
    out = []
    for res in sorted(
        (r for r in resources if r.kind == "InboundRateLimit" and r.namespace == namespace),
        key=lambda r: r.name,
    ):
        spec = res.spec or {}
        want = (spec.get("selector") or {}).get("matchLabels") or {}
        if any(labels.get(k) != v for k, v in want.items()):
            continue
        name = f"{res.namespace}/{res.name}"
        old = kept.get((name, json.dumps(spec, sort_keys=True, default=str)))
        out.append(old if old is not None else InboundRateLimitPolicy(name, spec, namespace, clock))
    return InboundLimits(tuple(out)) if out else None
