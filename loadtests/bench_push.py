"""Config push benchmark: N simulated sidecars on real mTLS config streams against a control plane.

What it measures, for each N: **apply-to-last-ACK** (wall time from just before an ``apply`` is
sent to the moment the last of the N sidecars ACKs a version carrying it), p50/p99 over several
applies, and the control plane's CPU seconds and RSS, as istiod's scale tests report
``pilot_proxy_convergence_time`` and the pilot process' CPU and memory.

How:

* one control plane (``meshlet control-plane``, SQLite store) in its own process, Istio's push
  defaults (100 ms debounce, 10 s max, 100 concurrent pushes) unless flags say otherwise;
* ``--services`` services (default 10), each with a DestinationRule and a VirtualService;
* certificates the real way, as few as the rules allow: the control plane checks that a
  stream's certificate names the registration's service (ns/NS/sa/SERVICE), not its node id,
  so one join token and one CSR per *service* give one certificate that every simulated sidecar
  of that service presents; N/services node ids per service;
* ``--procs`` client processes (default 4), each running N/procs streams on one uvloop event loop
  with the sidecar's own :class:`proxy.discovery.DiscoveryClient` (mTLS WebSocket, control plane
  identity checked, registration, deltas applied onto the last snapshot and checked against the
  announced version, ACK/NACK). ``--validate`` also runs the resource validation a sidecar runs
  on every snapshot (off by default: on a 2-core machine the clients' CPU competes with the
  control plane's, which a real fleet would not);
* ``--client-mode ack`` makes the simulated sidecars only parse and ACK, which shows the
  control plane's share when the clients' CPU is the bottleneck of the run;
* each measured apply changes one VirtualService's timeout (every sidecar sees it, so each gets
  a one-resource delta), waits for every ACK, then pauses; ``--applies`` of them per N.

Clients note each ACK (node, revision, time) and write them to stdout every 20 ms; the parent
matches revisions with its applies. Besides the last ACK it reports the first and the median
ACK of each apply (the first is the fixed part: request, commit, debounce, one send) and the
control plane's own fan-out time (``meshlet_push_fanout_seconds``: one push round written to
every stream). Control-plane CPU comes from /proc (utime + stime), RSS from VmRSS (after the
run) and VmHWM (peak). ``--profile DIR`` runs py-spy on the (first) control plane and the first
client process during the applies.

    python loadtests/bench_push.py --sidecars 100,500,1000 --applies 7
    python loadtests/bench_push.py --sidecars 100 --applies 3 --json /tmp/push.json

Replicas on etcd (issue 12): ``--store etcd --replicas 2`` starts a real etcd cluster on
loopback (``--etcd-members``, 3 by default; the ``etcd`` binary of Debian's etcd-server) and two
``meshlet control-plane --store etcd://...`` replicas on it, the second with the first one's
admin token; each N gets a fresh mesh under its own key prefix. Every simulated sidecar gets
both replicas' URLs as its failover list, starting with "its" replica (round-robin), so half
the sidecars stream from each; tokens, certificates and the applies go through the first
replica, and apply-to-last-ACK spans both replicas' sidecars (the second replica learns the
change from its etcd watch). ``--store etcd://HOST:PORT[,...]`` uses an etcd already running.

    python loadtests/bench_push.py --store etcd --replicas 2 --sidecars 100,500,1000 --applies 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {s}}}
spec:
  host: {s}
  subsets: [{{name: v1, labels: {{version: v1}}}}]
"""
VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {s}}}
spec:
  hosts: [{s}]
  http: [{{route: [{{destination: {{host: {s}, subset: v1}}}}], timeout: {t}ms}}]
