"""Two-hop mTLS benchmark: a meshlet sidecar pair against an Envoy pair, side by side, as RATIOS.

    wrk -> client proxy (outbound, plaintext) -> [mTLS | plaintext] -> server proxy (inbound) -> app

The same topology was first measured with a throwaway Python pair; this runs meshlet.

Pairs (both proxies of a pair pinned to CPU 1, wrk + upstream + control plane on CPU 0):

  meshlet-mtls   control plane + ``orders`` and ``inventory`` sidecars joined with join tokens;
                 control-plane-issued SPIFFE certificates (P-256), orders' outbound with
                 ``Host: inventory`` goes over mTLS (pooled) to inventory's inbound, then to the app
  meshlet-plain  the same two sidecars standalone (no identity): orders has a ServiceEntry
                 ``inventory`` pointing at inventory's inbound port, plaintext between them
  envoy-mtls     two Envoys (--concurrency 1): client cluster with an UpstreamTlsContext (client
                 certificate, server SAN verified), server listener with a DownstreamTlsContext
                 (client certificate required and verified, caller SAN matched); certificates made
                 here with openssl (ECDSA P-256, SPIFFE URI SANs), TLS 1.3
  envoy-plain    the same two Envoys without TLS
  meshlet-churn  meshlet-mtls with a DestinationRule ``maxRequestsPerConnection: 1``: every request
                 opens a new proxy-to-proxy mTLS connection (resumed after the first one)
  meshlet-churn-nores  the same with ``MESHLET_TLS_RESUMPTION=off`` (full handshakes only)
  envoy-churn    envoy-mtls with ``max_requests_per_connection: 1`` on the client's cluster
                 (Envoy resumes upstream sessions by default)

Server-only REFERENCE targets (hs-new / hs-reuse only; not in the default run; no client proxy,
s_time connects straight to them; pinned to the proxy CPU; envoy-mtls' certificates: inventory's
as the server certificate, orders' as s_time's client certificate):

  openssl-server  ``openssl s_server -WWW`` (C, the system OpenSSL 3.0 that Python's ``ssl``
                 links), TLS 1.3, client certificate required and verified (``-Verify 2``),
                 default session tickets; s_time asks for a ~100-byte ``/index.txt``. The
                 same library without Python: does it explain meshlet's gap to Envoy (BoringSSL)?
  py-uvloop-tls  loadtests/tls_ceiling_server.py: uvloop ``create_server`` with an SSLContext like
                 meshlet's inbound (TLS 1.3, CERT_REQUIRED, ``num_tickets = 1``) answering a fixed
                 HTTP/1.0 200 and closing: the ceiling for any Python proxy on this stack

Scenarios:

  c10, c100      wrk -t1 -cN GET / (keep-alive): requests/s per pair core (CPU of both proxies)
  newconn-c10    wrk -c10 -H 'Connection: close': every request is a NEW downstream connection
                 to the client proxy; the proxy-to-proxy connections stay pooled, so this is the
                 cost of accepting plaintext connections plus one request, not of TLS handshakes
  hs-new         openssl s_time -new against the server proxy's inbound port with the client
                 certificate: full TLS handshakes/s (CPU of the server proxy only)
  hs-reuse       the same with -reuse (session resumption; 'resumed' is the share s_time
                 reports resumed: meshlet issues TLS 1.3 tickets on its inbound port)
  churn-c10      wrk -c10 keep-alive through a churn pair (only those): requests/s per pair
                 core when each request costs a proxy-to-proxy mTLS handshake; 'resumed' is
                 the share of those handshakes that resumed (the client proxy's counters)

Process management, pinning, CPU accounting, wrk parsing, interleaved rounds and the median
come from bench_http1.py.

    python loadtests/bench_mtls.py --duration 10 --rounds 3
    python loadtests/bench_mtls.py --quick
    python loadtests/bench_mtls.py --pairs meshlet-mtls,envoy-mtls,openssl-server,py-uvloop-tls \
        --scenarios hs-new,hs-reuse --duration 6 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_http1 as h  # noqa: E402

HERE = h.HERE
ROOT = h.ROOT
PY = h.PY
HOST = "inventory"
PAIRS = ("meshlet-mtls", "envoy-mtls", "meshlet-plain", "envoy-plain")
CHURN_PAIRS = ("meshlet-churn", "meshlet-churn-nores", "envoy-churn")
REFERENCE = ("openssl-server", "py-uvloop-tls")  # server-only, hs-* scenarios only
SCENARIOS = {
    # name: (kind, connections)
    "c10": ("wrk", 10),
    "c100": ("wrk", 100),
    "newconn-c10": ("close", 10),
    "hs-new": ("s_time", "-new"),
    "hs-reuse": ("s_time", "-reuse"),
    "churn-c10": ("churn", 10),
}
DEFAULT_SCENARIOS = "c10,c100,newconn-c10,hs-new,hs-reuse"
SPIFFE = "spiffe://cluster.local/ns/default/sa/{}"
READY = re.compile(
    r"meshlet sidecar ready service=\S+ outbound=(\d+) inbound=(\d+) admin=(\d+) fastpath=(\S+)"
)


# ----------------------------------------------------------------------------- certificates


def make_certs(d: Path) -> dict[str, Path]:
    """A P-256 CA and two leaf certificates with SPIFFE URI SANs (like the mesh's SVIDs)."""
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*a: str) -> None:
        subprocess.run(["openssl", *a], check=True, capture_output=True, timeout=30, cwd=d)

    ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    ossl("req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "2", "-subj",
         "/O=bench/CN=bench-ca", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.pem")  # fmt: skip
    for name in ("orders", "inventory"):
        ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key0")
        # PKCS#8 like the mesh's keys
        ossl("pkcs8", "-topk8", "-nocrypt", "-in", f"{name}.key0", "-out", f"{name}.key")
        ossl("req", "-new", "-key", f"{name}.key", "-subj", f"/O=bench/CN={name}",
             "-out", f"{name}.csr")  # fmt: skip
        ext = d / f"{name}.ext"
        ext.write_text(
            f"subjectAltName=critical,URI:{SPIFFE.format(name)}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "1", "-sha256", "-extfile", str(ext),
             "-out", f"{name}.pem")  # fmt: skip
    return {
        "ca": d / "ca.pem",
        "orders_cert": d / "orders.pem",
        "orders_key": d / "orders.key",
        "inventory_cert": d / "inventory.pem",
        "inventory_key": d / "inventory.key",
    }


TLS_API = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"


def _tls_params() -> str:
    v = "TLSv1_3"
    return f"tls_params: {{tls_minimum_protocol_version: {v}, tls_maximum_protocol_version: {v}}}"


def envoy_client_transport(c: dict[str, Path]) -> str:
    return f"""    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": {TLS_API}.UpstreamTlsContext
        sni: inventory
        common_tls_context:
          {_tls_params()}
          tls_certificates:
          - certificate_chain: {{filename: "{c["orders_cert"]}"}}
            private_key: {{filename: "{c["orders_key"]}"}}
          validation_context:
            trusted_ca: {{filename: "{c["ca"]}"}}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{exact: "{SPIFFE.format("inventory")}"}}
"""


def envoy_server_transport(c: dict[str, Path]) -> str:
    return f"""      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": {TLS_API}.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            {_tls_params()}
            tls_certificates:
            - certificate_chain: {{filename: "{c["inventory_cert"]}"}}
              private_key: {{filename: "{c["inventory_key"]}"}}
            validation_context:
              trusted_ca: {{filename: "{c["ca"]}"}}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{exact: "{SPIFFE.format("orders")}"}}
"""


# ----------------------------------------------------------------------------- pairs


class Pair:
    """Two proxies: ``client`` (wrk's entry point, ``port``) and ``server`` (``inbound``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.client: h.Proc | None = None
        self.server: h.Proc | None = None
        self.extra: list[h.Proc] = []  # the control plane (not counted in the pair's CPU)
        self.port = 0
        self.inbound = 0
        self.reference = name in REFERENCE  # server only: no client proxy, no admin
        self.tls = name.endswith("mtls") or "churn" in name or self.reference
        self.churn = "churn" in name
        self.s_time_args: list[str] = []  # client cert for openssl s_time
        self.s_time_path = "/"  # what s_time -www asks for
        self.admin: list[str] = []

    def pids(self) -> list[int]:
        return [p.pid for p in (self.client, self.server) if p]

    def alive(self) -> bool:
        return all(p.alive() for p in (self.client, self.server, *self.extra) if p)

    def procs(self) -> list[h.Proc]:
        return [p for p in (self.client, self.server, *self.extra) if p]


def sidecar_env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("MESHLET_NO_EXTENSIONS", None)
    e["MESHLET_REQUIRE_EXTENSIONS"] = "1"
    return e


def launch_sidecar(
    name: str,
    service: str,
    app_port: int,
    extra: list[str],
    work: Path,
    cpu: int | None,
    env: dict[str, str] | None = None,
) -> tuple[h.Proc, int, int, int]:
    cmd = [PY, "-m", "control_plane.cli", "sidecar", "--service", service,
           "--app-port", str(app_port), "--outbound", "0", "--inbound", "0", "--admin", "0",
           "--inbound-bind", "127.0.0.1", "--no-access-log", "--drain-timeout", "1",
           "--log-level", "WARNING", *extra]  # fmt: skip
    p = h.Proc(name, h.pinned(cpu, cmd), work, {**sidecar_env(), **(env or {})})

    def ready():
        if not p.alive():
            raise RuntimeError(f"{name} exited with {p.p.returncode}:\n{p.stderr()[-3000:]}")
        return READY.search(p.stderr())

    m = h.wait_until(ready, 40, f"{name} ready line")
    if m.group(4) != "cython":
        print(f"WARNING: {name} fastpath={m.group(4)}", file=sys.stderr)
    return p, int(m.group(1)), int(m.group(2)), int(m.group(3))


def cli(data: Path, url: str, *args: str) -> str:
    e = sidecar_env()
    e.update(MESHLET_DATA_DIR=str(data), MESHLET_CONTROL_PLANE=url)
    r = subprocess.run([PY, "-m", "control_plane.cli", *args], capture_output=True, text=True,
                       env=e, cwd=str(ROOT), timeout=60)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"meshlet {' '.join(args)}: {r.stderr}")
    return r.stdout.strip()


ONE_REQUEST_PER_CONNECTION = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory}
spec:
  host: inventory
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}
"""
HANDSHAKES = re.compile(r'^meshlet_upstream_tls_handshakes_total\{resumed="(\w+)"\} (\S+)$', re.M)
ENVOY_SSL = re.compile(r"^cluster\.inventory\.ssl\.(handshake|session_reused): (\d+)$", re.M)


def handshakes(pair: Pair) -> tuple[float, float]:
    """(all, resumed) outbound mTLS handshakes of the pair's client proxy so far."""
    text = h.fetch(pair.admin[0])
    if pair.name.startswith("envoy"):
        e = {k: float(v) for k, v in ENVOY_SSL.findall(text)}
        return e.get("handshake", 0.0), e.get("session_reused", 0.0)
    m = {k: float(v) for k, v in HANDSHAKES.findall(text)}
    return m.get("true", 0.0) + m.get("false", 0.0), m.get("true", 0.0)


def start_meshlet_mtls(pair: Pair, work: Path, up: h.Upstream, cpu, load_cpu) -> None:
    data = work / f"cp-data-{pair.name}"
    addr = data / "listen.addr"
    if addr.exists():
        addr.unlink()
    cp = h.Proc("control-plane", h.pinned(load_cpu, [PY, "-m", "control_plane.cli",
                "control-plane", "--data-dir", str(data), "--listen", "127.0.0.1:0"]),
                work, sidecar_env())  # fmt: skip
    pair.extra.append(cp)
    h.wait_until(lambda: addr.exists() or not cp.alive(), 30, "control plane")
    if not cp.alive():
        raise RuntimeError(f"control plane exited:\n{cp.stderr()[-3000:]}")
    url = "https://" + addr.read_text().strip()
    toks = {}
    for svc in ("inventory", "orders"):
        toks[svc] = work / f"{svc}.token"
        toks[svc].write_text(cli(data, url, "token", "create", "--service", svc))
    if pair.churn:
        # before the sidecars start: a pool keeps the maxRequestsPerConnection it was made with
        dr = work / f"{pair.name}-dr.yaml"
        dr.write_text(ONE_REQUEST_PER_CONNECTION)
        cli(data, url, "apply", "-f", str(dr))
    state = {svc: work / f"state-{svc}-{time.monotonic_ns()}" for svc in toks}
    env = {"MESHLET_TLS_RESUMPTION": "off"} if pair.name.endswith("nores") else None
    pair.server, _, pair.inbound, adm_s = launch_sidecar(
        f"{pair.name}-inventory", "inventory", up.ports[0],
        ["--control-plane", url, "--token-file", str(toks["inventory"]),
         "--state-dir", str(state["inventory"])], work, cpu, env)  # fmt: skip
    pair.client, pair.port, _, adm_c = launch_sidecar(
        f"{pair.name}-orders", "orders", up.ports[1],
        ["--control-plane", url, "--token-file", str(toks["orders"]),
         "--state-dir", str(state["orders"])], work, cpu, env)  # fmt: skip
    pair.admin = [f"http://127.0.0.1:{adm_c}/metrics", f"http://127.0.0.1:{adm_s}/metrics"]
    o = state["orders"]
    pair.s_time_args = ["-cert", str(o / "cert-chain.pem"), "-key", str(o / "key.pem"),
                        "-CAfile", str(o / "root-cert.pem")]  # fmt: skip
    # the registry has to tell orders where inventory is
    h.wait_until(lambda: h.probe(pair.port, HOST) == 200, 20, "orders -> inventory routable")
    if pair.churn:

        def one_handshake_per_request() -> bool:
            before = handshakes(pair)[0]
            ok = h.probe(pair.port, HOST) == 200 and h.probe(pair.port, HOST) == 200
            return ok and handshakes(pair)[0] - before == 2

        h.wait_until(one_handshake_per_request, 20, f"{pair.name}: one request per connection")


def start_meshlet_plain(pair: Pair, work: Path, up: h.Upstream, cpu, load_cpu) -> None:
    se = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {port}}}}}
