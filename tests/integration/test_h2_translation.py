"""HTTP/2 clients to HTTP/1.1 services: the sidecar's h2 listener in front of its HTTP/1.1
upstream pools (the real Forwarder and Runtime, in process), with curl and a hand-driven h2
client. Bodies of known and unknown length both ways, streamed downloads, HEAD, local replies."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import subprocess
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from aiohttp import web

from control_plane.demo.apps import build_app
from proxy.server.runtime import Runtime
from tests.integration.test_grpc_mesh import InProcSidecar

MB = 1024 * 1024


class H1UpstreamSidecar(InProcSidecar):
    def _pool(self, ep: Any, cluster: Any, h2: bool = False) -> Any:
        return Runtime.pool(self.rt, ep, cluster)


@pytest.fixture
async def side():
    runner = web.AppRunner(build_app("inventory", "v1"), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cfg = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: inventory}}
spec:
  hosts: [inventory.default.svc.cluster.local]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {port}}}}}
"""
    s = await H1UpstreamSidecar("client", 1, cfg).start()
    yield s
    await s.stop()
    s.rt.close()
    await runner.cleanup()


async def _curl(*args: str) -> tuple[int, bytes]:
    if shutil.which("curl") is None:
        pytest.fail("curl not installed (apt-get install curl)")
    p = await asyncio.create_subprocess_exec("curl", "-sS", "--http2-prior-knowledge", *args,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode == 0, err.decode()
    return p.returncode, out


async def test_get_over_h2_to_http11(side):
    _, out = await _curl("-H", "host: inventory", "-w", "\n%{http_version}",
                         f"http://127.0.0.1:{side.outbound}/items?x=1")
    body, version = out.rsplit(b"\n", 1)
    seen = json.loads(body)
    assert version == b"2"
    assert seen["path"] == "/items" and seen["query"] == "x=1"
    assert seen["headers"]["host"] == "inventory"
    assert "te" not in seen["headers"] and "connection" not in seen["headers"]


async def test_upload_with_length_and_streamed_download(side, tmp_path):
    data = bytes(range(256)) * (12 * 1024)  # 3 MiB
    f = tmp_path / "up.bin"
    f.write_bytes(data)
    _, out = await _curl("-H", "host: inventory", "--data-binary", f"@{f}",
                         f"http://127.0.0.1:{side.outbound}/upload")
    seen = json.loads(out)
    assert seen["body_len"] == len(data)
    assert seen["body_sha256"] == hashlib.sha256(data).hexdigest()
    _, out = await _curl("-H", "host: inventory",
                         f"http://127.0.0.1:{side.outbound}/download?size={5 * MB}")
    assert out == b"x" * (5 * MB)


async def test_head_and_local_reply(side):
    _, out = await _curl("-I", "-H", "host: inventory", f"http://127.0.0.1:{side.outbound}/items")
    assert out.startswith(b"HTTP/2 200")
    _, out = await _curl("-i", "-H", "host: nowhere", f"http://127.0.0.1:{side.outbound}/")
    assert out.startswith(b"HTTP/2 404") and b"x-meshlet-response-flags: NR" in out


def _h2_post_unknown_length(port: int, pieces: list[bytes]) -> tuple[int, bytes]:
    """POST without content-length (DATA frames, then END_STREAM): the HTTP/1.1 upstream must
    get it chunked, never with a guessed length."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "inventory"),
                          (":path", "/upload")])
    queue = list(pieces)
    status = 0
    body = b""
    done = False
    while not done:
        while queue:
            n = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
            if n <= 0:
                break
            piece = queue.pop(0)
            if len(piece) > n:
                queue.insert(0, piece[n:])
                piece = piece[:n]
            conn.send_data(1, piece, end_stream=not queue)
        sock.sendall(conn.data_to_send())
        data = sock.recv(65536)
        if not data:
            break
        for e in conn.receive_data(data):
            if isinstance(e, h2.events.ResponseReceived):
                status = int(dict(e.headers)[b":status"])
            elif isinstance(e, h2.events.DataReceived):
                body += e.data
                conn.acknowledge_received_data(e.flow_controlled_length, 1)
            elif isinstance(e, h2.events.StreamEnded):
                done = True
    sock.close()
    return status, body


async def test_unknown_length_body_is_chunked_upstream(side):
    pieces = [b"a" * 70000, b"b" * 100, b"c" * 300000]
    status, body = await asyncio.to_thread(_h2_post_unknown_length, side.outbound, pieces)
    seen = json.loads(body)
    assert status == 200
    assert seen["body_len"] == sum(map(len, pieces))
    assert seen["headers"].get("transfer-encoding") == "chunked"
    assert "content-length" not in seen["headers"]
