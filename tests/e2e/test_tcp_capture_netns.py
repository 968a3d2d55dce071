"""Opaque TCP under iptables capture, end to end in network namespaces: an unmodified client in
its pod connects to a TCP service's plain address and port (a ServiceEntry VIP, like a
ClusterIP: no process owns it), its sidecar takes the connection from the capture rules
(``SO_ORIGINAL_DST`` on 15001), tunnels it as an HTTP/2 CONNECT stream over mTLS to the server
pod's sidecar on 15008 (HBONE), which connects to the app on the pod's loopback.

Pods (see tests/e2e/netns.py): ``pod-cp`` (.2, the control plane), ``pod-client`` (.3: capture
rules and a sidecar; the clients are ``redis-cli`` and a Python socket run as root in the pod),
``pod-cache`` (.4: a real ``redis-server`` on 127.0.0.1:6379) and ``pod-banner`` (.5: a
server-first banner server on 127.0.0.1:2525 that names the peer it sees), each server pod with
its capture rules and sidecar. Every wait is bounded; the whole module takes about a minute.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.e2e.netns import (
    Pod,
    TestBed,
    can_run,
    create_token,
    start_control_plane,
    start_sidecar,
    wait_ready,
)
from tests.support import PY, wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(bool(can_run()), reason=can_run() or "ok"),
]

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
CACHE_ID = "spiffe://cluster.local/ns/default/sa/cache"
BANNER_ID = "spiffe://cluster.local/ns/default/sa/banner"
CACHE_FQDN = "cache.default.svc.cluster.local"
BANNER_FQDN = "banner.default.svc.cluster.local"

# server-first: greets with the peer address it sees, then answers one line
BANNER_APP = r"""
import asyncio
async def handle(r, w):
    host, port = w.get_extra_info("peername")[:2]
    w.write(b"220 banner sees %s\r\n" % host.encode())
    await w.drain()
    line = await r.readline()
    w.write(b"250 " + line)
    await w.drain()
    w.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", 2525)
    print("banner listening", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""

# an unmodified client: connects to the VIP, reads the greeting before sending anything
BANNER_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 2525), timeout=10)
f = s.makefile("rb")
greeting = f.readline()
s.sendall(b"HELO meshlet\r\n")
print(greeting.decode().strip() + "|" + f.readline().decode().strip())
"""
HELO = b"HELO meshlet\r\n"


def _config(cache_vip: str, banner_vip: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cache, namespace: default}}
spec:
  hosts: [cache]
  addresses: [{cache_vip}]
  ports: [{{number: 6379, name: tcp-redis, protocol: REDIS}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: banner, namespace: default}}
spec:
  hosts: [banner]
  addresses: [{banner_vip}]
  ports: [{{number: 2525, name: smtp, appProtocol: tcp}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict, namespace: default}}
spec: {{mtls: {{mode: STRICT}}}}
"""


