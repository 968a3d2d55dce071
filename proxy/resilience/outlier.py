"""Outlier detection: eject endpoints that fail repeatedly, let them back after a while.

Istio `DestinationRule.trafficPolicy.outlierDetection` fields and defaults with Envoy's
algorithm (research 2.5):

* Every result is recorded inline. A 5xx (or a status in `outlierDetectionHttpErrorCodes`) or a
  local-origin failure (connect failure, reset, timeout) increments `consecutive_5xx`;
  502/503/504 and local-origin failures increment `consecutive_gateway`; anything else resets
  both. With `splitExternalLocalOriginErrors`, local-origin failures count only towards
  `consecutiveLocalOriginFailures` instead. Reaching a threshold tries to eject the endpoint at
  once and restarts that counter (whether or not the ejection happened, as Envoy does).
* Ejection lasts `baseEjectionTime x n` (n = the endpoint's ejection multiplier, +1 per
  ejection), capped at `max(maxEjectionTime, baseEjectionTime)`. Endpoints come back only at a
  sweep (every `interval`), so the real time rounds up to a sweep. Each sweep lowers the
  multiplier of every endpoint that is not ejected by one.
* Sweeps run lazily on any call once due (and `tick()` lets a timer drive them): catching up
  after a quiet period replays the missed sweeps, stopping early once nothing can change.

Where meshlet differs from Envoy/Istio, and why (research 2.5, 8; issue 3):

* **At least one, never the last.** Current Envoy checks `maxEjectionPercent` (default 10 %)
  against the post-ejection share, so with fewer than 10 endpoints Istio ejects nothing.
  meshlet allows `max(1, floor(maxEjectionPercent x N / 100))` ejections and never ejects the
  last endpoint that is not ejected (not even with maxEjectionPercent 100), so ejection alone
  can never produce "no healthy upstream".
* `minHealthPercent` is Envoy's panic threshold (0 = off, Istio's default): when fewer than that
  share of endpoints are healthy, `healthy()` returns all of them.
* `maxEjectionTime` (default 300 s) is accepted as an extension; no jitter.
* `consecutiveGatewayErrors` is off unless set (Istio), `consecutive5xxErrors: 0` disables it;
  the deprecated `consecutiveErrors` counts gateway errors only, as Istio translates it.
* Linkerd's failure accrual (research 4.4: one probe after an exponential back-off) is not used:
  the Istio fields ask for Envoy's timed ejection, and the service-level breaker covers probing.
* Call `set_endpoints()` on every endpoint update: percentages are of the known endpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from ._duration import parse_optional_duration

_GATEWAY = frozenset((502, 503, 504))


class _Host:
    __slots__ = ("c5xx", "cgw", "clocal", "ejected", "ejected_at", "multiplier", "ejections")

    def __init__(self) -> None:
        self.c5xx = self.cgw = self.clocal = 0
        self.ejected = False
        self.ejected_at = 0.0
        self.multiplier = 0
        self.ejections = 0


class OutlierDetector:
    """Per-destination passive health for one sidecar. Not thread-safe."""

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        key: Callable[[Any], Hashable] | None = None,
    ) -> None:
        cfg = dict(config or {})
        self._clock = clock
        self._key = key
        # Deprecated `consecutiveErrors` > 0 means gateway errors only, 5xx off (istio/api#617);
        # the explicit fields, when present, override it (Istio's applyOutlierDetection).
        legacy = _count(cfg, "consecutiveErrors", 0)
        self.consecutive_5xx = _count(cfg, "consecutive5xxErrors", 0 if legacy else 5)
        self.consecutive_gateway = _count(cfg, "consecutiveGatewayErrors", legacy)
        self.split_local = bool(cfg.get("splitExternalLocalOriginErrors", False))
        self.consecutive_local = _count(cfg, "consecutiveLocalOriginFailures", 5)
        self.interval = parse_optional_duration(
            cfg.get("interval"), 10.0, "outlierDetection.interval") or 10.0
        self.base_ejection_time = parse_optional_duration(
            cfg.get("baseEjectionTime"), 30.0, "outlierDetection.baseEjectionTime") or 30.0
        max_time = parse_optional_duration(
            cfg.get("maxEjectionTime"), 300.0, "outlierDetection.maxEjectionTime") or 300.0
        self.max_ejection_time = max(max_time, self.base_ejection_time)
        pct = cfg.get("maxEjectionPercent") or 10  # Istio passes it only when > 0
        self.max_ejection_percent = max(0, min(100, int(pct)))
        self.min_health_percent = max(0, min(100, int(cfg.get("minHealthPercent", 0))))
        codes = cfg.get("outlierDetectionHttpErrorCodes")
        self._error_codes = (
            frozenset(int(c) for c in codes) if codes else frozenset(range(500, 600)))
        # ceil(max / base): beyond that the multiplier no longer lengthens the ejection.
        self._max_multiplier = max(1, -(-int(self.max_ejection_time * 1000)
                                        // max(1, int(self.base_ejection_time * 1000))))
        self._hosts: dict[Hashable, _Host] = {}
        self._ejected_count = 0
        self._decaying = 0  # hosts with a multiplier > 0 (work left for sweeps)
        self._next_sweep = clock() + self.interval
        self.ejections_total = 0
        self.ejections_overflow = 0  # ejections skipped by the percentage / last-host rules

    # -- endpoint set -----------------------------------------------------------------------

    def set_endpoints(self, keys: Iterable[Hashable]) -> None:
        """Make the known endpoints exactly `keys` (new ones start healthy; state is kept)."""
        new = {k: self._hosts.get(k) or _Host() for k in keys}
        self._hosts = new
        self._ejected_count = sum(1 for h in new.values() if h.ejected)
        self._decaying = sum(1 for h in new.values() if h.multiplier)

    # -- recording --------------------------------------------------------------------------

    def record(
        self,
        endpoint_key: Hashable,
        status: int | None,
        gateway_error: bool = False,
        local_origin_failure: bool = False,
    ) -> None:
        """Record one result: `status` of the response (None if there was none),
        `gateway_error` to force gateway-error classification (e.g. an upstream sidecar's local
        502-504 reply), `local_origin_failure` for connect failure / reset / timeout."""
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep_due(now)
        h = self._hosts.get(endpoint_key)
        if h is None:
            h = self._hosts[endpoint_key] = _Host()
        if local_origin_failure:
            if self.split_local:
                h.clocal += 1
                if self.consecutive_local and h.clocal >= self.consecutive_local:
                    h.clocal = 0
                    self._try_eject(h, now)
                return
            is_5xx = is_gw = True
        elif status is None:
            is_5xx, is_gw = False, gateway_error
        else:
            is_5xx = status in self._error_codes
            is_gw = gateway_error or status in _GATEWAY
            h.clocal = 0
        if not (is_5xx or is_gw):
            h.c5xx = h.cgw = 0
            return
        h.c5xx = h.c5xx + 1 if is_5xx else 0
        h.cgw = h.cgw + 1 if is_gw else 0
        trip = False
        if self.consecutive_5xx and h.c5xx >= self.consecutive_5xx:
            h.c5xx = 0
            trip = True
        if self.consecutive_gateway and h.cgw >= self.consecutive_gateway:
            h.cgw = 0
            trip = True
        if trip:
            self._try_eject(h, now)

    def _try_eject(self, h: _Host, now: float) -> None:
        if h.ejected:
            return
        total = len(self._hosts)
        allowed = max(1, self.max_ejection_percent * total // 100)
        if self._ejected_count + 1 > allowed or total - self._ejected_count <= 1:
            self.ejections_overflow += 1
            return
        h.ejected = True
        h.ejected_at = now
        if h.multiplier == 0:
            self._decaying += 1
        if h.multiplier < self._max_multiplier:
            h.multiplier += 1
        h.ejections += 1
        h.c5xx = h.cgw = h.clocal = 0
        self._ejected_count += 1
        self.ejections_total += 1

    # -- sweeps -----------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Run the sweeps due by `now` (default: the clock). Safe to call at any rate."""
        if now is None:
            now = self._clock()
        if now >= self._next_sweep:
            self._sweep_due(now)

    def _sweep_due(self, now: float) -> None:
        t = self._next_sweep
        interval = self.interval
        while t <= now:
            if not self._ejected_count and not self._decaying:
                # Nothing left to change: jump to the first sweep after now.
                t += ((now - t) // interval + 1) * interval
                break
            self._sweep(t)
            t += interval
        self._next_sweep = t

    def _sweep(self, t: float) -> None:
        base, cap = self.base_ejection_time, self.max_ejection_time
        for h in self._hosts.values():
            if h.ejected:
                d = base * h.multiplier
                if t - h.ejected_at >= (d if d < cap else cap):
                    h.ejected = False
                    self._ejected_count -= 1
            elif h.multiplier:
                h.multiplier -= 1
                if not h.multiplier:
                    self._decaying -= 1

    # -- queries ----------------------------------------------------------------------------

    def is_ejected(self, endpoint_key: Hashable) -> bool:
        if self._ejected_count:
            now = self._clock()
            if now >= self._next_sweep:
                self._sweep_due(now)
            h = self._hosts.get(endpoint_key)
            return h is not None and h.ejected
        return False

    def healthy(self, endpoints: Sequence[Any]) -> Sequence[Any]:
        """The endpoints not ejected (keys via `key`, or the items themselves), in order.

        When nothing is ejected this is `endpoints` itself (a list stays a list, a tuple a
        tuple: no copy on the hot path), so do not mutate the result; otherwise a new list.
        In panic (healthy share below `minHealthPercent`) every endpoint is returned.
        """
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep_due(now)
        if not self._ejected_count:
            return endpoints
        hosts, key = self._hosts, self._key
        out = []
        for e in endpoints:
            h = hosts.get(key(e) if key is not None else e)
            if h is None or not h.ejected:
                out.append(e)
        if self.min_health_percent and endpoints and (
            100 * len(out) < self.min_health_percent * len(endpoints)
        ):
            return list(endpoints)
        return out

    def status(self) -> dict[Hashable, dict[str, Any]]:
        """Per endpoint, for /clusters: ejected, ejections, consecutive error counts."""
        self.tick()
        return {
            k: {
                "ejected": h.ejected,
                "ejections": h.ejections,
                "consecutive_5xx": h.c5xx,
                "consecutive_gateway_errors": h.cgw,
                "consecutive_local_origin_failures": h.clocal,
            }
            for k, h in self._hosts.items()
        }

    @property
    def ejected_count(self) -> int:
        return self._ejected_count


def _count(cfg: Mapping[str, Any], name: str, default: int) -> int:
    v = cfg.get(name, default)
    if isinstance(v, Mapping):  # protobuf UInt32Value as JSON object {"value": n}
        v = v.get("value", default)
    if v is None:
        v = default
    if isinstance(v, bool) or int(v) < 0:
        raise ValueError(f"outlierDetection.{name}: expected a non-negative integer, got {v!r}")
    return int(v)
