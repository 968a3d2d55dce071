"""Real grpcio peers through two sidecars, in process: a grpcio client calls sidecar A's
outbound listener with h2c, A forwards over HTTP/2 to sidecar B's inbound listener, B to a grpcio
server. The sidecars are the real ``Forwarder`` and ``Runtime`` with tables compiled from YAML;
their listeners speak HTTP/2 through ``proxy.server.h2`` and their upstreams are
``H2UpstreamPool`` s. Every RPC kind, large messages, deadlines, retries on UNAVAILABLE, local
replies as gRPC statuses, and h2load for a smoke load."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from typing import Any

import grpc
import pytest

from control_plane.api.resources import load_text
from proxy.routes.compile import compile_table
from proxy.server.forward import Forwarder
from proxy.server.h2.client import H2UpstreamPool
from proxy.server.h2.server import H2ServerProtocol
from proxy.server.listener import Listener
from proxy.server.runtime import Runtime
from tests.grpc_fixtures import EchoServer, build, channel

MB = 1024 * 1024


@pytest.fixture(scope="module")
def protos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return build(tmp_path_factory.mktemp("grpcgen"))


@pytest.fixture(scope="module")
def app(protos: tuple[Any, Any]):
    srv = EchoServer(*protos).start()
    yield srv
    srv.stop()


class InProcSidecar:
    """A sidecar's data path without its process shell: runtime, forwarder, two h2 listeners."""

    def __init__(self, service: str, app_port: int, config: str) -> None:
        self.rt = Runtime(service, "default", "v1", {"app": service, "version": "v1"}, app_port)
        self.fwd = Forwarder(self.rt)
        table = compile_table(load_text(config) if config.strip() else [], [], "default",
                              self.rt.labels, "test")
        self.rt.swap(table)
        self.pools: dict[str, H2UpstreamPool] = {}
        self.rt.pool = self._pool  # type: ignore[method-assign]
        self.records: list[Any] = []
        self.rt.recorder = lambda ex, head, reporter: self.records.append((ex, head, reporter))
        self.servers: list[asyncio.AbstractServer] = []
        self.listeners: list[Listener] = []
        self.outbound = self.inbound = 0

    def _pool(self, ep: Any, cluster: Any, h2: bool = True) -> H2UpstreamPool:
        p = self.pools.get(ep.key)
        if p is None:
            p = self.pools[ep.key] = H2UpstreamPool(ep.address, ep.port, None, cluster.idle_timeout)
        return p

    async def start(self) -> InProcSidecar:
        loop = asyncio.get_running_loop()
        for name, handler in (("outbound", self.fwd.outbound), ("inbound", self.fwd.inbound)):
            lst = Listener(name, handler, "127.0.0.1", 0)
            self.listeners.append(lst)
            srv = await loop.create_server(lambda lst=lst: H2ServerProtocol(lst), "127.0.0.1", 0)
            self.servers.append(srv)
            setattr(self, name, srv.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        for p in self.pools.values():
            p.close()
        for s in self.servers:
            s.close()
        # A server's close() leaves the connections it accepted open (Python 3.11): close them
        # and let them go, or a connection whose peer had not hung up yet (h2load's last ones)
        # is an unclosed transport when the test's loop ends.
        for lst in self.listeners:
            lst.close_all()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while any(lst.connections for lst in self.listeners) and loop.time() < deadline:
            await asyncio.sleep(0.01)


def _mesh_config(b_inbound: int, route_extra: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo.default.svc.cluster.local]
  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{grpc: {b_inbound}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  annotations: {{retry.meshlet.dev/non-idempotent: "true"}}  # gRPC is POST
spec:
  hosts: [echo]
  http:
  - name: slow
    match: [{{headers: {{x-route: {{exact: slow}}}}}}]
    timeout: 0.5s
    route: [{{destination: {{host: echo}}}}]
  - name: retried
    match: [{{headers: {{x-route: {{exact: retry}}}}}}]
    retries: {{attempts: 3, retryOn: unavailable}}
    route: [{{destination: {{host: echo}}}}]
  - name: default
    route: [{{destination: {{host: echo}}}}]
{route_extra}
"""


@pytest.fixture
async def mesh(app: EchoServer):
    b = await InProcSidecar("echo", app.port, "").start()
    a = await InProcSidecar("client", 1, _mesh_config(b.inbound)).start()
    yield a, b
    await a.stop()
    await b.stop()


def _channel(port: int, authority: str = "echo") -> grpc.Channel:
    return channel(port, authority)


async def _call(fn: Any, *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kw)


def _grpc_timeout_supported() -> bool:
    import inspect

    from proxy.transport import _tries_py as tries  # the readable source (tries.py is a facade)

    src = inspect.getsource(tries)
    return "grpc-timeout" in src or "timeout_extra" in src


def _grpc_retry_supported() -> bool:
    import inspect

    from proxy.transport import _attempt_py as attempt  # the readable source (a facade in front)

    return "grpc-status" in inspect.getsource(attempt)


async def test_unary_through_two_sidecars(mesh, protos):
    a, b = mesh
    pb2, pb2_grpc = protos
    with _channel(a.outbound) as ch:
        stub = pb2_grpc.EchoStub(ch)
        r = await _call(stub.Unary, pb2.Msg(data=b"hello", count=7, text="hi"), timeout=10)
        assert (r.data, r.count, r.text) == (b"hello", 7, "hi")
        # several calls multiplex over the pooled upstream connection
        rs = await asyncio.gather(*[_call(stub.Unary, pb2.Msg(count=i), timeout=10) for i in range(20)])
        assert sorted(x.count for x in rs) == list(range(20))
    assert len(a.pools) == 1 and len(next(iter(a.pools.values())).conns) == 1
    out = [r for r in a.records if r[2] == "outbound"]
    assert out and all(ex.status == 200 for ex, _, _ in out)
    assert any(r[2] == "inbound" for r in b.records)


async def test_metadata_and_trace_headers_reach_the_app(mesh, protos):
    a, _ = mesh
    pb2, pb2_grpc = protos
    with _channel(a.outbound) as ch:
        r = await _call(pb2_grpc.EchoStub(ch).Unary, pb2.Msg(text="metadata"), timeout=10,
                        metadata=[("x-custom", "yes")])
    md = dict(line.split("=", 1) for line in r.text.splitlines())
    assert md["x-custom"] == "yes"
    assert "x-request-id" in md and "x-forwarded-for" in md


async def test_server_streaming_large(mesh, protos):
    a, _ = mesh
    pb2, pb2_grpc = protos
    with _channel(a.outbound) as ch:
        stub = pb2_grpc.EchoStub(ch)

        def run() -> list[Any]:
            return list(stub.ServerStream(pb2.Msg(data=b"s" * MB, count=8), timeout=30))

        msgs = await _call(run)
    assert [m.count for m in msgs] == list(range(8))
    assert all(len(m.data) == MB for m in msgs)


async def test_client_streaming_large(mesh, protos):
    a, _ = mesh
    pb2, pb2_grpc = protos
    with _channel(a.outbound) as ch:
        stub = pb2_grpc.EchoStub(ch)
        r = await _call(stub.ClientStream, iter([pb2.Msg(data=b"c" * (3 * MB))] * 3), timeout=30)
    assert (r.count, r.text) == (3, str(9 * MB))


async def test_bidi_large(mesh, protos):
    a, _ = mesh
    pb2, pb2_grpc = protos
    with _channel(a.outbound) as ch:
        stub = pb2_grpc.EchoStub(ch)

        def run() -> list[Any]:
            reqs = (pb2.Msg(data=bytes([i]) * (2 * MB), count=i) for i in range(5))
            return list(stub.Bidi(reqs, timeout=30))

        msgs = await _call(run)
    assert [m.count for m in msgs] == list(range(5))
    assert all(m.data == bytes([m.count]) * (2 * MB) for m in msgs)


async def test_route_timeout_is_deadline_exceeded(mesh, protos):
    a, _ = mesh
    pb2, pb2_grpc = protos
    with _channel(a.outbound) as ch:
        stub = pb2_grpc.EchoStub(ch)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            await _call(stub.Unary, pb2.Msg(text="sleep:5"), timeout=10,
                        metadata=[("x-route", "slow")])
        took = time.monotonic() - t0
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value
    assert took < 4.0  # the route's 0.5 s, not the app's 5 s (the GIL is shared in process)


async def test_client_deadline_is_deadline_exceeded(mesh, protos):
    a, _ = mesh
    pb2, pb2_grpc = protos
    with _channel(a.outbound) as ch:
        stub = pb2_grpc.EchoStub(ch)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            await _call(stub.Unary, pb2.Msg(text="sleep:5"), timeout=0.5)
        took = time.monotonic() - t0
        # the proxies stay usable after the cancelled call
        r = await _call(stub.Unary, pb2.Msg(text="after"), timeout=10)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 3.0 and r.text == "after"


async def test_grpc_timeout_rewritten_to_the_route_budget(mesh, protos):
    a, _ = mesh
    pb2, pb2_grpc = protos
    with _channel(a.outbound) as ch:
        r = await _call(pb2_grpc.EchoStub(ch).Unary, pb2.Msg(text="deadline"), timeout=10,
                        metadata=[("x-route", "slow")])
    assert 0 < float(r.text) < 0.6  # the route's 0.5 s, not the caller's 10 s


async def test_unknown_service_is_a_grpc_status(mesh, protos):
    a, _ = mesh
    pb2, pb2_grpc = protos
    with _channel(a.outbound, authority="nosuchservice") as ch, \
            pytest.raises(grpc.RpcError) as err:
        await _call(pb2_grpc.EchoStub(ch).Unary, pb2.Msg(), timeout=10)
    assert err.value.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE)
    md = dict(err.value.initial_metadata() or ()) | dict(err.value.trailing_metadata() or ())
    assert md.get("x-meshlet-response-flags") == "NR"


async def test_unavailable_endpoint_is_unavailable(app, protos):
    pb2, pb2_grpc = protos
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    a = await InProcSidecar("client", 1, _mesh_config(dead)).start()
    try:
        with _channel(a.outbound) as ch, pytest.raises(grpc.RpcError) as err:
            await _call(pb2_grpc.EchoStub(ch).Unary, pb2.Msg(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await a.stop()


async def test_retry_on_unavailable(mesh, app, protos):
    a, _ = mesh
    pb2, pb2_grpc = protos
    key = f"k{time.monotonic_ns()}"
    with _channel(a.outbound) as ch:
        r = await _call(pb2_grpc.EchoStub(ch).Unary, pb2.Msg(text=f"flaky:{key}:2"), timeout=10,
                        metadata=[("x-route", "retry")])
    assert r.text == f"flaky:{key}:2"
    assert app.calls[key] == 3


async def test_h2load_smoke(mesh, app, tmp_path):
    """h2load against the outbound port: a bounded smoke load of gRPC unary calls (an empty
    message), every one answered 200. Throughput here is not a benchmark: the grpcio server and
    both proxies share this process's GIL."""
    a, _ = mesh
    if shutil.which("h2load") is None:
        pytest.fail("h2load not installed (apt-get install nghttp2-client)")
    body = tmp_path / "empty.grpc"
    body.write_bytes(b"\x00\x00\x00\x00\x00")  # an uncompressed, empty length-prefixed message
    proc = await asyncio.create_subprocess_exec(
        "h2load", "-n", "2000", "-c", "4", "-m", "10", "-H", ":authority: echo",
        "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body),
        f"http://127.0.0.1:{a.outbound}/meshtest.Echo/Unary",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 50)
    finally:
        if proc.returncode is None:  # timed out: end it, or it and its pipe outlive the test
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text
    assert "2000 succeeded" in text and "2000 2xx" in text, text
    assert sum(1 for r in a.records if r[0].status == 200) >= 2000


async def test_cancelled_streams_give_back_their_slots(mesh, protos):
    """Clients that cancel mid-stream: both sidecars reset the upstream streams and the pools'
    stream slots come back (no leak towards SETTINGS_MAX_CONCURRENT_STREAMS)."""
    a, b = mesh
    pb2, pb2_grpc = protos
    with _channel(a.outbound) as ch:
        stub = pb2_grpc.EchoStub(ch)

        def run() -> None:
            for _ in range(30):
                call = stub.ServerStream(pb2.Msg(data=b"x" * 65536, count=1000), timeout=10)
                next(call)
                call.cancel()

        await _call(run)
        deadline = time.monotonic() + 5
        while any(c.reserved for s in (a, b) for p in s.pools.values() for c in p.conns):
            assert time.monotonic() < deadline, "stream slots leaked"
            await asyncio.sleep(0.02)
        r = await _call(stub.Unary, pb2.Msg(text="still"), timeout=10)
    assert r.text == "still"
    assert all(len(p.conns) == 1 for s in (a, b) for p in s.pools.values())
