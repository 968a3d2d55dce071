"""HBONE connection setup and drain, through real sidecars joined to a real control plane.

* TLS session resumption: the client sidecar's pooled HBONE connection to the echo sidecar's
  port closes when idle (``--hbone-idle-timeout 1``); the next TCP connection dials again and
  resumes the TLS session instead of a full handshake, and the peer's identity is still
  checked on the resumed session: a DestinationRule naming another ``subjectAltNames`` refuses
  the peer even though a session for it is cached, and a restarted peer (new process, new
  tickets) gets a full, verified handshake.
* Drain: on SIGTERM a client sidecar refuses new TCP connections at once, lets the open one
  finish its exchange and exits when it closes; one that never closes is closed at the drain
  timeout, "drain timeout" in the access log.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time

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

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
ECHO_ID = "spiffe://cluster.local/ns/default/sa/echo"
DRAINER = "127.0.0.2"  # the drainer sidecar's egress listener address



def _config(port: int) -> str:
    """echo's TCP port; the client's egress listener on 127.0.0.1:PORT and the drainer's on
    127.0.0.2:PORT (two sidecars on one host, one listener each)."""
    out = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo]
  ports: [{{number: {port}, name: tcp-echo}}]
"""
    for app, bind in (("client", "127.0.0.1"), ("drainer", DRAINER)):
        out += f"""---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {app}, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: {app}}}}}
  egress:
  - port: {{number: {port}, protocol: TCP}}
    bind: {bind}
    hosts: ["./echo"]
  - hosts: ["./*"]
"""
    return out




def _json(sc, path: str) -> dict:
    status, body = sc.admin_get(path)
    assert status == 200, (status, body[:200])
    return json.loads(body)


def _handshakes(sc) -> dict:
    return _json(sc, "/config_dump")["tcp"]["hbone_tls_handshakes"]


def _outbound_tunnels(sc) -> list[dict]:
    return [t for t in _json(sc, "/clusters")["tcp_tunnels"] if t["direction"] == "outbound"]


