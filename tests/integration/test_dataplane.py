"""The sidecar's data plane end to end: real sample apps, a real sidecar process, real clients.

One sidecar (for service ``orders``) runs standalone from a YAML file; ``inventory`` has two
versions (v1, v2) and ``payment`` one. Each test talks to the sidecar's outbound port the way an
app does (Host header names the service). The module runs once per fast path (compiled and the
pure-Python twin).
"""

from __future__ import annotations

import collections
import json
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support import free_port, outbound_request, start_app, start_sidecar, stopped_at_end

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: inventory}}
spec:
  hosts: [inventory.default.svc.cluster.local]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {inv1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {inv2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: payment}}
spec:
  hosts: [payment.default.svc.cluster.local]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {pay}}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ghost}}
spec:
  hosts: [ghost.default.svc.cluster.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {dead}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: inventory}}
spec:
  host: inventory
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: inventory}}
spec:
  hosts: [inventory]
  http:
  - name: canary-header
    match: [{{headers: {{x-canary: {{exact: "yes"}}}}}}]
    route: [{{destination: {{host: inventory, subset: v2}}}}]
  - name: v1-by-uri
    match: [{{uri: {{prefix: /v1only}}}}, {{uri: {{regex: "/pinned/[0-9]+"}}}}]
    route: [{{destination: {{host: inventory, subset: v1}}}}]
  - name: rewrite
    match: [{{uri: {{prefix: /old/}}}}]
    rewrite: {{uri: /new/}}
    route: [{{destination: {{host: inventory, subset: v1}}}}]
  - name: headers
    match: [{{uri: {{exact: /decorated}}}}]
    headers:
      request: {{set: {{x-added: route}}, remove: [x-secret]}}
      response: {{add: {{x-resp: hello}}}}
    route: [{{destination: {{host: inventory, subset: v1}}}}]
  - name: mirror
    match: [{{uri: {{prefix: /mirrored}}}}]
    route: [{{destination: {{host: inventory, subset: v1}}}}]
    mirror: {{host: payment}}
    mirrorPercentage: {{value: 100.0}}
  - name: split
    route:
    - {{destination: {{host: inventory, subset: v1}}, weight: 80}}
    - {{destination: {{host: inventory, subset: v2}}, weight: 20}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: payment}}
spec:
  hosts: [payment]
  http:
  - match: [{{method: {{exact: DELETE}}}}]
    directResponse: {{status: 405, body: {{string: "no deletes"}}}}
  - match: [{{queryParams: {{mode: {{exact: test}}}}}}, {{withoutHeaders: {{x-real: {{}}}}}}]
    route: [{{destination: {{host: payment}}}}]
