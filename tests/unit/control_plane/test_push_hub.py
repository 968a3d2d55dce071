"""The push hub over a real (plain HTTP) control plane and raw WebSocket clients: debounce,
bounded concurrent pushes, deltas from the version a sidecar has, resync, and the metrics."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from control_plane.api import delta
from control_plane.api.resources import load_text
from control_plane.push import PushHub, PushSettings
from control_plane.registry import Registry
from control_plane.server import ControlPlane
from control_plane.store import Store

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  http: [{{route: [{{destination: {{host: {name}}}}}], timeout: {timeout}}}]
"""


def triggers(hub: PushHub) -> float:
    return hub.metrics.registry.get_sample_value("meshlet_push_triggers_total") or 0.0


def sample(hub: PushHub, name: str, **labels: str) -> float:
    return hub.metrics.registry.get_sample_value(name, labels) or 0.0


async def poll(pred, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# -- debounce ---------------------------------------------------------------------------------


async def test_a_burst_becomes_one_push_after_the_quiet_period(tmp_path):
    hub = PushHub(Store(str(tmp_path / "s.db")), Registry(),
                  settings=PushSettings(debounce=0.15, debounce_max=10))
    t0 = time.monotonic()
    for _ in range(50):
        hub.mark_dirty()
    await poll(lambda: triggers(hub) >= 1, what="the debounced push")
    assert time.monotonic() - t0 >= 0.15
    assert triggers(hub) == 1
    await hub.close()


async def test_changes_that_never_stop_are_pushed_at_the_max_delay(tmp_path):
    hub = PushHub(Store(str(tmp_path / "s.db")), Registry(),
                  settings=PushSettings(debounce=0.2, debounce_max=0.5))
    t0 = time.monotonic()
    while triggers(hub) == 0:  # a change every 50 ms: never 200 ms of quiet
        hub.mark_dirty()
        assert time.monotonic() - t0 < 5, "no push while changes kept coming"
        await asyncio.sleep(0.05)
    assert 0.5 <= time.monotonic() - t0 < 3.0
    await hub.close()


# -- streams ----------------------------------------------------------------------------------


class Client:
    """A raw config-stream client that keeps what it was sent, as a sidecar does."""

    def __init__(self, session: aiohttp.ClientSession, url: str, node: str,
                 delta_ok: bool = True) -> None:
        self.session, self.url, self.node, self.delta_ok = session, url, node, delta_ok
        self.messages: list[dict] = []
        self.raw: list[str] = []  # the messages as sent
        self.items: dict = {}
        self.hashes: dict = {}
        self.version = ""
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self, **extra) -> None:
        self.ws = await self.session.ws_connect(self.url, max_msg_size=0)
        await self.ws.send_json({"type": "register", "node": self.node, "service": "reviews",
                                 "address": f"127.0.0.1:{10000 + len(self.node)}",
                                 "delta": self.delta_ok, **extra})

    async def receive(self, ack: bool = True) -> dict:
        assert self.ws is not None
        text = (await self.ws.receive(timeout=10)).data
        msg = json.loads(text)
        self.raw.append(text)
        self.messages.append(msg)
        if msg["type"] == "snapshot":
            self.items = delta.items_of(msg["snapshot"])
            self.hashes = {n: delta.item_hash(b) for n, b in self.items.items()}
        else:
            self.items, self.hashes = delta.apply(self.items, self.hashes, msg)
        self.version = msg["version"]
        if ack:
            await self.ws.send_json({"type": "ack", "version": msg["version"],
                                     "nonce": msg["nonce"]})
        return msg


@pytest.fixture
async def plane(tmp_path):
    cp = ControlPlane(str(tmp_path / "cp"), "127.0.0.1:0", plain_http=True,
                      push=PushSettings(debounce=0.02, debounce_max=1.0, throttle=2))
    host, port = await cp.start()
    async with aiohttp.ClientSession() as session:
        yield cp, session, f"ws://{host}:{port}/v1/stream"
    await cp.stop()


