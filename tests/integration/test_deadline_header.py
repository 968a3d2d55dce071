"""The deadline a sidecar advertises upstream belongs to one request.

Two real sidecars: the app calls sidecar A's outbound port, A forwards to sidecar B's inbound
port, B to the sample app (which echoes the headers it got). Each route has a 5 s timeout.
``x-envoy-expected-rq-timeout-ms`` must be what is left of *that* request's deadline: a gRPC call
with ``grpc-timeout: 100m`` must not make the route advertise 100 ms to later requests (B would
then time real requests out with 504 UT), and a route that first served a plain request must not
advertise its 5 s to a later call whose own deadline is 100 ms (that would extend the caller's
deadline). Both orders are tested, each on its own route.
"""

from __future__ import annotations

import aiohttp
import pytest

from tests.support import start_app, start_sidecar, static_service_entry, stopped_at_end

B_CONFIG = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: PERMISSIVE}}
"""


def _a_config(b_inbound: int) -> str:
    return static_service_entry(
        "inventory", b_inbound, hosts="inventory.default.svc.cluster.local", protocol="HTTP"
    ) + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inventory}
spec:
  hosts: [inventory]
  http:
  - name: grpc-first
    match: [{headers: {x-route: {exact: a}}}]
    timeout: 5s
    route: [{destination: {host: inventory}}]
  - name: plain-first
    match: [{headers: {x-route: {exact: b}}}]
    timeout: 5s
    route: [{destination: {host: inventory}}]
  - name: expected-header
    match: [{headers: {x-route: {exact: c}}}]
    timeout: 5s
    route: [{destination: {host: inventory}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("deadline")
    with stopped_at_end() as started:
        app, app_port = start_app(work, "inventory")
        started.append(app)
        b = start_sidecar(work, "inventory", app_port, B_CONFIG, name="b")
        started.append(b)
        a = start_sidecar(work, "orders", 1, _a_config(b.inbound), name="a")
        started.append(a)
        yield {"a": a, "b": b}


async def _call(mesh, route: str, path: str = "/echo", **headers: str) -> tuple[int, dict, dict]:
    hdrs = {"Host": "inventory", "x-route": route, **headers}
    method = "POST" if "content-type" in headers else "GET"
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"http://127.0.0.1:{mesh['a'].outbound}{path}", headers=hdrs,
                  data=b"x" if method == "POST" else None) as r,
    ):
        body = await r.json(content_type=None) if r.status == 200 else {}
        return r.status, dict(r.headers), body


def _advertised(body: dict) -> int:
    return int(body["headers"]["x-envoy-expected-rq-timeout-ms"])


GRPC = {"content-type": "application/grpc", "grpc-timeout": "100m"}


async def test_short_grpc_deadline_does_not_stick_to_the_route(mesh):
    status, _, body = await _call(mesh, "a", **GRPC)
    assert status == 200
    assert _advertised(body) <= 100
    # a later plain request on the same route gets the route's 5 s, not the last caller's 100 ms
    status, _, body = await _call(mesh, "a")
    assert status == 200
    assert 4900 <= _advertised(body) <= 5000
    # so B, which honours the advertised deadline, lets a 300 ms answer through
    status, headers, _ = await _call(mesh, "a", "/delay?ms=300")
    assert status == 200, headers.get("x-meshlet-response-flags")


async def test_route_timeout_does_not_extend_a_short_grpc_deadline(mesh):
    status, _, body = await _call(mesh, "b")
    assert status == 200
    assert 4900 <= _advertised(body) <= 5000
    status, _, body = await _call(mesh, "b", **GRPC)
    assert status == 200
    assert _advertised(body) <= 100
    assert body["headers"]["grpc-timeout"].endswith(("m", "u", "n"))


async def test_callers_expected_timeout_caps_the_route_and_is_replaced(mesh):
    status, _, body = await _call(mesh, "c", **{"x-envoy-expected-rq-timeout-ms": "200"})
    assert status == 200
    assert _advertised(body) <= 200
    status, _, body = await _call(mesh, "c")
    assert 4900 <= _advertised(body) <= 5000
    # the caller's deadline ends the request where the route timeout would not
    status, headers, _ = await _call(
        mesh, "c", "/delay?ms=2000", **{"x-envoy-expected-rq-timeout-ms": "200"}
    )
    assert status == 504
    assert headers["x-meshlet-response-flags"] == "UT"
