"""Opaque TCP through two real sidecars joined to a real control plane: HBONE (HTTP/2 CONNECT
over mTLS) between them, Istio's Sidecar egress listener on the client side, real servers
(redis-server, a server-first banner protocol) behind the server side.

The client app connects to ``127.0.0.1:PORT`` (the Sidecar's egress listener for the ``cache``
service's declared TCP port); its sidecar tunnels the connection to cache's sidecar's HBONE
port, which connects to the app. Each app's server sees only its own sidecar's connection."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import Proc, free_port, start_control_plane, start_sidecar, wait_until

BANNER_APP = r"""
import asyncio, sys
seen = []
async def handle(r, w):
    w.write(b"220 meshlet-banner ready\r\n")
    await w.drain()
    line = await r.readline()
    w.write(b"250 echo " + line)
    await w.drain()
    w.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print("banner ready", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""

RESET_APP = r"""
import socket, struct, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
print("reset ready", flush=True)
while True:
    c, _ = s.accept()
    c.recv(100)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
"""


def _config(p: dict[str, int]) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cache, namespace: default}}
spec:
  hosts: [cache]
  ports: [{{number: {p['cache']}, name: tcp-redis, protocol: REDIS}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: banner, namespace: default}}
spec:
  hosts: [banner]
  ports: [{{number: {p['banner']}, name: smtp, appProtocol: tcp}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: resetter, namespace: default}}
