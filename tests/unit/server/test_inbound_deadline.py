"""The caller's deadline as an inbound admission step, without sockets: which headers give it,
that the attempt machine takes the one the stack derived (``ex.deadline``) and does not derive
it again, and that ``/explain`` reports the step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from control_plane.api.resources import load_text
from proxy.explain import explain
from proxy.http1.parser import RequestHead
from proxy.inbound.admit import DEADLINE_PASSED, caller_deadline
from proxy.routes.compile import compile_table
from proxy.server.policy import INBOUND_POLICY
from proxy.server.runtime import Runtime
from proxy.transport.exchange import Exchange, Side, scan
from proxy.transport.tries import attempts_for

GRPC = {"content-type": "application/grpc"}


@pytest.mark.parametrize(
    ("headers", "left"),
    [
        ({}, None),
        ({"x-envoy-expected-rq-timeout-ms": "250"}, 0.25),
        ({"x-envoy-expected-rq-timeout-ms": "0"}, 0.0),
        ({**GRPC, "grpc-timeout": "0m"}, 0.0),
        ({**GRPC, "grpc-timeout": "2S"}, 2.0),
        # both: the smaller
        ({**GRPC, "grpc-timeout": "2S", "x-envoy-expected-rq-timeout-ms": "300"}, 0.3),
        # grpc-timeout counts only on a gRPC request; a malformed value is ignored
        ({"grpc-timeout": "0m"}, None),
        ({**GRPC, "grpc-timeout": "soon"}, None),
        ({"x-envoy-expected-rq-timeout-ms": "-5"}, None),
    ],
)
def test_the_callers_deadline_from_its_headers(headers: dict[str, str], left: float | None):
    assert caller_deadline(headers) == left


def test_an_expired_deadline_is_a_504_ut_refusal():
    status, flag, _, _, _ = DEADLINE_PASSED
    assert (status, flag) == (504, "UT")


def _inbound_exchange(rt: Runtime, headers: list[tuple[str, str]], start: float) -> Exchange:
    head = RequestHead(method="GET", target="/", path="/", headers=headers, host="inventory")
    down = SimpleNamespace(peer=("127.0.0.1", 5000), body=None)
    ex = Exchange(Side(rt, "inbound", outbound=False), down, head, start)
    scan(head.headers, ex)
    ex.policy = INBOUND_POLICY
    ex.cluster = "inbound"
    return ex


def test_the_attempt_machine_takes_the_deadline_the_stack_derived():
    rt = Runtime("inventory", "default", "v1", {"app": "inventory"}, 8080)
    rt.swap(compile_table([], [], "default", rt.labels, "1"))
    # the headers say 5 s, the stack (having spent some of it) set 1000.2: that one counts
    ex = _inbound_exchange(rt, [("x-envoy-expected-rq-timeout-ms", "5000")], 1000.0)
    ex.deadline = 1000.2
    assert attempts_for(ex).deadline == pytest.approx(1000.2)
    # no deadline set: the headers are still read (the outbound side, unchanged)
    ex = _inbound_exchange(rt, [("x-envoy-expected-rq-timeout-ms", "5000")], 1000.0)
    assert attempts_for(ex).deadline == pytest.approx(1005.0)
    assert attempts_for(_inbound_exchange(rt, [], 1000.0)).deadline == 0.0


def test_explain_reports_the_deadline_step():
    rt = Runtime("inventory", "default", "v1", {"app": "inventory"}, 8080)
    rt.swap(compile_table(load_text(""), [], "default", rt.labels, "1"))
    sc = SimpleNamespace(runtime=rt, listeners={})
    q = {"direction": "inbound", "path": "/", "h.content-type": "application/grpc"}
    data = explain(sc, {**q, "h.grpc-timeout": "0m"})
    assert data["caller_deadline_s"] == 0.0
    assert data["decision"] == "504 UT: the caller's deadline has passed"
    data = explain(sc, {**q, "h.grpc-timeout": "3S"})
    assert data["caller_deadline_s"] == 3.0 and data["decision"].startswith("forward to")
