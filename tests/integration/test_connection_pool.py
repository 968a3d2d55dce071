"""DestinationRule ``connectionPool`` through a real sidecar, as Envoy's circuit breakers: the
app below counts the connections it accepts and the requests it serves at once, so the tests see
what reached it, not only what the client was told."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.counting_app import CountingApp
from tests.support import start_sidecar, static_service_entry, stopped_at_end, wait_until

pytestmark = pytest.mark.slow


def _config(port: int, pool: str, vs: str = "") -> str:
    return static_service_entry("inventory", port) + f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: inventory}}
spec:
  host: inventory
  trafficPolicy:
    connectionPool: {pool}
{vs}"""


async def _get(session: aiohttp.ClientSession, port: int, path: str):
    async with session.get(f"http://127.0.0.1:{port}{path}", headers={"Host": "inventory"}) as r:
        headers = dict(r.headers)
        if "x-envoy-overloaded" in headers:
            assert len(r.headers.getall("x-envoy-overloaded")) == 1
        return r.status, headers, await r.read()


def _clusters(sc, service: str = "inventory") -> dict:
    status, body = sc.admin_get("/clusters")
    assert status == 200
    return next(c for c in json.loads(body)["clusters"] if c["service"].startswith(service))


def _metric(sc, name: str, **labels: str) -> float:
    text = sc.admin_get("/metrics")[1].decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_max_connections_and_pending_overflow_is_503_uo(tmp_path):
    """maxConnections 1 + http1MaxPendingRequests 1, six concurrent calls: one is served on
    the one connection, one waits for it, four are refused at once with 503 UO and
    ``x-envoy-overloaded: true``. The app never sees a second connection."""
    app = await CountingApp().start()
    sc = start_sidecar(
        tmp_path,
        "orders",
        app.port,
        _config(app.port, "{tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}"),
    )
    try:
        async with aiohttp.ClientSession() as s:
            t0 = time.monotonic()
            results = await asyncio.gather(
                *(_get(s, sc.outbound, "/slow?ms=700") for _ in range(6))
            )
            elapsed = time.monotonic() - t0
        codes = sorted(r[0] for r in results)
        assert codes == [200, 200, 503, 503, 503, 503], codes
        for status, headers, _ in results:
            if status == 503:
                assert headers["x-meshlet-response-flags"] == "UO"
                assert headers["x-envoy-overloaded"] == "true"
            else:
                assert "x-envoy-overloaded" not in headers
        assert app.accepted == 1 and app.max_open == 1 and app.max_inflight == 1
        assert app.requests == 2
        assert elapsed >= 1.4  # the second waited for the first (2 x 700 ms on one connection)
        view = _clusters(sc)["connection_pool"]
        assert view["max_connections"] == 1 and view["max_pending_requests"] == 1
        assert view["max_requests"] == 2**32 - 1
        (pool,) = view["pools"]
        assert pool["connections"] == 1 and pool["pending_requests"] == 0
        assert pool["active_requests"] == 0 and pool["overflows"]["pending"] == 4
        assert (
            _metric(
                sc,
                "meshlet_upstream_overflow_total",
                destination_service="inventory.default.svc.cluster.local",
                kind="pending",
            )
            == 4
        )
    finally:
        sc.stop()
        await app.close()


async def test_no_limits_by_default(tmp_path):
    """Without thresholds (Istio's defaults, 2^32-1) six concurrent calls all go through, on
    six connections: the same test as above would fail on a defaulted limit."""
    app = await CountingApp().start()
    sc = start_sidecar(
        tmp_path, "orders", app.port, _config(app.port, "{http: {idleTimeout: 30s}}")
    )
    try:
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(
                *(_get(s, sc.outbound, "/slow?ms=300") for _ in range(6))
            )
        assert [r[0] for r in results] == [200] * 6
        assert app.max_inflight == 6 and app.accepted == 6
    finally:
        sc.stop()
        await app.close()


async def test_http2_max_requests_bounds_requests_in_flight_on_http1(tmp_path):
    """http2MaxRequests is Envoy's max_requests: concurrent requests to the pool whatever the
    protocol; beyond it 503 UO at once (not queued)."""
    app = await CountingApp().start()
    sc = start_sidecar(
        tmp_path, "orders", app.port, _config(app.port, "{http: {http2MaxRequests: 2}}")
    )
    try:
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(
                *(_get(s, sc.outbound, "/slow?ms=600") for _ in range(5))
            )
        codes = sorted(r[0] for r in results)
        assert codes == [200, 200, 503, 503, 503], codes
        assert app.max_inflight == 2
        (pool,) = _clusters(sc)["connection_pool"]["pools"]
        assert pool["overflows"]["requests"] == 3
    finally:
        sc.stop()
        await app.close()


