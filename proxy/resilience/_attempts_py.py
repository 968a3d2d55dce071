# cython: annotation_typing=False
"""The attempt machine: every decision about one request's tries, with no I/O.

The request path (once ``proxy/server/forward.py``, now ``proxy/transport/``) used to decide
retries, back-off, deadlines and hedges inline, between awaits, so no decision could be tested
without sockets. `Attempts` holds
the decisions and the state they need (the tried set, the deadline, the retry policy, the
retry budget, the ``http.maxRetries`` gate, the hedges sent); the I/O shell feeds it what
happened and executes what it answers. Its clock and random source are injected.

Events in (methods), actions out (return values; the action's parameters are attributes):

==========================  ========================================================
event                       actions
==========================  ========================================================
`begin(key)`                TRY (``timeout``, `try_headers`), GIVE_UP (503 UH/URX, 504 UT)
`on_pool_overflow()`        GIVE_UP 503 UO
`on_pending_timeout()`      GIVE_UP 504 UT
`on_connect_failed()`       BACKOFF (``delay``) or GIVE_UP 503 UF (UF,URX after a retry)
`hedge_delay(...)`          seconds until a hedge, or None (no hedging for this try)
`on_hedge_timer()`          True: send one more copy (budget paid), False: stop hedging
`on_hedges_failed(t)`       GIVE_UP 504 UT (timed out) or 503 UC
`on_response(...)`          BACKOFF (a retried response) or STREAM
`on_try_timeout()`          BACKOFF or GIVE_UP 504 UT (at once when the deadline is hit)
`on_protocol_error()`       BACKOFF or GIVE_UP 502 UPE
`on_reset(...)`             RETRY_NOW (stale pooled conn.), BACKOFF, GIVE_UP 503 UC (UC,URX retried)
==========================  ========================================================

Retry semantics (today's, kept exactly): a failed try is retried when `RetryPolicy.should_retry`
says so (its idempotency guard: a request that reached the upstream, i.e. RESET, TIMEOUT or
RESPONSE, is retried only for GET HEAD OPTIONS TRACE PUT DELETE, with an ``Idempotency-Key``,
or on a route that opted in with ``meshlet.io/retry-non-idempotent``; CONNECT_FAILURE is safe for
any method), the request body is still replayable, the deadline has not passed, the cluster's
``maxRetries`` gate has a slot (held from the first retry to the request's end) and the
destination's retry budget grants it. A response with ``x-envoy-overloaded`` is never retried.
One more rule outside the policy: a reused keep-alive connection that reset with no byte back,
for an idempotent request with a fresh body, is retried at once on the same endpoint up to the
third try (the stale-pool race; Envoy retries these too) without budget.

This file is compiled a second time by Cython as ``_attempts_c`` (``_attempts_c.py`` is a symlink
to it and ``_attempts_c.pxd`` makes :class:`Attempts` a ``cdef class`` with typed fields);
``proxy/resilience/attempts.py`` picks the build. In the compiled build the fields an action
sets (``delay``, ``status``, ``flag``, ``hedges``) read as 0 / None before it does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from proxy.resilience.deadline import attempt_timeout, format_timeout_ms
from proxy.resilience.retry import IDEMPOTENT_METHODS, Outcome, RetryPolicy, retry_after_delay
from proxy.server.h2.grpc import timeout_extra

__all__ = ["BACKOFF", "GIVE_UP", "RETRY_NOW", "STREAM", "TRY", "Attempts", "Env"]

# Actions (plain ints: compared on every request, never allocated)
TRY = 0  # try the picked endpoint with ``timeout`` and `try_headers`
BACKOFF = 1  # wait ``delay`` seconds, then `begin` the next try
RETRY_NOW = 2  # `begin` the next try at once (the endpoint was given back to the picker)
GIVE_UP = 3  # answer the local reply ``status`` + ``flag``
STREAM = 4  # stream this response to the caller

_CONNECT = Outcome.CONNECT_FAILURE
_RESET = Outcome.RESET
_TIMEOUT = Outcome.TIMEOUT
_RESPONSE = Outcome.RESPONSE

# What a try drops from the caller's headers, by (traced, replace expected-rq-timeout, replace
# grpc-timeout): built once instead of unions per try
_PROPAGATION_DEFAULT: frozenset[str] = frozenset()
_DROPS: dict[tuple[frozenset[str], bool, bool], frozenset[str] | None] = {}


def _drop(propagation: frozenset[str] | None, expected: bool, grpc: bool) -> frozenset[str] | None:
    key = (propagation or _PROPAGATION_DEFAULT, expected, grpc)
    got = _DROPS.get(key, _DROPS)
    if got is _DROPS:
        names = set(propagation or ())
        if expected:
            names.add("x-envoy-expected-rq-timeout-ms")
        if grpc:
            names.add("grpc-timeout")
        got = frozenset(names) if names or propagation is not None else None
        _DROPS[key] = got
    return got  # type: ignore[return-value]


class Env:
    """What every request's machine shares, made once per sidecar (and per test): the clocks,
    the random source, the counters and the ``maxRetries`` gates by cluster name. ``gates``
    is read only when a retry is considered, so a subclass may look it up live."""

    __slots__ = ("clock", "wall", "rng", "counters", "gates")

    def __init__(
        self,
        counters: Any,
        gates: dict[str, Any] | None = None,
        rng: random.Random | Any = random,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``counters``: where refusals and retries are counted (``count_retry``,
        ``count_protection``, ``count_overflow``); ``clock``: monotonic seconds; ``wall``: Unix
        time (a Retry-After date is wall-clock)."""
        self.counters = counters
        self.gates = gates
        self.rng = rng
        self.clock = clock
        self.wall = wall


