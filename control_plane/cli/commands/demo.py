"""``meshlet demo``: the whole mesh on loopback, driven and explained in one command.

It starts a control plane, the sample services ``orders`` (v1, a v2 canary and a faulty v3),
``inventory``
and ``payment``, each behind its own sidecar that joins with a join token, plus a ``frontend``
sidecar that plays the caller. It applies ``configs/demo/`` (shipped inside the package) and then
shows, with real traffic: the canary split, retries hiding a flaky dependency, a circuit breaker
tripping, a call denied by an AuthorizationPolicy, mTLS identities, one trace across the hops
(spans collected by an OTLP receiver the demo runs itself), and two rollouts by the canary
controller (v2 promoted, v3 rolled back). Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import gzip
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

NAME = "demo"
HELP = "run the demo mesh on loopback and show what it does (Ctrl-C stops it)"

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "demo" / "config"
CANARY_DIR = CONFIG_DIR.parent / "canary"
#: faults of the demo's versions: orders v3 is the faulty canary scenario 6 rolls back
APP_ARGS = {("orders", "v3"): ["--fail-percent", "30"]}
PY = sys.executable


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", help="where logs and state go (default: a temporary folder)")
    p.add_argument("--once", action="store_true", help="run the scenarios once and exit")
    p.add_argument("--requests", type=int, default=100, help="requests for the canary split")


def free_port_below_ephemeral() -> int:
    """A port free now, picked below the kernel's ephemeral range: the demo learns a port here
    and a child binds it a moment later, and a port from the ephemeral range can be taken in
    between by any outgoing connection or port-0 bind on the host (seen under parallel test
    runs). Ports below that range are only ever taken by an explicit bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(10000, max(low, 10001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # every pick taken: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when the demo dies, however
    it dies (SIGKILL, its terminal gone): the children run in sessions of their own, so nothing
    else would reach them. Linux only; elsewhere the children are stopped only on a clean exit."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def tie() -> None:  # runs in the child between fork and exec: nothing that allocates much
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the demo died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return tie


_PR_SET_PDEATHSIG = 1


class _Procs:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._tie = _parent_death_signal()
        self.specs: dict[str, dict[str, object]] = {}  # for mesh.json (control_plane/chaos)

    def start(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        p = subprocess.Popen(
            [PY, "-m", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env or _env(),
            start_new_session=True,
            preexec_fn=self._tie,  # noqa: PLW1509 - only prctl and getppid run in the child
        )
        self.procs.append((name, p))
        self.specs[name] = {
            "pid": p.pid,
            "argv": [PY, "-m", *args],
            "env": {k: v for k, v in (env or {}).items() if k.startswith("OTEL_")},
            "log": str(self.work / f"{name}.log"),
        }
        return p

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        _stop_restarted(self.work, {p.pid for _, p in self.procs})


MESH_STATE = "mesh.json"


def _write_mesh_state(
    work: Path, procs: _Procs, url: str, data: Path, ports: dict[str, dict[str, int]], front: int
) -> Path:
    """``mesh.json``: what chaos experiments (control_plane/chaos) need to act on this mesh:
    every process with its command line (to kill, pause or restart it), every sidecar's ports,
    the control plane's address and data dir."""
    state = {
        "owner_pid": os.getpid(),  # restarts are for a live mesh only
        "control_plane": {"url": url, "data_dir": str(data)},
        "frontend_outbound": front,
        "processes": procs.specs,
        "sidecars": ports,
    }
    path = work / MESH_STATE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _stop_restarted(work: Path, own: set[int]) -> None:
    """Processes a chaos experiment restarted (recorded in mesh.json) are ours to stop too."""
    try:
        state = json.loads((work / MESH_STATE).read_text())
    except (OSError, ValueError):
        return
    for spec in (state.get("processes") or {}).values():
        pid = int(spec.get("pid") or 0)
        if pid and pid not in own and _runs(pid, spec.get("argv") or []):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGCONT)
                os.killpg(pid, signal.SIGTERM)


def _runs(pid: int, argv: list[str]) -> bool:
    """``pid`` is still the process started with ``argv`` (not a recycled pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
    except OSError:
        return False
    return [a.encode() for a in argv[1:4]] == cmd[1:4]


def _env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])
    e["PYTHONPATH"] = root + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _last_line(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _ready(admin: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


class _Receiver:
    """A tiny OTLP/HTTP traces endpoint, so the demo can print a trace without a backend."""

    def __init__(self) -> None:
        self.spans: list[dict[str, object]] = []
        self.port = 0
        self.runner = None

    async def start(self) -> None:
        from aiohttp import web
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            if request.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            msg = ExportTraceServiceRequest()
            msg.ParseFromString(body)
            for rs in msg.resource_spans:
                svc = next(
                    (
                        kv.value.string_value
                        for kv in rs.resource.attributes
                        if kv.key == "service.name"
                    ),
                    "?",
                )
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        attrs = {
                            kv.key: getattr(kv.value, kv.value.WhichOneof("value"))
                            for kv in sp.attributes
                        }
                        self.spans.append(
                            {
                                "service": svc,
                                "trace": sp.trace_id.hex(),
                                "id": sp.span_id.hex(),
                                "parent": sp.parent_span_id.hex(),
                                "kind": sp.kind,
                                "name": sp.name,
                                "attrs": attrs,
                                "ms": (sp.end_time_unix_nano - sp.start_time_unix_nano) / 1e6,
                            }
                        )
            return web.Response(body=b"", content_type="application/x-protobuf")

        app = web.Application()
        app.router.add_post("/v1/traces", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def _say(text: str = "") -> None:
    print(text, flush=True)


async def _scenarios(front: int, apps: dict[str, int], receiver: _Receiver, n: int) -> int:
    import aiohttp

    failures = 0
    base = f"http://127.0.0.1:{front}"
    async with aiohttp.ClientSession() as s:

        async def get(host: str, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
            async with s.get(base + path, headers={"Host": host, **headers}) as r:
                return r.status, dict(r.headers), await r.text()

        _say("\n== 1. Canary: orders v1 80 %, v2 20 % (VirtualService weights) ==")
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(n):
            status, _, text = await get("orders", "/orders")
            counts[json.loads(text).get("version", "?") if status == 200 else str(status)] += 1
        for k in sorted(counts):
            _say(f"   {k}: {counts[k]:4d}  {'#' * (counts[k] * 50 // n)}")
        status, _, text = await get("orders", "/orders", **{"x-canary": "always"})
        _say(f"   with x-canary: always -> {json.loads(text)['version']} (header match)")
        failures += counts.get("v1", 0) == 0 or counts.get("v2", 0) == 0

        _say(
            "\n== 2. Retries: inventory fails twice with 503, the sidecar retries "
            "(GET is idempotent) =="
        )
        async with s.post(f"http://127.0.0.1:{apps['inventory']}/flaky/reset") as r:
            await r.read()
        status, headers, text = await get("inventory", "/flaky?n=2&code=503")
        seen = json.loads(text) if status == 200 else {}
        _say(
            f"   answer {status}, after "
            f"{seen.get('headers', {}).get('x-envoy-attempt-count', '1')} attempts;"
            " the caller never saw the 503s"
        )
        failures += status != 200

        _say("\n== 3. Zero trust: every hop is mTLS with SPIFFE identities ==")
        status, _, text = await get("orders", "/call/payment/pay")
        data = json.loads(text)
        xfcc = (
            data.get("upstream", {}).get("headers", {}).get("x-forwarded-client-cert", "")
            if isinstance(data.get("upstream"), dict)
            else ""
        )
        _say(f"   orders -> payment: {data.get('upstream_status')} (allowed); payment saw {xfcc}")
        status, _, text = await get("inventory", "/call/payment/pay")
        data = json.loads(text)
        _say(
            f"   inventory -> payment: {data.get('upstream_status')} {data.get('upstream_flags')} "
            f"(AuthorizationPolicy payment-from-orders: only orders may call payment)"
        )
        failures += data.get("upstream_status") != 403

        _say("\n== 4. Circuit breaker: payment keeps failing, orders' sidecar opens its breaker ==")
        row = []
        for _ in range(14):
            status, headers, text = await get(
                "orders", "/call/payment/status/500", **{"x-canary": "always"}
            )
            data = json.loads(text)
            flag = data.get("upstream_flags") or ""
            row.append(f"{data.get('upstream_status')}{'/' + flag if flag else ''}")
        _say("   " + " ".join(row))
        _say("   500 = payment failed; 503/UO = refused by the open breaker: payment is spared and")
        _say("   orders fails fast instead of waiting (ResiliencePolicy, Resilience4j semantics)")
        failures += "503/UO" not in row

        _say("\n== 5. One trace across the mesh (OpenTelemetry spans from every sidecar) ==")
        trace = os.urandom(16).hex()
        status, headers, text = await get(
            "orders", "/call/inventory/items", traceparent=f"00-{trace}-{os.urandom(8).hex()}-01"
        )
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline and sum(sp["trace"] == trace for sp in receiver.spans) < 4
        ):
            await asyncio.sleep(0.1)
        new = [sp for sp in receiver.spans if sp["trace"] == trace]
        if new:
            spans = new
            by_parent: dict[str, list[dict[str, object]]] = collections.defaultdict(list)
            ids = {sp["id"] for sp in spans}
            for sp in spans:
                by_parent[str(sp["parent"]) if sp["parent"] in ids else ""].append(sp)

            def show(parent: str, depth: int) -> None:
                for sp in by_parent.get(parent, []):
                    kind = {2: "server", 3: "client"}.get(int(sp["kind"]), "?")  # type: ignore[call-overload]
                    _say(
                        f"   {'  ' * depth}{sp['service']:<20} {kind:<6} {sp['name']:<24} "
                        f"{sp['attrs'].get('http.response.status_code')} {sp['ms']:.1f} ms"
                    )  # type: ignore[union-attr]
                    show(str(sp["id"]), depth + 1)

            _say(f"   trace {trace}")
            show("", 0)
        else:
            _say("   (no spans arrived)")
            failures += 1
    return failures


async def _progressive(front: int, data: Path, url: str, apply: Callable[[Path], str]) -> int:
    """Scenario 6: two rollouts by the canary controller under a steady load, every decision
    printed with its reason as the controller takes it."""
    import ssl

    import aiohttp

    ctx = ssl.create_default_context(cafile=str(data / "ca" / "trust-bundle.pem"))
    auth = {"Authorization": "Bearer " + (data / "admin.token").read_text().strip()}
    failures = 0
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as s:

        async def load() -> None:
            # about 50 requests a second into orders, for at most a minute
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{front}/orders",
                                     headers={"Host": "orders"}) as r:
                        await r.read()
                await asyncio.sleep(0.08)

        async def follow() -> dict:
            seen = 0
            deadline = time.monotonic() + 45
            status: dict = {}
            while time.monotonic() < deadline:
                async with s.get(f"{url}/v1/canaries/default/orders", headers=auth,
                                 ssl=ctx) as r:
                    status = (await r.json()).get("status") or {}
                events = status.get("events") or []
                for ev in events[seen:]:
                    t0 = events[0]["time"]
                    _say(f"   +{ev['time'] - t0:4.1f}s  {ev['weight']:3d}%  {ev['reason']}")
                seen = len(events)
                if status.get("phase") in ("Succeeded", "Failed"):
                    break
                await asyncio.sleep(0.25)
            return status

        loaders = [asyncio.ensure_future(load()) for _ in range(4)]
        try:
            _say("   orders v2 (healthy), from v1: checks every 2 s, 20 % -> 50 % -> 100 %")
            apply(CANARY_DIR / "orders-v2.yaml")
            status = await follow()
            failures += status.get("phase") != "Succeeded"
            _say("   orders v3 (30 % of its answers are 500), from v2:")
            apply(CANARY_DIR / "orders-v3.yaml")
            status = await follow()
            failures += status.get("phase") != "Failed"
        finally:
            stop.set()
            await asyncio.gather(*loaders, return_exceptions=True)
    _say("   every decision, with what was measured: meshlet canary status orders")
    return failures


def run(args: argparse.Namespace) -> int:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="meshlet-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    procs = _Procs(work)
    keep = bool(args.workdir)
    try:
        return asyncio.run(_main(work, procs, args))
    except KeyboardInterrupt:
        _say("\nstopping the demo mesh ...")
        return 0
    except RuntimeError as exc:
        keep = True  # the logs say why: the folder they are in must outlive the demo
        print(f"meshlet demo: {exc} (logs in {work})", file=sys.stderr)
        return 1
    finally:
        procs.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class _Mesh:
    """What a user needs to reach the running demo mesh (see :func:`_usage`)."""

    work: Path
    data_dir: Path
    url: str
    front: int = 0  # the frontend sidecar's outbound port: where "the app" sends its calls
    admins: dict[str, int] = field(default_factory=dict)  # sidecar name -> admin port

    def write(self, path: Path) -> None:
        """The addresses as JSON (``WORKDIR/mesh.json``), for scripts that drive the running
        demo (loadtests/run_locust.py): written once the mesh is ready, gone with the mesh."""
        try:  # the chaos state (processes, ports) written before the scenarios stays
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
        doc.setdefault("control_plane", {"url": self.url, "data_dir": str(self.data_dir)})
        doc.update({
            "frontend": f"http://127.0.0.1:{self.front}",
            "data_dir": str(self.data_dir),
            "dashboard": f"{self.url}/ui/",
            "metrics": {n: f"http://127.0.0.1:{p}/metrics" for n, p in self.admins.items()},
        })
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(path)


def _usage(mesh: _Mesh, once: bool, work_kept: bool) -> list[str]:
    """The closing "how to use this mesh" block: one place, so a new address (a dashboard)
    is one more line here. Only what stays valid is printed: with ``--once`` the mesh stops
    at exit, so its addresses are not shown."""
    if once:
        lines = ["", "== Next ==",
                 "   The mesh stopped with the demo (--once). Run `meshlet demo` to keep it",
                 "   running and send your own traffic into it."]
        if work_kept:
            lines.append(f"   logs: {mesh.work}")
        return lines
    front = f"http://127.0.0.1:{mesh.front}"
    width = max(len(n) for n in mesh.admins)
    ro_token = mesh.data_dir / "readonly.token"
    return [
        "",
        "== Use this mesh (it keeps running until Ctrl-C) ==",
        f"   Send your own traffic through the frontend's sidecar (127.0.0.1:{mesh.front}), as",
        "   an app does: the Host header names the service.",
        f"     curl -s -H 'Host: orders' {front}/orders",
        f"     curl -s -H 'Host: orders' -H 'x-canary: always' {front}/orders      # always v2",
        f"     curl -s -H 'Host: orders' {front}/call/inventory/items   # orders calls inventory",
        "   The control plane, from another terminal:",
        f"     export MESHLET_DATA_DIR={mesh.data_dir}",
        "     meshlet proxy-status",
        "     meshlet proxy-config routes frontend-v1",
        "     meshlet canary status orders             # the last rollout, decision by decision",
        f"   Dashboard: {mesh.url}/ui/ (sign in with the token in {ro_token})",
        "   Metrics (Prometheus text) of each sidecar:",
        *(f"     {name:<{width}}  curl -s http://127.0.0.1:{port}/metrics"
          for name, port in mesh.admins.items()),
        f"   Load: locust -f loadtests/locustfile.py --headless -u 10 -r 5 -t 30s --host {front}",
        "   Chaos (pip install -e '.[chaos]'):",
        f"     meshlet chaos run configs/chaos/payment-slow.yaml --mesh {mesh.work / 'mesh.json'}",
        f"   Logs: {mesh.work}",
    ]


async def _main(work: Path, procs: _Procs, args: argparse.Namespace) -> int:
    try:
        return await _run_mesh(work, procs, args)
    finally:
        # stop the mesh while this loop still serves the span receiver, so sidecars flushing
        # their last spans at exit are not left waiting on a closed port
        await asyncio.to_thread(procs.stop)


async def _run_mesh(work: Path, procs: _Procs, args: argparse.Namespace) -> int:
    receiver = _Receiver()
    await receiver.start()
    data = work / "control-plane"
    if args.workdir or not args.once:  # a temporary folder of a --once run is gone at exit
        _say(f"meshlet demo: work dir {work}")
    cp = procs.start(
        "control-plane",
        ["control_plane.cli", "control-plane", "--data-dir", str(data), "--listen", "127.0.0.1:0"],
    )
    await asyncio.to_thread(
        _wait,
        lambda: (data / "listen.addr").exists() or cp.poll() is not None,
        30,
        "the control plane",
    )
    if cp.poll() is not None:
        raise RuntimeError("the control plane did not start")
    url = "https://" + (data / "listen.addr").read_text().strip()
    cli_env = _env(MESHLET_DATA_DIR=str(data), MESHLET_CONTROL_PLANE=url)

    def cli(*a: str) -> str:
        r = subprocess.run(
            [PY, "-m", "control_plane.cli", *a],
            capture_output=True,
            text=True,
            env=cli_env,
            timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"meshlet {' '.join(a)} failed: {r.stderr.strip()}")
        return r.stdout

    _say("control plane up" + ("" if args.once else f" at {url}"))
    otel = _env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
        OTEL_BSP_SCHEDULE_DELAY="200",
        # reports several times per canary interval (2 s), so every interval has its data
        MESHLET_STATS_INTERVAL="0.5",
    )
    workloads = [
        ("orders", "v1"),
        ("orders", "v2"),
        ("orders", "v3"),
        ("inventory", "v1"),
        ("payment", "v1"),
        ("frontend", "v1"),
    ]
    admins: dict[str, int] = {}
    sidecars: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, dict[str, int]] = {}
    apps: dict[str, int] = {}
    front = 0
    for svc, ver in workloads:
        name = f"{svc}-{ver}"
        token = work / f"{svc}.token"
        if not token.exists():
            token.write_text(cli("token", "create", "--service", svc).strip())
        app_port, out_port, in_port, admin = (free_port_below_ephemeral() for _ in range(4))
        if svc != "frontend":
            procs.start(
                f"app-{name}",
                [
                    "control_plane.demo.apps",
                    "--name",
                    svc,
                    "--version",
                    ver,
                    "--port",
                    str(app_port),
                    "--outbound",
                    f"127.0.0.1:{out_port}",
                    *APP_ARGS.get((svc, ver), []),
                ],
            )
            apps.setdefault(svc, app_port)
        else:
            front = out_port
        sidecars[name] = procs.start(
            f"sidecar-{name}",
            [
                "control_plane.cli",
                "sidecar",
                "--service",
                svc,
                "--version",
                ver,
                "--app-port",
                str(app_port),
                "--control-plane",
                url,
                "--token-file",
                str(token),
                "--outbound",
                str(out_port),
                "--inbound",
                str(in_port),
                "--admin",
                str(admin),
                "--inbound-bind",
                "127.0.0.1",
                "--state-dir",
                str(work / f"state-{name}"),
                "--no-access-log",
            ],
            env=otel,
        )
        admins[name] = admin
        ports[name] = {
            "admin": admin, "outbound": out_port, "inbound": in_port, "app": app_port
        }
    for name, admin in admins.items():
        p = sidecars[name]
        await asyncio.to_thread(
            _wait, lambda a=admin, p=p: _ready(a) or p.poll() is not None, 60, f"sidecar {name}"
        )
        if p.poll() is not None:  # say why in one line: its last words
            raise RuntimeError(f"sidecar {name} exited: {_last_line(work / f'sidecar-{name}.log')}")
    _say("sidecars up: " + ", ".join(admins))
    _say(cli("apply", "-f", str(CONFIG_DIR)).rstrip())
    # every sidecar has the config and sees every peer before traffic starts
    await asyncio.to_thread(
        _wait,
        lambda: cli("proxy-status").count("SYNCED") >= len(workloads),
        30,
        "every sidecar to acknowledge the config",
    )
    _say("\n" + cli("proxy-status").rstrip())
    _write_mesh_state(work, procs, url, data, ports, front)
    failures = await _scenarios(front, apps, receiver, args.requests)
    _say("\n== 6. Progressive delivery: the canary controller promotes a healthy version and "
         "rolls back a faulty one ==")
    failures += await _progressive(front, data, url,
                                   lambda path: cli("apply", "-f", str(path)))
    mesh = _Mesh(work, data, url, front, admins)
    if not args.once:
        mesh.write(work / "mesh.json")
    for line in _usage(mesh, args.once, bool(args.workdir)):
        _say(line)
    if args.once:
        return 1 if failures else 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    _say("\nstopping the demo mesh ...")
    return 0
