"""Real grpcio peers through two real sidecar processes (``meshlet sidecar``): the client speaks
h2c to sidecar A's outbound port, A forwards to sidecar B's inbound port over HTTP/2, B to the
grpcio server. Every RPC kind with large messages, deadlines, retries on UNAVAILABLE, a weighted
split between two versions, an AuthorizationPolicy denying one method, and local replies as gRPC
statuses. Needs the sidecar to hand h2 connections to ``proxy.server.h2`` (``h2_factory``)."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import grpc
import pytest

from tests.grpc_fixtures import EchoServer, build, channel
from tests.support import join_sidecar, start_sidecar, stopped_at_end, wait_until

MB = 1024 * 1024


def _wired() -> bool:
    from proxy import sidecar

    return "h2_factory" in inspect.getsource(sidecar)



B_CONFIG = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-client-stream}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/meshtest.Echo/Forbidden]}}]
"""


def _a_config(b1: int, b2: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo.default.svc.cluster.local]
  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{grpc: {b1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{grpc: {b2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  annotations: {{retry.meshlet.dev/non-idempotent: "true"}}
spec:
  hosts: [echo]
  http:
  - name: slow
    match: [{{headers: {{x-route: {{exact: slow}}}}}}]
    timeout: 0.5s
    route: [{{destination: {{host: echo, subset: v1}}}}]
  - name: retried
    match: [{{headers: {{x-route: {{exact: retry}}}}}}]
    retries: {{attempts: 3, retryOn: unavailable}}
    route: [{{destination: {{host: echo, subset: v1}}}}]
  - name: aborted
    match: [{{headers: {{x-route: {{exact: abort}}}}}}]
    fault: {{abort: {{grpcStatus: RESOURCE_EXHAUSTED, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: echo, subset: v1}}}}]
  - name: split
    match: [{{headers: {{x-route: {{exact: split}}}}}}]
    route:
    - {{destination: {{host: echo, subset: v1}}, weight: 80}}
    - {{destination: {{host: echo, subset: v2}}, weight: 20}}
  - name: default
    route: [{{destination: {{host: echo, subset: v1}}}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("grpc-sidecars")
    pb2, pb2_grpc = build(work / "gen")
    with stopped_at_end() as started:
        apps = [EchoServer(pb2, pb2_grpc, name).start() for name in ("v1", "v2")]
        started += apps
        bs = []
        for app in apps:
            b = start_sidecar(work, "echo", app.port, B_CONFIG, "--version", app.name,
                              name=f"echo-{app.name}")
            started.append(b)
            bs.append(b)
        a = start_sidecar(work, "client", 1, _a_config(bs[0].inbound, bs[1].inbound), name="client")
        started.append(a)
        yield {"a": a, "b": bs, "apps": apps, "pb2": pb2, "pb2_grpc": pb2_grpc}


def _stub(mesh: dict[str, Any], authority: str = "echo") -> tuple[Any, grpc.Channel]:
    ch = channel(mesh["a"].outbound, authority)
    return mesh["pb2_grpc"].EchoStub(ch), ch


async def _call(fn: Any, *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kw)


async def test_every_rpc_kind_with_large_messages(mesh):
    pb2 = mesh["pb2"]
    stub, ch = _stub(mesh)
    with ch:
        r = await _call(stub.Unary, pb2.Msg(data=b"u" * (3 * MB), count=1), timeout=20)
        assert len(r.data) == 3 * MB
        msgs = await _call(lambda: list(stub.ServerStream(pb2.Msg(data=b"s" * MB, count=6),
                                                          timeout=20)))
        assert [m.count for m in msgs] == list(range(6))
        r = await _call(lambda: stub.ClientStream(iter([pb2.Msg(data=b"c" * (2 * MB))] * 3),
                                                  timeout=20))
        assert (r.count, r.text) == (3, str(6 * MB))


async def test_one_method_denied_by_authorization(mesh):
    pb2 = mesh["pb2"]
    stub, ch = _stub(mesh)
    with ch:
        with pytest.raises(grpc.RpcError) as err:
            await _call(stub.Forbidden, pb2.Msg(), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await _call(stub.Unary, pb2.Msg(text="ok"), timeout=10)).text == "ok"


async def test_bidi_large(mesh):
    pb2 = mesh["pb2"]
    stub, ch = _stub(mesh)
    with ch:
        reqs = (pb2.Msg(data=bytes([i]) * (2 * MB), count=i) for i in range(4))
        msgs = await _call(lambda: list(stub.Bidi(reqs, timeout=30)))
    assert [m.count for m in msgs] == list(range(4))
    assert all(len(m.data) == 2 * MB for m in msgs)


async def test_deadlines(mesh):
    pb2 = mesh["pb2"]
    stub, ch = _stub(mesh)
    with ch:
        for md, timeout in (([("x-route", "slow")], 10.0), ([], 0.5)):
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                await _call(stub.Unary, pb2.Msg(text="sleep:5"), timeout=timeout, metadata=md)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - t0 < 3.0
        # the route's 0.5 s budget reaches the server as grpc-timeout, not the caller's 10 s
        r = await _call(stub.Unary, pb2.Msg(text="deadline"), timeout=10.0,
                        metadata=[("x-route", "slow")])
        assert 0 < float(r.text) < 0.6


async def test_retry_on_unavailable(mesh):
    pb2 = mesh["pb2"]
    stub, ch = _stub(mesh)
    key = f"k{time.monotonic_ns()}"
    with ch:
        r = await _call(stub.Unary, pb2.Msg(text=f"flaky:{key}:2"), timeout=10,
                        metadata=[("x-route", "retry")])
    assert r.text == f"flaky:{key}:2"
    assert mesh["apps"][0].calls[key] == 3


async def test_weighted_split(mesh):
    pb2 = mesh["pb2"]
    stub, ch = _stub(mesh)
    with ch:
        names = await asyncio.gather(*[
            _call(stub.Unary, pb2.Msg(text="whoami"), timeout=10, metadata=[("x-route", "split")])
            for _ in range(200)])
    v2 = sum(1 for n in names if n.text == "v2")
    assert 15 <= v2 <= 70, v2  # 20 % of 200 = 40, wide tolerance


async def test_unknown_service_is_a_grpc_status(mesh):
    pb2 = mesh["pb2"]
    stub, ch = _stub(mesh, authority="nosuchservice")
    with ch, pytest.raises(grpc.RpcError) as err:
        await _call(stub.Unary, pb2.Msg(), timeout=10)
    # 404 NR as a gRPC status: UNIMPLEMENTED (gRPC's HTTP mapping, as Envoy answers it), in a
    # trailers-only response that still names the flag
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    md = dict(err.value.initial_metadata() or ()) | dict(err.value.trailing_metadata() or ())
    assert md["x-meshlet-response-flags"] == "NR"


async def test_fault_abort_answers_its_grpc_status(mesh):
    pb2 = mesh["pb2"]
    stub, ch = _stub(mesh)
    with ch, pytest.raises(grpc.RpcError) as err:
        await _call(stub.Unary, pb2.Msg(text="hi"), timeout=10, metadata=[("x-route", "abort")])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    md = dict(err.value.initial_metadata() or ()) | dict(err.value.trailing_metadata() or ())
    assert md["x-meshlet-response-flags"] == "FI"


async def test_grpc_status_in_metrics(mesh):
    pb2 = mesh["pb2"]
    stub, ch = _stub(mesh)
    with ch:
        await _call(stub.Unary, pb2.Msg(text="hi"), timeout=10)
    a = mesh["a"]

    def seen() -> bool:
        text = a.admin_get("/metrics")[1].decode()
        return any(line.startswith("istio_requests_total{") and 'grpc_response_status="0"' in line
                   for line in text.splitlines())

    wait_until(seen, 5, what="grpc_response_status in metrics")



@pytest.fixture(scope="module")
def mtls_mesh(tmp_path_factory: pytest.TempPathFactory):
    """A control plane, and sidecars that join it: A -> B is h2 over mTLS chosen by ALPN."""
    from tests.support import start_control_plane

    work = tmp_path_factory.mktemp("grpc-mtls")
    pb2, pb2_grpc = build(work / "gen")
    app = EchoServer(pb2, pb2_grpc, "mtls").start()
    with stopped_at_end() as started:
        started.append(app)
        cp = start_control_plane(work)
        started.append(cp)
        b = join_sidecar(work, cp, "echo", app.port)
        started.append(b)
        a = join_sidecar(work, cp, "client", 1)
        started.append(a)
        yield {"a": a, "b": b, "apps": [app], "pb2": pb2, "pb2_grpc": pb2_grpc}


async def test_h2_over_mtls_between_sidecars(mtls_mesh):
    pb2 = mtls_mesh["pb2"]
    stub, ch = _stub(mtls_mesh)
    with ch:
        deadline = time.monotonic() + 20
        while True:  # until the registry has pushed echo's endpoint to A
            try:
                r = await _call(stub.Unary, pb2.Msg(text="metadata"), timeout=5)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        md = dict(line.split("=", 1) for line in r.text.splitlines())
        assert md["x-forwarded-client-cert"].endswith(
            "URI=spiffe://cluster.local/ns/default/sa/client")
        big = await _call(stub.Unary, pb2.Msg(data=b"m" * (2 * MB)), timeout=20)
        assert len(big.data) == 2 * MB
        reqs = (pb2.Msg(data=bytes([i]) * MB, count=i) for i in range(3))
        msgs = await _call(lambda: list(stub.Bidi(reqs, timeout=20)))
        assert [m.count for m in msgs] == [0, 1, 2]
    text = mtls_mesh["b"].admin_get("/metrics")[1].decode()
    line = next(x for x in text.splitlines() if x.startswith("istio_requests_total{")
                and 'reporter="destination"' in x)
    assert 'connection_security_policy="mutual_tls"' in line
    assert 'source_principal="spiffe://cluster.local/ns/default/sa/client"' in line


async def test_h2_between_sidecars_resumes_tls_sessions(tmp_path):
    """With one stream per upstream connection (maxRequestsPerConnection: 1, applied before the
    sidecars start: a pool keeps the limit it was made with) each call opens a new h2-over-mTLS
    connection from A to B; after the first, they resume B's TLS 1.3 session, and B still sees
    A's SPIFFE identity on each."""
    import re

    from tests.support import start_control_plane

    pb2, pb2_grpc = build(tmp_path / "gen")
    app = EchoServer(pb2, pb2_grpc, "resume").start()
    cp = start_control_plane(tmp_path)
    started: list[Any] = [cp]
    one_stream = ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
                  "metadata: {name: echo}\nspec:\n  host: echo\n"
                  "  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}\n")
    try:
        assert cp.cli("apply", "-f", "-", input=one_stream).returncode == 0
        b = join_sidecar(tmp_path, cp, "echo", app.port)
        started.append(b)
        a = join_sidecar(tmp_path, cp, "client", 1)
        started.append(a)
        mesh = {"a": a, "pb2_grpc": pb2_grpc}

        def handshakes() -> dict[str, float]:
            text = a.admin_get("/metrics")[1].decode()
            pat = r'^meshlet_upstream_tls_handshakes_total\{resumed="(\w+)"\} (\S+)$'
            return {k: float(v) for k, v in re.findall(pat, text, re.M)}

        stub, ch = _stub(mesh)
        with ch:
            deadline = time.monotonic() + 20
            while True:  # until the registry has pushed echo's endpoint to A
                try:
                    await _call(stub.Unary, pb2.Msg(text="metadata"), timeout=5)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            before = handshakes()
            for _ in range(6):
                r = await _call(stub.Unary, pb2.Msg(text="metadata"), timeout=5)
                md = dict(line.split("=", 1) for line in r.text.splitlines())
                assert md["x-forwarded-client-cert"].endswith(
                    "URI=spiffe://cluster.local/ns/default/sa/client")
        after = handshakes()
        resumed = after.get("true", 0) - before.get("true", 0)
        full = after.get("false", 0) - before.get("false", 0)
        assert resumed + full == 6, (before, after)
        assert resumed >= 5, (resumed, full)
    finally:
        for p in reversed(started):
            p.stop()
        app.stop()
