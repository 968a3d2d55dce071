"""DiscoveryClient pieces that need no server: back-off, the on-disk cache."""

from __future__ import annotations

import json
import os
import stat

from proxy.discovery import DiscoveryClient, backoff_delay


def test_backoff_full_jitter_capped():
    assert backoff_delay(0, rand=lambda: 1.0) == 0.5
    assert backoff_delay(3, rand=lambda: 1.0) == 4.0
    assert backoff_delay(10, rand=lambda: 1.0) == 30.0
    assert backoff_delay(1000, rand=lambda: 1.0) == 30.0
    assert backoff_delay(5, rand=lambda: 0.0) == 0.0


def client(tmp_path) -> DiscoveryClient:
    return DiscoveryClient("https://cp:15012", lambda: None, {"service": "a"}, lambda s: None,
                           str(tmp_path / "cache.json"))


def test_url_forms(tmp_path):
    assert client(tmp_path).url == "wss://cp:15012/v1/stream"
    c = DiscoveryClient("http://h:1/", lambda: None, {}, lambda s: None, "x")
    assert c.url == "ws://h:1/v1/stream"


def test_cache_round_trip_private_and_atomic(tmp_path):
    c = client(tmp_path)
    assert c.load_cache() is None
    snap = {"version": "3-abc", "resources": [], "registry": [], "mesh": {}}
    c._write_cache(snap)
    path = tmp_path / "cache.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]  # no temp file left
    fresh = client(tmp_path)
    assert fresh.load_cache() == snap and fresh.version == "3-abc"


def test_corrupt_cache_is_ignored(tmp_path):
    (tmp_path / "cache.json").write_text("{not json")
    assert client(tmp_path).load_cache() is None
    (tmp_path / "cache.json").write_text(json.dumps({"no": "version"}))
    assert client(tmp_path).load_cache() is None


async def test_stop_lets_the_session_close_its_connection(tmp_path):
    """stop() closes the stream and waits for the session to end by itself (so it closes its
    socket, a TLS close needing a round trip) instead of cancelling it mid-close."""
    import asyncio

    from aiohttp import web

    registered = asyncio.Event()
    gone = asyncio.Event()

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.json().get("type") == "register":
                registered.set()
        gone.set()
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        c = DiscoveryClient(f"http://127.0.0.1:{port}", lambda: None, {"service": "a"},
                            lambda s: None, str(tmp_path / "cache.json"))
        task = c.start()
        await asyncio.wait_for(registered.wait(), 10)
        await c.stop()
        assert task.done() and not task.cancelled()  # the session ended on its own
        await asyncio.wait_for(gone.wait(), 10)
    finally:
        await runner.cleanup()


async def test_a_refused_session_closes_its_socket_before_backing_off(tmp_path):
    """A control plane that refuses the stream closes it; aiohttp then closes that TLS connection
    with a close_notify round trip nothing awaits. The session must wait for it before backing
    off: a stop() during the back-off would otherwise leave the socket open (issue 19)."""
    import asyncio

    from aiohttp import web

    from certs import keys, tls
    from certs.authority import CertificateAuthority
    from certs.csr import build_csr
    from certs.spiffe import SpiffeId

    ca = CertificateAuthority.create_self_signed(tmp_path / "cp", "cluster.local")
    key = keys.generate_private_key()
    sid = SpiffeId.for_workload("cluster.local", "default", "cp")
    chain = ca.sign(build_csr(key, sid), sid, 600)
    server_ctx = tls.server_context(chain, keys.private_key_to_pem(key), ca.bundle_pem(),
                                    require_client_cert=False, alpn=tls.HTTP11_ALPN)

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        await ws.send_json({"type": "error", "error": "a client certificate is required"})
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    open_at_disconnect: list[bool] = []
    errors: list[str] = []
    c: DiscoveryClient

    def on_status(event: dict) -> None:
        if event["event"] == "disconnected":
            open_at_disconnect.append(c._sock is not None and c._sock.fileno() != -1)
            errors.append(event.get("error") or "")

    c = DiscoveryClient(
        f"https://127.0.0.1:{port}",
        lambda: tls.client_context(None, None, ca.bundle_pem(), alpn=tls.HTTP11_ALPN),
        {"service": "a"}, lambda s: None, str(tmp_path / "cache.json"), on_status,
        backoff_base=0.01, backoff_cap=0.02, verify_control_plane_id=False,
    )
    try:
        c.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(open_at_disconnect) < 3 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await c.stop()
        # (not c.last_error: a session that connected just before stop() clears it)
        assert len(open_at_disconnect) >= 3
        assert "a client certificate is required" in errors[0], errors
        assert not any(open_at_disconnect)
    finally:
        await runner.cleanup()