async def test_deltas_carry_only_what_changed_and_convergence_is_measured(plane):
    cp, session, url = plane
    cp.store.apply(load_text(VS.format(name="reviews", timeout="1s")
                             + "---\n" + VS.format(name="ratings", timeout="1s")))
    a = Client(session, url, "a")
    await a.connect()
    first = await a.receive()
    assert first["type"] == "snapshot"
    await poll(lambda: cp.registry.get("a").acked_version == first["version"], what="ack")

    cp.store.apply(load_text(VS.format(name="ratings", timeout="2s")))
    msg = await a.receive()
    while "resource/VirtualService/default/ratings" not in msg["resources"]:
        msg = await a.receive()  # a registry-only push may come first
    assert msg["type"] == "delta" and msg["base"] == a.messages[-2]["version"]
    assert list(msg["resources"]) == ["resource/VirtualService/default/ratings"]
    assert msg["removed"] == []
    assert a.items["resource/VirtualService/default/ratings"]["spec"]["http"][0]["timeout"] == "2s"
    await poll(lambda: cp.registry.get("a").acked_version == msg["version"], what="delta ack")
    hist = cp.hub.metrics.registry.get_sample_value("meshlet_proxy_convergence_seconds_count")
    assert hist and hist >= 1
    assert sample(cp.hub, "meshlet_pushes_total", type="delta", result="ok") >= 1
    assert sample(cp.hub, "meshlet_connected_proxies") == 1
    assert sample(cp.hub, "meshlet_push_bytes_total", type="delta") > 0

    cp.store.delete([("VirtualService", "default", "ratings")])
    msg = await a.receive()
    assert msg["removed"] == ["resource/VirtualService/default/ratings"]


async def test_reconnect_with_hashes_gets_a_delta_and_old_clients_get_snapshots(plane):
    cp, session, url = plane
    cp.store.apply(load_text(VS.format(name="reviews", timeout="1s")))
    a = Client(session, url, "a")
    await a.connect()
    await a.receive()
    await a.ws.close()
    cp.store.apply(load_text(VS.format(name="reviews", timeout="3s")))
    b = Client(session, url, "a")
    b.items, b.hashes, b.version = a.items, a.hashes, a.version
    await b.connect(cached_version=a.version, resource_hashes=a.hashes)
    msg = await b.receive()
    assert msg["type"] == "delta" and msg["base"] == a.version
    assert "resource/VirtualService/default/reviews" in msg["resources"]
    # a sidecar that already has the current version is told so with an empty delta
    await b.ws.close()
    c = Client(session, url, "a")
    c.items, c.hashes = b.items, b.hashes
    await c.connect(cached_version=b.version, resource_hashes=b.hashes)
    msg = await c.receive()
    assert msg["type"] == "delta" and msg["resources"] == {} and msg["removed"] == []

    old = Client(session, url, "old", delta_ok=False)
    await old.connect()
    assert (await old.receive())["type"] == "snapshot"
    cp.store.apply(load_text(VS.format(name="reviews", timeout="4s")))
    msg = await old.receive()
    while msg["snapshot"]["resources"][0]["spec"]["http"][0]["timeout"] != "4s":
        msg = await old.receive()
    assert msg["type"] == "snapshot"


def _serve_frames():
    """The frames of the running ``PushHub.serve`` coroutines (one per open stream)."""
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None)
            if frame is not None and frame.f_code is PushHub.serve.__code__:
                yield frame
            coro = getattr(coro, "cr_await", None)


async def test_a_stream_does_not_keep_the_registration_it_started_with(plane):
    """A reconnecting sidecar registers with a hash per item it holds (a thousand for a large
    mesh): the stream keeps what it needs (the registration, its base version) and lets the
    message go, instead of holding it in its frame for as long as the stream lives."""
    cp, session, url = plane
    cp.store.apply(load_text(VS.format(name="reviews", timeout="1s")))
    a = Client(session, url, "a")
    await a.connect()
    await a.receive()
    await a.ws.close()
    b = Client(session, url, "a")
    b.items, b.hashes, b.version = a.items, a.hashes, a.version
    await b.connect(cached_version=a.version, resource_hashes=a.hashes)
    assert (await b.receive())["type"] == "delta"
    await poll(lambda: cp.registry.get("a").acked_version == b.version, what="ack")
    frames = list(_serve_frames())
    assert len(frames) == 1
    held = [k for k, v in frames[0].f_locals.items()
            if isinstance(v, dict) and "resource_hashes" in v]
    assert held == []
    await b.ws.close()


async def test_a_delta_that_does_not_apply_is_answered_with_the_whole_snapshot(plane):
    cp, session, url = plane
    a = Client(session, url, "a")
    await a.connect()
    await a.receive()
    cp.store.apply(load_text(VS.format(name="reviews", timeout="1s")))
    msg = await a.receive(ack=False)
    while msg["type"] != "delta" or not msg["resources"]:
        msg = await a.receive(ack=False)
    await a.ws.send_json({"type": "nack", "version": msg["version"], "nonce": msg["nonce"],
                          "error": "base mismatch", "resync": True})
    full = await a.receive()
    while full["type"] != "snapshot":
        full = await a.receive()
    assert full["version"] == msg["version"]
    assert sample(cp.hub, "meshlet_push_errors_total", reason="resync") == 1


