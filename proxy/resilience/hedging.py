"""Hedging: send a second copy of a slow idempotent request after a delay, first answer wins.

meshlet's extension beyond Envoy's `hedge_on_per_try_timeout` (research 3.8, 8): the hedge delay
is a fixed duration or a latency quantile of the destination ("tail at scale"), e.g. `p95`.
`LatencyTracker` keeps the last `window` latencies in a ring and re-sorts a snapshot only every
`recompute_every` observations, so `observe` is O(1) and `quantile` a list index.

Rules the I/O layer applies around `HedgePolicy`: hedge only requests `applies_to` accepts
(idempotent method or `Idempotency-Key`, as for retries), at most `max_hedges` extra copies,
each paid for by `RetryBudget.try_withdraw()`; never once the response has started. Until the
tracker has `min_samples` observations a quantile delay is None: no hedging on a cold start
(rather than hedging at a made-up delay). Feed the tracker with successful responses' latencies
only, or a failing fast backend drags the quantile down and triggers hedges for everything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._duration import parse_duration
from .retry import IDEMPOTENT_METHODS

_QUANTILE = re.compile(r"[pP](\d{1,2}(?:\.\d+)?)")


class LatencyTracker:
    """Latency quantiles over the last `window` observations (seconds)."""

    __slots__ = ("window", "min_samples", "recompute_every", "_ring", "_pos", "_count",
                 "_since", "_sorted")

    def __init__(
        self, window: int = 200, min_samples: int = 20, recompute_every: int | None = None
    ) -> None:
        if window < 1:
            raise ValueError("LatencyTracker: window must be >= 1")
        self.window = window
        self.min_samples = min(min_samples, window)
        self.recompute_every = recompute_every or max(1, window // 10)
        self._ring = [0.0] * window
        self._pos = 0
        self._count = 0
        self._since = 0
        self._sorted: list[float] = []

    def observe(self, seconds: float) -> None:
        pos = self._pos
        self._ring[pos] = seconds
        self._pos = pos + 1 if pos + 1 < self.window else 0
        if self._count < self.window:
            self._count += 1
        self._since += 1

    @property
    def count(self) -> int:
        return self._count

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile `q` in (0, 1]; None below `min_samples` observations."""
        n = self._count
        if n < self.min_samples or n == 0:
            return None
        if self._since >= self.recompute_every or not self._sorted:
            self._sorted = sorted(self._ring[:n]) if n < self.window else sorted(self._ring)
            self._since = 0
        snap = self._sorted
        m = len(snap)
        i = math.ceil(q * m) - 1
        return snap[0 if i < 0 else m - 1 if i >= m else i]


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """When to send hedged copies: after `fixed_delay` seconds, or after the tracker's
    `quantile` latency, at most `max_hedges` copies per request."""

    quantile: float | None = 0.95
    fixed_delay: float | None = None
    max_hedges: int = 1

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> HedgePolicy | None:
        """From a ResiliencePolicy `hedging` block ({delay: p95 | duration, maxHedges}).
        None when absent (hedging is off unless configured)."""
        if spec is None:
            return None
        delay = spec.get("delay", "p95")
        max_hedges = spec.get("maxHedges", 1)
        if isinstance(max_hedges, bool) or not isinstance(max_hedges, int) or max_hedges < 0:
            raise ValueError(f"hedging.maxHedges: expected an integer >= 0, got {max_hedges!r}")
        if isinstance(delay, str) and (m := _QUANTILE.fullmatch(delay.strip())):
            q = round(float(m.group(1)) / 100.0, 9)
            if not 0.0 < q < 1.0:
                raise ValueError(f"hedging.delay: quantile out of range in {delay!r}")
            return cls(quantile=q, fixed_delay=None, max_hedges=max_hedges)
        fixed = parse_duration(delay, "hedging.delay")
        if fixed <= 0:
            raise ValueError("hedging.delay: must be positive")
        return cls(quantile=None, fixed_delay=fixed, max_hedges=max_hedges)

    def delay_s(self, tracker: LatencyTracker | None) -> float | None:
        """Seconds to wait before the next hedge; None: do not hedge (yet)."""
        if self.max_hedges <= 0:
            return None
        if self.fixed_delay is not None:
            return self.fixed_delay
        if tracker is None or self.quantile is None:
            return None
        return tracker.quantile(self.quantile)

    @staticmethod
    def applies_to(method: str, idempotency_key: bool) -> bool:
        """Hedging is for idempotent requests only."""
        return idempotency_key or method in IDEMPOTENT_METHODS