spec:
  hosts: [resetter]
  ports: [{{number: {p['resetter']}, name: tcp-x}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
  - port: {{number: {p['cache']}, protocol: TCP}}
    bind: 127.0.0.1
    hosts: ["./cache"]
  - port: {{number: {p['banner']}, protocol: TCP}}
    bind: 127.0.0.1
    hosts: ["./banner"]
  - port: {{number: {p['resetter']}, protocol: TCP}}
    bind: 127.0.0.1
    hosts: ["./resetter"]
  - hosts: ["./*"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict, namespace: default}}
spec: {{mtls: {{mode: STRICT}}}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("tcp-mesh")
    cp = start_control_plane(work)
    started: list = [cp]
    try:
        ports = {"cache": free_port(), "banner": free_port(), "resetter": free_port()}
        r = cp.cli("apply", "-f", "-", input=_config(ports))
        assert r.returncode == 0, r.stderr
        redis_port, banner_port, reset_port = free_port(), free_port(), free_port()
        redis = Proc("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                     work)  # fmt: skip
        started.append(redis)
        wait_until(lambda: _listening(redis_port), timeout=20, what="redis-server")
        banner = Proc("banner", [sys.executable, "-c", BANNER_APP, str(banner_port)], work)
        started.append(banner)
        wait_until(lambda: _listening(banner_port), timeout=20, what="banner app")
        resetter = Proc("resetter", [sys.executable, "-c", RESET_APP, str(reset_port)], work)
        started.append(resetter)
        wait_until(lambda: _listening(reset_port), timeout=20, what="resetting app")

        def sidecar(service: str, port: int):
            sc = start_sidecar(
                work, service, port, None,
                "--control-plane", cp.url, "--token-file", str(cp.token(service, work)),
                "--state-dir", str(work / service), "--hbone", "0", name=service,
            )  # fmt: skip
            started.append(sc)
            return sc

        m = {"cp": cp, "work": work, "ports": ports, "redis_port": redis_port,
             "cache": sidecar("cache", redis_port), "banner": sidecar("banner", banner_port),
             "resetter": sidecar("resetter", reset_port), "client": sidecar("client", 1)}  # fmt: skip
        for name in ("cache", "banner", "resetter"):
            _wait_routable(m, name)
        yield m
    finally:
        for p in reversed(started):
            p.stop()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _dump(sc) -> dict:
    status, body = sc.admin_get("/config_dump")
    assert status == 200
    return json.loads(body)


def _wait_routable(m: dict, service: str) -> None:
    """The egress listener is open and cache's endpoint (with its HBONE port) is known."""
    port = m["ports"][service]

    def ready() -> bool:
        d = _dump(m["client"])
        if f"127.0.0.1:{port}" not in d["tcp"]["egress_listening"]:
            return False
        return any(
            r["service"] == service and r.get("hbone_port") for r in d["registry"]
        )

    wait_until(ready, timeout=30, what=f"{service} routable over TCP")


def _redis(m: dict, *args: str, stdin: str | None = None) -> str:
    r = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(m["ports"]["cache"]), *args],
        capture_output=True, text=True, input=stdin, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


def _metric(sc, name: str, **labels: str) -> float:
    status, body = sc.admin_get("/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_redis_set_get_over_mtls_and_the_server_sees_only_its_sidecar(mesh):
    assert _redis(mesh, "SET", "k1", "hello").strip() == "OK"
    assert _redis(mesh, "GET", "k1").strip() == "hello"
    # redis's own view of its clients: CLIENT LIST run through the mesh, compared with the
    # address the redis-cli connection had on the client side
    s = socket.create_connection(("127.0.0.1", mesh["ports"]["cache"]))
    s.sendall(b"CLIENT LIST\r\n")
    data = b""
    while b"\r\n" not in data[1:] or len(data) < int(data[1 : data.index(b"\r\n")] or 0):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
        if data.startswith(b"$") and b"\r\n" in data:
            n = int(data[1 : data.index(b"\r\n")])
            if len(data) >= data.index(b"\r\n") + 2 + n:
                break
    mine = "%s:%d" % s.getsockname()
    s.close()
    assert b"cmd=client" in data
    assert mine.encode() not in data  # redis saw cache's sidecar, not the client


def test_redis_pipelining_and_a_10_mib_value(mesh):
    import redis

    r = redis.Redis(host="127.0.0.1", port=mesh["ports"]["cache"], socket_timeout=60)
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"p{i}", str(i))
    for i in range(500):
        pipe.get(f"p{i}")
    out = pipe.execute()
    assert out[:500] == [True] * 500 and out[500:] == [str(i).encode() for i in range(500)]
    big = bytes(range(256)) * (10 * 4096)  # 10 MiB
    assert r.set("big", big)
    assert r.get("big") == big
    r.close()


def test_tcp_metrics_count_the_bytes_on_both_sides(mesh):
    client, cache = mesh["client"], mesh["cache"]
    before_src = _metric(client, "istio_tcp_received_bytes_total", reporter="source",
                         destination_service="cache.default.svc.cluster.local")  # fmt: skip
    before_dst = _metric(cache, "istio_tcp_received_bytes_total", reporter="destination",
                         source_principal="spiffe://cluster.local/ns/default/sa/client")  # fmt: skip
    before_sent = _metric(cache, "istio_tcp_sent_bytes_total", reporter="destination")
    before_open = _metric(client, "istio_tcp_connections_opened_total", reporter="source")
    s = socket.create_connection(("127.0.0.1", mesh["ports"]["cache"]))
    req = b"*3\r\n$3\r\nSET\r\n$2\r\nmk\r\n$5\r\nvalue\r\n"
    s.sendall(req)
    assert s.recv(100) == b"+OK\r\n"
    s.close()

    def counted() -> bool:
        return (
            _metric(client, "istio_tcp_received_bytes_total", reporter="source",
                    destination_service="cache.default.svc.cluster.local") - before_src == len(req)
            and _metric(cache, "istio_tcp_received_bytes_total", reporter="destination",
                        source_principal="spiffe://cluster.local/ns/default/sa/client")
            - before_dst == len(req)
            and _metric(cache, "istio_tcp_sent_bytes_total", reporter="destination")
            - before_sent == 5
        )  # fmt: skip

    wait_until(counted, timeout=10, what="tcp byte counters")
    assert _metric(client, "istio_tcp_connections_opened_total", reporter="source") - before_open == 1
    wait_until(
        lambda: _metric(cache, "istio_tcp_connections_closed_total", reporter="destination",
                        connection_security_policy="mutual_tls") >= 1,
        timeout=10, what="closed counter",
    )  # fmt: skip


def test_server_first_banner_protocol(mesh):
    s = socket.create_connection(("127.0.0.1", mesh["ports"]["banner"]), timeout=10)
    f = s.makefile("rb")
    assert f.readline() == b"220 meshlet-banner ready\r\n"  # before the client sent anything
    s.sendall(b"HELO mesh\r\n")
    assert f.readline() == b"250 echo HELO mesh\r\n"
    assert f.read() == b""  # the server closed: the close comes through
    s.close()


def test_half_close_keeps_the_other_direction_open(mesh):
    # redis answers every command it has read, then closes after QUIT; here the client's FIN
    # comes first, and the answers still arrive (END_STREAM one way only)
    s = socket.create_connection(("127.0.0.1", mesh["ports"]["cache"]), timeout=10)
    s.sendall(b"PING\r\nPING\r\n")
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(100)
        if not chunk:
            break
        data += chunk
    assert data == b"+PONG\r\n+PONG\r\n"
    s.close()


def test_an_app_that_resets_resets_the_client(mesh):
    s = socket.create_connection(("127.0.0.1", mesh["ports"]["resetter"]), timeout=10)
    s.sendall(b"hello")
    with pytest.raises(ConnectionResetError):
        while s.recv(100):
            pass
    s.close()


def test_tunnel_shows_in_clusters_and_access_log(mesh):
    assert _redis(mesh, "PING").strip() == "PONG"
    status, body = mesh["client"].admin_get("/clusters")
    tunnels = json.loads(body)["tcp_tunnels"]
    assert any(
        t["direction"] == "outbound" and t["peer"] == "spiffe://cluster.local/ns/default/sa/cache"
        for t in tunnels
    )
    status, body = mesh["cache"].admin_get("/clusters")
    assert any(t["direction"] == "inbound" for t in json.loads(body)["tcp_tunnels"])

    def logged() -> list[dict]:
        lines = [json.loads(x) for x in mesh["cache"].proc.stdout().splitlines()
                 if x.startswith("{") and '"protocol":"TCP"' in x]  # fmt: skip
        return lines

    wait_until(lambda: len(logged()) > 0, timeout=10, what="tcp access log line")
    line = logged()[-1]
    assert line["reporter"] == "destination"
    assert line["downstream_peer_principal"] == "spiffe://cluster.local/ns/default/sa/client"
    assert line["connection_termination_details"]
    assert isinstance(line["bytes_received"], int) and isinstance(line["duration_ms"], int)
