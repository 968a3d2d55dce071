"""What a connected sidecar costs the control plane's memory, measured on a real process.

Every sidecar gets the whole snapshot when its stream opens. The control plane's TLS layer
used to keep a buffer the size of the largest message it ever encrypted for each connection
(an OpenSSL memory BIO never shrinks): a 300 KB snapshot cost each stream ~390 KB for
as long as it stayed open. Now a large message goes to TLS in 16 KiB pieces
(``control_plane.tls_buffers.py``), so a stream costs a fraction of the snapshot: the RSS of
the real ``meshlet control-plane`` per stream opened, after each got its snapshot intact."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_control_plane import ControlPlaneProcess, registration, wait_for
from tests.support import sockets_connected_to

# each ~1 KB encoded: 300 of them make a ~300 KB snapshot
ROUTE = """  - match: [{{headers: {{x-route: {{exact: r{k}-{pad}}}}}}}]
    route:
    - destination: {{host: svc{i}, subset: v1}}
      weight: 90
    - destination: {{host: svc{i}, subset: v2}}
      weight: 10
    timeout: 3s
    retries: {{attempts: 2, perTryTimeout: 1s, retryOn: "5xx,reset"}}
"""
VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc{i}, namespace: default}}
spec:
  hosts: [svc{i}]
  http:
{routes}"""
STREAMS = 60


@pytest.fixture
def cp(tmp_path: Path):
    p = ControlPlaneProcess(tmp_path / "cp").start()
    yield p
    p.stop()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_a_stream_keeps_far_less_than_the_snapshot_it_received(cp: ControlPlaneProcess):
    docs = [
        VS.format(i=i, routes="".join(ROUTE.format(k=k, i=i, pad="p" * 40) for k in range(3)))
        for i in range(300)
    ]
    status, body = await cp.call(
        "POST",
        "/v1/resources",
        json={"files": [{"source": "big.yaml", "text": "---\n".join(docs)}]},
    )
    assert status == 200, body
    ctx = cp.workload_context("reviews")
    assert cp.proc is not None
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    streams: list[aiohttp.ClientWebSocketResponse] = []

    async def open_stream(k: int) -> int:
        ws = await session.ws_connect(cp.url + "/v1/stream", ssl=ctx, max_msg_size=0)
        streams.append(ws)
        # no address: not an endpoint, so the snapshot (and its version) stays the same for all
        reg = {**registration(node=f"reviews-{k}"), "address": ""}
        await ws.send_json({"type": "register", **reg})
        text = await ws.receive_str(timeout=60)
        msg = json.loads(text)
        assert msg["type"] == "snapshot"
        assert len(msg["snapshot"]["resources"]) == 300  # the whole snapshot arrived intact
        await ws.send_json({"type": "ack", "version": msg["version"], "nonce": msg["nonce"]})
        return len(text)

    try:
        size = max([await open_stream(k) for k in range(5)])  # warm-up: caches, first views
        assert size > 250_000, size  # the premise: a large snapshot
        before = rss_kb(cp.proc.pid)
        for first in range(5, 5 + STREAMS, 10):  # ten at a time, as sidecars join
            await asyncio.gather(*(open_stream(k) for k in range(first, first + 10)))
        after = rss_kb(cp.proc.pid)
        per_stream = (after - before) * 1024 / STREAMS
        print(f"{per_stream / 1024:.0f} KB per stream, snapshot {size / 1024:.0f} KB")
        # before the fix ~390 KB (the snapshot's TLS buffer stayed, grown by OpenSSL's 4/3
        # step); now 65-90 KB (one TLS record's buffer, the TLS session, the stream's objects)
        assert per_stream < size / 2, (
            f"{per_stream / 1024:.0f} KB per stream for a {size / 1024:.0f} KB snapshot"
        )
    finally:
        for ws in streams:
            await ws.close()
        await session.close()
        await wait_for(lambda: not sockets_connected_to(cp.port), 10, "the streams' sockets closed")
