"""The chaos partition action in a network-namespace bed of its own (two namespaces joined by a
veth pair): the cut workload is unreachable and reaches nothing, loopback inside it still works,
heal restores it, and a partition given a duration heals by itself through its watchdog."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from control_plane.chaos import actions
from tests.support import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("iptables")),
        reason="needs root, ip and iptables",
    ),
]


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=check)


@pytest.fixture
def bed():
    tag = os.urandom(3).hex()
    a, b, veth = f"mlc-a-{tag}", f"mlc-b-{tag}", f"mlc{tag}"
    octet = int(tag[:2], 16) % 250 + 1
    ip_a, ip_b = f"10.211.{octet}.1", f"10.211.{octet}.2"
    server = None
    try:
        _sh("ip", "netns", "add", a)
        _sh("ip", "netns", "add", b)
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p")
        _sh("ip", "link", "set", veth, "netns", a)
        _sh("ip", "link", "set", veth + "p", "netns", b)
        for ns, dev, ip in ((a, veth, ip_a), (b, veth + "p", ip_b)):
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", b, sys.executable, "-m", "http.server", "--bind", "0.0.0.0",
             "8099"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        yield {"a": a, "b": b, "ip_b": ip_b}
    finally:
        if server is not None:
            server.kill()
            server.wait(5)
        _sh("ip", "netns", "del", a, check=False)
        _sh("ip", "netns", "del", b, check=False)


def _reach(ns: str, ip: str) -> bool:
    r = _sh(
        "ip", "netns", "exec", ns, sys.executable, "-c",
        f"import socket; socket.create_connection(('{ip}', 8099), timeout=1).close()",
        check=False,
    )
    return r.returncode == 0


def test_partition_cuts_both_ways_and_heals(bed):
    a, b, ip_b = bed["a"], bed["b"], bed["ip_b"]
    wait_until(lambda: _reach(a, ip_b), timeout=20, interval=0.2, what="the bed")
    actions.partition_workload(b)
    assert not _reach(a, ip_b)  # nothing gets in
    assert _reach(b, "127.0.0.1")  # loopback inside the workload still works
    assert actions.heal_partition(b) == 2
    assert _reach(a, ip_b)
    assert actions.heal_partition(b) == 0  # healing twice is harmless

    actions.partition_workload(b, duration=1.5)
    assert not _reach(a, ip_b)
    wait_until(lambda: _reach(a, ip_b), timeout=30, interval=0.3,
               what="the watchdog to heal the partition")
