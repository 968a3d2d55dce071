"""`meshlet demo`, the README's first command, end to end: ``--once`` (control plane, five
sidecars, four apps, config applied with the CLI, every scenario checked by the demo itself), and
the running demo as a user meets it: the addresses it prints work, the proxy-config hint works,
locust's scenario runs against it without a failure, and a SIGKILL of the demo leaves nothing
behind."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

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
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=str(ROOT),
        env=env(TMPDIR=str(tmp_path)),
    )
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    for section in (
        "== 1. Canary",
        "== 2. Retries",
        "== 4. Circuit breaker",
        "== 3. Zero trust",
        "== 5. One trace",
        "== 6. Progressive delivery",
    ):
        assert section in out
    # the canary controller promoted the healthy v2 and rolled the faulty v3 back, saying why
    assert "promoted: v2 serves 100% of orders" in out
    assert "rolled back: v3 at 20%: success rate was " in out
    assert "all traffic back on v2" in out
    assert "503/UO" in out
    assert "403 RBAC" in out
    assert "URI=spiffe://cluster.local/ns/default/sa/orders" in out
    assert out.count(" server GET") >= 2  # spans from more than one sidecar in the trace
    # --once: the mesh and its temporary folder are gone at exit, so neither is printed
    assert "http://" not in out and "https://" not in out and str(tmp_path) not in out, out
    assert "Run `meshlet demo` to keep it\n   running" in out
    assert list(tmp_path.iterdir()) == []  # its temporary folder was removed


class RunningDemo:
    """``meshlet demo`` (no --once) in the background, its stdout in a file."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.out_path = work / "demo.out"
        self.out = open(self.out_path, "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "control_plane.cli", "demo", "--requests", "20",
             "--workdir", str(work / "demo")],
            cwd=str(ROOT), env=env(), stdout=self.out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        while not (work / "demo" / "mesh.json").exists():
            assert self.proc.poll() is None, "demo exited:\n" + self.text()
            assert time.monotonic() < deadline, "demo not ready:\n" + self.text()
            time.sleep(0.2)
        while "   Logs: " not in self.text():  # the usage block follows mesh.json at once
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.05)
        self.mesh = json.loads((work / "demo" / "mesh.json").read_text())

    def text(self) -> str:
        return self.out_path.read_text(errors="replace")

    def children(self) -> list[int]:
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(stat.parent.name))
        return pids

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = RunningDemo(tmp_path_factory.mktemp("demo"))
    yield d
    d.stop()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.slow
def test_running_demo_says_how_to_use_it_and_it_works(demo):
    out = demo.text()
    block = out[out.index("== Use this mesh"):]
    front = demo.mesh["frontend"]
    assert re.search(rf"sidecar \(127\.0\.0\.1:{front.rsplit(':', 1)[1]}\)", block)
    curls = [ln.split("#")[0].strip() for ln in block.splitlines()
             if ln.strip().startswith("curl -s -H")]
    assert len(curls) == 3
    answers = []
    for line in curls:  # the printed lines, run as printed
        r = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (line, r.stderr)
        answers.append(json.loads(r.stdout))
    assert answers[0]["service"] == "orders"
    assert answers[1]["version"] == "v2"
    assert answers[2]["upstream"]["service"] == "inventory"
    for name, url in demo.mesh["metrics"].items():
        assert re.search(rf"^ +{name} +curl -s {re.escape(url)}$", block, re.M), name
        r = subprocess.run(["curl", "-sf", url], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (name, r.stderr)
        if name == "frontend-v1":
            assert "istio_requests_total{" in r.stdout
    # the hint it prints, as printed, with the data dir it prints
    data_dir = re.search(r"export MESHLET_DATA_DIR=(\S+)", block)[1]
    r = subprocess.run([sys.executable, "-m", "control_plane.cli", "proxy-config", "routes",
                        "frontend-v1"], capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                       env={**env(MESHLET_DATA_DIR=data_dir), "MESHLET_CONTROL_PLANE": ""})
    assert r.returncode == 0, r.stderr
    assert any(ln.split()[:5] == ["orders.default.svc.cluster.local", "headers", "x-canary",
                                  "exact", "always"] for ln in r.stdout.splitlines()), r.stdout
    assert "     meshlet canary status orders " in block
    r = subprocess.run([sys.executable, "-m", "control_plane.cli", "canary", "status", "orders"],
                       capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                       env={**env(MESHLET_DATA_DIR=data_dir), "MESHLET_CONTROL_PLANE": ""})
    assert r.returncode == 0, r.stderr
    assert "phase:          Failed\n" in r.stdout and "all traffic back on v2" in r.stdout


@pytest.mark.slow
def test_locust_scenario_against_the_demo_has_no_failure(demo, tmp_path):
    from loadtests.run_locust import run_locust, wait_for_breaker

    wait_for_breaker(demo.mesh["frontend"])
    total, fails, out = run_locust(demo.mesh["frontend"], 5, 5, "10s", tmp_path / "locust", 90)
    assert total > 50 and fails == 0, out


@pytest.mark.slow
def test_sigkill_of_the_demo_takes_its_processes_with_it(demo):
    kids = demo.children()
    assert len(kids) == 12, kids  # control plane, five apps, six sidecars
    demo.proc.kill()
    demo.proc.wait()
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in kids):
        assert time.monotonic() < deadline, [pid for pid in kids if alive(pid)]
        time.sleep(0.1)