def _exchange(port: int, line: bytes = b"ping\n", host: str = "127.0.0.1") -> bytes:
    """One short TCP connection through the mesh: the banner, one echoed line."""
    with socket.create_connection((host, port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline() == b"hello\n"
        s.sendall(line)
        return f.readline()


def _tcp_log(sc) -> list[dict]:
    return [json.loads(x) for x in sc.proc.stdout().splitlines()
            if x.startswith("{") and '"protocol":"TCP"' in x]  # fmt: skip


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("tcp-resume-drain")
    cp = start_control_plane(work)
    started: list = [cp]
    try:
        port = port_below_ephemeral()
        r = cp.cli("apply", "-f", "-", input=_config(port))
        assert r.returncode == 0, r.stderr
        app_port = free_port()
        app = Proc("echo-app", [sys.executable, "-c", TCP_ECHO_APP, str(app_port)], work)
        started.append(app)
        wait_until(lambda: listening(app_port), timeout=20, what="echo app")
        hbone = free_port()  # fixed: a restarted echo sidecar comes back on the same address
        m: dict = {"cp": cp, "work": work, "port": port,
                   "app_port": app_port, "hbone": hbone, "started": started}  # fmt: skip
        m["echo"] = _echo_sidecar(m)
        m["client"] = start_sidecar(
            work, "client", 1, None, "--control-plane", cp.url,
            "--token-file", str(cp.token("client", work)), "--state-dir", str(work / "client"),
            "--hbone", "0", "--hbone-idle-timeout", "1", name="client",
        )  # fmt: skip
        started.append(m["client"])
        wait_until(lambda: _routable(m["client"], port), timeout=60, what="echo routable")
        yield m
    finally:
        for p in reversed(started):
            p.stop()


_restarts = iter(range(100))


def _echo_sidecar(m: dict):
    sc = start_sidecar(
        m["work"], "echo", m["app_port"], None, "--control-plane", m["cp"].url,
        "--token-file", str(m["cp"].token("echo", m["work"])),
        "--state-dir", str(m["work"] / "echo"), "--hbone", str(m["hbone"]),
        name=f"echo-{next(_restarts)}",
    )  # fmt: skip
    m["started"].append(sc)
    return sc


def _routable(sc, port: int, host: str = "127.0.0.1") -> bool:
    try:
        return _exchange(port, host=host) == b"echo ping\n"
    except OSError:
        return False
    except AssertionError:
        return False


def _idle_released(sc) -> None:
    wait_until(lambda: not _outbound_tunnels(sc), timeout=20, what="the idle HBONE connection "
               "released")  # fmt: skip


def test_a_reconnect_resumes_the_tls_session(mesh):
    client, echo = mesh["client"], mesh["echo"]
    assert _exchange(mesh["port"]) == b"echo ping\n"
    _idle_released(client)
    before_out = _handshakes(client)["outbound"]
    before_in = _handshakes(echo)["inbound"]
    assert _exchange(mesh["port"], b"again\n") == b"echo again\n"
    after_out = _handshakes(client)["outbound"]
    assert after_out["resumed"] == before_out["resumed"] + 1
    assert after_out["full"] == before_out["full"]
    assert _handshakes(echo)["inbound"]["resumed"] == before_in["resumed"] + 1
    tunnels = _outbound_tunnels(client)
    assert len(tunnels) == 1 and tunnels[0]["tls_resumed"] is True
    assert tunnels[0]["peer"] == ECHO_ID  # read from the certificate the session recorded
    inbound = [t for t in _json(echo, "/clusters")["tcp_tunnels"] if t["direction"] == "inbound"
               and t["tls_resumed"]]  # fmt: skip
    assert inbound and inbound[0]["peer"] == CLIENT_ID, inbound
    # as metrics: HBONE's own counter, and the process-wide upstream one counts HBONE's too
    metrics = client.admin_get("/metrics")[1].decode()
    assert (f'meshlet_hbone_tls_handshakes_total{{direction="outbound",resumed="true"}} '
            f'{float(after_out["resumed"])}') in metrics  # fmt: skip
    assert 'meshlet_upstream_tls_handshakes_total{resumed="true"}' in metrics
    assert 'meshlet_hbone_tls_handshakes_total{direction="inbound",resumed="true"}' in (
        echo.admin_get("/metrics")[1].decode()
    )
    # the server still knows who called over the resumed session
    wait_until(lambda: any(x["downstream_peer_principal"] == CLIENT_ID and
                           x["bytes_received"] == len(b"again\n") for x in _tcp_log(echo)),
               timeout=10, what="echo's access log line of the resumed connection")  # fmt: skip


def test_a_resumed_session_is_still_checked_against_the_expected_identity(mesh):
    client, cp, port = mesh["client"], mesh["cp"], mesh["port"]
    assert _exchange(port) == b"echo ping\n"  # a session for echo's sidecar is cached
    _idle_released(client)
    other = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo-sans, namespace: default}
spec:
  host: echo
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL, subjectAltNames: ["spiffe://cluster.local/ns/default/sa/other"]}
"""
    assert cp.cli("apply", "-f", "-", input=other).returncode == 0
    before = _handshakes(client)["outbound"]
    try:
        # refused once the rule is in force: the cached session to the same sidecar does not
        # bypass the identity check
        wait_until(lambda: not _routable(client, port), timeout=30, what="echo refused")
        # the first refused connection resumed the cached session: the check ran on it
        assert _handshakes(client)["outbound"]["resumed"] >= before["resumed"] + 1
        # a connection made before the rule arrived goes when idle; none is made after
        _idle_released(client)
    finally:
        assert cp.cli("delete", "destinationrule", "echo-sans", "-n", "default").returncode == 0
    wait_until(lambda: _routable(client, port), timeout=30, what="echo routable again")
    # the refused peer's session was forgotten: the first connection after is a full handshake
    # (followed by resumptions once it is idle released)
    tunnels = _outbound_tunnels(client)
    assert tunnels and tunnels[0]["tls_resumed"] is False, (tunnels, _handshakes(client))


def test_a_restarted_peer_gets_a_full_verified_handshake_then_resumes_again(mesh):
    client, port = mesh["client"], mesh["port"]
    assert _exchange(port) == b"echo ping\n"
    _idle_released(client)
    mesh["echo"].stop()
    mesh["echo"] = _echo_sidecar(mesh)  # same HBONE address, new process: its tickets are new
    before = _handshakes(client)["outbound"]
    wait_until(lambda: _routable(client, port), timeout=30, what="echo routable after restart")
    after = _handshakes(client)["outbound"]
    # the old session was offered and not accepted: a full handshake, verified as ever
    assert after["full"] >= before["full"] + 1 and after["resumed"] == before["resumed"]
    tunnels = _outbound_tunnels(client)
    assert tunnels and tunnels[0]["peer"] == ECHO_ID and tunnels[0]["tls_resumed"] is False
    _idle_released(client)
    assert _exchange(port) == b"echo ping\n"
    assert _handshakes(client)["outbound"]["resumed"] == after["resumed"] + 1


# -- drain ---------------------------------------------------------------------------------------
_drainers = iter(range(100))


def _drainer(mesh, drain_timeout: float):
    work, cp = mesh["work"], mesh["cp"]
    n = next(_drainers)
    sc = start_sidecar(
        work, "drainer", 1, None, "--control-plane", cp.url,
        "--token-file", str(cp.token("drainer", work)), "--state-dir", str(work / f"dr{n}"),
        "--hbone", "0", "--drain-timeout", str(drain_timeout), name=f"drainer-{n}",
    )  # fmt: skip
    mesh["started"].append(sc)
    wait_until(lambda: _routable(sc, mesh["port"], DRAINER), timeout=60, what="drainer routable")
    return sc


def _refused(port: int) -> bool:
    try:
        socket.create_connection((DRAINER, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_drain_refuses_new_tcp_connections_and_waits_for_the_open_one(mesh):
    port = mesh["port"]
    sc = _drainer(mesh, 60.0)
    s = socket.create_connection((DRAINER, port), timeout=10)
    f = s.makefile("rb")  # closed with the socket: until both are, the connection is open
    try:
        assert f.readline() == b"hello\n"
        sc.proc.signal(signal.SIGTERM)
        wait_until(lambda: _refused(port), timeout=10, what="new connections refused")
        # the connection in flight carries on, both ways
        for i in range(3):
            s.sendall(b"line %d\n" % i)
            assert f.readline() == b"echo line %d\n" % i
        assert sc.proc.p.poll() is None, "the sidecar exited with a TCP connection open"
    finally:
        f.close()
        s.close()
        closed_at = time.monotonic()
    sc.proc.p.wait(timeout=20)  # well before the 60 s drain timeout: it left once this closed
    assert time.monotonic() - closed_at < 20
    lines = [x for x in _tcp_log(sc) if x["reporter"] == "source"]
    assert lines and lines[-1]["connection_termination_details"] == "closed"
    assert lines[-1]["bytes_received"] == sum(len(b"line %d\n" % i) for i in range(3))


def test_drain_closes_a_connection_that_never_ends_at_the_drain_timeout(mesh):
    port = mesh["port"]
    sc = _drainer(mesh, 2.0)
    s = socket.create_connection((DRAINER, port), timeout=10)
    f = s.makefile("rb")  # closed with the socket: until both are, the connection is open
    try:
        assert f.readline() == b"hello\n"
        t0 = time.monotonic()
        sc.proc.signal(signal.SIGTERM)
        sc.proc.p.wait(timeout=20)
        took = time.monotonic() - t0
        assert 2.0 <= took < 15.0, took
        s.settimeout(10)
        try:
            assert f.readline() == b""  # closed by the sidecar
        except ConnectionResetError:
            pass  # a reset is a close too: the sidecar aborted it
    finally:
        f.close()
        s.close()
    lines = [x for x in _tcp_log(sc) if x["reporter"] == "source"]
    assert lines and lines[-1]["connection_termination_details"] == "drain timeout"


def test_the_drained_client_left_echo_serving_others(mesh):
    assert _exchange(mesh["port"]) == b"echo ping\n"


def _no_banner(port: int) -> bool:
    """A new connection through the client sidecar that gets nothing from echo."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            return s.recv(100) == b""
    except (ConnectionResetError, TimeoutError):
        return True