"""
    inv_cfg = work / "plain-inventory.yaml"
    inv_cfg.write_text(se.format(name="unused", port=up.ports[1]))
    pair.server, _, pair.inbound, adm_s = launch_sidecar(
        "meshlet-plain-inventory", "inventory", up.ports[0], ["--config", str(inv_cfg)], work, cpu
    )
    ord_cfg = work / "plain-orders.yaml"
    ord_cfg.write_text(se.format(name="inventory", port=pair.inbound))
    pair.client, pair.port, _, adm_c = launch_sidecar(
        "meshlet-plain-orders", "orders", up.ports[1], ["--config", str(ord_cfg)], work, cpu
    )
    pair.admin = [f"http://127.0.0.1:{adm_c}/metrics", f"http://127.0.0.1:{adm_s}/metrics"]


ENVOY_ONE_REQUEST_PER_CONNECTION = """    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {max_requests_per_connection: 1}
        explicit_http_config: {http_protocol_options: {}}
"""


def start_envoy_pair(pair: Pair, work: Path, up: h.Upstream, cpu, certs, tag: str) -> None:
    server = string.Template((HERE / "envoy-mtls-server.yaml").read_text()).substitute(
        admin_port=0, listen_port=0, upstream_port=up.ports[0],
        transport=envoy_server_transport(certs) if pair.tls else "",
    )  # fmt: skip
    pair.server, adm_s, pair.inbound = h.launch_envoy(f"{pair.name}-server", server, work, cpu, tag)
    client = string.Template((HERE / "envoy-mtls-client.yaml").read_text()).substitute(
        admin_port=0, listen_port=0, peer_port=pair.inbound,
        transport=(envoy_client_transport(certs) if pair.tls else "")
        + (ENVOY_ONE_REQUEST_PER_CONNECTION if pair.churn else ""),
    )  # fmt: skip
    pair.client, adm_c, pair.port = h.launch_envoy(f"{pair.name}-client", client, work, cpu, tag)
    flt = "filter=ssl|upstream_cx_total|downstream_cx_total"
    pair.admin = [f"http://{adm_c}/stats?{flt}", f"http://{adm_s}/stats?{flt}"]
    pair.s_time_args = ["-cert", str(certs["orders_cert"]), "-key", str(certs["orders_key"]),
                        "-CAfile", str(certs["ca"])]  # fmt: skip


REFERENCE_BODY = b"bench_mtls reference target: a small fixed body, one hundred bytes or so, ok.\n"


def start_reference(pair: Pair, work: Path, cpu, certs) -> None:
    """openssl-server / py-uvloop-tls: a server only, the envoy pairs' certificates."""
    if pair.name == "openssl-server":
        www = work / "openssl-www"
        www.mkdir(exist_ok=True)
        (www / "index.txt").write_bytes(REFERENCE_BODY)
        pair.inbound = h.free_port()
        # -WWW serves files relative to the cwd; Proc runs in ROOT, so env -C (exec, same pid)
        cmd = ["env", "-C", str(www), "openssl", "s_server",
               "-accept", f"127.0.0.1:{pair.inbound}", "-tls1_3",
               "-cert", str(certs["inventory_cert"]), "-key", str(certs["inventory_key"]),
               "-CAfile", str(certs["ca"]), "-Verify", "2", "-verify_return_error",
               "-WWW", "-quiet", "-verify_quiet"]  # fmt: skip
        pair.server = h.Proc(pair.name, h.pinned(cpu, cmd), work)
        pair.s_time_path = "/index.txt"
    else:
        cmd = [PY, str(HERE / "tls_ceiling_server.py"), "--cert", str(certs["inventory_cert"]),
               "--key", str(certs["inventory_key"]), "--ca", str(certs["ca"])]  # fmt: skip
        pair.server = p = h.Proc(pair.name, h.pinned(cpu, cmd), work)

        def port() -> re.Match | None:
            if not p.alive():
                raise RuntimeError(f"{pair.name} exited:\n{p.stderr()[-3000:]}")
            return re.search(r"^port=(\d+)$", p.out_path.read_text(), re.M)

        pair.inbound = int(h.wait_until(port, 20, f"{pair.name} port").group(1))
    pair.s_time_args = ["-cert", str(certs["orders_cert"]), "-key", str(certs["orders_key"]),
                        "-CAfile", str(certs["ca"])]  # fmt: skip

    def answers() -> bool:
        if not pair.server.alive():
            raise RuntimeError(f"{pair.name} exited:\n{pair.server.stderr()[-3000:]}")
        req = f"GET {pair.s_time_path} HTTP/1.0\r\n\r\n"
        try:
            r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{pair.inbound}",
                                "-quiet", *pair.s_time_args], input=req, capture_output=True,
                               text=True, timeout=10)  # fmt: skip
        except subprocess.TimeoutExpired:
            return False
        return r.stdout.startswith("HTTP/1.0 200")

    h.wait_until(answers, 20, f"{pair.name}: HTTP/1.0 200 over mTLS", interval=0.2)


