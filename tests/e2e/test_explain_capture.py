"""``/explain`` agrees with real captured requests, in a network namespace of our own where
iptables sends the app's connections to the sidecar's outbound listener: a Host that is an IP
a mesh service owns is routed to that service, and an address outside the mesh is passed
through (Istio's PassthroughCluster). The other agreement cases are in
tests/integration/test_explain.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

from tests.support import ROOT, env

pytestmark = [pytest.mark.root, pytest.mark.slow]

MESH_VIP = "10.201.9.6"  # the ServiceEntry's address: a mesh service
OUTSIDE = "10.201.9.5"  # an address no mesh service has: passed through
APP_PORT = 9100  # the mesh service's endpoint, on the namespace's loopback
SE = f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: known}}
spec:
  hosts: [known]
  addresses: [{MESH_VIP}]
  ports: [{{number: 80, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {APP_PORT}}}}}]
"""


def _ns(name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", name, *cmd],
        capture_output=True, text=True, env=env(), cwd=str(ROOT), timeout=30,
    )  # fmt: skip


def _spawn(name: str, log: Path, *cmd: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", name, *cmd], stdout=out, stderr=out, env=env(), cwd=str(ROOT)
        )


def _app(name: str, tmp: Path, service: str, host: str, port: int) -> subprocess.Popen[bytes]:
    return _spawn(
        name, tmp / f"{service}.log", sys.executable, "-m", "control_plane.demo.apps",
        "--name", service, "--host", host, "--port", str(port),
    )  # fmt: skip


@pytest.fixture
def netns(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, iptables); CI runs as root")
    name = "mlex-" + uuid.uuid4().hex[:6]
    subprocess.run(["ip", "netns", "add", name], check=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _ns(name, "ip", "link", "set", "lo", "up")
        for addr in (MESH_VIP, OUTSIDE):
            _ns(name, "ip", "addr", "add", f"{addr}/32", "dev", "lo")
        cfg = tmp_path / "se.yaml"
        cfg.write_text(SE)
        # the sidecar runs with GID 1337, which the capture rule exempts (as istio-iptables does)
        procs.append(_spawn(
            name, tmp_path / "sidecar.log", "setpriv", "--regid=1337", "--clear-groups",
            sys.executable, "-m", "control_plane.cli", "sidecar", "--service", "orders",
            "--app-port", "1", "--config", str(cfg), "--outbound", "15001", "--inbound", "15006",
            "--admin", "15000",
        ))  # fmt: skip
        procs.append(_app(name, tmp_path, "known", "127.0.0.1", APP_PORT))
        procs.append(_app(name, tmp_path, "external", OUTSIDE, 9000))
        deadline = time.monotonic() + 20
        while b"meshlet sidecar ready" not in (tmp_path / "sidecar.log").read_bytes():
            assert time.monotonic() < deadline, (tmp_path / "sidecar.log").read_text()
            time.sleep(0.05)
        r = _ns(
            name, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.201.9.0/24",
            "-m", "owner", "!", "--gid-owner", "1337", "-j", "REDIRECT", "--to-ports", "15001",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        yield name
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["ip", "netns", "del", name], check=False)


def _get(name: str, url: str) -> tuple[str, dict]:
    """The app's request (captured) until it is answered: (response head, JSON body)."""
    deadline = time.monotonic() + 20
    while True:
        r = _ns(name, "curl", "-s", "-m", "5", "-D", "-", url)
        head, _, body = r.stdout.partition("\n\n")  # text mode: CRLF read as LF
        if r.returncode == 0 and body.startswith("{"):
            return head.lower(), json.loads(body)
        assert time.monotonic() < deadline, r.stdout + r.stderr
        time.sleep(0.1)


def _explain(name: str, **query: str) -> dict:
    url = "http://127.0.0.1:15000/explain?" + urllib.parse.urlencode(query)
    r = _ns(name, "curl", "-s", "-m", "5", url)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_captured_request_whose_host_is_a_mesh_address_is_explained_as_routed(netns):
    head, body = _get(netns, f"http://{MESH_VIP}/hello")
    assert body["service"] == "known"  # the mesh service's endpoint answered, via the sidecar
    assert "x-envoy-upstream-service-time" in head
    data = _explain(netns, host=MESH_VIP, path="/hello", original_dst=f"{MESH_VIP}:80")
    assert data["virtual_host"]["service"] == "known.default.svc.cluster.local"
    assert data["route"]["routed_by"] == "original_dst"
    (dest,) = data["destinations"]
    assert [e["address"] for e in dest["endpoints"]] == [f"127.0.0.1:{APP_PORT}"]


def test_a_captured_request_outside_the_mesh_is_explained_as_passthrough(netns):
    head, body = _get(netns, f"http://{OUTSIDE}:9000/hello")
    assert body["service"] == "external"  # where the app dialled, unchanged
    assert "x-envoy-upstream-service-time" in head  # through the sidecar
    data = _explain(netns, host=f"{OUTSIDE}:9000", path="/hello", original_dst=f"{OUTSIDE}:9000")
    assert data["decision"].startswith("passthrough")
    assert data["passthrough"]["address"] == f"{OUTSIDE}:9000"