async def test_max_requests_per_connection_opens_a_new_connection(tmp_path):
    """maxRequestsPerConnection 3: seven sequential calls reach the app on connections
    carrying 3, 3 and 1 requests."""
    app = await CountingApp().start()
    sc = start_sidecar(
        tmp_path, "orders", app.port, _config(app.port, "{http: {maxRequestsPerConnection: 3}}")
    )
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(7):
                status, _, _ = await _get(s, sc.outbound, "/")
                assert status == 200
        assert app.per_connection == [3, 3, 1]
    finally:
        sc.stop()
        await app.close()


RETRY_VS = """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inventory}
spec:
  hosts: [inventory]
  http:
  - retries: {attempts: 2, retryOn: "5xx"}
    route: [{destination: {host: inventory}}]
"""


async def test_max_retries_bounds_concurrent_retries(tmp_path):
    """maxRetries 1: of three concurrent calls whose first try fails, one is retried (its retry
    is slow, so it is still outstanding) and the other two get the upstream's 503 unretried."""
    app = await CountingApp(retry_ms=1500).start()
    sc = start_sidecar(
        tmp_path, "orders", app.port, _config(app.port, "{http: {maxRetries: 1}}", RETRY_VS)
    )
    try:
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(_get(s, sc.outbound, "/fail-first") for _ in range(3)))
        assert sorted((r[0], r[2]) for r in results) == [
            (200, b"retried"),
            (503, b"first"),
            (503, b"first"),
        ]
        assert app.requests == 4  # three first tries, one retry
        view = _clusters(sc)["connection_pool"]
        assert view["max_retries"] == 1 and view["retry_overflows"] == 2
        assert view["retries_active"] == 0
        assert (
            _metric(
                sc,
                "meshlet_upstream_overflow_total",
                destination_service="inventory.default.svc.cluster.local",
                kind="retries",
            )
            == 2
        )
        # later, with nothing outstanding, a retry is allowed again
        async with aiohttp.ClientSession() as s:
            status, _, body = await _get(s, sc.outbound, "/fail-first")
        assert (status, body) == (200, b"retried")
    finally:
        sc.stop()
        await app.close()


async def test_a_raised_limit_applies_on_reload(tmp_path):
    """The thresholds follow a config change (SIGHUP re-reads the file) on the same pool."""
    import signal

    app = await CountingApp().start()
    cfg = tmp_path / "orders.yaml"
    cfg.write_text(
        _config(app.port, "{tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}")
    )
    sc = start_sidecar(tmp_path, "orders", app.port, cfg)
    try:
        version = json.loads(sc.admin_get("/clusters")[1])["version"]
        cfg.write_text(_config(app.port, "{tcp: {maxConnections: 4}}"))
        sc.proc.signal(signal.SIGHUP)
        wait_until(
            lambda: json.loads(sc.admin_get("/clusters")[1])["version"] != version,
            what="config reload",
        )
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(
                *(_get(s, sc.outbound, "/slow?ms=300") for _ in range(4))
            )
        assert [r[0] for r in results] == [200] * 4
        assert app.max_open == 4
    finally:
        sc.stop()
        await app.close()


def _grpc_config(port: int, pool: str) -> str:
    return static_service_entry(
        "echo", port, number=50051, port_name="grpc", protocol="GRPC"
    ) + f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: echo
  trafficPolicy:
    connectionPool: {{http: {pool}}}
