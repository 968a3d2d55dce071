"""Several control-plane URLs: the sidecar's config stream and the CLI move past a replica that
cannot be reached to one that answers (real servers on loopback, a real refused port), and a
sidecar that already has the replica's version ACKs it without applying it again. Also the data
dir lock and the shared registry's merged view."""

from __future__ import annotations

import argparse
import asyncio

import pytest
from aiohttp import web

from control_plane.cli.client import Client, CLIError, ExitStatus, split_urls
from control_plane.registry import Registration
from control_plane.store.lock import DataDirBusy, DataDirLock
from proxy.discovery import DiscoveryClient
from tests.support import free_port


def test_split_urls():
    assert split_urls("https://a:1, b:2/ ,,") == ["https://a:1", "https://b:2"]
    assert split_urls("http://a:1") == ["http://a:1"]


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_discovery_moves_to_the_next_replica_and_resumes_its_version(tmp_path):
    seen: list[dict] = []

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seen.append(await ws.receive_json())
        await ws.send_json({"type": "snapshot", "version": "7-abc", "nonce": "1",
                            "snapshot": {"version": "7-abc"}})
        seen.append(await ws.receive_json())
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    runner, port = await _serve(app)
    applied: list[dict] = []
    dead = f"http://127.0.0.1:{free_port()}"
    c = DiscoveryClient(f"{dead},http://127.0.0.1:{port}", lambda: None, {"service": "a"},
                        applied.append, str(tmp_path / "cache.json"), backoff_base=0.01,
                        verify_control_plane_id=False)
    c.version = "7-abc"  # what this sidecar applied from the replica that died
    c.start()
    try:
        async with asyncio.timeout(10):
            while len(seen) < 2:
                await asyncio.sleep(0.01)
    finally:
        await c.stop()
        await runner.cleanup()
    assert c.urls[0].startswith("ws://127.0.0.1:") and len(c.urls) == 2
    assert seen[0]["type"] == "register" and seen[0]["cached_version"] == "7-abc"
    assert seen[1] == {"type": "ack", "version": "7-abc", "nonce": "1"}
    assert applied == []  # the same version from another replica is not applied again


def _cli_args(urls: str, tmp_path) -> argparse.Namespace:
    token = tmp_path / "token"
    token.write_text("t0k3n\n")
    return argparse.Namespace(control_plane=urls, data_dir=str(tmp_path), token_file=str(token),
                              ca_file=None, timeout=5.0)


async def _proxies(request: web.Request) -> web.Response:
    return web.json_response({"proxies": [], "auth": request.headers.get("Authorization")})


def test_cli_skips_an_unreachable_replica(tmp_path):
    """The CLI runs its own event loop (asyncio.run): the replica serves from another thread."""
    import threading

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/v1/proxies", _proxies)
    runner, port = loop.run_until_complete(_serve(app))
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        dead = f"http://127.0.0.1:{free_port()}"
        c = Client(_cli_args(f"{dead},http://127.0.0.1:{port}", tmp_path))
        assert c.request("GET", "/v1/proxies")["auth"] == "Bearer t0k3n"
        assert c.url == f"http://127.0.0.1:{port}"
        # all unreachable: one error, exit status 5, naming every URL tried
        c = Client(_cli_args(f"{dead},http://127.0.0.1:{free_port()}", tmp_path))
        with pytest.raises(CLIError) as e:
            c.request("GET", "/v1/proxies")
        assert e.value.status == ExitStatus.UNREACHABLE
        assert any(dead in d for d in e.value.details)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()


def test_data_dir_lock_names_the_holder(tmp_path):
    import os

    first = DataDirLock(tmp_path)
    first.acquire()
    with pytest.raises(DataDirBusy) as e:
        DataDirLock(tmp_path).acquire()
    assert f"pid {os.getpid()}" in str(e.value) and str(tmp_path) in str(e.value)
    assert "single-writer" in str(e.value)
    with pytest.raises(DataDirBusy, match="a --data-dir of its own"):
        DataDirLock(tmp_path, replica=True).acquire()
    first.release()
    again = DataDirLock(tmp_path)
    again.acquire()
    again.release()


def test_shared_registry_merges_by_node_preferring_connected_then_newest():
    from control_plane.etcd.client import EtcdClient
    from control_plane.etcd.lease import LeaseKeeper
    from control_plane.registry_etcd import SharedRegistry

    client = EtcdClient(["http://127.0.0.1:1"])  # all() and find() never touch etcd
    reg = SharedRegistry(client, LeaseKeeper(client), "b#2", "127.0.0.1:2")
    stale = Registration("n1", "orders", address="10.0.0.1:15006", connected_at=1.0,
                         replica="127.0.0.1:1")
    reg._remote[("n1", "a#1")] = stale
    reg._remote[("n2", "a#1")] = Registration("n2", "inventory", address="10.0.0.2:15006",
                                              connected_at=1.0, replica="127.0.0.1:1")
    reg.register(Registration("n1", "orders", address="10.0.0.1:15006", connected_at=5.0))
    by_node = {r.node_id: r for r in reg.all()}
    assert len(reg.all()) == 2
    assert by_node["n1"].replica == "127.0.0.1:2"  # moved to this replica: ours wins
    assert by_node["n2"].replica == "127.0.0.1:1"
    reg.disconnected("n1")
    assert {r.node_id: r for r in reg.all()}["n1"] is stale  # connected elsewhere beats ours
    assert [r.node_id for r in reg.find("inventory")] == ["n2"]


def test_sidecar_takes_its_control_planes_from_the_environment(monkeypatch, capsys):
    from control_plane.cli.main import main

    base = ["sidecar", "--service", "orders", "--app-port", "1"]
    monkeypatch.delenv("MESHLET_CONTROL_PLANE", raising=False)
    assert main(base) == 2
    assert "one of --config or --control-plane" in capsys.readouterr().err
    monkeypatch.setenv("MESHLET_CONTROL_PLANE", "https://a:15012,https://b:15012")
    assert main(base) == 2  # found the URLs; a join token is what is missing now
    assert "--control-plane needs --token-file" in capsys.readouterr().err
