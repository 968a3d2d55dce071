"""HTTP/2 benchmark: h2c through meshlet's outbound against Envoy (codec AUTO), and gRPC unary
through two sidecars against two Envoys, as RATIOS (target T3 in loadtests/README.md: h2c
rps/core >= 0.6x Envoy).

h2c scenarios (one proxy pinned to CPU 1; h2load and the HTTP/1.1 upstream on CPU 0):

  h2-c10m10    h2load -t1 -c10 -m10 -H ':authority: backend' (prior knowledge) -> proxy -> nginx
  h2-c100m10   the same with 100 connections

  meshlet: bench_http1's ``meshlet`` target (loadtests/meshlet.yaml: the full permissive chain,
  compiled fast path); envoy: bench_http1's ``envoy`` target (loadtests/envoy.yaml, codec AUTO).

gRPC scenario (both proxies of a pair pinned to CPU 1; h2load and a grpcio server on CPU 0):

  grpc-c10m10  h2load -c10 -m10 POST /meshtest.Echo/Unary with a prebuilt gRPC message (-d),
               content-type: application/grpc, te: trailers; client proxy -> h2 -> server proxy
               -> grpcio server (raw bytes echo). meshlet: two standalone sidecars (plaintext
               h2 between them; the client's ServiceEntry says protocol GRPC); envoy: two Envoys
               with http2_protocol_options on both clusters.

Process management, pinning, CPU accounting, h2load parsing, interleaved rounds and medians come
from bench_http1.py.

    python loadtests/bench_h2.py --duration 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import string
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_http1 as h  # noqa: E402
import bench_mtls as m  # noqa: E402

HERE = h.HERE
SCENARIOS = {"h2-c10m10": (10, 10), "h2-c100m10": (100, 10), "grpc-c10m10": (10, 10)}
DEFAULT_SCENARIOS = "h2-c10m10,h2-c100m10,grpc-c10m10"
GRPC_PATH = "/meshtest.Echo/Unary"
GRPC_PAYLOAD = 100  # bytes of protobuf field 1 (bytes data)

GRPC_SERVER = r"""
import sys, grpc
from concurrent import futures
def echo(req, ctx):
    return req
h = grpc.method_handlers_generic_handler("meshtest.Echo", {
    "Unary": grpc.unary_unary_rpc_method_handler(echo)})  # raw bytes in, raw bytes out
s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
s.add_generic_rpc_handlers((h,))
port = s.add_insecure_port("127.0.0.1:0")
s.start()
open(sys.argv[1], "w").write(str(port))
s.wait_for_termination()
"""

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ENVOY_GRPC_CLIENT = """admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: outbound
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": ${hcm}
          stat_prefix: ${stat}
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: next, timeout: 15s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: next
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: next
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: ${port}}}}
"""


def grpc_body(work: Path) -> Path:
    msg = b"\x0a" + bytes([GRPC_PAYLOAD]) + b"x" * GRPC_PAYLOAD  # field 1, length, data
    p = work / "grpc-unary.bin"
    p.write_bytes(b"\x00" + len(msg).to_bytes(4, "big") + msg)
    return p


def start_grpc_app(work: Path, cpu: int | None) -> tuple[h.Proc, int]:
    script = work / "grpc_server.py"
    script.write_text(GRPC_SERVER)
    pf = work / "grpc.port"
    p = h.Proc("grpc-app", h.pinned(cpu, [h.PY, str(script), str(pf)]), work)
    h.wait_until(lambda: (pf.exists() and pf.read_text()) or not p.alive(), 20, "grpc server")
    if not p.alive():
        raise RuntimeError(f"grpc server exited:\n{p.stderr()[-2000:]}")
    return p, int(pf.read_text())


def start_grpc_pair(name: str, work: Path, app_port: int, cpu: int | None, tag: str) -> m.Pair:
    pair = m.Pair(name)
    if name in ("meshlet", "meshlet-base"):
        env = None
        if name == "meshlet-base":  # the same pair from the --base-tree checkout
            path = str(h.BASE_TREE[0]) + os.pathsep + os.environ.get("PYTHONPATH", "")
            env = {"PYTHONPATH": path}
            tag += "-base"
        se = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo.default.svc.cluster.local]
  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{grpc: {port}}}}}
"""
        sc = work / f"grpc-server{tag}.yaml"
        sc.write_text(se.format(port=app_port).replace("name: echo}", "name: self}"))
        pair.server, _, pair.inbound, _ = m.launch_sidecar(
            f"grpc-meshlet-echo{tag}", "echo", app_port, ["--config", str(sc)], work, cpu, env
        )
        cc = work / f"grpc-client{tag}.yaml"
        cc.write_text(se.format(port=pair.inbound))
        pair.client, pair.port, _, _ = m.launch_sidecar(
            f"grpc-meshlet-client{tag}", "client", app_port, ["--config", str(cc)], work, cpu, env
        )
    else:
        tpl = string.Template(ENVOY_GRPC_CLIENT)
        pair.server, _, pair.inbound = h.launch_envoy(
            f"grpc-envoy-server{tag}",
            tpl.substitute(stat="inbound", port=app_port, hcm=HCM),
            work,
            cpu,
        )
        pair.client, _, pair.port = h.launch_envoy(
            f"grpc-envoy-client{tag}",
            tpl.substitute(stat="outbound", port=pair.inbound, hcm=HCM),
            work,
            cpu,
        )
    return pair


