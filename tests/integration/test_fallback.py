"""ResiliencePolicy ``fallback`` through a real sidecar and real apps: a static answer, the last
good answer replayed when the app fails or is gone, its expiry, a fallback behind an open breaker,
and never one for a POST unless the policy asks."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time

import aiohttp
import pytest

from tests.support import outbound_request, sidecar_for_apps

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: apps}}
spec:
  hosts: [flaky, catalog, guarded]
  ports: [{{number: 8080, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {a}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: gone}}
spec:
  hosts: [gone, gone-post]
  ports: [{{number: 8080, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {dead}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: doomed}}
spec:
  hosts: [doomed]
  ports: [{{number: 8080, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {b}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: flaky}}
spec:
  hosts: [flaky]
  http:
  - route: [{{destination: {{host: flaky}}}}]
    retries: {{attempts: 0}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: doomed}}
spec:
  hosts: [doomed]
  http:
  - route: [{{destination: {{host: doomed}}}}]
    retries: {{attempts: 1, retryOn: connect-failure}}
---
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: gone}}
spec:
  host: gone
  fallback:
    static: {{status: 200, headers: {{content-type: application/json}}, body: '{{"items": []}}'}}
---
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: gone-post}}
spec:
  host: gone-post
  fallback:
    static: {{status: 202, body: "queued"}}
    methods: [GET, POST]
---
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: flaky}}
spec:
  host: flaky
  fallback:
    stale: {{maxAge: 60s, maxEntries: 10, maxBodyBytes: 65536}}
---
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: doomed}}
spec:
  host: doomed
  fallback:
    stale: {{maxAge: 2s}}
---
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: guarded}}
spec:
  host: guarded
  circuitBreaker: {{failureRateThreshold: 50, slidingWindowSize: 4, minimumNumberOfCalls: 4, waitDurationInOpenState: 30s}}
  fallback:
    static: {{status: 200, body: "degraded"}}
    triggers: [circuitOpen]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("fallback")
    with sidecar_for_apps(work, CONFIG, "flaky", "doomed") as (sc, [(_, pa), (b, _)]):
        yield {"sidecar": sc, "a": pa, "b": b}


async def _req(mesh, host: str, path: str, method: str = "GET", **kw):
    return await outbound_request(mesh["sidecar"], host, path, method, **kw)


async def test_static_fallback_when_no_upstream_answers(mesh):
    status, headers, body = await _req(mesh, "gone", "/items")
    assert (status, body) == (200, b'{"items": []}')
    assert headers["x-meshlet-fallback"] == "static"
    assert headers["x-meshlet-response-flags"] == "FB"
    assert headers["x-meshlet-fallback-cause"] == "UF,URX"  # connect failures, retried
    assert headers["content-type"] == "application/json"
    # HEAD gets the head of it
    status, headers, body = await _req(mesh, "gone", "/items", "HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", "13")
    text = mesh["sidecar"].admin_get("/metrics")[1].decode()
    series = [
        line
        for line in text.splitlines()
        if line.startswith("istio_requests_total{")
        and 'destination_service="gone.default.svc.cluster.local"' in line
    ]
    assert any(
        'response_flags="FB"' in line and 'response_code="200"' in line
        and re.search(r"\} 2(\.0)?$", line)
        for line in series
    ), series


async def test_never_for_post_unless_asked(mesh):
    status, headers, body = await _req(mesh, "gone", "/pay", "POST", data=b"{}")
    assert status == 503 and headers["x-meshlet-response-flags"] == "UF,URX"
    assert "x-meshlet-fallback" not in headers
    status, headers, body = await _req(mesh, "gone-post", "/pay", "POST", data=b"{}")
    assert (status, body, headers["x-meshlet-fallback"]) == (202, b"queued", "static")


async def test_stale_answer_when_the_app_returns_503(mesh):
    async with aiohttp.ClientSession() as s, s.post(
        f"http://127.0.0.1:{mesh['a']}/flaky/reset"
    ) as r:
        assert r.status == 200
    # the first call fails and nothing is cached yet: the app's 503 goes through
    status, headers, _ = await _req(mesh, "flaky", "/flaky?n=1")
    assert status == 503 and "x-meshlet-fallback" not in headers
    status, headers, good = await _req(mesh, "flaky", "/flaky?n=1")
    assert status == 200 and "x-meshlet-fallback" not in headers
    async with aiohttp.ClientSession() as s, s.post(
        f"http://127.0.0.1:{mesh['a']}/flaky/reset"
    ) as r:
        assert r.status == 200
    status, headers, body = await _req(mesh, "flaky", "/flaky?n=1")
    assert (status, body) == (200, good)
    assert headers["x-meshlet-fallback"] == "stale"
    assert headers["x-meshlet-fallback-cause"] == "503"
    assert headers["x-meshlet-response-flags"] == "FB"
    assert int(headers["age"]) >= 0
    # another query is another entry: nothing stale to give, the error goes out
    async with aiohttp.ClientSession() as s, s.post(
        f"http://127.0.0.1:{mesh['a']}/flaky/reset"
    ) as r:
        assert r.status == 200
    status, headers, _ = await _req(mesh, "flaky", "/flaky?n=1&other=1")
    assert status == 503 and "x-meshlet-fallback" not in headers


async def test_stale_answer_after_the_app_is_gone_then_expires(mesh):
    status, headers, good = await _req(mesh, "doomed", "/catalog")
    assert status == 200
    mesh["b"].stop()
    t_stop = time.monotonic()
    status, headers, body = await _req(mesh, "doomed", "/catalog")
    assert (status, body, headers["x-meshlet-fallback"]) == (200, good, "stale")
    assert headers["x-meshlet-fallback-cause"] == "UF,URX"  # connect failure, retried, no answer
    # maxAge 2s: poll until the entry is too old, then the error itself comes back
    deadline = time.monotonic() + 30
    while True:
        status, headers, body = await _req(mesh, "doomed", "/catalog")
        if "x-meshlet-fallback" not in headers:
            break
        assert time.monotonic() < deadline, "the stale entry never expired"
        await asyncio.sleep(0.2)
    assert status == 503 and headers["x-meshlet-response-flags"] == "UF,URX"
    assert time.monotonic() - t_stop > 1.0


async def test_fallback_behind_an_open_breaker(mesh):
    seen = []
    for _ in range(8):
        status, headers, body = await _req(mesh, "guarded", "/status/500")
        seen.append((status, headers.get("x-meshlet-fallback"), headers.get(
            "x-meshlet-fallback-cause")))
    # 5xx answers are not a trigger here (triggers: [circuitOpen]): the first four go through
    assert seen[:4] == [(500, None, None)] * 4
    assert seen[4:] == [(200, "static", "UO")] * 4


def test_static_fallback_over_h2(mesh):
    """The same answer to an HTTP/2 client (h2c prior knowledge, curl)."""
    sc = mesh["sidecar"]
    r = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-H", "Host: gone", "-D", "-",
         "--max-time", "10", f"http://127.0.0.1:{sc.outbound}/items"],
        capture_output=True, text=True, timeout=15,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/2 200")
    assert "x-meshlet-fallback: static" in head and "x-meshlet-response-flags: FB" in head
    assert body == '{"items": []}'
