from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.resilience.bulkhead import Bulkhead


class W:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def wake(self) -> None:
        self.log.append(self.name)


def test_defaults_and_from_spec() -> None:
    b = Bulkhead()
    assert (b.max_concurrent_calls, b.max_wait) == (25, 0.0)
    b = Bulkhead.from_spec({"maxConcurrentCalls": 3, "maxWaitDuration": "250ms"})
    assert (b.max_concurrent_calls, b.max_wait) == (3, 0.25)
    assert Bulkhead.from_spec(None).max_concurrent_calls == 25


def test_rejects_without_queue() -> None:
    b = Bulkhead(2)
    assert b.try_acquire() and b.try_acquire()
    assert not b.try_acquire()
    assert (b.active, b.rejected) == (2, 1)
    assert not b.enqueue(W("x", []))  # no waiting when max_wait is 0
    assert b.rejected == 2
    b.release()
    assert b.active == 1
    assert b.try_acquire()


def test_fifo_handoff() -> None:
    log: list[str] = []
    b = Bulkhead(1, max_wait=1.0)
    assert b.try_acquire()
    assert not b.try_acquire()
    assert b.rejected == 0  # queueing bulkhead: refusal is not yet a rejection
    w1, w2 = W("w1", log), W("w2", log)
    assert b.enqueue(w1) and b.enqueue(w2)
    assert b.waiting == 2
    b.release()
    assert log == ["w1"] and b.active == 1 and b.waiting == 1
    assert not b.try_acquire()  # a newcomer never overtakes a queued waiter
    b.release()
    assert log == ["w1", "w2"] and b.active == 1
    b.release()
    assert b.active == 0 and b.waiting == 0
    assert b.try_acquire()


def test_cancel_timed_out_and_after_wake() -> None:
    log: list[str] = []
    b = Bulkhead(1, max_wait=1.0)
    b.try_acquire()
    w1, w2, w3 = W("w1", log), W("w2", log), W("w3", log)
    b.enqueue(w1)
    b.enqueue(w2)
    b.enqueue(w3)
    assert b.cancel(w2)  # timed out while queued
    assert b.rejected == 1
    assert b.cancel(w3, timed_out=False)  # downstream went away: not a rejection
    assert b.rejected == 1
    b.release()
    assert log == ["w1"]
    assert not b.cancel(w1)  # already woken: it owns the permit
    b.release()
    assert b.active == 0


def test_queue_bound() -> None:
    b = Bulkhead(1, max_wait=1.0, max_waiting=1)
    b.try_acquire()
    assert b.enqueue(W("a", []))
    assert not b.enqueue(W("b", []))
    assert b.rejected == 1


def test_zero_concurrency_rejects_everything() -> None:
    b = Bulkhead(0)
    assert not b.try_acquire()
    assert b.rejected == 1


def test_set_limit_wakes_waiters_and_shrinks() -> None:
    log: list[str] = []
    b = Bulkhead(1, max_wait=1.0)
    b.try_acquire()
    b.enqueue(W("a", log))
    b.enqueue(W("b", log))
    b.set_limit(3)
    assert log == ["a", "b"] and b.active == 3
    b.set_limit(1)
    b.enqueue(W("c", log))
    b.release()  # over the new limit: the permit is dropped, not handed off
    assert b.active == 2 and log == ["a", "b"]
    b.release()  # one call still in flight = the limit: c keeps waiting
    assert b.active == 1 and log == ["a", "b"]
    b.release()
    assert b.active == 1 and log == ["a", "b", "c"]


def test_invalid() -> None:
    with pytest.raises(ValueError):
        Bulkhead(-1)


class Counting:
    def __init__(self, state: dict[str, int]) -> None:
        self.state = state

    def wake(self) -> None:
        self.state["owned"] += 1
        self.state["queued"] -= 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["acquire", "release", "enqueue", "cancel"]), max_size=200))
def test_permits_conserved(ops) -> None:
    b = Bulkhead(3, max_wait=1.0)
    state = {"owned": 0, "queued": 0}
    waiters: list[Counting] = []
    for op in ops:
        if op == "acquire":
            state["owned"] += b.try_acquire()
        elif op == "enqueue":
            w = Counting(state)
            state["queued"] += 1  # wake() (possibly right away) moves it to owned
            if b.enqueue(w):
                waiters.append(w)
            else:
                state["queued"] -= 1
        elif op == "cancel" and waiters:
            if b.cancel(waiters.pop(0)):
                state["queued"] -= 1
        elif op == "release" and state["owned"]:
            state["owned"] -= 1
            b.release()
        assert b.active == state["owned"] <= 3
        assert b.waiting == state["queued"]
        if b.waiting:
            assert b.active == 3  # nobody waits while a permit is free