def test_a_draining_server_sidecar_sends_goaway_and_finishes_open_streams(mesh):
    """The server side of a tunnel drains too: its HBONE listener closes and it sends GOAWAY on
    the open HBONE connection, so the client sidecar opens no new stream there (echo is the
    only endpoint: a new TCP connection is closed before a byte); the open stream carries on,
    and echo exits once that closed. tests/integration/test_tcp_hbone_goaway.py has the case
    with a second endpoint taking the new connections."""
    port, echo, client = mesh["port"], mesh["echo"], mesh["client"]
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    try:
        assert f.readline() == b"hello\n"
        echo.proc.signal(signal.SIGTERM)
        t0 = time.monotonic()
        wait_until(lambda: _no_banner(port), timeout=15, what="new connections refused by echo")
        for i in range(3):
            s.sendall(b"late %d\n" % i)
            assert f.readline() == b"echo late %d\n" % i
        assert echo.proc.p.poll() is None, "echo's sidecar exited with a stream open"
        assert 'meshlet_hbone_goaway_total{direction="inbound"} 1.0' in (
            echo.admin_get("/metrics")[1].decode()
        )
        going = [t for t in _outbound_tunnels(client) if t["goaway"]]
        assert len(going) == 1 and going[0]["streams_open"] == 1, _outbound_tunnels(client)
    finally:
        f.close()
        s.close()
    echo.proc.p.wait(timeout=20)
    assert time.monotonic() - t0 < 19, "echo waited for its drain timeout (default 20 s)"
    # no CONNECT reached echo after its GOAWAY: none was refused with 503
    assert not [x for x in _tcp_log(echo) if x["connection_termination_details"] == "draining"]
    assert _json(client, "/config_dump")["tcp"]["hbone_goaways"]["outbound"] >= 1
    mesh["echo"] = _echo_sidecar(mesh)
    wait_until(lambda: _routable(mesh["client"], port), timeout=30, what="echo back")


