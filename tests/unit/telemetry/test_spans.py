"""Span export through a real OTLP/HTTP exporter to an in-process receiver."""

from __future__ import annotations

import asyncio
import gzip
import time

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus

from proxy.telemetry.spans import SpanExporterBridge, is_error, sampler_from_env, span_name
from proxy.telemetry.tracing import ParentBasedRatio, extract, new_context

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Receiver:
    """A minimal OTLP/HTTP traces endpoint."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self.content_types: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(body)
        self.requests.append(msg)
        self.paths.append(request.path)
        self.content_types.append(request.headers.get("Content-Type", ""))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def spans(self) -> list[PbSpan]:
        return [
            s
            for req in self.requests
            for rs in req.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        ]

    def resource_attrs(self) -> dict[str, str]:
        out = {}
        for req in self.requests:
            for rs in req.resource_spans:
                for kv in rs.resource.attributes:
                    out[kv.key] = kv.value.string_value
        return out


def attrs(span: PbSpan) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


async def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def server_attrs(status: int) -> dict:
    return {
        "http.request.method": "GET",
        "url.path": "/orders/1",
        "url.scheme": "http",
        "server.address": "orders.default.svc.cluster.local",
        "server.port": 8080,
        "http.response.status_code": status,
        "network.protocol.version": "1.1",
        "meshlet.response_flags": "-",
        "meshlet.peer.principal": "spiffe://cluster.local/ns/default/sa/web",
        "meshlet.upstream.address": "127.0.0.1:9001",
        "meshlet.attempt": 1,
    }


async def test_exports_with_exact_ids_and_attributes(receiver):
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}/",
        "OTEL_SERVICE_NAME": "orders.default",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.name=ignored",
    }
    bridge = SpanExporterBridge(env=env)
    assert bridge.enabled and bridge.endpoint == f"http://127.0.0.1:{receiver.port}/v1/traces"
    try:
        parent = extract({"traceparent": TP}.get)
        server = new_context(parent, bridge.sampler)
        client = new_context(server, bridge.sampler)
        t0 = time.time_ns()
        bridge.record_span(server, "server", "GET", t0, t0 + 5_000_000, server_attrs(200), False)
        bridge.record_span(
            client,
            "client",
            "GET",
            t0 + 1_000_000,
            t0 + 4_000_000,
            {**server_attrs(503), "meshlet.attempt": 2},
            True,
        )
        assert await asyncio.to_thread(bridge.force_flush, 10_000)
        await wait_for(lambda: len(receiver.spans()) == 2)
    finally:
        await asyncio.to_thread(bridge.shutdown)

    assert receiver.paths == ["/v1/traces"]
    assert receiver.content_types[0] == "application/x-protobuf"
    by_kind = {s.kind: s for s in receiver.spans()}
    srv = by_kind[PbSpan.SPAN_KIND_SERVER]
    cli = by_kind[PbSpan.SPAN_KIND_CLIENT]
    assert srv.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert srv.span_id.hex() == server.span_id
    assert srv.parent_span_id.hex() == "00f067aa0ba902b7"
    assert cli.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert cli.span_id.hex() == client.span_id
    assert cli.parent_span_id.hex() == server.span_id
    assert srv.name == "GET"
    assert srv.start_time_unix_nano == t0 and srv.end_time_unix_nano == t0 + 5_000_000
    assert attrs(srv) == server_attrs(200)
    assert srv.status.code == PbStatus.STATUS_CODE_UNSET
    a = attrs(cli)
    assert a["meshlet.attempt"] == 2
    assert a["http.response.status_code"] == 503
    assert a["error.type"] == "503"
    assert cli.status.code == PbStatus.STATUS_CODE_ERROR
    res = receiver.resource_attrs()
    assert res["service.name"] == "orders.default"  # OTEL_SERVICE_NAME wins
    assert res["deployment.environment"] == "test"


async def test_tail_decision_keeps_errors_and_slow_requests(receiver):
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.port}/custom"}
    bridge = SpanExporterBridge(env=env, slow_threshold_s=0.5)
    try:
        unsampled = new_context(None, ParentBasedRatio(0.0))
        assert unsampled.sampled is False
        t0 = time.time_ns()
        fast_ok, fast_err, slow_ok = (new_context(unsampled, bridge.sampler) for _ in range(3))
        assert not bridge.wants(fast_ok, False, 1_000_000)
        assert bridge.wants(fast_err, True, 1_000_000)
        assert bridge.wants(slow_ok, False, 600_000_000)
        bridge.record_span(fast_ok, "server", "GET", t0, t0 + 1_000_000, {}, False)
        bridge.record_span(fast_err, "server", "GET", t0, t0 + 1_000_000, {}, True)
        bridge.record_span(slow_ok, "server", "GET", t0, t0 + 600_000_000, {}, False)
        assert await asyncio.to_thread(bridge.force_flush, 10_000)
        await wait_for(lambda: len(receiver.spans()) == 2)
    finally:
        await asyncio.to_thread(bridge.shutdown)
    assert receiver.paths[0] == "/custom"  # the per-signal endpoint is used as is
    ids = {s.span_id.hex() for s in receiver.spans()}
    assert ids == {fast_err.span_id, slow_ok.span_id}
    err = next(s for s in receiver.spans() if s.span_id.hex() == fast_err.span_id)
    assert attrs(err)["error.type"] == "_OTHER"
    assert err.parent_span_id.hex() == unsampled.span_id


def test_no_endpoint_is_a_noop():
    bridge = SpanExporterBridge(env={})
    assert not bridge.enabled
    ctx = new_context(None, ParentBasedRatio(1.0))
    assert not bridge.wants(ctx, True, 10**12)
    bridge.record_span(ctx, "server", "GET", 0, 1, {}, True)  # nothing happens
    assert bridge.force_flush()
    bridge.shutdown()


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
    ],
)
def test_disabled_by_env(env):
    assert not SpanExporterBridge(env=env).enabled


@pytest.mark.parametrize(
    ("env", "ratio", "respect_parent"),
    [
        ({}, 0.01, True),  # unset: the caller's default (MeshConfig sampling)
        ({"OTEL_TRACES_SAMPLER": "always_on"}, 1.0, False),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, 0.0, False),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, 1.0, True),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, 0.0, True),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.2"}, 0.2, False),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.3"},
            0.3,
            True,
        ),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}, 1.0, True),  # arg defaults to 1
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            1.0,
            True,
        ),  # invalid arg ignored
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, 1.0, True),  # unsupported: default sampler
    ],
)
def test_sampler_from_env(env, ratio, respect_parent):
    s = sampler_from_env(env, default_ratio=0.01)
    assert (s.ratio, s.respect_parent) == (ratio, respect_parent)


def test_semconv_helpers():
    assert span_name("GET") == "GET"
    assert span_name("POST", "/orders/{id}") == "POST /orders/{id}"
    assert span_name("FOO") == "HTTP"
    assert is_error("server", 500) and is_error("client", 503)
    assert not is_error("server", 404) and is_error("client", 404)
    assert not is_error("client", 302) and is_error("server", 0)