"""


@contextlib.asynccontextmanager
async def _grpc_through_sidecar(tmp_path, pool: str) -> AsyncIterator[tuple[Any, Any, Any, Any]]:
    """An echo gRPC server behind a sidecar whose DestinationRule has ``connectionPool.http:
    pool``: (pb2, a stub through the sidecar, the server, the sidecar)."""
    from tests.grpc_fixtures import EchoServer, build, channel

    pb2, pb2_grpc = build(tmp_path / "gen")
    with stopped_at_end() as started:
        echo = EchoServer(pb2, pb2_grpc).start()
        started.append(echo)
        sc = start_sidecar(tmp_path, "orders", 1, _grpc_config(echo.port, pool))
        started.append(sc)
        with channel(sc.outbound) as ch:
            yield pb2, pb2_grpc.EchoStub(ch), echo, sc


async def test_http2_max_requests_on_an_h2_upstream(tmp_path):
    """gRPC through the sidecar goes over its HTTP/2 upstream pool: with http2MaxRequests 1,
    of three concurrent slow calls one is served and two are refused (UNAVAILABLE, from the
    503 UO local reply, with ``x-envoy-overloaded``)."""
    import grpc

    async with _grpc_through_sidecar(tmp_path, "{http2MaxRequests: 1}") as (pb2, stub, echo, sc):
        def call() -> tuple[str, dict[str, str]]:
            try:
                stub.Unary(pb2.Msg(text="sleep:0.8"), timeout=10)
                return "OK", {}
            except grpc.RpcError as err:
                md = {
                    k: v
                    for k, v in (err.initial_metadata() or ()) + (err.trailing_metadata() or ())
                }
                return err.code().name, md

        results = await asyncio.gather(*(asyncio.to_thread(call) for _ in range(3)))
        codes = sorted(r[0] for r in results)
        assert codes == ["OK", "UNAVAILABLE", "UNAVAILABLE"], results
        for code, md in results:
            if code != "OK":
                assert md.get("x-envoy-overloaded") == "true", md
        assert echo.total == 1
        (pool,) = _clusters(sc, "echo")["connection_pool"]["pools"]
        assert pool["http2"] and pool["max_requests"] == 1 and pool["overflows"]["requests"] == 2


async def test_max_concurrent_streams_opens_more_http2_connections(tmp_path):
    """maxConcurrentStreams 1: three concurrent gRPC calls need three HTTP/2 connections to the
    upstream (by default they share one)."""
    async with _grpc_through_sidecar(tmp_path, "{maxConcurrentStreams: 1}") as (pb2, stub, _, sc):
        replies = await asyncio.gather(
            *(
                asyncio.to_thread(stub.Unary, pb2.Msg(text="sleep:0.5"), timeout=10)
                for _ in range(3)
            )
        )
        assert [r.text for r in replies] == ["sleep:0.5"] * 3
        (pool,) = _clusters(sc, "echo")["connection_pool"]["pools"]
        assert pool["max_concurrent_streams"] == 1 and pool["connections"] == 3


async def test_max_connection_duration_retires_a_connection(tmp_path):
    """tcp.maxConnectionDuration 400ms: calls back to back share a connection; a call after
    the duration has passed gets a new one."""
    app = await CountingApp().start()
    sc = start_sidecar(
        tmp_path, "orders", app.port, _config(app.port, "{tcp: {maxConnectionDuration: 400ms}}")
    )
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(2):
                assert (await _get(s, sc.outbound, "/"))[0] == 200
            assert app.accepted == 1
            await asyncio.sleep(0.5)  # the duration itself is what is tested
            assert (await _get(s, sc.outbound, "/"))[0] == 200
        assert app.accepted == 2 and app.per_connection == [2, 1]
    finally:
        sc.stop()
        await app.close()


def _keepalive_timers(app_port: int) -> list[str]:
    """``ss`` lines of established connections to the app that run a keep-alive timer."""
    import subprocess

    out = subprocess.run(
        ["ss", "-tnoH", "state", "established", f"( dport = :{app_port} )"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    return [line for line in out.splitlines() if "timer:(keepalive" in line]


async def test_tcp_keepalive_on_upstream_connections(tmp_path):
    app = await CountingApp().start()
    cfg = "{tcp: {tcpKeepalive: {time: 30s, interval: 5s, probes: 3}}}"
    sc = start_sidecar(tmp_path, "orders", app.port, _config(app.port, cfg))
    plain_app = await CountingApp().start()
    plain = start_sidecar(
        tmp_path,
        "orders",
        plain_app.port,
        _config(plain_app.port, "{tcp: {connectTimeout: 5s}}"),
        name="plain",
    )
    try:
        async with aiohttp.ClientSession() as s:
            assert (await _get(s, sc.outbound, "/"))[0] == 200
            assert (await _get(s, plain.outbound, "/"))[0] == 200
        (line,) = _keepalive_timers(app.port)  # the pooled connection, idle, probed after 30 s
        assert _keepalive_timers(plain_app.port) == []
    finally:
        sc.stop()
        plain.stop()
        await app.close()
        await plain_app.close()
