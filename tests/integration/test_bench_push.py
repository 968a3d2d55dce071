"""loadtests/bench_push.py keeps working: a small run (8 simulated sidecars in 2 client processes,
real mTLS streams, real ACKs) reports its figures, on SQLite and on two replicas on etcd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "loadtests" / "bench_push.py"


@pytest.mark.slow
def test_small_run_reports_latency_cpu_rss_and_push_counts(tmp_path):
    out = tmp_path / "push.json"
    run = subprocess.run([sys.executable, str(BENCH), "--sidecars", "8", "--procs", "2",
                          "--services", "2", "--applies", "2", "--pause", "0.1",
                          "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    [r] = json.loads(out.read_text())
    assert r["sidecars"] == 8 and r["nacks"] == 0 and len(r["all_s"]) == 2
    assert 0 < r["apply_to_last_ack_p50_s"] <= r["apply_to_last_ack_max_s"] < 30
    assert r["cp_rss_mb"] > 0 and r["cp_cpu_s_connect"] >= 0
    m = r["metrics"]
    assert m['meshlet_pushes_total{result="ok",type="full"}'] >= 8  # one per sidecar joining
    assert m['meshlet_pushes_total{result="ok",type="delta"}'] >= 16  # 2 applies x 8
    assert m["meshlet_proxy_convergence_seconds_count"] >= 16
    assert "N=    8" in run.stdout


@pytest.mark.slow
def test_two_replicas_on_etcd_small_run(tmp_path):
    """``--store etcd --replicas 2``: the bench starts a real etcd and two control-plane
    replicas on it, spreads the simulated sidecars over both, applies through the first and
    times the last ACK across both replicas' sidecars."""
    out = tmp_path / "push.json"
    run = subprocess.run([sys.executable, str(BENCH), "--store", "etcd", "--etcd-members", "1",
                          "--replicas", "2", "--sidecars", "10", "--procs", "2",
                          "--services", "2", "--applies", "2", "--pause", "0.1",
                          "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    [r] = json.loads(out.read_text())
    assert (r["store"], r["replicas"], r["etcd_members"]) == ("etcd", 2, 1)
    assert r["sidecars"] == 10 and r["nacks"] == 0 and len(r["all_s"]) == 2
    assert r["connected_per_replica"] == [5, 5]  # every sidecar's list starts at "its" replica
    assert 0 < r["apply_to_last_ack_p50_s"] <= r["apply_to_last_ack_max_s"] < 30
    assert len(r["cp_cpu_s_per_apply_each"]) == 2 and r["cp_rss_mb"] > 0
    assert "2 replica(s)" in run.stdout


def test_replicas_need_the_etcd_store():
    run = subprocess.run([sys.executable, str(BENCH), "--replicas", "2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "--replicas needs --store etcd" in run.stderr
