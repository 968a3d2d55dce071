"""HBONE connections between real sidecars: the stream limit and GOAWAY on drain.

Client app -> sidecar A (egress listener) -> HBONE -> sidecar B or C, two endpoints of service
``echo`` (each app greets with its own name), both started with ``--hbone-max-streams 3``.

* Stream limit: more concurrent TCP connections than one peer sidecar takes on one HBONE
  connection all work, over two or more connections to that peer (A waits for the peer's
  SETTINGS before it opens streams on a new connection, and opens another one at the limit).
* Drain: B gets SIGTERM. It sends GOAWAY on every inbound HBONE connection; A stops opening
  streams on those connections, so every new TCP connection through A works (it reaches C; a
  new connection to B is refused, as B's listener closed, and A tries the other endpoint), while
  the long-lived tunnel through B keeps flowing both ways until its client closes it, after
  which B exits, long before its drain timeout. Both sides count the GOAWAY.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import time
from collections import Counter

import pytest

from tests.support import (
    TCP_ECHO_APP,
    Proc,
    free_port,
    listening,
    port_below_ephemeral,
    start_control_plane,
    start_sidecar,
    wait_until,
)

MAX_STREAMS = 3



def _config(port: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo]
  ports: [{{number: {port}, name: tcp-echo}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
  - port: {{number: {port}, protocol: TCP}}
    bind: 127.0.0.1
    hosts: ["./echo"]
  - hosts: ["./*"]
"""


def _json(sc, path: str) -> dict:
    status, body = sc.admin_get(path)
    assert status == 200, (status, body[:200])
    return json.loads(body)


def _tunnels(sc, direction: str) -> list[dict]:
    return [t for t in _json(sc, "/clusters")["tcp_tunnels"] if t["direction"] == direction]


def _goaways(sc, direction: str) -> float:
    text = sc.admin_get("/metrics")[1].decode()
    m = re.search(r'^meshlet_hbone_goaway_total\{direction="%s"\} (\S+)$' % direction, text,
                  re.M)  # fmt: skip
    return float(m.group(1)) if m else -1.0


