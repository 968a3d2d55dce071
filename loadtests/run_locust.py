"""Run the locust scenario (loadtests/locustfile.py) against ``meshlet demo``, headless, bounded.

Starts ``meshlet demo`` (the whole mesh: control plane, four apps, five sidecars), waits until it
is ready and its circuit-breaker scenario is over, runs locust headless against the frontend
sidecar for ``--run-time``, prints locust's stats and exits non-zero if any request failed
(``--max-fail-ratio``, default 0), if none was made, or if the demo died. Everything on
127.0.0.1; the demo and its processes are stopped at the end, also on Ctrl-C.

    pip install locust                                  # or: pip install '.[test]'
    python loadtests/run_locust.py                      # 10 users, 5/s spawn, 20 s
    python loadtests/run_locust.py -u 50 -t 60s --twin  # pure-Python fast path
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


def wait_until(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def start_demo(work: Path, environ: dict[str, str]) -> tuple[subprocess.Popen[bytes], dict]:
    """``meshlet demo --workdir WORK`` in the background; its addresses once it is ready."""
    log = open(work / "demo.out", "wb")  # noqa: SIM115 - the child keeps it
    p = subprocess.Popen([PY, "-m", "control_plane.cli", "demo", "--requests", "20",
                          "--workdir", str(work / "demo")], cwd=str(ROOT), stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environ)
    mesh_file = work / "demo" / "mesh.json"

    def ready() -> bool:
        if p.poll() is not None:
            raise RuntimeError("meshlet demo exited:\n"
                               + (work / "demo.out").read_text(errors="replace")[-3000:])
        return mesh_file.exists()

    wait_until(ready, 180, "meshlet demo to be ready")
    return p, json.loads(mesh_file.read_text())


def wait_for_breaker(front: str, orders: str = "orders", payment: str = "payment",
                     timeout: float = 60) -> None:
    """Until orders v2 reaches payment again: the demo's breaker scenario leaves that breaker
    open for 10 s (then half-open); load started inside that window sees 503 UO, rightly."""

    def closed() -> bool:
        req = urllib.request.Request(f"{front}/call/{payment}/pay",
                                     headers={"Host": orders, "x-canary": "always"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read()).get("upstream_status") == 200
        except (OSError, ValueError):
            return False

    for _ in range(3):  # half-open lets a few calls through: three in a row mean closed
        wait_until(closed, timeout, "orders v2's breaker towards payment to close")


def run_locust(host: str, users: int, spawn_rate: float, run_time: str, csv_prefix: Path,
               timeout: float) -> tuple[int, int, str]:
    """Locust headless against ``host``: (requests, failures, its printed summary), read from
    locust's own stats."""
    cmd = [PY, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "-u", str(users),
           "-r", str(spawn_rate), "-t", run_time, "--host", host, "--stop-timeout", "5",
           "--csv", str(csv_prefix), "--only-summary", "--loglevel", "WARNING"]
    lp = subprocess.Popen(cmd, cwd=str(ROOT), stdin=subprocess.DEVNULL, start_new_session=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = lp.communicate(timeout=timeout)
    except BaseException:
        os.killpg(lp.pid, signal.SIGKILL)
        lp.wait(5)
        raise
    total = fails = 0
    # the printed summary is final; the CSV can lag it by the last second of requests
    m = re.search(r"^\s+Aggregated\s+(\d+)\s+(\d+)\(", out, re.M)
    if m:
        total, fails = int(m.group(1)), int(m.group(2))
    else:
        with open(f"{csv_prefix}_stats.csv") as f:
            for row in csv.DictReader(f):
                if row["Name"] == "Aggregated":
                    total, fails = int(row["Request Count"]), int(row["Failure Count"])
    failures_csv = Path(f"{csv_prefix}_failures.csv")
    if fails and failures_csv.exists():
        out += "\nfailures:\n" + failures_csv.read_text()
    return total, fails, out


def parse_duration(s: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)([hms]?)", s):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "": 1}[unit]
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description="locust against `meshlet demo` (bounded).")
    ap.add_argument("-u", "--users", type=int, default=10)
    ap.add_argument("-r", "--spawn-rate", type=float, default=5)
    ap.add_argument("-t", "--run-time", default="20s", help="run time (20s; max 10m)")
    ap.add_argument("--max-fail-ratio", type=float, default=0.0, help="exit 1 above this (0)")
    ap.add_argument("--twin", action="store_true", help="the mesh on the pure-Python fast path")
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args()
    run_s = parse_duration(args.run_time)
    if not 0 < run_s <= 600 or not 1 <= args.users <= 2000:
        ap.error("--run-time must be in (0, 10m] and --users in [1, 2000]")
    if importlib.util.find_spec("locust") is None:
        print("locust not found: pip install locust (or pip install '.[test]')", file=sys.stderr)
        return 2

    def on_term(signum, frame):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="meshlet-locust-"))
    rc, demo = 1, None
    try:
        demo, mesh = start_demo(work, env(MESHLET_NO_EXTENSIONS="1") if args.twin else env())
        host = mesh["frontend"]
        wait_for_breaker(host)
        print(f"[run_locust] meshlet demo ready, frontend {host}; locust -u {args.users} "
              f"-r {args.spawn_rate} -t {args.run_time}", file=sys.stderr, flush=True)
        total, fails, out = run_locust(host, args.users, args.spawn_rate, args.run_time,
                                       work / "locust", run_s + 60)
        print(out, flush=True)
        ratio = fails / total if total else 1.0
        alive = demo.poll() is None
        status = 0
        try:
            with urllib.request.urlopen(mesh["metrics"]["frontend-v1"], timeout=5) as r:
                status = r.status
        except OSError as e:
            print(f"[run_locust] frontend sidecar /metrics failed: {e}", file=sys.stderr)
        print(f"[run_locust] requests={total} failures={fails} failure_ratio={ratio:.4%} "
              f"(max {args.max_fail_ratio:.2%}); demo alive={alive}; /metrics {status}",
              flush=True)
        rc = 0 if total > 0 and ratio <= args.max_fail_ratio and alive else 1
    except KeyboardInterrupt:
        print("[run_locust] interrupted; stopping everything", file=sys.stderr)
        rc = 130
    finally:
        if demo is not None and demo.poll() is None:
            demo.send_signal(signal.SIGINT)  # the demo stops its whole mesh
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                demo.kill()  # its children follow it (parent-death signal)
                demo.wait()
        if args.keep_workdir:
            print(f"[run_locust] workdir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