class Attempts:
    """One request's tries (see the module docstring for its events and actions).

    Made once per request: the constructor takes positional arguments only and leaves the
    fields an action sets (``delay``, ``status``, ``flag``, ``hedges``) unset until then."""

    __slots__ = (
        "env", "retry", "method", "idem", "source", "deadline", "dest", "cluster", "tried",
        "attempt", "timeout", "delay", "status", "flag", "slot", "hedges", "outbound",
        "expected", "grpc_timeout", "grpc", "propagation", "drop",
    )

    def __init__(
        self,
        env: Env,
        retry: RetryPolicy,
        method: str,
        idem_key: bool,
        source: Any,
        deadline: float,
        dest: Any,
        cluster: str,
        outbound: bool = False,
        expected: str | None = None,
        grpc_timeout: str | None = None,
        grpc: bool = False,
        propagation: frozenset[str] | None = None,
    ) -> None:
        """``source``: the request body (``replayable``, ``started``) or None; ``deadline``:
        the absolute time on ``env.clock`` the request must end by, 0.0 for none; ``dest``:
        the destination's resilience (``budget``, ``hedge``, ``tracker``) or None; ``cluster``:
        whose ``maxRetries`` gate applies. The rest say what `try_headers` writes:
        ``outbound`` (a request from the local app), the caller's
        ``x-envoy-expected-rq-timeout-ms`` and ``grpc-timeout`` (``grpc``: a gRPC request), and
        ``propagation``, the trace headers a try drops (when the sidecar traces), else None."""
        self.env = env
        self.retry = retry
        self.method = method
        self.idem = idem_key or method in IDEMPOTENT_METHODS
        self.source = source
        self.deadline = deadline
        self.dest = dest
        self.cluster = cluster
        self.tried: set[str] = set()
        self.attempt = 0  # the try in progress, 1-based
        self.timeout: float | None = None  # this try's timeout (TRY)
        self.slot: Any = None  # the maxRetries gate this request holds a slot of
        self.outbound = outbound
        self.expected = expected
        self.grpc_timeout = grpc_timeout
        self.grpc = grpc
        self.propagation = propagation

    # -- trying --------------------------------------------------------------------------------
    def begin(self, key: str | None) -> int:
        """The next try, to the endpoint the picker chose (``key``; None: none is left)."""
        self.attempt += 1
        if key is None:
            return self._give_up(503, "UH" if self.attempt == 1 else "URX")
        self.tried.add(key)
        remaining = None
        if self.deadline:
            remaining = self.deadline - self.env.clock()
            if remaining <= 0:
                return self._give_up(504, "UT")
        self.timeout = attempt_timeout(self.retry.per_try_timeout, remaining)
        return TRY

    def try_headers(self, extra: list[str], framing: list[str]) -> list[str]:
        """This try's extra header lines: ``extra``, what is left of the deadline in
        ``x-envoy-expected-rq-timeout-ms`` (outbound only) and ``grpc-timeout``,
        ``x-envoy-attempt-count`` from the second try, then ``framing``. Sets ``drop``: the
        caller's header names they replace (trace headers, the caller's expected-rq-timeout and
        grpc-timeout when rewritten), None for none."""
        lines = list(extra)
        t = self.timeout
        if t is not None:
            if self.outbound:
                lines.append("x-envoy-expected-rq-timeout-ms: " + format_timeout_ms(t))
            if self.attempt > 1:
                lines.append("x-envoy-attempt-count: %d" % self.attempt)
            if self.grpc:
                lines.append(timeout_extra(self.grpc_timeout, t))  # type: ignore[arg-type]
        elif self.attempt > 1:
            lines.append("x-envoy-attempt-count: %d" % self.attempt)
        if framing:
            lines += framing
        if t is None:
            self.drop = self.propagation
        else:
            expected = self.outbound and self.expected is not None
            if not expected and not self.grpc:
                self.drop = self.propagation
            else:
                self.drop = _drop(self.propagation, expected, self.grpc)
        return lines

    def on_pool_overflow(self) -> int:
        """A connectionPool threshold refused the connection (Envoy's circuit breaker)."""
        return self._give_up(503, "UO")

    def on_pending_timeout(self) -> int:
        """The try waited in the pool's pending queue past its timeout."""
        return self._give_up(504, "UT")

    def on_connect_failed(self) -> int:
        if self._may_retry(_CONNECT, 0, None, False):
            return self._backoff(None)
        return self._give_up(503, "UF,URX" if self.attempt > 1 else "UF")  # Envoy: both flags

    # -- hedging -------------------------------------------------------------------------------
    def hedge_delay(self, has_body: bool) -> float | None:
        """Seconds after which the first try gets a hedged copy; None: it is not hedged (not
        the first try, no hedging policy, a request body, not idempotent, no delay known yet,
        or the delay does not fit in the try's timeout)."""
        dest = self.dest
        if self.attempt != 1 or dest is None or dest.hedge is None or has_body or not self.idem:
            return None
        delay = dest.hedge.delay_s(dest.tracker)
        if delay is None or (self.timeout is not None and delay >= self.timeout):
            return None
        self.hedges = 0
        return delay

    def hedge_armed(self) -> bool:
        """Fewer than ``maxHedges`` copies went out: keep the hedge timer running."""
        return self.hedges < self.dest.hedge.max_hedges

    def on_hedge_timer(self) -> bool:
        """The hedge delay passed without an answer: True when one more copy may go out
        (fewer than ``maxHedges`` sent and the budget paid for it); its attempt count is
        ``hedges + 1``."""
        if self.hedges >= self.dest.hedge.max_hedges or not self.dest.budget.try_withdraw():
            return False
        self.hedges += 1
        return True

    def on_hedges_failed(self, timed_out: bool) -> int:
        """Every hedged copy failed without a retried response: 504 UT when they timed out,
        else 503 UC (the hedged try is not retried)."""
        return self._give_up(504, "UT") if timed_out else self._give_up(503, "UC")

    # -- answers -------------------------------------------------------------------------------
    def on_response(
        self,
        status: int,
        grpc: int | None,
        ratelimited: bool,
        overloaded: bool,
        retry_after: str | None,
    ) -> int:
        """A response head: BACKOFF when the policy retries it, else STREAM. Only statuses a
        policy could retry need to come here (5xx, 409, 429, a gRPC error)."""
        if overloaded:
            return STREAM  # a peer's local overload reply is never retried (Envoy)
        if not self._may_retry(_RESPONSE, status, grpc, ratelimited):
            return STREAM
        ra = retry_after_delay(retry_after, self.env.wall()) if retry_after else None
        return self._backoff(ra)

    def response_flag(self, status: int) -> str:
        """The flag a streamed response is logged with: URX for a 5xx after retries."""
        return "URX" if status >= 500 else "-"

    def on_try_timeout(self) -> int:
        deadline = self.deadline
        hit = deadline and self.env.clock() >= deadline - 0.0005
        if not hit and self._may_retry(_TIMEOUT, 0, None, False):
            return self._backoff(None)
        return self._give_up(504, "UT")

    def on_protocol_error(self) -> int:
        """The upstream's response broke HTTP: a reset to the retry policy, 502 UPE if not
        retried (Envoy)."""
        if self._may_retry(_RESET, 0, None, False):
            return self._backoff(None)
        return self._give_up(502, "UPE")

    def on_reset(self, key: str, reused: bool, got_bytes: bool) -> int:
        """The connection broke before a response head."""
        src = self.source
        if (
            reused
            and not got_bytes
            and (src is None or not src.started or src.replayable)
            and self.idem
            and self.attempt < 3
        ):
            self.tried.discard(key)
            return RETRY_NOW
        if self._may_retry(_RESET, 0, None, False):
            return self._backoff(None)
        return self._give_up(503, "UC,URX" if self.attempt > 1 else "UC")

    def release(self) -> None:
        """The request ended: give back the maxRetries slot it holds."""
        if self.slot is not None:
            self.slot.release()
            self.slot = None

    # -- decisions -----------------------------------------------------------------------------
    def _may_retry(self, outcome: Outcome, status: int, grpc: int | None, rl: bool) -> bool:
        """Policy, replayable body, time left, the maxRetries gate, then the budget."""
        if not self.retry.should_retry(
            outcome, status, grpc, self.method, self.idem, False, self.attempt, ratelimited=rl
        ):
            return False
        src = self.source
        if src is not None and not src.replayable:
            return False
        env = self.env
        if self.deadline and env.clock() >= self.deadline:
            return False
        if self.slot is None:
            gates = env.gates
            gate = gates.get(self.cluster) if gates else None
            if gate is not None:  # http.maxRetries: concurrent retries of the cluster
                if not gate.take():
                    env.counters.count_overflow(gate.service, "retries")
                    return False
                self.slot = gate
        dest = self.dest
        if dest is not None and not dest.budget.try_withdraw():
            env.counters.count_protection(dest, "budget_skipped")
            return False
        env.counters.count_retry(dest, outcome)
        return True

    def _backoff(self, retry_after: float | None) -> int:
        """Envoy's jittered back-off, at least Retry-After, at most what is left."""
        delay = self.retry.backoff(self.attempt, self.env.rng)
        if retry_after is not None and retry_after > delay:
            delay = retry_after
        if self.deadline:
            left = self.deadline - self.env.clock()
            if delay > left:
                delay = left if left > 0.0 else 0.0
        self.delay = delay
        return BACKOFF

    def _give_up(self, status: int, flag: str) -> int:
        self.status = status
        self.flag = flag
        return GIVE_UP
