"""Traces across the mesh: three services, each behind its own sidecar, export spans to an
in-process OTLP/HTTP receiver; the test checks one trace with parent-child links across hops,
the HTTP semantic-convention attributes, and that error spans are kept at sampling ratio 0."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support import env, free_port, start_app, start_sidecar
from tests.unit.telemetry.test_spans import Receiver, attrs, wait_for

SE = """
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  ports: [{{number: 8080, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"""


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def _mesh(tmp_path, receiver, ratio: str):
    """orders -> inventory -> payment, each app behind its own sidecar."""
    inb = {n: free_port() for n in ("inventory", "payment")}
    outb = {n: free_port() for n in ("orders", "inventory")}
    config = "".join(SE.format(name=n, port=p) for n, p in inb.items())
    e = env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG=ratio,
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    procs = []
    pay, pp = start_app(tmp_path, "payment")
    inv, ip = start_app(tmp_path, "inventory", outbound=f"127.0.0.1:{outb['inventory']}")
    procs += [pay, inv]
    sidecars = [
        start_sidecar(tmp_path, "payment", pp, config, "--inbound", str(inb["payment"]), environ=e),
        start_sidecar(
            tmp_path,
            "inventory",
            ip,
            config,
            "--inbound",
            str(inb["inventory"]),
            "--outbound",
            str(outb["inventory"]),
            environ=e,
        ),
        start_sidecar(
            tmp_path, "orders", free_port(), config, "--outbound", str(outb["orders"]), environ=e
        ),
    ]
    return procs, sidecars, outb["orders"]


def _cleanup(procs, sidecars):
    for sc in sidecars:
        sc.stop()
    for p in procs:
        p.stop()


async def test_one_trace_across_three_services(tmp_path, receiver):
    procs, sidecars, entry = await _mesh(tmp_path, receiver, "1.0")
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"http://127.0.0.1:{entry}/call/payment/pay?amount=3", headers={"Host": "inventory"}
            ) as r,
        ):
            assert r.status == 200
            body = await r.json()
        seen = body["upstream"]["headers"]
        assert seen["traceparent"].startswith("00-")
        await wait_for(lambda: len(receiver.spans()) >= 4, timeout=15)
        spans = receiver.spans()
        traces = {sp.trace_id for sp in spans}
        assert len(traces) == 1
        by_id = {sp.span_id: sp for sp in spans}
        roots = [sp for sp in spans if not sp.parent_span_id]
        assert len(roots) == 1
        # the chain: orders client -> inventory server -> inventory client -> payment server
        chain = [roots[0]]
        while True:
            kids = [sp for sp in spans if sp.parent_span_id == chain[-1].span_id]
            if not kids:
                break
            chain.append(kids[0])
        kinds = [sp.kind for sp in chain]
        assert kinds == [3, 2, 3, 2], kinds  # CLIENT, SERVER, CLIENT, SERVER
        last = attrs(chain[-1])
        assert last["http.request.method"] == "GET"
        assert last["url.path"] == "/pay"
        assert last["http.response.status_code"] == 200
        assert by_id[chain[-1].parent_span_id] is chain[-2]
        # the app saw the payment sidecar's server span as its parent
        assert seen["traceparent"].split("-")[2] == chain[-1].span_id.hex()
    finally:
        _cleanup(procs, sidecars)


async def test_error_spans_kept_at_ratio_zero(tmp_path, receiver):
    procs, sidecars, entry = await _mesh(tmp_path, receiver, "0")
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.get(
                    f"http://127.0.0.1:{entry}/ok", headers={"Host": "inventory"}
                ) as r:
                    assert r.status == 200
            async with s.get(
                f"http://127.0.0.1:{entry}/status/503", headers={"Host": "inventory"}
            ) as r:
                assert r.status == 503
        await wait_for(lambda: len(receiver.spans()) >= 2, timeout=15)
        spans = receiver.spans()
        assert all(attrs(sp)["http.response.status_code"] == 503 for sp in spans)
        assert all(sp.status.code == 2 for sp in spans)  # STATUS_CODE_ERROR
    finally:
        _cleanup(procs, sidecars)
