"""The service registry: grace period, deregistration, push status."""

from __future__ import annotations

from control_plane.registry import Registration, Registry


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_dropped_stream_removed_after_grace():
    clock = Clock()
    changes = []
    reg = Registry(grace_s=30, clock=clock)
    reg.add_listener(lambda: changes.append(1))
    r = Registration("n1", "orders", address="127.0.0.1:1")
    reg.register(r)
    reg.disconnected("n1", r)
    clock.t += 29
    assert reg.expire() == [] and reg.get("n1") is not None
    clock.t += 1
    assert reg.expire() == ["n1"] and reg.get("n1") is None
    assert len(changes) == 2  # register, removal


def test_reconnect_within_grace_keeps_entry_and_ack():
    clock = Clock()
    reg = Registry(grace_s=30, clock=clock)
    r1 = Registration("n1", "orders")
    reg.register(r1)
    reg.sent("n1", "1-a")
    reg.acked("n1", "1-a")
    reg.disconnected("n1", r1)
    r2 = Registration("n1", "orders")
    reg.register(r2)
    reg.disconnected("n1", r1)  # a late close of the old stream is ignored
    clock.t += 60
    assert reg.expire() == []
    assert reg.get("n1").acked_version == "1-a" and reg.get("n1").connected


def test_deregister_is_immediate():
    reg = Registry(grace_s=30)
    reg.register(Registration("n1", "orders"))
    reg.deregister("n1")
    assert reg.all() == []


def test_nack_kept_until_next_ack():
    reg = Registry()
    reg.register(Registration("n1", "orders"))
    reg.acked("n1", "1-a")
    reg.nacked("n1", "2-b", "bad route")
    r = reg.get("n1")
    assert (r.acked_version, r.nack_version, r.nack_error) == ("1-a", "2-b", "bad route")
    reg.acked("n1", "3-c")
    assert (r.acked_version, r.nack_error) == ("3-c", "")


def test_find_by_node_or_service():
    reg = Registry()
    reg.register(Registration("a", "orders", "default"))
    reg.register(Registration("b", "orders", "prod"))
    assert [r.node_id for r in reg.find("a")] == ["a"]
    assert {r.node_id for r in reg.find("orders")} == {"a", "b"}
    assert [r.node_id for r in reg.find("orders.prod")] == ["b"]
    assert reg.find("nope") == []


def test_admin_address_must_be_on_the_sidecars_host():
    from control_plane.push import registration_from_message

    def admin(addr: str, peer: str) -> str:
        msg = {"service": "a", "admin_address": addr, "address": "0.0.0.0:15006"}
        return registration_from_message(msg, peer).admin_address

    assert admin("127.0.0.1:15000", "127.0.0.1") == "127.0.0.1:15000"
    assert admin("localhost:15000", "::1") == "localhost:15000"
    assert admin("0.0.0.0:15000", "10.0.0.5") == "10.0.0.5:15000"
    assert admin("10.0.0.5:15000", "10.0.0.5") == "10.0.0.5:15000"
    assert admin("10.0.0.9:15000", "10.0.0.5") == ""  # another host: never called
    assert admin("127.0.0.1:15000", "10.0.0.5") == ""
    assert admin("garbage", "127.0.0.1") == ""
    msg = {"service": "a", "address": "0.0.0.0:15006"}
    assert registration_from_message(msg, "10.0.0.5").address == "10.0.0.5:15006"


def test_find_accepts_every_name_the_cli_prints():
    reg = Registry()
    for node, svc, ver in (("frontend-v1.default@127.0.0.1:1", "frontend", "v1"),
                           ("orders-v1.default@127.0.0.1:2", "orders", "v1"),
                           ("orders-v2.default@127.0.0.1:3", "orders", "v2")):
        reg.register(Registration(node, svc, version=ver))
    for name in ("frontend-v1.default@127.0.0.1:1", "frontend-v1.default", "frontend-v1",
                 "frontend", "frontend.default"):
        assert [r.node_id for r in reg.find(name)] == ["frontend-v1.default@127.0.0.1:1"], name
    assert len(reg.find("orders")) == 2
    assert [r.version for r in reg.find("orders-v2")] == ["v2"]
    assert reg.find("frontend.prod") == [] and reg.find("frontend-v2") == []


def test_short_names_fall_back_to_node_ids_when_they_clash():
    from control_plane.registry import short_name

    a = Registration("orders-v1.default@127.0.0.1:1", "orders", version="v1")
    b = Registration("orders-v1.default@127.0.0.1:2", "orders", version="v1")
    c = Registration("payment.default@127.0.0.1:3", "payment")
    assert [short_name(r, [a, b, c]) for r in (a, b, c)] == [a.node_id, b.node_id, "payment.default"]
