"""The Grafana dashboard queries valid PromQL over metric names meshlet actually exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from proxy.telemetry.metrics import MeshletMetrics, RequestMetrics, render

DASHBOARD = Path(__file__).parents[3] / "configs" / "grafana" / "meshlet-dashboard.json"

SUBST = {
    "$__rate_interval": "1m",
    "$reporter": "destination",
    "$destination_service": ".*",
    "$destination_version": ".*",
}


def exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            e = t["expr"]
            for k, v in SUBST.items():
                e = e.replace(k, v)
            out.append(e)
    return out


def exposed_names() -> set[str]:
    r = CollectorRegistry()
    RequestMetrics(r).series(reporter="destination").record(200, "-", "", 1, 1, 1)
    mm = MeshletMetrics(r, version="0", fastpath="python")
    for m in (
        mm.retries.labels(destination_service="a", reason="5xx"),
        mm.retry_budget_skipped.labels(destination_service="a"),
        mm.bulkhead_rejected.labels(destination_service="a"),
        mm.circuit_breaker_not_permitted.labels(destination_service="a"),
    ):
        m.inc()
    mm.outlier_ejected_endpoints.labels(destination_service="a").set(0)
    mm.set_breaker_state("a", "closed")
    return {s.name for f in text_string_to_metric_families(render(r).decode()) for s in f.samples}


def test_dashboard_covers_rate_errors_latency():
    d = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in d["panels"]}
    assert {"Request rate", "Error rate (5xx share)", "Latency p50", "Latency p99"} <= titles
    joined = "\n".join(exprs())
    assert "histogram_quantile(0.50" in joined and "histogram_quantile(0.99" in joined
    assert "by (le, destination_service, destination_version)" in joined


def test_dashboard_metric_names_are_exposed():
    names = set(re.findall(r"\b((?:istio|meshlet)_[a-z_]+)", "\n".join(exprs())))
    assert names
    assert names <= exposed_names(), names - exposed_names()


def test_dashboard_promql_parses(tmp_path):
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs())
                ],
            }
        ]
    }
    f = tmp_path / "rules.json"  # JSON is YAML
    f.write_text(json.dumps(rules))
    proc = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, timeout=60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
