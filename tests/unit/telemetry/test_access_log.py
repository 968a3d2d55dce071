"""The JSON access log: line format, buffering, sampling, failure handling."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest

from proxy.telemetry.access_log import FIELDS, AccessLog, format_line, iso_time

REQUEST = dict(
    start_time=1_764_099_184.123,
    method="GET",
    authority="orders.default:8080",
    path='/api/"orders"?id=3&q=\u00e9\n',
    protocol="HTTP/1.1",
    response_code=200,
    response_flags="-",
    grpc_status=None,
    duration_ms=12.3456,
    upstream_service_time_ms=11,
    bytes_received=0,
    bytes_sent=1234,
    upstream_host="127.0.0.1:9001",
    upstream_cluster="outbound|8080|v1|orders.default.svc.cluster.local",
    request_id="4d932663-001b-49a2-bb27-fc8cffae7c34",
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    span_id="00f067aa0ba902b7",
    downstream_remote_address="127.0.0.1:40000",
    downstream_peer_principal="spiffe://cluster.local/ns/default/sa/web",
    user_agent="curl/8.0",
    x_forwarded_for=None,
    route_name="default",
    reporter="source",
)


def lines(buf: io.StringIO) -> list[dict]:
    text = buf.getvalue()
    assert text.endswith("\n") or text == ""
    return [json.loads(line) for line in text.splitlines()]


def test_line_is_json_with_all_fields_in_order():
    buf = io.StringIO()
    AccessLog(buf).log(**REQUEST)
    text = buf.getvalue()
    assert text.count("\n") == 1
    (rec,) = lines(buf)
    assert list(rec) == list(FIELDS)
    assert rec["start_time"] == "2025-11-25T19:33:04.123Z"
    assert rec["path"] == REQUEST["path"]  # quotes, non-ASCII and newline survive
    assert rec["response_code"] == 200
    assert rec["duration_ms"] == 12.346
    assert rec["grpc_status"] is None
    assert rec["trace_id"] == REQUEST["trace_id"]
    for k in FIELDS:
        if k not in ("start_time", "duration_ms"):
            assert rec[k] == REQUEST[k], k


def test_missing_fields_are_null_and_extras_appended():
    line = format_line({"method": "GET", "extra": [1], "response_code": 404})
    rec = json.loads(line)
    assert list(rec)[: len(FIELDS)] == list(FIELDS)
    assert rec["path"] is None and rec["response_code"] == 404
    assert rec["extra"] == "[1]"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (float("nan"), None), (float("inf"), None), (3, 3), (2.5, 2.5)],
)
def test_value_types(value, expected):
    assert json.loads(format_line({"bytes_sent": value}))["bytes_sent"] == expected


def test_start_time_defaults_to_now():
    buf = io.StringIO()
    AccessLog(buf, clock=lambda: 0.5).log(method="GET")
    assert lines(buf)[0]["start_time"] == "1970-01-01T00:00:00.500Z"
    assert iso_time(time.time())[:4].isdigit()


def test_disabled_writes_nothing():
    buf = io.StringIO()
    AccessLog(buf, enabled=False).log(**REQUEST)
    assert buf.getvalue() == ""


def test_success_sampling_keeps_failures():
    buf = io.StringIO()
    log = AccessLog(buf, success_sample_ratio=0.0)
    log.log(**REQUEST)
    log.log(**{**REQUEST, "response_code": 503, "response_flags": "UO"})
    log.log(**{**REQUEST, "response_code": 200, "response_flags": "DI"})
    log.log(**{**REQUEST, "response_code": 404})
    codes = [(r["response_code"], r["response_flags"]) for r in lines(buf)]
    assert codes == [(503, "UO"), (200, "DI"), (404, "-")]
    with pytest.raises(ValueError):
        AccessLog(buf, success_sample_ratio=2)


async def test_buffered_until_timer_or_flush():
    buf = io.StringIO()
    log = AccessLog(buf, flush_interval=0.05)
    log.log(**REQUEST)
    log.log(**REQUEST)
    assert buf.getvalue() == ""  # buffered on the loop
    deadline = time.monotonic() + 5
    while not buf.getvalue():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert len(lines(buf)) == 2  # one write for the batch
    log.log(**REQUEST)
    log.flush()
    assert len(lines(buf)) == 3
    log.close()
    log.log(**REQUEST)
    assert len(lines(buf)) == 3


async def test_large_buffer_flushes_at_once():
    buf = io.StringIO()
    log = AccessLog(buf, flush_interval=60, max_buffer=2000)
    for _ in range(5):
        log.log(**REQUEST)
    assert len(lines(buf)) >= 3  # ~600 characters a line
    log.close()
    assert len(lines(buf)) == 5


class Broken(io.StringIO):
    def write(self, s):
        raise BrokenPipeError("gone")


def test_write_errors_do_not_raise():
    log = AccessLog(Broken())
    log.log(**REQUEST)
    log.log(**REQUEST)
    assert log.dropped == 2