class Mesh:
    def __init__(self, bed: TestBed) -> None:
        self.bed = bed
        self.cp: Pod = bed.pod("pod-cp")
        self.client: Pod = bed.pod("pod-client")
        self.cache: Pod = bed.pod("pod-cache")
        self.banner: Pod = bed.pod("pod-banner")
        # VIPs in the pods' subnet that no pod owns: only the capture can carry these
        self.cache_vip = f"{bed.subnet}.100"
        self.banner_vip = f"{bed.subnet}.101"

    def redis(self, *args: str) -> str:
        r = self.client.exec("redis-cli", "-h", self.cache_vip, "-p", "6379", *args,
                             check=False, timeout=30)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    def banner_call(self) -> str:
        r = self.client.exec(PY, "-c", BANNER_CLIENT, self.banner_vip, check=False, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()


def _admin(pod: Pod, path: str) -> str:
    status, _, body = pod.curl(f"http://127.0.0.1:15000{path}", timeout=5)
    assert status == 200, (pod.name, path, status, body[:300])
    return body


def _metric(pod: Pod, name: str, **labels: str) -> float:
    total = 0.0
    for line in _admin(pod, "/metrics").splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    bed = TestBed({"pod-cp": 2, "pod-client": 3, "pod-cache": 4, "pod-banner": 5})
    try:
        m = Mesh(bed)
        data = bed.private_dir("cp-data")
        url = start_control_plane(m.cp, data)
        policy = bed.root / "tcp.yaml"
        policy.write_text(_config(m.cache_vip, m.banner_vip))
        m.cp.meshlet("apply", "-f", str(policy), "--data-dir", str(data), "--control-plane", url)
        tokens = {svc: create_token(m.cp, url, data, svc, bed.root / f"{svc}.token")
                  for svc in ("client", "cache", "banner")}  # fmt: skip
        m.cache.start("redis", "redis-server", "--port", "6379", "--bind", "127.0.0.1",
                      "--save", "", "--appendonly", "no", "--dir", str(bed.root))
        wait_until(lambda: "PONG" in m.cache.exec("redis-cli", "-p", "6379", "PING",
                                                  check=False).stdout,
                   timeout=20, what="redis-server")  # fmt: skip
        m.banner.start("app", PY, "-c", BANNER_APP)
        wait_until(lambda: "banner listening" in bed.pod("pod-banner").procs[-1].stdout(),
                   timeout=20, what="banner app")  # fmt: skip
        for pod, svc, port in ((m.cache, "cache", 6379), (m.banner, "banner", 2525),
                               (m.client, "client", 8080)):  # fmt: skip
            pod.meshlet("iptables")  # the init step, as root
            start_sidecar(bed, pod, svc, "v1", url, tokens[svc], app_port=port)
        for pod in (m.client, m.cache, m.banner):
            wait_ready(pod)

        def routable() -> bool:
            r = m.client.exec("redis-cli", "-h", m.cache_vip, "-p", "6379", "PING",
                              check=False, timeout=10)  # fmt: skip
            return r.stdout.strip() == "PONG"

        wait_until(routable, timeout=40, interval=0.3, what="cache reachable through capture")
        yield m
    finally:
        bed.close()


def test_redis_through_capture_rides_hbone_mtls_and_redis_sees_only_its_sidecar(mesh: Mesh):
    assert mesh.redis("SET", "k", "v" * 1000).strip() == "OK"
    assert mesh.redis("GET", "k").strip() == "v" * 1000
    # redis-server's only clients are on its pod's loopback: its own sidecar (and this call)
    clients = mesh.redis("CLIENT", "LIST")
    addrs = re.findall(r"addr=([\d.]+):\d+", clients)
    assert addrs and set(addrs) == {"127.0.0.1"}, clients
    # the tunnel: the client sidecar's HBONE connection to the cache pod's 15008, mTLS to cache
    tunnels = json.loads(_admin(mesh.client, "/clusters"))["tcp_tunnels"]
    assert any(t["direction"] == "outbound" and t["address"] == f"{mesh.cache.ip}:15008"
               and t["peer"] == CACHE_ID for t in tunnels), tunnels  # fmt: skip
    inbound = json.loads(_admin(mesh.cache, "/clusters"))["tcp_tunnels"]
    assert any(t["direction"] == "inbound" and t["peer"] == CLIENT_ID
               and t["address"].startswith(mesh.client.ip + ":") for t in inbound), inbound
    # both sides count it, with Istio's labels
    assert _metric(mesh.client, "istio_tcp_connections_opened_total", reporter="source",
                   destination_service=CACHE_FQDN, destination_principal=CACHE_ID) > 0
    assert _metric(mesh.cache, "istio_tcp_connections_opened_total", reporter="destination",
                   source_principal=CLIENT_ID, connection_security_policy="mutual_tls") > 0


def test_server_first_banner_through_capture_with_exact_byte_counts(mesh: Mesh):
    src = {"reporter": "source", "destination_service": BANNER_FQDN}
    dst = {"reporter": "destination", "source_principal": CLIENT_ID,
           "connection_security_policy": "mutual_tls"}  # fmt: skip

    def counts() -> tuple[float, ...]:
        return (
            _metric(mesh.client, "istio_tcp_received_bytes_total", **src),
            _metric(mesh.client, "istio_tcp_sent_bytes_total", **src),
            _metric(mesh.client, "istio_tcp_connections_closed_total", **src),
            _metric(mesh.banner, "istio_tcp_received_bytes_total", **dst),
            _metric(mesh.banner, "istio_tcp_sent_bytes_total", **dst),
            _metric(mesh.banner, "istio_tcp_connections_closed_total", **dst),
        )

    before = counts()
    out = mesh.banner_call()
    # the server spoke first and saw its own sidecar (loopback), not the client pod
    assert out == "220 banner sees 127.0.0.1|250 HELO meshlet", out
    answer = len(b"220 banner sees 127.0.0.1\r\n") + len(b"250 " + HELO)
    want = (len(HELO), answer, 1, len(HELO), answer, 1)
    wait_until(lambda: tuple(a - b for a, b in zip(counts(), before, strict=True)) == want,
               timeout=15, what="both sidecars' tcp counters for one banner connection")


def test_plaintext_from_outside_the_mesh_never_reaches_the_cache(mesh: Mesh):
    # the control plane's pod has no sidecar: its plaintext to the cache pod's redis port is
    # captured there and refused (STRICT), and 15008 takes nothing but mTLS
    for port in (6379, 15008):
        r = mesh.cp.exec("bash", "-c", f"exec 3<>/dev/tcp/{mesh.cache.ip}/{port}; "
                         "printf 'PING\\r\\n' >&3; timeout 3 cat <&3", check=False)  # fmt: skip
        assert "PONG" not in r.stdout, (port, r.stdout)
