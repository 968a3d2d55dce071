"""The canary state machine: stored status + one observation + the clock -> a decision.

Sans-I/O (h11's discipline): no store, no HTTP, no asyncio. The driver (``controller.py``) reads
the metrics, asks the webhooks, applies route weights and persists the status; every rule about
*when* traffic moves lives here, so each transition is unit-tested with plain values.

Phases (Flagger's, plus the ones its issue tracker asks for):

- ``Initializing``: all traffic on stable (the VirtualService gets both destinations, canary 0).
- ``Progressing``: at a step; every ``interval`` the checks run on what the canary served.
- ``Waiting``: the last interval had fewer than ``minRequests`` requests to judge by. Nothing
  advances and nothing counts as failed: no data is not bad data (flagger#1035, argo#1905).
- ``Promoting``: every step passed (and confirm-promotion said yes): the canary gets 100 %.
- ``Succeeded``: the canary serves all traffic; terminal until the spec changes.
- ``RollingBack``: ``threshold`` checks failed (or an operator aborted): stable gets 100 % in
  the same decision, so a rollback is one config push.
- ``Failed``: rolled back; terminal until the spec changes.
- ``Paused``: an operator paused; nothing moves until resume.

Every decision carries a sentence a person can read: what was measured against which bound and
what happens next (flagger#404: the reason for a rollback was hard to find).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from control_plane.api.canary import Plan

INITIALIZING = "Initializing"
PROGRESSING = "Progressing"
WAITING = "Waiting"
PROMOTING = "Promoting"
SUCCEEDED = "Succeeded"
ROLLING_BACK = "RollingBack"
FAILED = "Failed"
PAUSED = "Paused"
PHASES = (INITIALIZING, PROGRESSING, WAITING, PROMOTING, SUCCEEDED, ROLLING_BACK, FAILED, PAUSED)
TERMINAL = (SUCCEEDED, FAILED)
#: Phases whose weights were set by the decision that entered them; the next tick finishes them.
TRANSITIONAL = (INITIALIZING, PROMOTING, ROLLING_BACK)

COMMANDS = ("promote", "abort", "pause", "resume")
MAX_EVENTS = 60


@dataclass(frozen=True)
class Window:
    """What one subset served over one interval."""

    requests: int = 0
    failures: int = 0
    p99_ms: float | None = None

    @property
    def success_rate(self) -> float | None:
        """Percent of requests that did not fail; None without requests."""
        if self.requests <= 0:
            return None
        return 100.0 * (self.requests - self.failures) / self.requests

    def to_dict(self) -> dict[str, Any]:
        sr = self.success_rate
        return {"requests": self.requests, "failures": self.failures,
                "successRate": None if sr is None else round(sr, 2),
                "p99Ms": None if self.p99_ms is None else round(self.p99_ms, 1)}


@dataclass(frozen=True)
class Observation:
    canary: Window
    stable: Window
    span_s: float


@dataclass(frozen=True)
class Gate:
    """The webhooks' answer: go, or hold with their reason."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class Decision:
    """What the driver must do. ``status`` is the new status to persist (always a new dict).

    ``weight`` is the canary's new weight (stable gets the rest) or None for no change. ``gate``
    is set when the decision depends on webhooks of that type: the driver asks them and calls
    :func:`step` again with the answer; nothing else in the decision applies until then.
    ``consumed`` means the observation was used: the driver starts a new interval."""

    status: dict
    decision: str = ""  # metric label: initialized, advanced, waiting, ...; "" = nothing happened
    reason: str = ""
    weight: int | None = None
    gate: str | None = None
    consumed: bool = False
    checks: list[dict] = field(default_factory=list)


def new_status(now: float, spec_hash: str = "") -> dict:
    return {"phase": "", "weight": 0, "step": -1, "failedChecks": 0, "intervalStart": now,
            "specHash": spec_hash, "reason": "", "lastDecision": "", "pausedFrom": "",
            "events": [], "counters": {}}


def _fmt_pct(v: float | None) -> str:
    return "no data" if v is None else f"{v:.1f}%"


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "no data"
    return f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"