def h2load_cmd(port: int, sc: str, duration: float, log: str, body: Path | None) -> list[str]:
    c, mm = SCENARIOS[sc]
    cmd = ["h2load", "-t1", f"-c{c}", f"-m{mm}", f"-D{max(1, round(duration))}",
           f"--log-file={log}"]  # fmt: skip
    if body is None:
        cmd += ["-H", f":authority: {h.HOST_HEADER}", f"http://127.0.0.1:{port}/"]
    else:
        cmd += ["-d", str(body), "-H", ":authority: echo", "-H", "content-type: application/grpc",
                "-H", "te: trailers", f"http://127.0.0.1:{port}{GRPC_PATH}"]  # fmt: skip
    return cmd


def measure(name, port, pids, alive, sc, duration, warmup, cpus, body) -> dict:
    load_cpu, proxy_cpu = cpus

    def run(d: float) -> tuple[str, int, list[int]]:
        fd, log = tempfile.mkstemp(prefix="h2load-", suffix=".log")
        os.close(fd)
        try:
            out, rc = h.run_wrk(h.pinned(load_cpu, h2load_cmd(port, sc, d, log, body)), d)
            with open(log) as f:
                lat = sorted(int(x.split("\t")[2]) for x in f if x.count("\t") >= 2)
        finally:
            os.unlink(log)
        return out, rc, lat

    if warmup > 0:
        run(warmup)
    c0 = sum(h.cpu_seconds(p) for p in pids)
    b0 = h.cpu_busy(proxy_cpu) if proxy_cpu is not None else (0.0, 0.0)
    w0 = time.monotonic()
    out, rc, lat = run(duration)
    wall = time.monotonic() - w0
    c1 = sum(h.cpu_seconds(p) for p in pids)
    b1 = h.cpu_busy(proxy_cpu) if proxy_cpu is not None else (0.0, 0.0)
    r = h.parse_h2load(out, lat)
    cpu = (c1 - c0) / wall
    r.update({"target": name, "scenario": sc, "wall_s": round(wall, 3), "rc": rc,
              "proxy_cpu": round(cpu, 4),
              "rps_per_core": round(r["rps"] / cpu, 1) if cpu > 0 else None,
              "proxy_cpu_busy_total": round((b1[0] - b0[0]) / (b1[1] - b0[1]), 3)
              if b1[1] > b0[1] else None,
              "alive_after": alive(), "output": out[-3000:]})  # fmt: skip
    r["errors"] = r["non2xx"] + sum(r["socket_errors"].values())
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description="h2c and gRPC: meshlet vs Envoy (ratios)")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help=", ".join(SCENARIOS))
    ap.add_argument("--proxy-cpu", type=int, default=1)
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--out", default="results-h2.json")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--nice", type=int, default=0, help="niceness for everything started")
    ap.add_argument("--base-tree", help="also run meshlet from this checkout (meshlet-base): A/B "
                    "against the same Envoy in one run")  # fmt: skip
    args = ap.parse_args()
    if args.base_tree:
        if not (Path(args.base_tree) / "proxy" / "sidecar.py").exists():
            ap.error("--base-tree must point at a meshlet checkout")
        h.BASE_TREE.append(Path(args.base_tree).resolve())
    h.NICE = args.nice
    if args.quick:
        args.duration, args.rounds = 3.0, 1
    if args.duration <= 0 or args.duration > 600 or not 1 <= args.rounds <= 20:
        ap.error("--duration must be in (0, 600] and --rounds in [1, 20]")
    scenarios = [x for x in args.scenarios.split(",") if x]
    for x in scenarios:
        if x not in SCENARIOS:
            ap.error(f"unknown scenario {x}")
    if not shutil.which("h2load"):
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    if missing := h.envoy_missing("run bench_http1.py --targets without envoy for meshlet "
                                  "alone (this benchmark is a comparison)"):
        print(missing, file=sys.stderr)
        return 2
    ncpu = os.cpu_count() or 1
    proxy_cpu = args.proxy_cpu if 0 <= args.proxy_cpu < ncpu else None
    load_cpu = args.load_cpu if 0 <= args.load_cpu < ncpu else None

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="meshlet-bench-h2-"))
    runs: list[dict] = []
    rc = 0
    out_path = Path(args.out)
    names = ["meshlet", "meshlet-base", "envoy"] if h.BASE_TREE else ["meshlet", "envoy"]
    try:
        up = h.Upstream("nginx" if shutil.which("nginx") or Path("/usr/sbin/nginx").exists()
                        else "python", work, load_cpu)  # fmt: skip
        h2t = {n: h.Target(n) for n in names} if any(s.startswith("h2-") for s in scenarios) else {}
        for t in h2t.values():
            h.start_target(t, work, up, proxy_cpu)
        grpc_pairs: dict[str, m.Pair] = {}
        body = None
        if "grpc-c10m10" in scenarios:
            _app, app_port = start_grpc_app(work, load_cpu)
            body = grpc_body(work)
            for n in names:
                grpc_pairs[n] = start_grpc_pair(n, work, app_port, proxy_cpu, "")
        plan = []
        for rnd in range(args.rounds):
            k = rnd % len(names)
            order = names[k:] + names[:k]
            plan += [(rnd, sc, n) for sc in scenarios for n in order]
        for i, (rnd, sc, n) in enumerate(plan, 1):
            if sc.startswith("grpc"):
                p = grpc_pairs[n]
                r = measure(n, p.port, p.pids(), p.alive, sc, args.duration, args.warmup,
                            (load_cpu, proxy_cpu), body)  # fmt: skip
            else:
                t = h2t[n]
                r = measure(n, t.port, [t.pid], t.alive, sc, args.duration, args.warmup,
                            (load_cpu, proxy_cpu), None)  # fmt: skip
            r["round"] = rnd + 1
            runs.append(r)
            flag = f"  ERRORS {r['non2xx']} {r['socket_errors']}" if r["errors"] else ""
            print(f"[h2] {i:>3}/{len(plan)} round {rnd + 1} {sc:<11} {n:<12} rps={r['rps']:>8.0f} "
                  f"cpu={r['proxy_cpu']:.2f} rps/core={h.fmt(r['rps_per_core'], ',.0f'):>8} "
                  f"p99={h.fmt_us(r['p99_us'])} cpu1busy={h.fmt(r['proxy_cpu_busy_total'], '.2f')}"
                  f"{flag}", file=sys.stderr)  # fmt: skip
        s = m.summarize(runs, scenarios, names)
        lines = [f"Medians of {args.rounds} interleaved round(s), {args.duration:g}s each; "
                 "proxies on CPU 1 (grpc: both proxies of the pair), h2load + upstream on CPU 0.",
                 ""]  # fmt: skip
        hdr = (f"{'scenario':<12} {'target':<12} {'rps':>9} {'cpu':>5} {'rps/core':>9} "
               f"{'vs envoy':>8} {'p50':>8} {'p99':>8} {'errors':>6}")  # fmt: skip
        lines += [hdr, "-" * len(hdr)]
        ratios = []
        for sc, row in s.items():
            env = row.get("envoy", {}).get("rps_per_core")
            for n, v in row.items():
                rel = h.ratio(v["rps_per_core"], env)
                lines.append(f"{sc:<12} {n:<12} {v['rps']:>9.0f} {h.fmt(v['proxy_cpu'], '.2f'):>5} "
                             f"{h.fmt(v['rps_per_core'], ',.0f'):>9} {h.fmt(rel, '.2f'):>8} "
                             f"{h.fmt_us(v['p50_us']):>8} {h.fmt_us(v['p99_us']):>8} "
                             f"{v['errors']:>6}")  # fmt: skip
            if "meshlet" in row and "envoy" in row:
                ratios.append((sc, h.ratio(row["meshlet"]["rps_per_core"], env)))
            if "meshlet-base" in row and "envoy" in row:
                ratios.append((sc + " base", h.ratio(row["meshlet-base"]["rps_per_core"], env)))
            lines.append("")
        lines.append("RATIOS meshlet / envoy rps-per-core (T3 h2c: target >= 0.6, floor >= 0.4)")
        lines += [f"  {sc:<12} {h.fmt(v, '.2f')}" for sc, v in ratios]
        text = "\n".join(lines)
        print(text, flush=True)
        out_path.write_text(json.dumps({"summary": s, "ratios": dict(ratios), "report": text,
                                        "git": h.git_state(), "runs": runs}, indent=1))  # fmt: skip
        if any(r["errors"] for r in runs):
            rc = 1
    except KeyboardInterrupt:
        print("\n[h2] interrupted; stopping everything", file=sys.stderr)
        rc = 130
    finally:
        h.Proc.stop_all()
        if args.keep_workdir:
            print(f"[h2] workdir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