@pytest.mark.slow
def test_after_a_root_rotation_a_full_verified_handshake_then_resumption_again(mesh):
    """Both sidecars get a new trust bundle, then new certificates: a session from before is
    not resumed (new contexts, new tickets on the server; the client drops sessions of its old
    context), the new chain is verified, and later reconnects resume again. Last in the module:
    it changes the mesh's root."""
    client, echo, cp, port = mesh["client"], mesh["echo"], mesh["cp"], mesh["port"]
    assert _exchange(port) == b"echo ping\n"
    _idle_released(client)
    serials = {sc: _json(sc, "/certs")["serial"] for sc in (client, echo)}
    # (not `ca ... --wait`: it compares every proxy's ACK with one snapshot version, and the
    # Sidecar-scoped client has its own; each sidecar's /certs says when it followed)
    r = cp.cli("ca", "rotate")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: all(len(_json(sc, "/certs")["trust_bundle_fingerprints"]) == 2
                           for sc in serials), timeout=60, what="both trust the new root")
    r = cp.cli("ca", "activate")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: all(_json(sc, "/certs")["serial"] != serials[sc] for sc in serials),
               timeout=60, what="both renewed under the new root")  # fmt: skip
    before = _handshakes(client)["outbound"]
    assert _exchange(port) == b"echo ping\n"
    after = _handshakes(client)["outbound"]
    assert after["full"] == before["full"] + 1 and after["resumed"] == before["resumed"]
    tunnels = _outbound_tunnels(client)
    assert tunnels and tunnels[0]["peer"] == ECHO_ID and tunnels[0]["tls_resumed"] is False
    _idle_released(client)
    assert _exchange(port) == b"echo ping\n"
    assert _handshakes(client)["outbound"]["resumed"] == after["resumed"] + 1