def evaluate(plan: Plan, obs: Observation) -> list[dict]:
    """Each configured check: its value, its bound and whether it passed (as the CLI shows)."""
    out: list[dict] = []
    c, s = obs.canary, obs.stable
    csr, ssr = c.success_rate, s.success_rate
    if plan.success_min is not None:
        ok = csr is not None and csr >= plan.success_min
        out.append({"check": "success rate", "value": _fmt_pct(csr),
                    "bound": f">= {plan.success_min:g}%", "ok": ok})
    if plan.success_max_drop is not None:
        bound = None if ssr is None else ssr - plan.success_max_drop
        ok = csr is not None and bound is not None and csr >= bound - 1e-9
        out.append({"check": "success rate vs stable", "value": _fmt_pct(csr),
                    "bound": (f">= {bound:.1f}% (stable {ssr:.1f}% - "
                              f"{plan.success_max_drop:g})" if bound is not None and ssr is not None
                              else "stable has no data"), "ok": ok})
    if plan.p99_max_ms is not None:
        # a canary that succeeded with no latency recorded cannot be judged slow
        ok = c.p99_ms is None or c.p99_ms <= plan.p99_max_ms
        out.append({"check": "p99 latency", "value": _fmt_ms(c.p99_ms),
                    "bound": f"<= {_fmt_ms(plan.p99_max_ms)}", "ok": ok})
    if plan.p99_max_ratio is not None:
        if s.p99_ms is None:
            ok, bound_text = False, "stable has no data"
        else:
            bound = s.p99_ms * plan.p99_max_ratio
            ok = c.p99_ms is None or c.p99_ms <= bound
            bound_text = (f"<= {_fmt_ms(bound)} (stable {_fmt_ms(s.p99_ms)} x "
                          f"{plan.p99_max_ratio:g})")
        out.append({"check": "p99 latency vs stable", "value": _fmt_ms(c.p99_ms),
                    "bound": bound_text, "ok": ok})
    return out


def _relative(plan: Plan) -> bool:
    return plan.success_max_drop is not None or plan.p99_max_ratio is not None


def _summary(checks: list[dict]) -> str:
    return ", ".join(f"{c['check']} {c['value']} ({'ok' if c['ok'] else 'over bound'}: "
                     f"{c['bound']})" for c in checks)


def _failed(checks: list[dict]) -> str:
    return "; ".join(f"{c['check']} was {c['value']}, bound {c['bound']}"
                     for c in checks if not c["ok"])


class _Builder:
    """Accumulates one decision on a copy of the status."""

    def __init__(self, plan: Plan, status: dict, now: float) -> None:
        self.plan = plan
        self.now = now
        self.s = copy.deepcopy(status)

    def done(self, decision: str, reason: str, *, phase: str | None = None,
             weight: int | None = None, consumed: bool = False, checks: list[dict] | None = None,
             obs: Observation | None = None) -> Decision:
        s = self.s
        before = int(s.get("weight", 0))
        if phase is not None:
            s["phase"] = phase
        if weight is not None:
            s["weight"] = weight
        if weight is not None:
            s["intervalStart"] = self.now  # the new weight is measured from now
        elif consumed:
            # The next interval follows this one on schedule, so a late tick does not delay
            # every later decision (a rollback stays within threshold x interval); a tick later
            # than a whole interval starts afresh.
            nxt = float(s.get("intervalStart", self.now)) + self.plan.interval_s
            s["intervalStart"] = nxt if 0 <= self.now - nxt < self.plan.interval_s else self.now
        s["reason"] = reason
        s["lastDecision"] = decision
        counters = s.setdefault("counters", {})
        counters[decision] = int(counters.get(decision, 0)) + 1
        event: dict[str, Any] = {"time": self.now, "decision": decision, "phase": s["phase"],
                                 "weight": s["weight"], "fromWeight": before, "reason": reason}
        if checks is not None:
            event["checks"] = checks
        if obs is not None:
            event["canary"] = obs.canary.to_dict()
            event["stable"] = obs.stable.to_dict()
        events = s.setdefault("events", [])
        events.append(event)
        del events[:-MAX_EVENTS]
        return Decision(status=s, decision=decision, reason=reason, weight=weight,
                        consumed=consumed or weight is not None, checks=checks or [])


