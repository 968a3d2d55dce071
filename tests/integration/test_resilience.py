"""Resilience through a real sidecar: timeouts, retries (safe by default), the retry budget,
circuit breaker, bulkhead, rate limiter, fault injection and outlier detection."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time

import aiohttp
import pytest

from tests.support import (
    outbound_request,
    sidecar_for_apps,
    start_app,
    start_sidecar,
    stopped_at_end,
    until,
)

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: inventory}}
spec:
  hosts: [inventory]
  ports: [{{number: 8080, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {a}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: flaky}}
spec:
  hosts: [flaky]
  ports: [{{number: 8080, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {b}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: pool}}
spec:
  hosts: [pool]
  ports: [{{number: 8080, name: http}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {a}}}}}
  - {{address: 127.0.0.1, ports: {{http: {dead}}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: guarded}}
spec:
  hosts: [guarded, limited, bulk]
  ports: [{{number: 8080, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {b}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pool}}
spec:
  host: pool
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: inventory}}
spec:
  hosts: [inventory]
  http:
  - match: [{{uri: {{prefix: /delay}}}}]
    timeout: 300ms
    route: [{{destination: {{host: inventory}}}}]
  - match: [{{uri: {{prefix: /abort}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: inventory}}}}]
  - match: [{{uri: {{prefix: /download}}}}]
    timeout: 600ms
    route: [{{destination: {{host: inventory}}}}]
  - match: [{{uri: {{prefix: /slowfault}}}}]
    fault: {{delay: {{fixedDelay: 200ms, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: inventory}}}}]
  - route: [{{destination: {{host: inventory}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: flaky}}
spec:
  hosts: [flaky]
  http:
  - match: [{{uri: {{prefix: /delay}}}}]
    timeout: 2s
    retries: {{attempts: 3, perTryTimeout: 200ms, retryOn: "reset,5xx"}}
    route: [{{destination: {{host: flaky}}}}]
  - retries: {{attempts: 3, retryOn: "5xx"}}
    route: [{{destination: {{host: flaky}}}}]
---
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: guarded}}
spec:
  host: guarded
  circuitBreaker: {{failureRateThreshold: 50, slidingWindowSize: 4, minimumNumberOfCalls: 4, waitDurationInOpenState: 30s}}
---
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: limited}}
spec:
  host: limited
  rateLimiter: {{limitForPeriod: 3, limitRefreshPeriod: 60s, timeoutDuration: 0s}}
---
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: bulk}}
spec:
  host: bulk
  bulkhead: {{maxConcurrentCalls: 2, maxWaitDuration: 0s}}
"""


HEDGE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: hedged}}
spec:
  hosts: [hedged]
  ports: [{{number: 8080, name: http}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {hole}}}}}
  - {{address: 127.0.0.1, ports: {{http: {a}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: hedged}}
spec:
  hosts: [hedged]
  http:
  - route: [{{destination: {{host: hedged}}}}]
    timeout: 5s
    retries: {{attempts: 0}}
---
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: hedged}}
spec:
  host: hedged
  hedging: {{delay: 50ms, maxHedges: 1}}
"""


async def test_hedging_beats_a_stuck_endpoint(tmp_path):
    """One endpoint accepts connections and never answers; the hedge after 50 ms wins."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # never accepts: the kernel completes handshakes, nobody answers
    app, pa = start_app(tmp_path, "inventory")
    sc = start_sidecar(tmp_path, "orders", pa, HEDGE.format(hole=hole.getsockname()[1], a=pa))
    try:
        mesh = {"sidecar": sc}
        for _ in range(8):
            t0 = time.monotonic()
            status, headers, _ = await _req(mesh, "hedged", "/items")
            assert status == 200 and time.monotonic() - t0 < 2.0
        text = sc.admin_get("/metrics")[1].decode()
        assert re.search(
            r'meshlet_hedges_total\{destination_service="hedged.default.svc.cluster.local"\} [1-9]',
            text,
        ), text
    finally:
        sc.stop()
        app.stop()
        hole.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("resilience")
    with sidecar_for_apps(work, CONFIG, "inventory", "flaky") as (sc, [(_, pa), (_, pb)]):
        yield {"sidecar": sc, "a": pa, "b": pb}


