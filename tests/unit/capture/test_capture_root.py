"""The capture rules and SO_ORIGINAL_DST for real, in a private network namespace (root only).

Each test runs a small script under ``unshare -n``: a fresh network namespace that exists only as
long as that process, so nothing can leak into the host's tables, and traffic stays on the
namespace's own loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.support import ROOT, env

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, iptables)"),
    pytest.mark.skipif(not shutil.which("unshare") or not shutil.which("iptables-save"),
                       reason="needs unshare and iptables"),
]


def in_netns(script: str, timeout: float = 40) -> dict:
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", textwrap.dedent(script)],
                       capture_output=True, text=True, timeout=timeout, env=env(), cwd=str(ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_rules_apply_read_back_reapply_and_clean_up() -> None:
    res = in_netns("""
        import json, subprocess, sys
        def sh(*cmd):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return r.returncode, r.stdout, r.stderr
        meshlet = [sys.executable, "-m", "control_plane.cli", "iptables"]
        out = {}
        sh("ip", "link", "set", "lo", "up")
        sh("iptables", "-t", "nat", "-N", "USERS_OWN")
        sh("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "USERS_OWN")
        out["before"] = sh("iptables-save", "-t", "nat")[1]
        out["apply"] = sh(*meshlet, "--exclude-outbound-ports", "15012")
        out["first"] = sh("iptables-save", "-t", "nat")[1]
        out["again"] = sh(*meshlet, "--exclude-outbound-ports", "15012")
        out["second"] = sh("iptables-save", "-t", "nat")[1]
        out["cleanup"] = sh(*meshlet, "--cleanup")
        out["after"] = sh("iptables-save", "-t", "nat")[1]
        out["cleanup_again"] = sh(*meshlet, "--cleanup")
        print(json.dumps(out))
    """)
    assert res["apply"][0] == 0, res["apply"]
    assert res["again"][0] == 0, res["again"]

    def rules(saved: str) -> list[str]:
        # the generated rules are spelled as iptables-save prints them: compared verbatim
        return [ln for ln in saved.splitlines() if ln.startswith("-A ")]

    from proxy.capture import iptables as cap

    cfg = cap.CaptureConfig(exclude_outbound_ports=(15012,))
    expected = [r for r in cap.rules(cfg) if r.startswith("-A ")]
    first = rules(res["first"])
    for r in expected:
        assert r in first, f"{r!r} not installed:\n{res['first']}"
    # per chain, in order
    for chain in cap.CHAINS:
        want = [r for r in expected if r.startswith(f"-A {chain} ")]
        assert [r for r in first if r.startswith(f"-A {chain} ")] == want
    # re-running replaces, never duplicates
    assert rules(res["second"]) == first
    assert first.count("-A PREROUTING -p tcp -j MESHLET_INBOUND") == 1
    # cleanup removes exactly ours: the user's own chain and rule are still there
    assert res["cleanup"][0] == 0
    assert "MESHLET" not in res["after"]
    assert rules(res["after"]) == rules(res["before"])
    assert ":USERS_OWN" in res["after"]
    assert res["cleanup_again"][0] == 0
    assert "nothing to remove" in res["cleanup_again"][1]


def test_original_dst_recovers_the_redirected_destination() -> None:
    res = in_netns("""
        import json, socket, subprocess
        from proxy.capture.original_dst import original_dst
        def sh(*cmd):
            subprocess.run(cmd, check=True, timeout=20)
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "addr", "add", "127.0.0.2/8", "dev", "lo")
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(8)
        lst.settimeout(5)
        port = lst.getsockname()[1]
        sh("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "127.0.0.2",
           "--dport", "9080", "-j", "REDIRECT", "--to-ports", str(port))
        out = {}
        c = socket.create_connection(("127.0.0.2", 9080), timeout=5)
        s, _ = lst.accept()
        out["redirected"] = original_dst(s)
        out["local"] = s.getsockname()
        s.close(); c.close()
        c = socket.create_connection(("127.0.0.1", port), timeout=5)  # the explicit mode
        s, _ = lst.accept()
        out["direct"] = original_dst(s)
        s.close(); c.close()
        print(json.dumps(out))
    """)
    assert res["redirected"] == ["127.0.0.2", 9080]
    assert res["local"][1] != 9080
    assert res["direct"] is None


def test_original_dst_from_a_uvloop_transport_socket() -> None:
    """The hook's exact call: ``original_dst(transport.get_extra_info("socket"))`` on uvloop."""
    res = in_netns("""
        import asyncio, json, socket, subprocess
        import uvloop
        from proxy.capture.original_dst import original_dst
        def sh(*cmd):
            subprocess.run(cmd, check=True, timeout=20)
        sh("ip", "link", "set", "lo", "up")
        seen = []

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                seen.append(original_dst(transport.get_extra_info("socket")))
                transport.close()

        async def main():
            loop = asyncio.get_running_loop()
            server = await loop.create_server(Proto, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            sh("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.96.0.10",
               "--dport", "8080", "-j", "REDIRECT", "--to-ports", str(port))
            # a "service range" reached through an interface, as a cluster IP would be
            sh("ip", "link", "add", "svc0", "type", "veth", "peer", "name", "svc1")
            sh("ip", "addr", "add", "10.96.0.1/16", "dev", "svc0")
            sh("ip", "link", "set", "svc0", "up")
            sh("ip", "link", "set", "svc1", "up")
            for target in (("10.96.0.10", 8080), ("127.0.0.1", port)):
                r, w = await asyncio.wait_for(asyncio.open_connection(*target), 5)
                await asyncio.wait_for(r.read(), 5)
                w.close()
            server.close()
            print(json.dumps(seen))

        uvloop.run(main())
    """)
    assert res == [["10.96.0.10", 8080], None]
