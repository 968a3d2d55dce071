"""`meshlet demo --once`: the README's first command, end to end (control plane, five sidecars,
four apps, config applied with the CLI, every scenario checked by the demo itself)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT, env


@pytest.mark.slow
def test_demo_runs_every_scenario(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "control_plane.cli",
            "demo",
            "--once",
            "--requests",
            "60",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=str(ROOT),
        env=env(),
    )
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    for section in (
        "== 1. Canary",
        "== 2. Retries",
        "== 4. Circuit breaker",
        "== 3. Zero trust",
        "== 5. One trace",
    ):
        assert section in out
    assert "503/UO" in out
    assert "403 RBAC" in out
    assert "URI=spiffe://cluster.local/ns/default/sa/orders" in out
    assert out.count(" server GET") >= 2  # spans from more than one sidecar in the trace