def start_pair(pair: Pair, work: Path, up: h.Upstream, cpu, load_cpu, certs, n: int) -> None:
    if pair.reference:
        start_reference(pair, work, cpu, certs)
        return
    if pair.name == "meshlet-mtls" or pair.name.startswith("meshlet-churn"):
        start_meshlet_mtls(pair, work, up, cpu, load_cpu)
    elif pair.name == "meshlet-plain":
        start_meshlet_plain(pair, work, up, cpu, load_cpu)
    else:
        start_envoy_pair(pair, work, up, cpu, certs, f"-{n}")
    status = h.probe(pair.port, HOST)
    if status != 200:
        raise RuntimeError(f"{pair.name}: probe GET / answered {status}")


# ----------------------------------------------------------------------------- load


def load_cmd(pair: Pair, scenario: str, duration: float, cpu: int | None) -> list[str]:
    kind, arg = SCENARIOS[scenario]
    d = max(1, round(duration))
    if kind == "s_time":
        # -www makes s_time send a request and read the answer: with TLS 1.3 the session ticket
        # arrives after the handshake, so without reading, -reuse would never resume
        return h.pinned(cpu, ["openssl", "s_time", "-connect", f"127.0.0.1:{pair.inbound}",
                              arg, "-time", str(d), "-www", pair.s_time_path,
                              *pair.s_time_args])  # fmt: skip
    cmd = ["wrk", "-t1", f"-c{arg}", f"-d{d}s", "--latency", "--timeout", "5s",
           "-H", f"Host: {HOST}"]  # fmt: skip
    if kind == "close":
        cmd += ["-H", "Connection: close"]
    return h.pinned(cpu, [*cmd, f"http://127.0.0.1:{pair.port}/"])


