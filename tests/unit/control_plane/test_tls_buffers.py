"""A WebSocket on a real TLS connection hands its large messages to TLS in record-sized pieces,
and the peer still reads each message whole and in order; the control plane's connections read
at most a bounded amount at once."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from certs import tls
from certs.authority import CertificateAuthority
from control_plane.tls_buffers import (
    CHUNK,
    RCVBUF,
    ChunkedWrites,
    bound_reads,
    chunk_websocket_writes,
)


def contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from control_plane.ca.service import serving_context

    ca = CertificateAuthority.create_self_signed(tmp / "ca", "cluster.local")
    server = serving_context(ca, ["127.0.0.1"])
    client = ssl.create_default_context(cadata=ca.bundle_pem().decode())
    client.check_hostname = False
    client.set_alpn_protocols(list(tls.HTTP11_ALPN))
    return server, client


async def test_large_messages_reach_tls_in_record_pieces(tmp_path):
    server_ctx, client_ctx = contexts(tmp_path)
    seen: list[int] = []
    installed: list[bool] = []
    messages = ["a" * 10, "b" * (5 * CHUNK + 123), "c" * 300, "d" * CHUNK]

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        installed.append(chunk_websocket_writes(ws))
        installed.append(chunk_websocket_writes(ws))  # twice: still one wrapper
        wrapper = ws._writer.transport  # type: ignore[union-attr]
        assert isinstance(wrapper, ChunkedWrites)
        real = wrapper.transport
        assert not isinstance(real, ChunkedWrites)

        class Recording:  # sees what reaches the real TLS transport
            def __getattr__(self, name):
                return getattr(real, name)

            def write(self, data):
                seen.append(len(data))
                real.write(data)

        wrapper.transport = Recording()  # type: ignore[assignment]
        for m in messages:
            await ws.send_str(m)
        await ws.receive()  # the client's close
        return ws

    app = web.Application()
    app.router.add_get("/s", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(f"https://127.0.0.1:{port}/s", ssl=client_ctx, max_msg_size=0) as ws,
        ):
            got = [await ws.receive_str(timeout=10) for _ in messages]
            assert got == messages
    finally:
        await runner.cleanup()
    assert installed == [True, True]
    assert seen and max(seen) <= CHUNK
    # the 80 KB message went as 5 full pieces and its rest; before, one 80 KB write
    assert seen.count(CHUNK) >= 5
    assert sum(seen) > sum(len(m) for m in messages)  # the frame headers too


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK])
def test_pieces_cover_the_data_in_order(size):
    out: list[bytes] = []

    class Sink:
        def write(self, data):
            out.append(bytes(data))

    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    ChunkedWrites(Sink()).write(data)  # type: ignore[arg-type]
    assert b"".join(out) == data
    assert all(len(p) <= CHUNK for p in out)


async def test_the_control_planes_connections_read_at_most_a_bounded_amount(tmp_path):
    """A connection accepted by the control plane's listener inherits the capped receive buffer
    (the kernel reports twice what was set: its own accounting)."""
    from control_plane.server import ControlPlane

    cp = ControlPlane(str(tmp_path / "cp"), "127.0.0.1:0", plain_http=True)
    host, port = await cp.start()
    got: list[int] = []
    try:
        assert cp._runner is not None
        [site] = cp._runner.sites
        listener = site._server.sockets[0]  # type: ignore[union-attr]
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) <= 2 * RCVBUF

        async with aiohttp.ClientSession() as s, s.get(f"http://{host}:{port}/healthz") as r:
            assert r.status == 200

        # the accepted side, seen from a plain listener configured the same way
        async def accepted(rd: asyncio.StreamReader, wr: asyncio.StreamWriter) -> None:
            sock = wr.get_extra_info("socket")
            got.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
            wr.close()
            await wr.wait_closed()

        server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        bound_reads(server.sockets)
        rd, w = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        assert await rd.read() == b""  # the server recorded and closed
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
    finally:
        await cp.stop()
    assert got and got[0] <= 2 * RCVBUF