async def _req(mesh, host: str, path: str, method: str = "GET", **kw):
    return await outbound_request(mesh["sidecar"], host, path, method, **kw)


async def _reset_flaky(mesh) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{mesh['b']}/flaky/reset") as r,
    ):
        assert r.status == 200


async def test_route_timeout_is_504_ut(mesh):
    t0 = time.monotonic()
    status, headers, _ = await _req(mesh, "inventory", "/delay?ms=2000")
    assert status == 504 and headers["x-meshlet-response-flags"] == "UT"
    assert time.monotonic() - t0 < 1.5


async def test_route_timeout_cuts_a_response_body_that_outlasts_it(mesh):
    """Envoy's route timeout spans the whole response: a body still streaming when it fires
    is cut (the client sees a broken body, never a short one passed off as whole)."""
    sc = mesh["sidecar"]
    t0 = time.monotonic()
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"http://127.0.0.1:{sc.outbound}/download?size=1048576&pause_ms=100",
            headers={"Host": "inventory"},
        ) as r,
    ):
        assert r.status == 200  # 16 pieces 100 ms apart: 1.6 s of body, 600 ms allowed
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert time.monotonic() - t0 < 1.4
    # a body that ends in time is whole
    status, _, body = await _req(mesh, "inventory", "/download?size=300000&pause_ms=20")
    assert status == 200 and len(body) == 300000
    _, text = sc.admin_get("/metrics")
    cut = [
        line
        for line in text.decode().splitlines()
        if line.startswith("istio_requests_total{")
        and 'response_flags="UT"' in line
        and 'response_code="200"' in line
    ]
    assert cut and float(cut[0].rsplit(" ", 1)[1]) >= 1


def test_route_timeout_cuts_an_h2_response_body(mesh):
    """The same over HTTP/2 (h2c prior knowledge, curl): the stream is reset, not ended."""
    sc = mesh["sidecar"]
    url = f"http://127.0.0.1:{sc.outbound}/download?size=1048576&pause_ms=100"
    r = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-H", "Host: inventory", "-o", "/dev/null",
         "-w", "%{http_code} %{size_download}", "--max-time", "5", url],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    code, size = r.stdout.split()
    assert r.returncode not in (0, 28), r.stderr  # an error, and not curl's own timeout
    assert code == "200" and 0 < int(size) < 1048576


async def test_timeout_propagated_downstream(mesh):
    status, _, body = await _req(mesh, "flaky", "/delay?ms=1")
    seen = json.loads(body)["headers"]
    assert 0 < int(seen["x-envoy-expected-rq-timeout-ms"]) <= 200


async def test_retries_on_5xx_for_idempotent(mesh):
    await _reset_flaky(mesh)
    status, headers, body = await _req(mesh, "flaky", "/flaky?n=2&code=503")
    assert status == 200
    data = json.loads(body)
    assert data["flaky_calls"] == 3
    assert data["headers"]["x-envoy-attempt-count"] == "3"


async def test_post_not_retried_without_opt_in(mesh):
    await _reset_flaky(mesh)
    # POST is not idempotent: a 503 from the app is passed back, not retried (safe default)
    sc = mesh["sidecar"]
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"http://127.0.0.1:{sc.outbound}/status/503", headers={"Host": "flaky"}
        ) as r:
            assert r.status == 503
        # the same POST with an Idempotency-Key is retried (3 retries, all 503: still 503)
        async with s.post(f"http://127.0.0.1:{mesh['b']}/stats") as r:
            pass
    before = await _app_requests(mesh)
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{sc.outbound}/status/503",
            headers={"Host": "flaky", "Idempotency-Key": "k1"},
        ) as r,
    ):
        assert r.status == 503
    assert await _app_requests(mesh) == before + 4


async def _app_requests(mesh) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{mesh['b']}/stats") as r:
        return (await r.json())["requests"]