def parse_s_time(out: str) -> dict:
    """openssl s_time: 'N connections in T real seconds' (the wall-clock line)."""
    r: dict = {"rps": 0.0, "requests": 0, "non2xx": 0,
               "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0}}  # fmt: skip
    m = re.search(r"(\d+) connections in (\d+) real seconds", out)
    if m and int(m.group(2)) > 0:
        r["requests"] = int(m.group(1))
        r["rps"] = int(m.group(1)) / int(m.group(2))
    else:
        r["socket_errors"]["connect"] = 1
    if re.search(r"ERROR|error setting certificate|unable to", out):
        r["socket_errors"]["connect"] += 1
    # one character per connection: '*' full handshake, 'r' resumed
    marks = "".join(re.findall(r"^[*r]+$", out, re.M))
    r["resumed_fraction"] = round(marks.count("r") / len(marks), 3) if marks else None
    return r


def measure(pair: Pair, scenario: str, duration: float, warmup: float, cpus) -> dict:
    load_cpu, proxy_cpu = cpus
    kind = SCENARIOS[scenario][0]
    # handshakes: only the server proxy works; everything else: both proxies
    pids = [pair.server.pid] if kind == "s_time" else pair.pids()
    if warmup > 0:
        h.run_wrk(load_cmd(pair, scenario, warmup, load_cpu), warmup)
    hs0 = handshakes(pair) if kind == "churn" else (0.0, 0.0)
    c0 = sum(h.cpu_seconds(p) for p in pids)
    b0 = h.cpu_busy(proxy_cpu) if proxy_cpu is not None else (0.0, 0.0)
    w0 = time.monotonic()
    out, rc = h.run_wrk(load_cmd(pair, scenario, duration, load_cpu), duration)
    wall = time.monotonic() - w0
    c1 = sum(h.cpu_seconds(p) for p in pids)
    b1 = h.cpu_busy(proxy_cpu) if proxy_cpu is not None else (0.0, 0.0)
    r = parse_s_time(out) if kind == "s_time" else h.parse_wrk(out)
    if kind == "churn":
        hs1 = handshakes(pair)
        n = hs1[0] - hs0[0]
        r["handshakes"] = n
        r["resumed_fraction"] = round((hs1[1] - hs0[1]) / n, 3) if n > 0 else None
    if kind == "s_time":  # s_time's own clock counts whole seconds: use ours for CPU/s
        r["rps"] = r["requests"] / wall if r["requests"] else 0.0
    cpu = (c1 - c0) / wall
    r.update(
        {
            "target": pair.name,
            "scenario": scenario,
            "wall_s": round(wall, 3),
            "rc": rc,
            "proxy_cpu": round(cpu, 4),
            "rps_per_core": round(r["rps"] / cpu, 1) if cpu > 0 else None,
            "proxy_cpu_busy_total": round((b1[0] - b0[0]) / (b1[1] - b0[1]), 3)
            if b1[1] > b0[1]
            else None,
            "alive_after": pair.alive(),
            "output": out[-3000:],
        }
    )
    r["errors"] = r["non2xx"] + sum(r["socket_errors"].values())
    return r


# ----------------------------------------------------------------------------- report

RATIOS = [
    # (numerator, denominator, scenario, label)
    ("meshlet-mtls", "envoy-mtls", "c10", "meshlet / envoy pair, mTLS"),
    ("meshlet-mtls", "envoy-mtls", "c100", "meshlet / envoy pair, mTLS"),
    ("meshlet-plain", "envoy-plain", "c10", "meshlet / envoy pair, plaintext"),
    ("meshlet-plain", "envoy-plain", "c100", "meshlet / envoy pair, plaintext"),
    ("meshlet-mtls", "meshlet-plain", "c10", "meshlet mTLS / plaintext"),
    ("meshlet-mtls", "meshlet-plain", "c100", "meshlet mTLS / plaintext"),
    ("envoy-mtls", "envoy-plain", "c10", "envoy mTLS / plaintext"),
    ("envoy-mtls", "envoy-plain", "c100", "envoy mTLS / plaintext"),
    ("meshlet-mtls", "envoy-mtls", "newconn-c10", "meshlet / envoy new conns, mTLS pair"),
    ("meshlet-plain", "envoy-plain", "newconn-c10", "meshlet / envoy new conns, plain pair"),
    ("meshlet-mtls", "envoy-mtls", "hs-new", "meshlet / envoy full handshakes"),
    ("meshlet-mtls", "envoy-mtls", "hs-reuse", "meshlet / envoy resumed handshakes"),
    # reference targets (--pairs ...,openssl-server,py-uvloop-tls): where the ceiling is
    ("meshlet-mtls", "openssl-server", "hs-new", "meshlet / openssl s_server full hs"),
    ("meshlet-mtls", "openssl-server", "hs-reuse", "meshlet / openssl s_server resumed hs"),
    ("openssl-server", "envoy-mtls", "hs-new", "openssl s_server / envoy full hs"),
    ("openssl-server", "envoy-mtls", "hs-reuse", "openssl s_server / envoy resumed hs"),
    ("py-uvloop-tls", "envoy-mtls", "hs-new", "py uvloop TLS server / envoy full hs"),
    ("py-uvloop-tls", "envoy-mtls", "hs-reuse", "py uvloop TLS server / envoy resumed hs"),
    ("meshlet-churn", "envoy-churn", "churn-c10", "meshlet / envoy, new mTLS conn per request"),
    ("meshlet-churn", "meshlet-churn-nores", "churn-c10", "meshlet resumed / full handshakes"),
]


def summarize(runs: list[dict], scenarios: list[str], pairs: list[str]) -> dict:
    s: dict = {}
    for sc in scenarios:
        s[sc] = {}
        for p in pairs:
            rr = [r for r in runs if r["scenario"] == sc and r["target"] == p]
            if rr:
                s[sc][p] = {
                    "rounds": len(rr),
                    "rps": h.med([r["rps"] for r in rr]),
                    "proxy_cpu": h.med([r["proxy_cpu"] for r in rr]),
                    "rps_per_core": h.med([r["rps_per_core"] for r in rr]),
                    "p50_us": h.med([r.get("p50_us") for r in rr]),
                    "p99_us": h.med([r.get("p99_us") for r in rr]),
                    "errors": sum(r["errors"] for r in rr),
                    "resumed": h.med([r.get("resumed_fraction") for r in rr]),
                }
    return s


def report(s: dict, rounds: int, duration: float) -> tuple[str, list[dict]]:
    lines = [
        f"Medians of {rounds} interleaved round(s), {duration:g}s each; both proxies of a pair on "
        "CPU 1, wrk/openssl + upstream on CPU 0. cpu = both proxies (hs-*: the server proxy "
        "only); rps/core = requests (hs-*: handshakes) per second per core of that CPU.",
        "",
    ]
    cols = [("scenario", "<12"), ("pair", "<14"), ("rps", ">9"), ("cpu", ">5"),
            ("rps/core", ">9"), ("vs envoy", ">8"), ("p50", ">8"), ("p99", ">8"),
            ("errors", ">6"), ("resumed", ">7")]  # fmt: skip
    hdr = " ".join(format(n, f) for n, f in cols)
    lines += [hdr, "-" * len(hdr)]
    for sc, row in s.items():
        for p, v in row.items():
            twin = "envoy-mtls" if p in REFERENCE else p.replace("meshlet", "envoy")
            env = row.get(twin, {}).get("rps_per_core")
            rel = h.ratio(v["rps_per_core"], env)
            cells = [sc, p, f"{v['rps']:.0f}", h.fmt(v["proxy_cpu"], ".2f"),
                     h.fmt(v["rps_per_core"], ",.0f"), h.fmt(rel, ".2f"),
                     h.fmt_us(v["p50_us"]), h.fmt_us(v["p99_us"]), str(v["errors"]),
                     h.fmt(v["resumed"], ".2f")]  # fmt: skip
            lines.append(" ".join(format(c, f) for c, (_, f) in zip(cells, cols, strict=True)))  # noqa: E501
        lines.append("")
    lines.append("RATIOS (rps per core, same run)")
    rh = f"{'metric':<52} {'ratio':>7}"
    lines += [rh, "-" * len(rh)]
    out = []
    for num, den, sc, label in RATIOS:
        row = s.get(sc, {})
        if num in row and den in row:
            v = h.ratio(row[num]["rps_per_core"], row[den]["rps_per_core"])
            lines.append(f"{label + ' ' + sc:<52} {h.fmt(v, '.2f'):>7}")
            out.append({"metric": f"{label} {sc}", "ratio": v})
    lines.append(
        "newconn-c10: each request opens a new client->proxy connection (plaintext); the "
        "proxy->proxy hop stays pooled, so it does NOT measure mTLS handshakes (hs-new does)."
    )
    lines.append(
        "hs-*: openssl s_time -www / with the client certificate: handshake + one HTTP/1.0 "
        "request per connection; 'resumed' = share of connections s_time marked resumed."
    )
    if any(p in row for row in s.values() for p in REFERENCE):
        lines.append(
            "openssl-server (C s_server -WWW, system OpenSSL) and py-uvloop-tls (bare uvloop + "
            "ssl server) are server-only references, 'vs envoy' against envoy-mtls's server."
        )
    return "\n".join(lines), out


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description="two-hop mTLS: meshlet pair vs Envoy pair (ratios)")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="3 s x 1 round")
    ap.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help=", ".join(SCENARIOS))
    ap.add_argument("--pairs", default=",".join(PAIRS),
                    help=", ".join(PAIRS + CHURN_PAIRS + REFERENCE))  # fmt: skip
    ap.add_argument("--upstream", choices=("auto", "nginx", "python"), default="auto")
    ap.add_argument("--proxy-cpu", type=int, default=1)
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--out", default="results-mtls.json")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--nice", type=int, default=0, help="niceness for everything started")
    args = ap.parse_args()
    h.NICE = args.nice
    if args.quick:
        args.duration, args.rounds = 3.0, 1
    if args.duration <= 0 or args.duration > 600 or not 1 <= args.rounds <= 20:
        ap.error("--duration must be in (0, 600] and --rounds in [1, 20]")
    scenarios = [x for x in args.scenarios.split(",") if x]
    pairs = [x for x in args.pairs.split(",") if x]
    for x in scenarios:
        if x not in SCENARIOS:
            ap.error(f"unknown scenario {x}")
    for x in pairs:
        if x not in PAIRS + CHURN_PAIRS + REFERENCE:
            ap.error(f"unknown pair {x}")
    for tool in ("wrk", "openssl"):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install {tool}", file=sys.stderr)
            return 2
    if any(p.startswith("envoy") for p in pairs) and (missing := h.envoy_missing(
            "leave it out with --pairs "
            + ",".join(p for p in pairs if not p.startswith("envoy")))):
        print(missing, file=sys.stderr)
        return 2
    ncpu = os.cpu_count() or 1
    proxy_cpu = args.proxy_cpu if 0 <= args.proxy_cpu < ncpu else None
    load_cpu = args.load_cpu if 0 <= args.load_cpu < ncpu else None
    kind = args.upstream
    if kind == "auto":
        kind = "nginx" if (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()) else "python"

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="meshlet-bench-mtls-"))
    runs: list[dict] = []
    events: list[str] = []
    rc = 0
    out_path = Path(args.out)
    try:
        certs = make_certs(work / "certs")
        up = h.Upstream(kind, work, load_cpu)
        pmap = {n: Pair(n) for n in pairs}
        for p in pmap.values():
            start_pair(p, work, up, proxy_cpu, load_cpu, certs, 0)
            print(f"[mtls] started {p.name:<14} port={p.port} inbound={p.inbound} "
                  f"pids={p.pids()}", file=sys.stderr)  # fmt: skip
        plan = []
        for name in pairs:
            skip = [sc for sc in scenarios if SCENARIOS[sc][0] != "s_time"]
            if pmap[name].reference and skip:
                print(f"[mtls] {name} is a server-only reference (hs-* only): skipping "
                      f"{','.join(skip)}", file=sys.stderr)  # fmt: skip
        for rnd in range(args.rounds):
            order = pairs[rnd % len(pairs) :] + pairs[: rnd % len(pairs)]
            for sc in scenarios:
                for name in order:
                    if SCENARIOS[sc][0] == "s_time" and not pmap[name].tls:
                        continue
                    if pmap[name].reference and SCENARIOS[sc][0] != "s_time":
                        continue
                    if pmap[name].churn != (SCENARIOS[sc][0] == "churn"):
                        continue  # churn pairs run churn-c10 only, and only they run it
                    plan.append((rnd, sc, name))
        total = len(plan)
        for n, (rnd, sc, name) in enumerate(plan, 1):
            p = pmap[name]
            if not p.alive():
                msg = f"round {rnd + 1} {sc}: {name} had a dead process; restarting"
                for pr in p.procs():
                    msg += f"\n{pr.name} rc={pr.p.returncode}: {pr.stderr()[-800:]}"
                print("[mtls] " + msg, file=sys.stderr)
                events.append(msg)
                for pr in p.procs():
                    pr.stop()
                pmap[name] = p = Pair(name)
                start_pair(p, work, up, proxy_cpu, load_cpu, certs, n)
            r = measure(p, sc, args.duration, args.warmup, (load_cpu, proxy_cpu))
            r["round"] = rnd + 1
            runs.append(r)
            flag = f"  ERRORS {r['non2xx']} {r['socket_errors']}" if r["errors"] else ""
            print(f"[mtls] {n:>3}/{total} round {rnd + 1} {sc:<11} {name:<14} "
                  f"rps={r['rps']:>8.0f} cpu={r['proxy_cpu']:.2f} "
                  f"rps/core={h.fmt(r['rps_per_core'], ',.0f'):>8} "
                  f"cpu1busy={h.fmt(r['proxy_cpu_busy_total'], '.2f')}{flag}",
                  file=sys.stderr)  # fmt: skip
        summary = summarize(runs, scenarios, pairs)
        text, ratios = report(summary, args.rounds, args.duration)
        print(text, flush=True)
        for p in pmap.values():
            for pr in p.procs():
                if re.search(r"Traceback|ERROR|CRITICAL|\[error\]|\[critical\]", pr.stderr()):
                    events.append(f"{pr.name} stderr has errors:\n{pr.stderr()[-2000:]}")
                    print(f"[mtls] {pr.name} stderr has errors:\n{pr.stderr()[-1000:]}",
                          file=sys.stderr)  # fmt: skip
        counters = {f"{n}:{u}": h.fetch(u) for n, p in pmap.items() for u in p.admin}
        out_path.write_text(json.dumps({"summary": summary, "ratios": ratios, "report": text,
                                        "events": events, "git": h.git_state(),
                                        "counters": counters, "runs": runs}, indent=1))  # fmt: skip
        print(f"\nraw per-run numbers: {out_path}", file=sys.stderr)
        if any(r["errors"] for r in runs) or events:
            rc = 1
    except KeyboardInterrupt:
        print("\n[mtls] interrupted; stopping everything", file=sys.stderr)
        rc = 130
    finally:
        h.Proc.stop_all()
        if runs and not out_path.exists():
            out_path.write_text(json.dumps({"runs": runs, "partial": True}, indent=1))
        if args.keep_workdir:
            print(f"[mtls] workdir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
