"""The registry survives a control-plane restart: what the last run knew comes back in its grace
period (so the first snapshot after a restart still has every endpoint), and leaves when the
grace period ends without a reconnect."""

from __future__ import annotations

from control_plane import registry_state
from control_plane.registry import Registration, Registry


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_registrations_come_back_disconnected_and_expire_after_grace(tmp_path):
    before = Registry(grace_s=30)
    before.register(Registration("a-1", "a", address="127.0.0.1:1", labels={"version": "v1"}))
    before.register(Registration("b-1", "b", address="127.0.0.1:2"))
    before.acked("a-1", "7-abc")
    registry_state.save(before, tmp_path)

    clock = Clock()
    after = Registry(grace_s=30, clock=clock)
    assert registry_state.load(after, tmp_path) == 2
    a = after.get("a-1")
    assert a is not None and not a.connected and a.address == "127.0.0.1:1"
    assert a.labels == {"version": "v1"} and a.acked_version == "7-abc"
    # a reconnect keeps its place; the other leaves when its grace period ends
    after.register(Registration("a-1", "a", address="127.0.0.1:1"))
    clock.t += 31
    assert after.expire() == ["b-1"]
    assert [r.node_id for r in after.all()] == ["a-1"]


def test_no_file_or_a_bad_file_is_an_empty_registry(tmp_path):
    assert registry_state.load(Registry(), tmp_path) == 0
    (tmp_path / registry_state.FILE).write_text("{not json")
    assert registry_state.load(Registry(), tmp_path) == 0