"""


# -- the control plane -------------------------------------------------------------------------


class ControlPlane:
    def __init__(self, data_dir: Path, args: argparse.Namespace, store: str = "",
                 token_file: Path | None = None) -> None:
        self.data_dir = data_dir
        cmd = [sys.executable, "-m", "control_plane.cli", "control-plane",
               "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--log-level", "warning",
               "--push-debounce", args.debounce, "--push-debounce-max", args.debounce_max,
               "--push-throttle", str(args.throttle)]
        if store:
            cmd += ["--store", store, "--etcd-prefix", args.etcd_prefix]
        if token_file is not None:
            cmd += ["--admin-token-file", str(token_file)]
        self.log = open(data_dir.parent / f"{data_dir.name}.log", "ab")  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if args.memory_dump:  # tracemalloc in the control plane, a snapshot per SIGUSR2
            env["MESHLET_MEMORY_DUMP_DIR"] = args.memory_dump
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env)
        addr_file = data_dir / "listen.addr"
        deadline = time.monotonic() + 60
        while not addr_file.exists():
            if self.proc.poll() is not None:
                raise SystemExit("control plane exited; see " + str(self.log.name))
            if time.monotonic() > deadline:
                raise SystemExit("control plane did not start")
            time.sleep(0.05)
        self.url = "https://" + addr_file.read_text().strip()
        token = token_file if token_file is not None else data_dir / "admin.token"
        self.token = token.read_text().strip()
        self.cafile = str(data_dir / "ca" / "trust-bundle.pem")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MB."""
        vals = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0]) / 1024
        return vals["VmRSS"], vals["VmHWM"]

    def dump_memory(self) -> None:
        """A tracemalloc snapshot and smaps_rollup (``--memory-dump``): see
        ``control_plane.memory.start_debug_dumps``."""
        self.proc.send_signal(signal.SIGUSR2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def call(cp: ControlPlane, method: str, path: str, **kw) -> dict:
    import ssl

    import aiohttp

    ctx = ssl.create_default_context(cafile=cp.cafile)
    async with aiohttp.ClientSession() as s, s.request(
        method, cp.url + path, headers={"Authorization": f"Bearer {cp.token}"}, ssl=ctx, **kw
    ) as r:
        body = await r.json(content_type=None)
        if r.status != 200:
            raise SystemExit(f"{method} {path}: {r.status} {body}")
        return body


async def apply(cp: ControlPlane, text: str) -> int:
    body = await call(cp, "POST", "/v1/resources", json={"files": [{"source": "bench",
                                                                    "text": text}]})
    return int(body["revision"])


async def certificates(cp: ControlPlane, services: list[str], cert_dir: Path) -> None:
    """One join token, one CSR and one certificate per service, through the control plane's
    own /v1/tokens and /v1/certify (the sidecar's identity code does the CSR)."""
    from proxy.identity.manager import IdentityManager

    for s in services:
        token = (await call(cp, "POST", "/v1/tokens", json={"service": s}))["token"]
        ident = IdentityManager(cp.url, token, s, state_dir=cert_dir / s, bundle_refresh_s=0)
        await ident.start()
        await ident.close()


# -- a client process: many simulated sidecars on one event loop -----------------------------


async def client_main(args: argparse.Namespace) -> None:
    from certs import tls
    from control_plane.api.delta import revision_part
    from control_plane.api.resources import from_dict
    from proxy.discovery import DiscoveryClient
    from proxy.identity.manager import BUNDLE_FILE, CHAIN_FILE, KEY_FILE

    urls = args.urls.split(",")
    contexts = {}
    for s in args.service_list.split(","):
        d = Path(args.cert_dir) / s
        contexts[s] = tls.client_context((d / CHAIN_FILE).read_bytes(), (d / KEY_FILE).read_bytes(),
                                         (d / BUNDLE_FILE).read_bytes(), alpn=tls.HTTP11_ALPN)
    out = sys.stdout

    def apply_snapshot(snap: dict) -> None:
        if args.validate:
            for i, doc in enumerate(snap.get("resources") or (), 1):
                from_dict(doc, "snapshot", i)

    class AckOnly(DiscoveryClient):
        """``--client-mode ack``: parse each message and ACK it, nothing more."""

        async def _on_delta(self, ws, msg: dict) -> None:
            await ws.send_json({"type": "ack", "version": msg["version"], "nonce": msg["nonce"]})
            self._status("acked", version=str(msg["version"]))

        async def _on_snapshot(self, ws, msg: dict, parts=None) -> None:
            await self._on_delta(ws, msg)

    cls = AckOnly if args.client_mode == "ack" else DiscoveryClient
    clients = []
    services = args.service_list.split(",")
    sem = asyncio.Semaphore(16)  # connects in flight per process: a ramp, not a stampede

    # ACKs are noted here (a tuple append) and written out by the flusher every 20 ms: the
    # report costs the simulated sidecar next to nothing (its own work is what is measured)
    acks: list[tuple[str, str, float]] = []
    wall = time.time

    def on_status(node: str):
        def cb(ev: dict) -> None:
            if ev["event"] == "acked":
                acks.append((node, ev["version"], wall()))
            elif ev["event"] == "nacked":
                out.write(f"nack {node} {ev.get('error')!r}\n")
        return cb

    def report() -> None:
        if acks:
            out.write("".join(f"ack {node} {revision_part(v)} {t:.6f}\n" for node, v, t in acks))
            acks.clear()
        out.flush()

    async def start(i: int) -> None:
        s = services[i % len(services)]
        node = f"{s}-{i}"
        reg = {"node": node, "service": s, "namespace": "default", "version": "v1",
               "labels": {"app": s, "version": "v1"}, "address": f"127.0.0.1:{20000 + i}"}
        ctx = contexts[s]
        # each sidecar's failover list starts at "its" replica: spread round-robin
        k = i % len(urls)
        c = cls(",".join(urls[k:] + urls[:k]), lambda: ctx, reg, apply_snapshot, "",
                on_status(node), backoff_base=0.5, backoff_cap=5.0)
        async with sem:
            c.start()
            while not c.connected and c._task is not None and not c._task.done():
                await asyncio.sleep(0.01)
        clients.append(c)

    await asyncio.gather(*(start(i) for i in range(args.first, args.first + args.count)))
    out.write("ready\n")
    out.flush()
    loop = asyncio.get_running_loop()
    flusher = loop.create_task(_flush_every(report))
    await loop.run_in_executor(None, sys.stdin.read)  # the parent closes stdin to stop us
    flusher.cancel()
    for c in clients:
        c._stopping = True  # noqa: SLF001 - no deregistration storm: just close
        if c._task is not None:
            c._task.cancel()
    report()


async def _flush_every(report: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(0.02)
        report()


# -- the parent ------------------------------------------------------------------------------


class Clients:
    """The client processes and the ACKs they report."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.acks: dict[str, tuple[int, float]] = {}  # node -> (highest revision, its time)
        self.nacks: list[str] = []
        self.ready = 0
        self._readers: list[asyncio.Task] = []

    async def start(self, n: int, procs: int, urls: list[str], services: list[str],
                    cert_dir: Path, validate: bool, client_mode: str) -> None:
        per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        first = 0
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for count in per:
            cmd = [sys.executable, __file__, "--client", "--urls", ",".join(urls),
                   "--service-list", ",".join(services), "--cert-dir", str(cert_dir),
                   "--first", str(first), "--count", str(count)]
            if validate:
                cmd.append("--validate")
            cmd += ["--client-mode", client_mode]
            p = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
                limit=1 << 20)
            self.procs.append(p)
            self._readers.append(asyncio.get_running_loop().create_task(self._read(p)))
            first += count

    async def _read(self, p: asyncio.subprocess.Process) -> None:
        assert p.stdout is not None
        async for raw in p.stdout:
            parts = raw.decode().split()
            if not parts:
                continue
            if parts[0] == "ack":
                node, rev, t = parts[1], int(parts[2]), float(parts[3])
                if rev >= self.acks.get(node, (-1, 0.0))[0]:
                    self.acks[node] = (rev, t)
            elif parts[0] == "nack":
                self.nacks.append(" ".join(parts[1:]))
            elif parts[0] == "ready":
                self.ready += 1

    async def wait(self, pred, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {what}")
            if any(p.returncode is not None for p in self.procs):
                raise SystemExit("a client process exited")
            await asyncio.sleep(0.01)

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    async def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 20)
            except TimeoutError:
                p.kill()
                await p.wait()
        for t in self._readers:
            t.cancel()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def start_replicas(n: int, args: argparse.Namespace, work: Path) -> list[ControlPlane]:
    """One control plane on SQLite, or ``--replicas`` on etcd under a prefix of their own (a
    fresh mesh per N); the second and later replicas share the first one's admin token."""
    if args.etcd_store is None:
        data = work / f"cp-{n}"
        data.mkdir(parents=True)
        return [ControlPlane(data, args)]
    args.etcd_prefix = f"/bench-push-{os.getpid()}-{n}/"
    replicas: list[ControlPlane] = []
    try:
        for k in range(args.replicas):
            data = work / f"cp-{n}-{chr(97 + k)}"
            data.mkdir(parents=True)
            token = replicas[0].data_dir / "admin.token" if replicas else None
            replicas.append(ControlPlane(data, args, args.etcd_store, token))
    except BaseException:
        for r in replicas:
            r.stop()
        raise
    return replicas


async def run_one(n: int, args: argparse.Namespace, work: Path) -> dict:
    replicas = start_replicas(n, args, work)
    cp = replicas[0]  # applies, tokens and certificates go through the first replica
    clients = Clients()
    try:
        services = [f"svc{i}" for i in range(args.services)]
        await apply(cp, "---\n".join(DR.format(s=s) + "---\n" + VS.format(s=s, t=1000)
                                     for s in services))
        cert_dir = work / f"certs-{n}"
        await certificates(cp, services, cert_dir)
        rss_idle = max(r.rss_mb()[0] for r in replicas)  # N=0: the slope's origin
        if args.memory_dump:
            for r in replicas:
                r.dump_memory()
        cpu0 = sum(r.cpu_seconds() for r in replicas)
        t0 = time.monotonic()
        await clients.start(n, args.procs, [r.url for r in replicas], services, cert_dir,
                            args.validate, args.client_mode)
        await clients.wait(lambda: clients.ready == len(clients.procs), 600, "clients connected")
        status = await call(cp, "GET", "/v1/status")
        # every sidecar has ACKed the config with every registration in it
        want = status["revision"]

        def settled() -> bool:
            return len(clients.acks) == n and all(r >= want for r, _ in clients.acks.values())

        await clients.wait(settled, 600, "initial config ACKed by all")
        await asyncio.sleep(args.debounce_s * 3 + 1)  # let the last registry push land
        connect_s = time.monotonic() - t0
        cpu_connect = sum(r.cpu_seconds() for r in replicas) - cpu0
        rss_connected = max(r.rss_mb()[0] for r in replicas)
        if args.memory_dump:
            for r in replicas:
                r.dump_memory()
        lat, first_lat, mid_lat = [], [], []
        profilers = ([_profile(cp.proc.pid, args.profile, f"push-{n}"),
                      _profile(clients.procs[0].pid, args.profile, f"client-{n}")]
                     if args.profile else [])
        before = [await _metrics(r) for r in replicas]
        cpu1 = [r.cpu_seconds() for r in replicas]
        ccpu1 = clients.cpu_seconds()
        for k in range(args.applies):
            text = VS.format(s=services[0], t=2000 + k)
            start = time.time()
            rev = await apply(cp, text)
            await clients.wait(lambda rev=rev: all(r >= rev for r, _ in clients.acks.values()),
                               120, f"apply {k} ACKed by all")
            times = sorted(t for _, t in clients.acks.values())
            lat.append(times[-1] - start)
            first_lat.append(times[0] - start)
            mid_lat.append(times[len(times) // 2] - start)
            await asyncio.sleep(args.pause)
        cpu_applies = [r.cpu_seconds() - c for r, c in zip(replicas, cpu1, strict=True)]
        ccpu_applies = clients.cpu_seconds() - ccpu1
        for prof in profilers:
            prof.send_signal(2)
            prof.wait(60)
        metrics = await _metrics(cp)
        per_replica = [await _metrics(r) for r in replicas]

        def fanout_ms(m0: dict, m1: dict) -> float:
            """Mean time a replica took to write one push round to all its streams."""
            k = "meshlet_push_fanout_seconds_"
            rounds = m1.get(k + "count", 0) - m0.get(k + "count", 0)
            return 1000 * (m1.get(k + "sum", 0) - m0.get(k + "sum", 0)) / max(1, rounds)
        mems = [r.rss_mb() for r in replicas]
        rss, hwm = max(m[0] for m in mems), max(m[1] for m in mems)
        return {
            "sidecars": n, "services": args.services, "client_procs": args.procs,
            "store": "etcd" if args.etcd_store else "sqlite", "replicas": len(replicas),
            "etcd_members": args.etcd_members if args.etcd_store else 0,
            "applies": args.applies, "validate": args.validate,
            "client_mode": args.client_mode,
            "apply_to_last_ack_p50_s": round(statistics.median(lat), 4),
            "apply_to_last_ack_p99_s": round(pct(lat, 0.99), 4),
            "apply_to_last_ack_max_s": round(max(lat), 4),
            "all_s": [round(x, 4) for x in lat],
            # apply to the first and to the median sidecar's ACK: the first is the fixed part
            # (request, commit, debounce, one send); last - first is the fan-out and the ACKs
            "apply_to_first_ack_p50_s": round(statistics.median(first_lat), 4),
            "apply_to_median_ack_p50_s": round(statistics.median(mid_lat), 4),
            "connect_all_s": round(connect_s, 2),
            "cp_cpu_s_connect": round(cpu_connect, 2),
            # the replicas together (the busiest one alone in the list that follows)
            "cp_cpu_s_per_apply": round(sum(cpu_applies) / max(1, args.applies), 3),
            "cp_cpu_s_per_apply_each": [round(c / max(1, args.applies), 3)
                                        for c in cpu_applies],
            "clients_cpu_s_per_apply": round(ccpu_applies / max(1, args.applies), 3),
            # the largest replica's
            "cp_rss_mb": round(rss, 1), "cp_rss_peak_mb": round(hwm, 1),
            "rss_connected_mb": round(rss_connected, 1),
            "rss_idle_mb": round(rss_idle, 1),
            # what one connected sidecar costs the (largest) replica, RSS at N over N=0
            "rss_per_sidecar_kb": round(1024 * (rss_connected - rss_idle)
                                        * len(replicas) / max(1, n), 1),
            "nacks": len(clients.nacks),
            # the control plane's part: one apply's push written to every stream (per replica)
            "cp_fanout_ms": [round(fanout_ms(m0, m1), 1)
                             for m0, m1 in zip(before, per_replica, strict=True)],
            # the sidecars each replica serves (they spread over the replicas)
            "connected_per_replica": [int(m.get("meshlet_connected_proxies", 0))
                                      for m in per_replica],
            "metrics": metrics,
        }
    finally:
        await clients.stop()
        for r in replicas:
            r.stop()


def _profile(pid: int, out_dir: str, name: str) -> subprocess.Popen:
    """py-spy on a process (the first replica, the first client process) for the measured
    applies: collapsed stacks, one file per process and N."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "250",
                             "-o", str(Path(out_dir) / f"{name}.txt"), "-f", "raw"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _metrics(cp: ControlPlane) -> dict:
    import ssl

    import aiohttp

    ctx = ssl.create_default_context(cafile=cp.cafile)
    async with aiohttp.ClientSession() as s, s.get(cp.url + "/metrics", ssl=ctx) as r:
        text = await r.text()
    keep = {}
    for line in text.splitlines():
        if line.startswith(("meshlet_pushes_total", "meshlet_push_bytes_total",
                            "meshlet_connected_proxies", "meshlet_push_fanout_seconds_sum",
                            "meshlet_push_fanout_seconds_count",
                            "meshlet_proxy_convergence_seconds_count",
                            "meshlet_proxy_convergence_seconds_sum", "meshlet_push_errors_total",
                            "meshlet_push_triggers_total")):
            name, _, value = line.rpartition(" ")
            keep[name] = float(value)
    return keep


async def main(args: argparse.Namespace) -> int:
    from control_plane.api.resources import parse_duration

    if args.store == "sqlite":
        if args.replicas != 1:
            print("bench_push: --replicas needs --store etcd (SQLite is single-writer)",
                  file=sys.stderr)
            return 2
        args.etcd_store = None
    elif args.store != "etcd" and not args.store.startswith(("etcd://", "etcds://")):
        print(f"bench_push: --store {args.store}: sqlite, etcd or etcd://HOST:PORT[,...]",
              file=sys.stderr)
        return 2
    args.debounce_s = parse_duration(args.debounce)
    work = Path(tempfile.mkdtemp(prefix="bench-push-"))
    etcd = None
    results = []
    try:
        if args.store == "etcd":
            from tests.support import EtcdCluster

            etcd = EtcdCluster(work, args.etcd_members)
            etcd.start_all()
            args.etcd_store = etcd.endpoints
        elif args.store != "sqlite":
            args.etcd_store = args.store
        for n in [int(x) for x in args.sidecars.split(",")]:
            r = await run_one(n, args, work)
            results.append(r)
            print(f"N={n:5d}  apply->last ACK p50 {r['apply_to_last_ack_p50_s'] * 1000:7.0f} ms"
                  f"  p99 {r['apply_to_last_ack_p99_s'] * 1000:7.0f} ms"
                  f"  | control plane: {r['cp_cpu_s_per_apply']:.2f} CPU s/apply,"
                  f" {r['cp_cpu_s_connect']:.1f} CPU s to connect all,"
                  f" RSS {r['cp_rss_mb']:.0f} MB (peak {r['cp_rss_peak_mb']:.0f},"
                  f" {r['rss_idle_mb']:.0f} at N=0, {r['rss_connected_mb']:.0f} connected:"
                  f" {r['rss_per_sidecar_kb']:.0f} KB/sidecar)"
                  f"  | clients {r['clients_cpu_s_per_apply']:.2f} CPU s/apply"
                  f"  | fan-out {'/'.join(f'{x:.0f}' for x in r['cp_fanout_ms'])} ms"
                  f"  | first ACK p50 {r['apply_to_first_ack_p50_s'] * 1000:.0f} ms,"
                  f" median ACK p50 {r['apply_to_median_ack_p50_s'] * 1000:.0f} ms"
                  f"  | connect {r['connect_all_s']:.1f} s, nacks {r['nacks']}"
                  f"  [{r['client_mode']}, {r['store']}, {r['replicas']} replica(s)]",
                  flush=True)
    finally:
        if etcd is not None:
            etcd.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sidecars", default="100,500,1000", help="comma-separated N values")
    p.add_argument("--services", type=int, default=10)
    p.add_argument("--procs", type=int, default=4, help="client processes")
    p.add_argument("--applies", type=int, default=7, help="measured applies per N")
    p.add_argument("--pause", type=float, default=0.5, help="seconds between applies")
    p.add_argument("--validate", action="store_true",
                   help="clients validate every resource of every snapshot, as a sidecar does")
    p.add_argument("--client-mode", choices=["apply", "ack"], default="apply",
                   help="apply (default): each simulated sidecar applies the delta to its last "
                        "snapshot, checks the version and rebuilds the whole snapshot, as a "
                        "sidecar does; ack: parse and ACK only (the control plane's own cost)")
    p.add_argument("--debounce", default="100ms")
    p.add_argument("--debounce-max", default="10s")
    p.add_argument("--throttle", type=int, default=100)
    p.add_argument("--store", default="sqlite",
                   help="sqlite (default; one control plane); etcd: the bench starts an etcd "
                        "cluster of --etcd-members on loopback; etcd://HOST:PORT[,...]: an "
                        "etcd already running (each N uses a key prefix of its own)")
    p.add_argument("--replicas", type=int, default=1,
                   help="control-plane replicas on the etcd store (the clients spread over "
                        "them, each with every replica in its failover list)")
    p.add_argument("--etcd-members", type=int, default=3,
                   help="members of the etcd cluster --store etcd starts (1 or 3)")
    p.add_argument("--json", default="", help="write the results here")
    p.add_argument("--profile", default="",
                   help="a directory: py-spy records the first replica and the first client "
                        "process during the applies (push-N.txt, client-N.txt: collapsed stacks)")
    p.add_argument("--memory-dump", default="",
                   help="a directory: the control plane traces its Python allocations "
                        "(tracemalloc; slower) and writes a snapshot and smaps_rollup at N=0 "
                        "and with every sidecar connected (snap-PID-1/2.pickle, smaps-PID-*.txt)")
    # client-process mode (internal)
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--urls", help=argparse.SUPPRESS)
    p.add_argument("--service-list", help=argparse.SUPPRESS)
    p.add_argument("--cert-dir", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    if a.client:
        runner(client_main(a))
        sys.exit(0)
    sys.exit(runner(main(a)))
