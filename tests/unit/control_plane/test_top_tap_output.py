"""`meshlet top` and `meshlet tap` human output against golden files (UPDATE_GOLDEN=1 rewrites
them), and tap's refusal to print anything but its summary fields."""

from __future__ import annotations

import json

from control_plane.cli.commands import tap, top
from tests.unit.control_plane.test_cli_output import golden

EDGES = {"window": "1m", "edges": [
    {"reporter": "source", "source": {"workload": "frontend", "namespace": "default",
                                      "version": "v1"},
     "destination": {"service": "orders.default.svc.cluster.local", "name": "orders",
                     "namespace": "default", "version": "v1"},
     "requests": 480, "failures": 0, "rps": 8.0, "success_rate": 1.0, "p50_ms": 3.21,
     "p90_ms": 7.5, "p99_ms": 24.0, "mtls": True},
    {"reporter": "destination", "source": {"workload": "unknown", "namespace": "unknown",
                                           "version": "unknown"},
     "destination": {"service": "orders.default.svc.cluster.local", "name": "orders",
                     "namespace": "default", "version": "v2"},
     "requests": 120, "failures": 6, "rps": 2.0, "success_rate": 0.95, "p50_ms": 480.0,
     "p90_ms": 900.0, "p99_ms": 2400.0, "mtls": False},
    {"reporter": "source", "source": {"workload": "frontend", "namespace": "default",
                                      "version": "v1"},
     "destination": {"service": "redis.default.svc.cluster.local", "name": "redis",
                     "namespace": "default", "version": "unknown"},
     "requests": 0, "failures": 0, "rps": 0.0, "success_rate": None, "p50_ms": None,
     "p90_ms": None, "p99_ms": None, "mtls": False, "tcp_connections": 3,
     "tcp_sent_bytes": 1536, "tcp_received_bytes": 42},
]}
SERVICES = {"window": "10m", "services": [
    {"service": "orders.default.svc.cluster.local", "name": "orders", "namespace": "default",
     "version": "v1", "rps": 0.8, "success_rate": 0.9975, "p50_ms": 3.0, "p99_ms": 99.0},
]}
ROUTES = {"window": "1m", "routes": [
    {"service": "orders.default.svc.cluster.local", "name": "orders", "route": "canary-split",
     "rps": 10.0, "success_rate": 1.0, "p50_ms": 2.5, "p99_ms": 9.9,
     "destinations": [{"host": "orders.default.svc.cluster.local", "subset": "v1", "weight": 80},
                      {"host": "orders.default.svc.cluster.local", "subset": "v2", "weight": 20}]},
    {"service": "orders.default.svc.cluster.local", "name": "orders", "route": "canary-testers",
     "rps": 0.0, "success_rate": None, "p50_ms": None, "p99_ms": None,
     "destinations": [{"host": "orders.default.svc.cluster.local", "subset": "v2",
                       "weight": 100}]},
]}
EVENT = {"type": "event", "ts": 1_800_000_000.0, "direction": "inbound", "workload": "orders-v1",
         "method": "POST", "authority": "orders", "path": "/pay", "status": 201, "flags": "-",
         "latency_ms": 4.25, "route": "", "upstream": "127.0.0.1:8080", "upstream_cluster": "inbound",
         "source": "spiffe://cluster.local/ns/default/sa/frontend",
         "destination": "spiffe://cluster.local/ns/default/sa/orders", "mtls": True}


def test_top_edges():
    golden("top_edges.txt", top.render("edges", EDGES))


def test_top_services():
    golden("top_services.txt", top.render("services", SERVICES))


def test_top_routes_show_the_split():
    golden("top_routes.txt", top.render("routes", ROUTES))


def test_top_empty():
    assert top.render("routes", {"window": "10m", "routes": []}) == \
        "no routes with traffic in the last 10m"


def test_tap_lines():
    out = "\n".join(filter(None, (
        tap.render_line({"type": "started", "service": "orders.default",
                         "sidecars": ["a", "b"]}, "text"),
        tap.render_line(EVENT, "text"),
        tap.render_line({**EVENT, "direction": "outbound", "method": "GET", "path": "/items",
                         "authority": "inventory", "status": 503, "flags": "UO",
                         "route": "inventory.0", "mtls": False}, "text"),
        tap.render_line({"type": "end", "events": 2, "dropped": 7}, "text"),
    )))
    golden("tap.txt", out)


def test_tap_prints_only_summary_fields_and_escapes_control_characters():
    hostile = {**EVENT, "authorization": "Bearer s3cret", "cookie": "a=s3cret",
               "headers": {"authorization": "Bearer s3cret"}, "body": "s3cret",
               "path": "/x\x1b[2J\r\nfake line"}
    text = tap.render_line(hostile, "text")
    js = tap.render_line(hostile, "json")
    assert "s3cret" not in text and "s3cret" not in js
    assert "\x1b" not in text and "\n" not in text and "/x\\x1b[2J\\x0d\\x0afake\\x20line" in text
    assert set(json.loads(js)) == set(tap.FIELDS)
