"""Transparent capture in a network namespace of our own: a connection the iptables rules send
to the outbound listener reaches its original destination (SO_ORIGINAL_DST) when that is not a
mesh service, for HTTP and for bytes that are not HTTP at all (Istio's PassthroughCluster)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from tests.support import ROOT, env

pytestmark = [pytest.mark.root, pytest.mark.slow]

ADDR = "10.201.7.5"
SE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: known}
spec:
  hosts: [known]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]
"""
TCP_ECHO = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{ADDR}", 9002)); s.listen(4); s.settimeout(30)
while True:
    c, _ = s.accept(); c.sendall(b"ECHO:" + c.recv(100)); c.close()
"""
CLIENT = f"""
import socket, sys
s = socket.create_connection(("{ADDR}", 9002), timeout=10)
s.sendall(bytes.fromhex(sys.argv[1])); print(s.recv(200).hex())
"""


def _ns(name: str, *cmd: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", name, *cmd],
        capture_output=True,
        text=True,
        env=env(),
        cwd=str(ROOT),
        timeout=kw.pop("timeout", 30),
        **kw,
    )


@pytest.fixture
def netns(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, iptables); CI runs as root")
    name = "mlpt-" + uuid.uuid4().hex[:6]
    subprocess.run(["ip", "netns", "add", name], check=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _ns(name, "ip", "link", "set", "lo", "up")
        _ns(name, "ip", "addr", "add", f"{ADDR}/32", "dev", "lo")
        cfg = tmp_path / "se.yaml"
        cfg.write_text(SE)
        log = open(tmp_path / "sidecar.log", "wb")  # noqa: SIM115 - closed once the child has it
        # the sidecar runs with GID 1337, which the capture rule exempts (as istio-iptables does)
        procs.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    name,
                    "setpriv",
                    "--regid=1337",
                    "--clear-groups",
                    sys.executable,
                    "-m",
                    "control_plane.cli",
                    "sidecar",
                    "--service",
                    "orders",
                    "--app-port",
                    "1",
                    "--config",
                    str(cfg),
                    "--outbound",
                    "15001",
                    "--inbound",
                    "15006",
                    "--admin",
                    "15000",
                ],
                stdout=log,
                stderr=log,
                env=env(),
                cwd=str(ROOT),
            )
        )
        log.close()  # the sidecar has its own descriptor
        deadline = time.monotonic() + 20
        while b"meshlet sidecar ready" not in (tmp_path / "sidecar.log").read_bytes():
            assert time.monotonic() < deadline, (tmp_path / "sidecar.log").read_text()
            time.sleep(0.05)
        r = _ns(
            name,
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            ADDR,
            "-m",
            "owner",
            "!",
            "--gid-owner",
            "1337",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        )
        assert r.returncode == 0, r.stderr
        yield name, procs
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_captured_http_to_a_non_mesh_address_passes_through(netns):
    name, procs = netns
    procs.append(
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                name,
                sys.executable,
                "-m",
                "control_plane.demo.apps",
                "--name",
                "external",
                "--host",
                ADDR,
                "--port",
                "9000",
            ],
            env=env(),
            cwd=str(ROOT),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    deadline = time.monotonic() + 20
    while True:
        r = _ns(name, "curl", "-s", "-m", "5", "-D", "-", f"http://{ADDR}:9000/hello")
        if r.returncode == 0 and '"service": "external"' in r.stdout:
            break
        assert time.monotonic() < deadline, r.stdout + r.stderr
        time.sleep(0.1)
    # it went through the sidecar: Envoy-style headers were added on the way
    assert "x-envoy-upstream-service-time" in r.stdout.lower()


def test_captured_non_http_bytes_pass_through_unchanged(netns):
    name, procs = netns
    procs.append(
        subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c", TCP_ECHO], env=env(), cwd=str(ROOT)
        )
    )
    hello = b"\x16\x03\x01 a TLS-looking ClientHello, not HTTP"
    deadline = time.monotonic() + 20
    while True:
        # until the echo server listens, the sidecar accepts the captured connection, finds
        # the original destination refusing, and closes it: the client then reads nothing
        r = _ns(name, sys.executable, "-c", CLIENT, hello.hex())
        if r.returncode == 0 and r.stdout.strip():
            break
        assert time.monotonic() < deadline, r.stderr
        time.sleep(0.1)
    assert bytes.fromhex(r.stdout.strip()) == b"ECHO:" + hello
