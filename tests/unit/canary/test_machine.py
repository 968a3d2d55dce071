"""The canary state machine, transition by transition (no I/O: plain values in, decisions out)."""

from __future__ import annotations

import pytest

from control_plane.api.canary import plan as make_plan
from control_plane.canary import machine as m
from control_plane.canary.machine import Gate, Observation, Window

SPEC = {
    "host": "orders", "stable": "v1", "canary": "v2",
    "analysis": {"interval": "2s", "stepWeights": [20, 50], "threshold": 2, "minRequests": 10,
                 "checks": {"successRate": {"min": 99}, "latencyP99": {"max": "500ms"}}},
}


def plan(**analysis):
    spec = {**SPEC, "analysis": {**SPEC["analysis"], **analysis}}
    return make_plan(spec)


def good(n=100, p99=20.0):
    return Observation(Window(n, 0, p99), Window(n, 0, p99), 2.0)


def run_to(p, phase_weight, t=0.0):
    """Take a new canary to its first step: initialized, then the first weight."""
    d = m.step(p, m.new_status(t), None, t)
    assert (d.decision, d.weight, d.status["phase"]) == ("initialized", 0, m.INITIALIZING)
    d = m.step(p, d.status, None, t + 0.2)
    assert (d.decision, d.weight, d.status["phase"]) == ("advanced", phase_weight, m.PROGRESSING)
    return d.status


def test_healthy_canary_goes_through_every_step_to_succeeded():
    p = plan()
    s = run_to(p, 20)
    t = 0.2
    # before the interval has elapsed nothing happens, whatever the data
    assert m.step(p, s, good(), t + 1.0).decision == ""
    t += 2.0
    d = m.step(p, s, good(), t)
    assert (d.decision, d.weight, d.status["step"]) == ("advanced", 50, 1)
    assert "success rate 100.0% (ok: >= 99%)" in d.reason and "advanced to 50%" in d.reason
    t += 2.0
    d = m.step(p, d.status, good(), t)
    assert (d.decision, d.weight, d.status["phase"]) == ("promoted", 100, m.PROMOTING)
    d = m.step(p, d.status, None, t + 0.2)
    assert (d.decision, d.weight, d.status["phase"]) == ("succeeded", None, m.SUCCEEDED)
    assert d.status["weight"] == 100
    # terminal: nothing more happens
    assert m.step(p, d.status, good(), t + 60).decision == ""
    assert d.status["counters"] == {"initialized": 1, "advanced": 2, "promoted": 1,
                                    "succeeded": 1}


def test_no_data_waits_without_advancing_or_failing():
    p = plan()
    s = run_to(p, 20)
    t = 0.2
    for _ in range(5):
        t += 2.0
        d = m.step(p, s, Observation(Window(3, 3, 900.0), Window(50, 0, 5.0), 2.0), t)
        assert (d.decision, d.weight, d.status["phase"]) == ("waiting", None, m.WAITING)
        assert d.status["failedChecks"] == 0 and d.status["weight"] == 20 and d.consumed
        s = d.status
    assert d.reason == ("waiting: v2 served 3 requests in the last 2.0s, fewer than minRequests "
                        "(10); holding at 20%, neither advancing nor counting a failure")
    # traffic comes back: it advances from where it held
    d = m.step(p, s, good(), t + 2.0)
    assert (d.decision, d.weight, d.status["phase"]) == ("advanced", 50, m.PROGRESSING)


def test_failed_checks_roll_back_at_threshold_in_one_decision():
    p = plan()
    s = run_to(p, 20)
    bad = Observation(Window(100, 20, 30.0), Window(100, 0, 30.0), 2.0)
    d = m.step(p, s, bad, 2.2)
    assert (d.decision, d.weight, d.status["phase"]) == ("check-failed", None, m.PROGRESSING)
    assert d.reason == ("check failed (1 of 2 before rollback): success rate was 80.0%, bound "
                        ">= 99%; holding at 20%")
    d = m.step(p, d.status, bad, 4.2)
    assert (d.decision, d.weight, d.status["phase"]) == ("rolled-back", 0, m.ROLLING_BACK)
    assert d.reason == ("rolling back: v2 at 20%: success rate was 80.0%, bound >= 99% "
                        "(2 of 2 failed checks); all traffic back on v1")
    d = m.step(p, d.status, None, 4.4)
    assert (d.decision, d.status["phase"], d.status["weight"]) == ("failed", m.FAILED, 0)
    assert d.reason.startswith("rolled back: v2 at 20%: success rate was 80.0%")


def test_slow_canary_fails_the_latency_check():
    p = plan(threshold=1)
    s = run_to(p, 20)
    d = m.step(p, s, Observation(Window(100, 0, 730.0), Window(100, 0, 20.0), 2.0), 2.2)
    assert (d.decision, d.weight) == ("rolled-back", 0)
    assert "p99 latency was 730 ms, bound <= 500 ms" in d.reason