class Conn:
    """One TCP connection through A: the banner says which instance it reached."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.f = self.s.makefile("rb")
        self.banner = self.f.readline()

    def echo(self, line: bytes) -> bytes:
        self.s.sendall(line)
        return self.f.readline()

    def close(self) -> None:
        self.f.close()
        self.s.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("tcp-hbone-goaway")
    cp = start_control_plane(work)
    started: list = [cp]
    try:
        port = port_below_ephemeral()
        r = cp.cli("apply", "-f", "-", input=_config(port))
        assert r.returncode == 0, r.stderr
        m: dict = {"cp": cp, "port": port}
        token = cp.token("echo", work)
        for name in ("b", "c"):
            app_port = free_port()
            app = Proc(f"echo-app-{name}", [sys.executable, "-c", TCP_ECHO_APP, str(app_port), name],
                       work)  # fmt: skip
            started.append(app)
            wait_until(lambda p=app_port: listening(p), timeout=20, what=f"echo app {name}")
            m[name] = start_sidecar(
                work, "echo", app_port, None, "--control-plane", cp.url,
                "--token-file", str(token), "--state-dir", str(work / name), "--hbone", "0",
                "--hbone-max-streams", str(MAX_STREAMS), "--drain-timeout", "60",
                name=f"echo-{name}",
            )  # fmt: skip
            started.append(m[name])
        m["a"] = start_sidecar(
            work, "client", 1, None, "--control-plane", cp.url,
            "--token-file", str(cp.token("client", work)), "--state-dir", str(work / "a"),
            "--hbone", "0", name="client",
        )  # fmt: skip
        started.append(m["a"])

        def both_reached() -> bool:
            seen = set()
            for _ in range(12):
                try:
                    c = Conn(port)
                except OSError:
                    return False
                seen.add(c.banner)
                c.close()
            return seen == {b"hello b\n", b"hello c\n"}

        wait_until(both_reached, timeout=60, what="both echo endpoints reachable through A")
        yield m
    finally:
        for p in reversed(started):
            p.stop()


def test_past_the_peers_stream_limit_a_second_hbone_connection(mesh):
    a, b, port = mesh["a"], mesh["b"], mesh["port"]
    assert _json(b, "/config_dump")["tcp"]["hbone_max_streams"] == MAX_STREAMS
    n = 3 * MAX_STREAMS + 1  # over two endpoints: one of them gets more than MAX_STREAMS
    conns = [Conn(port) for _ in range(n)]
    try:
        assert all(c.banner in (b"hello b\n", b"hello c\n") for c in conns), [
            c.banner for c in conns
        ]
        for i, c in enumerate(conns):  # all open at once, each its own stream, both ways
            assert c.echo(b"line %d\n" % i) == b"echo line %d\n" % i
        tunnels = _tunnels(a, "outbound")
        per_peer = Counter(t["address"] for t in tunnels)
        assert max(per_peer.values()) >= 2, tunnels
        assert sum(t["streams_open"] for t in tunnels) == n, tunnels
        for t in tunnels:
            assert t["streams_open"] <= MAX_STREAMS and t["max_streams"] == MAX_STREAMS, t
        for sc in (b, mesh["c"]):
            assert all(t["streams_open"] <= MAX_STREAMS for t in _tunnels(sc, "inbound"))
    finally:
        for c in conns:
            c.close()


def test_a_draining_peer_sends_goaway_new_connections_go_elsewhere_open_ones_finish(mesh):
    a, b, port = mesh["a"], mesh["b"], mesh["port"]
    # a long-lived connection through B (the load balancer's pick: try until one lands there)
    long = None
    for _ in range(60):
        c = Conn(port)
        if c.banner == b"hello b\n":
            long = c
            break
        c.close()
    assert long is not None, "no connection reached B"
    assert long.echo(b"before\n") == b"echo before\n"
    assert _goaways(b, "inbound") == 0 and _goaways(a, "outbound") == 0
    try:
        b.proc.signal(signal.SIGTERM)
        t0 = time.monotonic()
        wait_until(lambda: _goaways(b, "inbound") >= 1, timeout=15, what="B's GOAWAY sent")
        wait_until(lambda: _goaways(a, "outbound") >= 1, timeout=15, what="A saw the GOAWAY")
        assert any(t["goaway"] for t in _tunnels(b, "inbound"))
        to_b = [t for t in _tunnels(a, "outbound") if t["goaway"]]
        assert to_b and sum(t["streams_open"] for t in to_b) == 1, _tunnels(a, "outbound")
        # every new TCP connection through A works, none on the connection going away
        for i in range(20):
            c = Conn(port)
            try:
                assert c.banner == b"hello c\n", (i, c.banner)
                assert c.echo(b"new %d\n" % i) == b"echo new %d\n" % i
            finally:
                c.close()
            if i == 10:  # the tunnel through B flows meanwhile, both ways
                assert long.echo(b"during\n") == b"echo during\n"
        for i in range(3):
            assert long.echo(b"late %d\n" % i) == b"echo late %d\n" % i
        assert b.proc.p.poll() is None, "B exited with a tunnel open"
    finally:
        long.close()
    b.proc.p.wait(timeout=30)
    assert time.monotonic() - t0 < 45, "B waited for its drain timeout (60 s)"
    lines = [json.loads(x) for x in b.proc.stdout().splitlines()
             if x.startswith("{") and '"protocol":"TCP"' in x]  # fmt: skip
    assert not [x for x in lines if x["connection_termination_details"] == "draining"]
    assert any(
        x["bytes_received"] == len(b"before\nduring\nlate 0\nlate 1\nlate 2\n")
        and x["connection_termination_details"] == "closed"
        for x in lines
    ), lines
    # A let the connection B went away on go once its tunnel ended
    wait_until(lambda: not [t for t in _tunnels(a, "outbound") if t["goaway"]], timeout=15,
               what="A closed the connection B went away on")  # fmt: skip
