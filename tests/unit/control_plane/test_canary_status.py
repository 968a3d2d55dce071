"""``meshlet canary status`` against golden files (``UPDATE_GOLDEN=1`` rewrites them): the
histories are made by the real state machine from fixed observations."""

from __future__ import annotations

import json

from control_plane.api.canary import plan as make_plan
from control_plane.canary import machine as m
from control_plane.canary.machine import Observation, Window
from control_plane.cli.commands import canary
from tests.unit.control_plane.test_cli_output import golden

T0 = 1_800_000_000.0
SPEC = {
    "host": "orders", "stable": "v1", "canary": "v2",
    "analysis": {"interval": "2s", "stepWeights": [10, 30, 60], "threshold": 2,
                 "minRequests": 20,
                 "checks": {"successRate": {"min": 99}, "latencyP99": {"max": "500ms"}}},
}


def _view(observations: list[Observation | None]) -> dict:
    p = make_plan(SPEC)
    s = m.new_status(T0)
    t = T0
    s = m.step(p, s, None, t).status
    t += 0.2
    s = m.step(p, s, None, t).status
    for obs in observations:
        t += 2.0
        d = m.step(p, s, obs, t)
        s = d.status
        if d.weight is not None and d.status["phase"] in m.TRANSITIONAL:
            t += 0.2
            s = m.step(p, s, None, t).status
    return {"name": "orders", "namespace": "default", "spec": SPEC, "steps": list(p.steps),
            "intervalSeconds": p.interval_s, "status": s, "decisionsTotal": {}}


def test_status_of_a_promoted_canary_with_a_quiet_interval():
    view = _view([
        Observation(Window(52, 0, 23.4), Window(470, 1, 21.0), 2.0),
        Observation(Window(4, 0, 18.0), Window(30, 0, 20.0), 2.0),  # traffic stopped
        Observation(Window(160, 1, 31.0), Window(370, 0, 22.0), 2.0),
        Observation(Window(330, 2, 44.5), Window(210, 0, 23.0), 2.0),
    ])
    assert view["status"]["phase"] == "Succeeded"
    golden("canary_status_promoted.txt", canary.render(view))


def test_status_of_a_rolled_back_canary():
    view = _view([
        Observation(Window(48, 9, 35.0), Window(450, 0, 21.0), 2.0),
        Observation(Window(51, 0, 812.0), Window(440, 0, 22.0), 2.0),
    ])
    assert view["status"]["phase"] == "Failed"
    golden("canary_status_rolled_back.txt", canary.render(view))


def test_status_json_is_the_api_answer():
    view = _view([])
    assert json.loads(json.dumps(view)) == view  # what -o json prints, unchanged