def test_relative_checks_compare_with_stable_over_the_same_interval():
    p = plan(checks={"successRate": {"maxDropFromStable": 2},
                     "latencyP99": {"maxRatioToStable": 1.5}}, threshold=1)
    s = run_to(p, 20)
    # stable itself is at 90%: a canary at 89% is within 2 points
    d = m.step(p, s, Observation(Window(100, 11, 40.0), Window(100, 10, 30.0), 2.0), 2.2)
    assert d.decision == "advanced", d.reason
    checks = {c["check"]: c for c in d.checks}
    assert checks["success rate vs stable"]["bound"] == ">= 88.0% (stable 90.0% - 2)"
    assert checks["p99 latency vs stable"]["bound"] == "<= 45 ms (stable 30 ms x 1.5)"
    # p99 more than 1.5 x stable's
    d = m.step(p, d.status, Observation(Window(100, 0, 60.0), Window(100, 0, 30.0), 2.0), 4.2)
    assert d.decision == "rolled-back"
    assert "p99 latency vs stable was 60 ms, bound <= 45 ms (stable 30 ms x 1.5)" in d.reason


def test_relative_checks_wait_when_stable_has_no_traffic():
    p = plan(checks={"successRate": {"maxDropFromStable": 1}})
    s = run_to(p, 20)
    d = m.step(p, s, Observation(Window(100, 0, 10.0), Window(2, 0, 10.0), 2.0), 2.2)
    assert (d.decision, d.status["phase"], d.status["failedChecks"]) == ("waiting", m.WAITING, 0)
    assert "stable (v1) served 2 requests" in d.reason


HOOKS = [{"name": "ok-to-roll", "type": "confirm-rollout", "url": "http://127.0.0.1:1/r"},
         {"name": "ok-to-promote", "type": "confirm-promotion", "url": "http://127.0.0.1:1/p"}]


def test_webhooks_gate_each_step_and_the_promotion():
    p = plan(webhooks=HOOKS)
    s = m.step(p, m.new_status(0.0), None, 0.0).status
    d = m.step(p, s, None, 0.2)
    assert d.gate == "confirm-rollout" and d.decision == ""
    d = m.step(p, s, None, 0.2, Gate(False, "ok-to-roll answered 503: change freeze"))
    assert (d.decision, d.weight, d.status["weight"]) == ("held", None, 0)
    assert d.reason == "held at 0% by confirm-rollout webhook: ok-to-roll answered 503: change freeze"
    d = m.step(p, d.status, None, 2.2, Gate(True))
    assert (d.decision, d.weight) == ("advanced", 20)
    s = d.status
    assert m.step(p, s, good(), 4.2).gate == "confirm-rollout"
    s = m.step(p, s, good(), 4.2, Gate(True)).status
    assert s["weight"] == 50
    assert m.step(p, s, good(), 6.2).gate == "confirm-promotion"
    d = m.step(p, s, good(), 6.2, Gate(False, "ok-to-promote did not answer (TimeoutError)"))
    assert (d.decision, d.status["phase"], d.status["weight"]) == ("held", m.PROGRESSING, 50)
    d = m.step(p, d.status, good(), 8.2, Gate(True))
    assert (d.decision, d.weight) == ("promoted", 100)


def test_failing_checks_roll_back_without_asking_the_webhooks():
    p = plan(webhooks=HOOKS, threshold=1)
    s = m.step(p, m.new_status(0.0), None, 0.0).status
    s = m.step(p, s, None, 0.2, Gate(True)).status
    d = m.step(p, s, Observation(Window(100, 50, 10.0), Window(100, 0, 10.0), 2.0), 2.2)
    assert d.gate is None and d.decision == "rolled-back"


def test_operator_commands():
    p = plan()
    s = run_to(p, 20)
    d = m.command(p, s, "pause", 1.0)
    assert (d.status["phase"], d.decision) == (m.PAUSED, "paused")
    paused = d.status
    # paused: no analysis runs, whatever the data
    assert m.step(p, paused, Observation(Window(100, 100, 1.0), Window(), 2.0), 9.0).decision == ""
    with pytest.raises(ValueError, match="already paused"):
        m.command(p, paused, "pause", 9.0)
    d = m.command(p, paused, "resume", 10.0)
    assert (d.status["phase"], d.status["intervalStart"]) == (m.PROGRESSING, 10.0)
    with pytest.raises(ValueError, match="not paused"):
        m.command(p, d.status, "resume", 10.0)
    d2 = m.command(p, d.status, "promote", 11.0)
    assert (d2.weight, d2.status["phase"]) == (100, m.PROMOTING)
    d3 = m.command(p, d.status, "abort", 11.0)
    assert (d3.weight, d3.status["phase"]) == (0, m.ROLLING_BACK)
    done = m.step(p, d3.status, None, 11.2).status
    assert done["reason"] == "rolled back: aborted by an operator at 20%: all traffic back on v1"
    with pytest.raises(ValueError, match="has failed"):
        m.command(p, done, "resume", 12.0)
    with pytest.raises(ValueError, match="unknown action"):
        m.command(p, s, "explode", 12.0)


def test_events_are_bounded():
    p = plan(stepWeights=[50], threshold=100)
    s = run_to(p, 50)
    t = 0.2
    for _ in range(m.MAX_EVENTS + 10):
        t += 2.0
        s = m.step(p, s, Observation(Window(1, 0, None), Window(), 2.0), t).status
    assert len(s["events"]) == m.MAX_EVENTS
