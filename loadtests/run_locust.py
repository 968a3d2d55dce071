"""Run the locust scenario (loadtests/locustfile.py) against a real mini mesh, headless, bounded.

Starts the demo apps (inventory v1 and v2, payment v1) and one ``orders`` sidecar standalone from
a YAML config, runs locust headless for ``--run-time``, prints locust's stats, and exits non-zero
if the failure ratio is above ``--max-fail-ratio`` (default 1 %), if no request was made, or if
the sidecar died. Everything on 127.0.0.1; every process is stopped at the end, also on Ctrl-C.

    python loadtests/run_locust.py                      # 20 users, 10/s spawn, 20 s
    python loadtests/run_locust.py -u 50 -t 60s --twin  # pure-Python fast path
"""

from __future__ import annotations

import argparse
import csv
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

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: inventory}}
spec:
  hosts: [inventory.default.svc.cluster.local]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {inv1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {inv2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: payment}}
spec:
  hosts: [payment.default.svc.cluster.local]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {pay}}}, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: inventory}}
spec:
  host: inventory
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 1000, connectTimeout: 1s}}
      http: {{http1MaxPendingRequests: 1000, idleTimeout: 60s}}
    outlierDetection: {{consecutive5xxErrors: 50, interval: 10s, baseEjectionTime: 30s}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: inventory}}
spec:
  hosts: [inventory]
  http:
  - name: canary
    match: [{{headers: {{x-canary: {{exact: "yes"}}}}}}]
    route: [{{destination: {{host: inventory, subset: v2}}}}]
  - name: split
    timeout: 10s
    retries: {{attempts: 2, perTryTimeout: 5s, retryOn: "connect-failure,refused-stream"}}
    route:
    - {{destination: {{host: inventory, subset: v1}}, weight: 90}}
    - {{destination: {{host: inventory, subset: v2}}, weight: 10}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: payment}}
spec:
  hosts: [payment]
  http:
  - name: pay
    timeout: 10s
    route: [{{destination: {{host: payment}}}}]