def step(plan: Plan, status: dict, obs: Observation | None, now: float,
         gate: Gate | None = None) -> Decision:
    """The next decision. ``obs`` is what the subsets served since ``status["intervalStart"]``
    (None when the driver has no reading yet). A Decision with ``decision == ""`` changes
    nothing (the interval has not elapsed, or the phase is terminal)."""
    b = _Builder(plan, status, now)
    s = b.s
    phase = s.get("phase") or ""
    p = plan
    if phase == "":
        return b.done("initialized", f"initialized: all traffic on {p.stable}; {p.canary} gets "
                      f"its first step ({p.steps[0]}%) once the route is pushed",
                      phase=INITIALIZING, weight=0)
    if phase == INITIALIZING:
        # A first step a webhook held is asked again one interval later, not every tick.
        held_at = float(s.get("intervalStart", now))
        if s.get("lastDecision") == "held" and now - held_at < p.interval_s - 1e-3:
            return Decision(status=s)
        return _advance(b, gate, obs=None, checks=None)
    if phase == PROMOTING:
        return b.done("succeeded", f"promoted: {p.canary} serves 100% of {p.host}",
                      phase=SUCCEEDED)
    if phase == ROLLING_BACK:
        why = str(s.get("reason", ""))
        why = why.removeprefix("rolling back: ")
        return b.done("failed", f"rolled back: {why}", phase=FAILED)
    if phase in TERMINAL or phase == PAUSED:
        return Decision(status=s)
    # Progressing or Waiting: judge once per interval.
    if obs is None or now - float(s.get("intervalStart", now)) < p.interval_s - 1e-3:
        return Decision(status=s)
    # The checks come before any gate: a failing canary rolls back whatever a webhook would
    # say (flagger#1801).
    c = obs.canary
    weight = int(s.get("weight", 0))
    if c.requests < p.min_requests:
        return b.done("waiting", f"waiting: {p.canary} served {c.requests} request"
                      f"{'' if c.requests == 1 else 's'} in the last {obs.span_s:.1f}s, fewer "
                      f"than minRequests ({p.min_requests}); holding at {weight}%, neither "
                      "advancing nor counting a failure", phase=WAITING, consumed=True, obs=obs,
                      checks=[{"check": "requests", "value": str(c.requests),
                               "bound": f">= {p.min_requests} (minRequests)", "ok": False}])
    if _relative(p) and obs.stable.requests < p.min_requests:
        return b.done("waiting", f"waiting: stable ({p.stable}) served {obs.stable.requests} "
                      f"requests in the last {obs.span_s:.1f}s, fewer than minRequests "
                      f"({p.min_requests}), so the checks relative to it cannot run; holding at "
                      f"{weight}%", phase=WAITING, consumed=True, obs=obs,
                      checks=[{"check": "stable requests", "value": str(obs.stable.requests),
                               "bound": f">= {p.min_requests} (minRequests)", "ok": False}])
    checks = evaluate(p, obs)
    if not all(ch["ok"] for ch in checks):
        failed = int(s.get("failedChecks", 0)) + 1
        s["failedChecks"] = failed
        what = _failed(checks)
        if failed >= p.threshold:
            return b.done("rolled-back", f"rolling back: {p.canary} at {weight}%: {what} "
                          f"({failed} of {p.threshold} failed checks); all traffic back on "
                          f"{p.stable}", phase=ROLLING_BACK, weight=0, checks=checks, obs=obs)
        return b.done("check-failed", f"check failed ({failed} of {p.threshold} before "
                      f"rollback): {what}; holding at {weight}%", phase=PROGRESSING,
                      consumed=True, checks=checks, obs=obs)
    return _advance(b, gate, obs=obs, checks=checks)


def _advance(b: _Builder, gate: Gate | None, obs: Observation | None,
             checks: list[dict] | None) -> Decision:
    """The checks passed (or there were none yet): the next step, or promotion, behind the
    webhooks of that kind."""
    p, s = b.plan, b.s
    idx = int(s.get("step", -1))
    last = idx + 1 >= len(p.steps)
    kind = "confirm-promotion" if last else "confirm-rollout"
    weight = int(s.get("weight", 0))
    passed = f"{_summary(checks)}; " if checks else ""
    if p.hooks(kind):
        if gate is None:
            return Decision(status=s, gate=kind)
        if not gate.ok:
            return b.done("held", f"{passed}held at {weight}% by {kind} webhook: {gate.reason}",
                          phase=INITIALIZING if s.get("phase") == INITIALIZING else PROGRESSING,
                          consumed=True, checks=checks, obs=obs)
    if last:
        return b.done("promoted", f"{passed}every step passed: promoting {p.canary} to 100%",
                      phase=PROMOTING, weight=100, checks=checks, obs=obs)
    nxt = p.steps[idx + 1]
    s["step"] = idx + 1
    return b.done("advanced", f"{passed}advanced to {nxt}% (step {idx + 2} of {len(p.steps)})",
                  phase=PROGRESSING, weight=nxt, checks=checks, obs=obs)


def command(plan: Plan, status: dict, action: str, now: float) -> Decision:
    """An operator's ``promote``, ``abort``, ``pause`` or ``resume``; raises ValueError when it
    does not apply to the current phase (the message says why)."""
    if action not in COMMANDS:
        raise ValueError(f"unknown action {action!r}: one of {', '.join(COMMANDS)}")
    b = _Builder(plan, status, now)
    s = b.s
    phase = s.get("phase") or ""
    if phase in TERMINAL:
        raise ValueError(f"the canary has {phase.lower()}; apply a changed spec to start again")
    if action == "pause":
        if phase == PAUSED:
            raise ValueError("the canary is already paused")
        s["pausedFrom"] = phase or INITIALIZING
        return b.done("paused", f"paused by an operator at {s.get('weight', 0)}%; nothing moves "
                      "until resume", phase=PAUSED)
    if action == "resume":
        if phase != PAUSED:
            raise ValueError(f"the canary is not paused (it is {phase or 'not started'})")
        back = s.get("pausedFrom") or PROGRESSING
        s["pausedFrom"] = ""
        s["intervalStart"] = now
        return b.done("resumed", f"resumed by an operator at {s.get('weight', 0)}%; the next "
                      f"analysis is one interval from now", phase=back)
    if action == "promote":
        return b.done("promoted", f"promoted by an operator: {plan.canary} gets 100%",
                      phase=PROMOTING, weight=100)
    return b.done("rolled-back", f"aborted by an operator at {s.get('weight', 0)}%: all traffic "
                  f"back on {plan.stable}", phase=ROLLING_BACK, weight=0)