async def test_per_try_timeout_retries(mesh):
    t0 = time.monotonic()
    status, headers, body = await _req(mesh, "flaky", "/delay?ms=1000")
    # each of the 4 tries is cut at 200 ms (plus back-off), then 504 UT, inside the 2 s route
    # timeout; without the per-try timeout the first try alone would take 1 s
    assert status == 504 and headers["x-meshlet-response-flags"] == "UT"
    assert 0.8 <= time.monotonic() - t0 < 1.9
    text = mesh["sidecar"].admin_get("/metrics")[1].decode()
    assert re.search(
        r'meshlet_retries_total\{destination_service="flaky.default.svc.cluster.local",'
        r'reason="timeout"\} 3(\.0)?\n',
        text,
    ), text


async def test_connect_failure_retried_and_outlier_ejects(mesh):
    # pool has one live and one dead endpoint: connect failures are always retried (never
    # reached the app), so every request succeeds
    for _ in range(10):
        status, _, _ = await _req(mesh, "pool", "/x")
        assert status == 200
    clusters = json.loads(mesh["sidecar"].admin_get("/clusters")[1])["clusters"]
    pool = next(c for c in clusters if c["name"] == "outbound|8080||pool.default.svc.cluster.local")
    dead = [e for e in pool["endpoints"] if e["address"] != f"127.0.0.1:{mesh['a']}"][0]
    assert dead["ejected"] is True and pool["outlier_ejections_total"] >= 1
    text = mesh["sidecar"].admin_get("/metrics")[1].decode()
    assert "meshlet_outlier_ejections_total" in text


async def test_circuit_breaker_opens(mesh):
    statuses = []
    for _ in range(8):
        status, headers, _ = await _req(mesh, "guarded", "/status/500")
        statuses.append(
            (
                status,
                headers.get("x-meshlet-response-flags", "-"),
                headers.get("x-envoy-overloaded"),
            )
        )
    assert statuses[:4] == [(500, "-", None)] * 4
    assert statuses[4:] == [(503, "UO", "true")] * 4
    clusters = json.loads(mesh["sidecar"].admin_get("/clusters")[1])["clusters"]
    g = next(c for c in clusters if c["service"] == "guarded.default.svc.cluster.local")
    assert g["circuit_breaker"]["state"] == "OPEN"
    text = mesh["sidecar"].admin_get("/metrics")[1].decode()
    assert re.search(
        r'meshlet_circuit_breaker_state\{destination_service="guarded.default.svc.cluster.local",'
        r'state="open"\} 1(\.0)?\n',
        text,
    ), text