"""


@pytest.fixture(scope="module", params=["cython", "python"])
def mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from tests.support import env

    work = tmp_path_factory.mktemp(f"dp-{request.param}")
    with stopped_at_end() as started:
        ports = []
        for name, version in (("inventory", "v1"), ("inventory", "v2"), ("payment", "v1")):
            app, port = start_app(work, name, version)
            started.append(app)
            ports.append(port)
        p1, p2, p3 = ports
        cfg = work / "mesh.yaml"
        cfg.write_text(CONFIG.format(inv1=p1, inv2=p2, pay=p3, dead=free_port()))
        e = (
            env(MESHLET_NO_EXTENSIONS="1")
            if request.param == "python"
            else env(MESHLET_REQUIRE_EXTENSIONS="1")
        )
        sc = start_sidecar(work, "orders", p3, cfg, environ=e)
        started.append(sc)
        yield {
            "sidecar": sc,
            "work": work,
            "cfg": cfg,
            "ports": (p1, p2, p3),
            "fastpath": request.param,
        }


async def _get(mesh, host: str, path: str, **kw):
    return await outbound_request(mesh["sidecar"], host, path, **kw)


async def test_fastpath_in_use(mesh):
    status, body = mesh["sidecar"].admin_get("/config_dump")
    assert status == 200
    assert json.loads(body)["fastpath"] == mesh["fastpath"]


async def test_weighted_split_within_tolerance(mesh):
    counts: collections.Counter[str] = collections.Counter()
    n = 400
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(
                f"http://127.0.0.1:{mesh['sidecar'].outbound}/items",
                headers={"Host": "inventory:8080"},
            ) as r:
                assert r.status == 200
                counts[(await r.json())["version"]] += 1
    # 80/20 split: binomial sd = sqrt(400*.2*.8) = 8; allow 4 sd
    assert abs(counts["v2"] - 80) <= 32, counts


@pytest.mark.parametrize(
    "host",
    [
        "inventory",
        "inventory.default",
        "inventory.default.svc.cluster.local",
        "inventory.default.svc.cluster.local:8080",
        "INVENTORY:8080",
    ],
)
async def test_host_forms(mesh, host):
    status, _, body = await _get(mesh, host, "/v1only")
    assert status == 200
    assert json.loads(body)["service"] == "inventory"


async def test_route_by_header(mesh):
    for _ in range(10):
        status, _, body = await _get(mesh, "inventory", "/x", headers={"x-canary": "yes"})
        assert status == 200 and json.loads(body)["version"] == "v2"


async def test_route_by_uri_prefix_and_regex(mesh):
    for path in ("/v1only/a", "/pinned/42"):
        for _ in range(5):
            status, _, body = await _get(mesh, "inventory", path)
            assert json.loads(body)["version"] == "v1", path


async def test_rewrite(mesh):
    status, _, body = await _get(mesh, "inventory", "/old/thing?q=1")
    data = json.loads(body)
    assert data["path"] == "/new/thing" and data["query"] == "q=1"


async def test_header_manipulation(mesh):
    status, headers, body = await _get(mesh, "inventory", "/decorated", headers={"x-secret": "s"})
    seen = json.loads(body)["headers"]
    assert seen["x-added"] == "route"
    assert "x-secret" not in seen
    assert headers["x-resp"] == "hello"


async def test_envoy_headers_set(mesh):
    status, headers, body = await _get(mesh, "inventory", "/v1only")
    seen = json.loads(body)["headers"]
    assert len(seen["x-request-id"]) == 36
    assert seen["x-forwarded-proto"] == "http"
    assert "x-envoy-upstream-service-time" in headers
    # a request id that came in is kept
    status, headers, body = await _get(
        mesh, "inventory", "/v1only", headers={"x-request-id": "abc"}
    )
    assert json.loads(body)["headers"]["x-request-id"] == "abc"


async def test_direct_response_and_query_match(mesh):
    status, headers, body = await _get(mesh, "payment", "/pay", headers={}, allow_redirects=False)
    assert status == 200  # withoutHeaders x-real: absent -> matches
    sc = mesh["sidecar"]
    async with (
        aiohttp.ClientSession() as s,
        s.delete(f"http://127.0.0.1:{sc.outbound}/pay", headers={"Host": "payment"}) as r,
    ):
        assert r.status == 405 and await r.text() == "no deletes"
    status, headers, _ = await _get(mesh, "payment", "/pay", headers={"x-real": "1"})
    assert status == 404 and headers["x-meshlet-response-flags"] == "NR"
    status, _, _ = await _get(mesh, "payment", "/pay?mode=test", headers={"x-real": "1"})
    assert status == 200


async def test_mirror(mesh):
    async def payment_requests() -> int:
        _, _, body = await _get(mesh, "payment", "/stats", headers={})
        return json.loads(body)["requests"]

    before = await payment_requests()
    status, _, body = await _get(mesh, "inventory", "/mirrored/1")
    assert status == 200 and json.loads(body)["service"] == "inventory"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if await payment_requests() >= before + 1:
            break
    assert await payment_requests() == before + 1  # /stats itself is not counted


async def test_unknown_host_is_404_nr(mesh):
    status, headers, _ = await _get(mesh, "nosuch", "/")
    assert status == 404 and headers["x-meshlet-response-flags"] == "NR"


async def test_connect_failure_is_503_uf(mesh):
    # the default policy retries connect failures: as Envoy, the answer names both the last
    # failure and the exhausted retries, with Envoy's body for that case
    status, headers, body = await _get(mesh, "ghost", "/")
    assert status == 503
    assert headers["x-meshlet-response-flags"] == "UF,URX"
    assert body == (
        b"upstream connect error or disconnect/reset before headers. "
        b"retried and the latest reset reason: connection failure"
    )
    # without retries only the connect failure is flagged
    status, headers, body = await _get(mesh, "ghost", "/", headers={"x-envoy-max-retries": "0"})
    assert status == 503 and headers["x-meshlet-response-flags"] == "UF"
    assert body.endswith(b"reset reason: connection failure")


async def test_keep_alive_reuses_upstream_connections(mesh):
    peers = set()
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn) as s:
        for _ in range(30):
            async with s.get(
                f"http://127.0.0.1:{mesh['sidecar'].outbound}/v1only", headers={"Host": "inventory"}
            ) as r:
                peers.add((await r.json())["peer"])
    assert len(peers) == 1, peers


async def test_large_bodies_stream_both_ways(mesh):
    """100 MiB down and 64 MiB up through the sidecar; its RSS must not grow with the body."""
    sc = mesh["sidecar"]
    pid = sc.proc.p.pid

    def rss() -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    before = rss()
    size = 100 << 20
    got = 0
    async with aiohttp.ClientSession() as s:
        async with s.get(
            f"http://127.0.0.1:{sc.outbound}/download?size={size}", headers={"Host": "inventory"}
        ) as r:
            assert r.status == 200
            async for chunk in r.content.iter_any():
                got += len(chunk)
        assert got == size

        async def gen():
            piece = b"y" * 65536
            for _ in range(1024):  # 64 MiB
                yield piece

        async with s.post(
            f"http://127.0.0.1:{sc.outbound}/upload", data=gen(), headers={"Host": "inventory"}
        ) as r:
            data = await r.json()
            assert r.status == 200 and data["body_len"] == 64 << 20
    growth = rss() - before
    assert growth < 40 << 20, f"sidecar RSS grew by {growth >> 20} MiB"


async def test_content_length_upload(mesh):
    body = b"z" * 300000
    sc = mesh["sidecar"]
    async with (
        aiohttp.ClientSession() as s,
        s.put(
            f"http://127.0.0.1:{sc.outbound}/upload", data=body, headers={"Host": "inventory"}
        ) as r,
    ):
        data = await r.json()
    assert data["body_len"] == len(body)


async def test_websocket_through_proxy(mesh):
    sc = mesh["sidecar"]
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"http://127.0.0.1:{sc.outbound}/ws", headers={"Host": "inventory"}) as ws,
    ):
        for i in range(5):
            await ws.send_str(f"hello{i}")
            msg = await ws.receive(timeout=5)
            assert msg.data == f"inventory:hello{i}"


def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    chunks = []
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
    except TimeoutError:
        pass
    s.close()
    return b"".join(chunks)


def test_pipelined_requests_answered_in_order(mesh):
    port = mesh["sidecar"].outbound
    req = b"GET /v1only/%d HTTP/1.1\r\nHost: inventory\r\n\r\n"
    data = (
        b"".join(req % i for i in range(5))
        + b"GET /v1only/last HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n"
    )
    out = _raw(port, data)
    paths = [
        json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["path"]
        for part in out.split(b"HTTP/1.1 200")[1:]
    ]
    assert paths == [f"/v1only/{i}" for i in range(5)] + ["/v1only/last"]


def test_head_and_expect_continue(mesh):
    port = mesh["sidecar"].outbound
    out = _raw(port, b"HEAD /v1only HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n")
    head, _, rest = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and rest == b""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(
        b"POST /echo HTTP/1.1\r\nHost: inventory\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    first = s.recv(100)
    assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    s.sendall(b"hello")
    rest = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        rest += c
    s.close()
    final = (first + rest).split(b"\r\n\r\n", 1)[1]
    assert final.startswith(b"HTTP/1.1 200") and b'"body_len": 5' in final


SMUGGLING = [
    (
        b"POST /echo HTTP/1.1\r\nHost: inventory\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        b"POST /echo HTTP/1.1\r\nHost: inventory\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    (
        b"POST /echo HTTP/1.1\r\nHost: inventory\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        501,
    ),
    (
        b"POST /echo HTTP/1.1\r\nHost: inventory\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        b"POST /echo HTTP/1.1\r\nHost: inventory\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        400,
    ),
    (b"POST /echo HTTP/1.1\r\nHost: inventory\r\nContent-Length: +5\r\n\r\nhello", 400),
    (b"POST /echo HTTP/1.1\r\nHost: inventory\r\nContent-Length: 5, 6\r\n\r\nhello", 400),
    (b"GET / HTTP/1.1\nHost: inventory\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: inventory\r\nX: a\rb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: inventory\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: inventory\r\nX: a\r\n b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n Host: inventory\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: inventory\r\nHost: payment\r\n\r\n", 400),
    (b"POST /echo HTTP/1.0\r\nHost: inventory\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: inventory\r\n\r\n", 400),
    (b"get / HTTP/1.1\r\nHost: inventory\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: inventory\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (
        b"GET / HTTP/1.1\r\nHost: inventory\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
        + b"\r\n",
        431,
    ),
]


@pytest.mark.parametrize("raw,status", SMUGGLING, ids=range(len(SMUGGLING)))
def test_smuggling_vectors_rejected_and_closed(mesh, raw, status):
    port = mesh["sidecar"].outbound

    def app_count() -> int:
        out = _raw(
            port,
            b"GET /stats HTTP/1.1\r\nHost: inventory\r\nx-canary: yes\r\nConnection: close\r\n\r\n",
        )
        return json.loads(out.split(b"\r\n\r\n", 1)[1])["requests"]

    before = app_count()
    # the connection is closed after the error even though more requests follow
    out = _raw(port, raw + b"GET /v1only HTTP/1.1\r\nHost: inventory\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 %d" % status), out[:200]
    assert out.count(b"HTTP/1.1") == 1
    assert b"x-meshlet-response-flags: DPE" in out
    assert app_count() == before  # nothing reached v2 (which serves /stats only via x-canary)


def test_bad_chunked_body_never_reaches_app(mesh):
    port = mesh["sidecar"].outbound
    out = _raw(
        port,
        b"POST /upload HTTP/1.1\r\nHost: inventory\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    )
    assert not out.startswith(b"HTTP/1.1 200"), out[:200]


def test_slowloris_header_timeout(mesh, tmp_path):
    """A head that never completes is cut off by the header timeout (10 s default)."""
    port = mesh["sidecar"].outbound
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(b"GET / HTTP/1.1\r\nHost: inventory\r\n")
    t0 = time.monotonic()
    data = s.recv(1000)
    assert data.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - t0 < 14
    s.close()