"""

READY = re.compile(r"meshlet sidecar ready service=\S+ outbound=(\d+) inbound=(\d+) admin=(\d+)")


class Proc:
    ALL: list[Proc] = []

    def __init__(self, name: str, cmd: list[str], work: Path, environ: dict[str, str]) -> None:
        self.name = name
        self.err_path = work / f"{name}.err"
        self._fe = open(self.err_path, "wb")  # noqa: SIM115 - lives as long as the child
        self.p = subprocess.Popen(cmd, stdout=self._fe, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=environ, cwd=str(ROOT),
                                  start_new_session=True)  # fmt: skip
        Proc.ALL.append(self)

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._fe.close()


def wait_until(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def start_app(work: Path, name: str, version: str) -> int:
    pf = work / f"{name}-{version}.port"
    p = Proc(f"app-{name}-{version}", [PY, "-m", "control_plane.demo.apps", "--name", name,
                                       "--version", version, "--port", "0", "--port-file", str(pf)],
             work, env())  # fmt: skip

    def ready() -> bool:
        if not p.alive():
            raise RuntimeError(f"{p.name} exited:\n{p.stderr()[-2000:]}")
        return pf.exists()

    wait_until(ready, 20, p.name)
    return int(pf.read_text())


def parse_duration(s: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)([hms]?)", s):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "": 1}[unit]
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description="locust against apps + one orders sidecar (bounded).")
    ap.add_argument("-u", "--users", type=int, default=20)
    ap.add_argument("-r", "--spawn-rate", type=float, default=10)
    ap.add_argument("-t", "--run-time", default="20s", help="run time (20s; max 10m)")
    ap.add_argument("--max-fail-ratio", type=float, default=0.01, help="exit 1 above this (0.01)")
    ap.add_argument("--twin", action="store_true", help="sidecar on the pure-Python fast path")
    ap.add_argument("--access-log", action="store_true", help="keep the sidecar's access log on")
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args()
    run_s = parse_duration(args.run_time)
    if not 0 < run_s <= 600 or not 1 <= args.users <= 2000:
        ap.error("--run-time must be in (0, 10m] and --users in [1, 2000]")
    if not shutil.which("locust"):
        print("locust not found (pip install locust)", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="meshlet-locust-"))
    rc = 1
    try:
        inv1 = start_app(work, "inventory", "v1")
        inv2 = start_app(work, "inventory", "v2")
        pay = start_app(work, "payment", "v1")
        orders = start_app(work, "orders", "v1")
        cfg = work / "mesh.yaml"
        cfg.write_text(CONFIG.format(inv1=inv1, inv2=inv2, pay=pay))
        sc_env = env(MESHLET_NO_EXTENSIONS="1") if args.twin else env()
        cmd = [PY, "-m", "control_plane.cli", "sidecar", "--service", "orders",
               "--app-port", str(orders), "--config", str(cfg), "--outbound", "0", "--inbound", "0",
               "--admin", "0", "--inbound-bind", "127.0.0.1", "--drain-timeout", "2",
               "--log-level", "WARNING"]  # fmt: skip
        if not args.access_log:
            cmd.append("--no-access-log")
        sidecar = Proc("sidecar-orders", cmd, work, sc_env)

        def ready():
            if not sidecar.alive():
                raise RuntimeError(f"sidecar exited:\n{sidecar.stderr()[-3000:]}")
            return READY.search(sidecar.stderr())

        m = wait_until(ready, 30, "sidecar ready line")
        outbound, admin = int(m.group(1)), int(m.group(3))
        host = f"http://127.0.0.1:{outbound}"
        print(f"[run_locust] apps inventory v1={inv1} v2={inv2} payment={pay}; "
              f"sidecar outbound={outbound} admin={admin}; "
              f"locust -u {args.users} -r {args.spawn_rate} -t {args.run_time}",
              file=sys.stderr, flush=True)  # fmt: skip
        csv_prefix = work / "locust"
        lcmd = ["locust", "-f", str(HERE / "locustfile.py"), "--headless", "-u", str(args.users),
                "-r", str(args.spawn_rate), "-t", args.run_time, "--host", host,
                "--stop-timeout", "5", "--csv", str(csv_prefix), "--only-summary",
                "--loglevel", "WARNING"]  # fmt: skip
        lp = subprocess.Popen(lcmd, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                              start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            out, _ = lp.communicate(timeout=run_s + 60)
        except BaseException:
            os.killpg(lp.pid, signal.SIGKILL)
            lp.wait(5)
            raise
        print(out, flush=True)
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
        ratio = fails / total if total else 1.0
        failures_csv = Path(f"{csv_prefix}_failures.csv")
        if fails and failures_csv.exists():
            print("[run_locust] failures:\n" + failures_csv.read_text(), flush=True)
        status, metrics = 0, b""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
                status, metrics = r.status, r.read()
        except OSError as e:
            print(f"[run_locust] sidecar /metrics failed: {e}", file=sys.stderr)
        n_series = sum(1 for line in metrics.splitlines() if line and not line.startswith(b"#"))
        alive = sidecar.alive()
        print(f"[run_locust] requests={total} failures={fails} failure_ratio={ratio:.4%} "
              f"(max {args.max_fail_ratio:.2%}); locust rc={lp.returncode}; sidecar alive={alive}; "
              f"/metrics {status} with {n_series} series", flush=True)  # fmt: skip
        bad = re.compile(r"Traceback|ERROR|CRITICAL")
        errs = [ln for ln in sidecar.stderr().splitlines() if bad.search(ln)]
        if errs:
            print("[run_locust] sidecar logged errors:\n  " + "\n  ".join(errs[:20]), flush=True)
        rc = 0 if total > 0 and ratio <= args.max_fail_ratio and alive else 1
    except KeyboardInterrupt:
        print("[run_locust] interrupted; stopping everything", file=sys.stderr)
        rc = 130
    finally:
        for p in reversed(Proc.ALL):
            p.stop()
        if args.keep_workdir:
            print(f"[run_locust] workdir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