async def test_rate_limiter_429(mesh):
    codes = [(await _req(mesh, "limited", "/x"))[0] for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    status, headers, _ = await _req(mesh, "limited", "/x")
    assert headers["x-meshlet-response-flags"] == "RL" and headers["x-envoy-ratelimited"] == "true"


async def test_bulkhead_full_503_uo(mesh):
    results = await asyncio.gather(*[_req(mesh, "bulk", "/delay?ms=500") for _ in range(5)])
    codes = sorted(r[0] for r in results)
    assert codes == [200, 200, 503, 503, 503]
    assert all(r[1].get("x-meshlet-response-flags") == "UO" for r in results if r[0] == 503)


async def test_fault_abort_and_delay(mesh):
    status, headers, _ = await _req(mesh, "inventory", "/abort")
    assert status == 503 and headers["x-meshlet-response-flags"] == "FI"
    t0 = time.monotonic()
    status, _, _ = await _req(mesh, "inventory", "/slowfault")
    assert status == 200 and time.monotonic() - t0 >= 0.2


def _bulkhead(mesh) -> dict:
    """The 'bulk' destination's bulkhead as the sidecar's /clusters shows it."""
    clusters = json.loads(mesh["sidecar"].admin_get("/clusters")[1])["clusters"]
    return next(c["bulkhead"] for c in clusters if c["service"].startswith("bulk."))


async def test_bulkhead_keeps_a_hung_dependency_from_delaying_a_healthy_one(mesh):
    """'bulk' hangs (2 s per call) and its bulkhead is full; calls to 'inventory' through the
    same sidecar at the same time are not delayed."""
    rejected = _bulkhead(mesh)["rejected"]
    hung = [asyncio.ensure_future(_req(mesh, "bulk", "/delay?ms=2000")) for _ in range(6)]
    await until(
        lambda: (b := _bulkhead(mesh))["active"] == 2 and b["rejected"] == rejected + 4,
        what="bulkhead full: 2 calls in, 4 refused",
    )
    t0 = time.monotonic()
    for _ in range(10):
        status, _, _ = await _req(mesh, "inventory", "/items")
        assert status == 200
    assert time.monotonic() - t0 < 1.5  # ten healthy calls while six hung ones are pending
    codes = sorted(r[0] for r in await asyncio.gather(*hung))
    assert codes == [200, 200, 503, 503, 503, 503]


async def test_retry_budget_caps_attempts_under_total_failure(mesh):
    """Every call fails (503) on a route with 3 retries: without a budget the app would see 4x
    the requests; the default budget (20 % + 10/s over 10 s) caps the retries."""
    before = await _app_requests(mesh)
    n = 300
    sem = asyncio.Semaphore(20)

    async def one() -> int:
        async with sem:
            return (await _req(mesh, "flaky", "/status/503"))[0]

    codes = await asyncio.gather(*[one() for _ in range(n)])
    assert all(c == 503 for c in codes)
    attempts = await _app_requests(mesh) - before - 0  # /stats is not counted by the app
    retries = attempts - n
    # budget: ratio 0.2 of requests + 10/s for the 10 s window (Linkerd's defaults)
    assert retries <= 0.2 * n + 10 * 10 + 5, (attempts, n)
    assert attempts < 4 * n / 2  # far from the 4x an unbudgeted policy would send
    text = mesh["sidecar"].admin_get("/metrics")[1].decode()
    assert "meshlet_retry_budget_skipped_total" in text


# only the inventory ServiceEntry: routes without a route timeout
IDLE = CONFIG.split("\n---\n")[0]


@pytest.fixture(scope="module")
def idle_sidecar(tmp_path_factory: pytest.TempPathFactory):
    """A sidecar whose stream idle timeout is 1 s, routes without a route timeout."""
    work = tmp_path_factory.mktemp("stream-idle")
    with stopped_at_end() as started:
        app, port = start_app(work, "inventory")
        started.append(app)
        sc = start_sidecar(work, "orders", port, IDLE.format(a=port), "--stream-idle-timeout",
                           "1")
        started.append(sc)
        yield sc


async def test_stream_idle_timeout_408_when_no_response_started(idle_sidecar):
    sc = idle_sidecar
    t0 = time.monotonic()
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{sc.outbound}/delay?ms=8000", headers={"Host": "inventory"}) as r,
    ):
        body = await r.read()
        assert r.status == 408 and r.headers["x-meshlet-response-flags"] == "SI"
        assert b"stream timeout" in body
    assert time.monotonic() - t0 < 4  # 1 s of silence, noticed by the once-a-second sweep
    _, text = sc.admin_get("/metrics")
    assert any(
        line.startswith("istio_requests_total{")
        and 'response_code="408"' in line
        and 'response_flags="SI"' in line
        for line in text.decode().splitlines()
    )


async def test_stream_idle_timeout_resets_a_stalled_body_but_not_a_slow_one(idle_sidecar):
    sc = idle_sidecar
    url = f"http://127.0.0.1:{sc.outbound}/download"
    async with aiohttp.ClientSession() as s:
        # a piece, then 6 s of silence: the response is cut
        t0 = time.monotonic()
        async with s.get(url + "?size=131072&pause_ms=6000", headers={"Host": "inventory"}) as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        assert time.monotonic() - t0 < 5
        # 8 pieces 300 ms apart (2.4 s in all, longer than the timeout, never silent for it)
        async with s.get(url + "?size=524288&pause_ms=300", headers={"Host": "inventory"}) as r:
            assert r.status == 200 and len(await r.read()) == 524288


def test_stream_idle_timeout_applies_to_h2_streams(idle_sidecar):
    """The same flag bounds HTTP/2 streams (h2c, curl): a silent stream gets Envoy's 408."""
    url = f"http://127.0.0.1:{idle_sidecar.outbound}/delay?ms=8000"
    t0 = time.monotonic()
    r = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-H", "Host: inventory", "-o", "/dev/null",
         "-w", "%{http_code} %{header_json}", "--max-time", "7", url],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    code, _, headers = r.stdout.partition(" ")
    assert code == "408" and json.loads(headers)["x-meshlet-response-flags"] == ["SI"]
    assert time.monotonic() - t0 < 5