async def test_pushes_in_flight_never_exceed_the_throttle(plane):
    cp, session, url = plane
    clients = [Client(session, url, f"n{i}") for i in range(6)]
    for c in clients:
        await c.connect()
        await c.receive()
    readers = [asyncio.create_task(drain(c)) for c in clients]
    cp.hub.peak_active = 0
    cp.store.apply(load_text(VS.format(name="reviews", timeout="9s")))
    want = "resource/VirtualService/default/reviews"
    await poll(lambda: all(want in c.items for c in clients), what="every client updated")
    assert 1 <= cp.hub.peak_active <= 2
    for t in readers:
        t.cancel()


async def test_a_push_round_is_written_by_one_task_from_one_encoding(plane):
    """The fan-out writes every stream in turn from one task (one push slot, not a task per
    stream), and every stream gets the same text but for its nonce."""
    cp, session, url = plane
    clients = [Client(session, url, "c" * (i + 1)) for i in range(8)]  # 8 distinct addresses
    for c in clients:
        await c.connect()
        await c.receive()
    readers = [asyncio.create_task(drain(c)) for c in clients]
    await poll(lambda: all(cp.registry.get(c.node).acked_version
                           == cp.hub.expected_version(cp.registry.get(c.node))
                           for c in clients), what="every client on the current config")
    cp.hub.peak_active = 0
    rounds = sample(cp.hub, "meshlet_push_fanout_seconds_count")
    cp.store.apply(load_text(VS.format(name="reviews", timeout="9s")))
    want = "resource/VirtualService/default/reviews"
    await poll(lambda: all(want in c.items for c in clients), what="every client updated")
    assert cp.hub.peak_active == 1  # the old code ran a task per stream: throttle (2) at once
    assert sample(cp.hub, "meshlet_push_fanout_seconds_count") == rounds + 1
    import re

    texts = {re.sub(r'"nonce":"\d+"', "", t) for c in clients for t in c.raw if want in t}
    assert len(texts) == 1
    nonces = [m["nonce"] for c in clients for m in c.messages if want in m.get("resources", {})]
    assert len(set(nonces)) == len(clients)
    for t in readers:
        t.cancel()


async def drain(c: Client) -> None:
    while True:
        await c.receive()


class _StuckPeer:
    """A WebSocket whose peer stopped reading: every send waits for ever."""

    closed = False

    def __init__(self) -> None:
        self.sent = 0

    async def send_str(self, text: str) -> None:
        self.sent += 1
        await asyncio.Event().wait()

    async def close(self, **_kw) -> None:
        self.closed = True


class _FastPeer(_StuckPeer):
    async def send_str(self, text: str) -> None:
        self.sent += 1


async def test_a_stuck_sidecar_holds_one_slot_for_the_send_timeout_only(tmp_path):
    from control_plane.push import Stream
    from control_plane.registry import Registration

    hub = PushHub(Store(str(tmp_path / "s.db")), Registry(),
                  settings=PushSettings(debounce=0.01, throttle=2, send_timeout=2.0))
    stuck = Stream(_StuckPeer(), Registration("stuck", "a"))
    fast = [Stream(_FastPeer(), Registration(f"f{i}", "b")) for i in range(10)]
    for s in [stuck, *fast]:
        hub.streams[s.reg.node_id] = s
    hub.trigger()
    # ten sidecars behind one stuck one, two slots: all served while it still hangs
    await poll(lambda: all(s.ws.sent == 1 for s in fast), what="the fast sidecars")
    assert stuck.ws.sent == 1 and not stuck.ws.closed
    await poll(lambda: stuck.ws.closed, what="the stuck stream closed")
    assert sample(hub, "meshlet_push_errors_total", reason="timeout") == 1
    await hub.close()


async def test_flow_control_one_unanswered_message_then_the_newest(plane):
    cp, session, url = plane
    a = Client(session, url, "a")
    await a.connect()
    await a.receive()
    cp.store.apply(load_text(VS.format(name="reviews", timeout="1s")))
    first = await a.receive(ack=False)
    while "resource/VirtualService/default/reviews" not in first["resources"]:
        await a.ws.send_json({"type": "ack", "version": first["version"],
                              "nonce": first["nonce"]})
        first = await a.receive(ack=False)
    before = triggers(cp.hub)
    for t in ("2s", "3s"):
        cp.store.apply(load_text(VS.format(name="reviews", timeout=t)))
    await poll(lambda: triggers(cp.hub) >= before + 1, what="the pushes of both changes")
    # nothing more while the first is unanswered (ack_wait is 5 s)
    with pytest.raises(TimeoutError):
        await a.ws.receive(timeout=0.5)
    await a.ws.send_json({"type": "ack", "version": first["version"], "nonce": first["nonce"]})
    newest = await a.receive()
    assert newest["base"] == first["version"]
    body = newest["resources"]["resource/VirtualService/default/reviews"]
    assert body["spec"]["http"][0]["timeout"] == "3s"
