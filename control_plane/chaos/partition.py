"""Partition a workload that runs in its own network namespace (a netns test bed, as
tests/e2e/test_mesh_netns.py builds): iptables DROP rules for everything but loopback, in and
out, inside that namespace only. Needs root and ``ip``/``iptables``; meaningless for a mesh of
processes sharing one loopback (there, kill or pause a process instead)."""

from __future__ import annotations

import subprocess

COMMENT = "meshlet-chaos-partition"
RULES = (("INPUT", "-i"), ("OUTPUT", "-o"))


def _ipt(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "iptables", *args],
        capture_output=True,
        text=True,
        timeout=10,
    )


def cut(netns: str) -> None:
    for chain, iface in RULES:
        r = _ipt(netns, "-I", chain, "1", "!", iface, "lo", "-m", "comment",
                 "--comment", COMMENT, "-j", "DROP")
        if r.returncode != 0:
            raise RuntimeError(f"iptables in netns {netns}: {r.stderr.strip()}")


def heal(netns: str) -> int:
    """Remove every partition rule meshlet added (idempotent); returns how many."""
    removed = 0
    for chain, iface in RULES:
        while _ipt(netns, "-D", chain, "!", iface, "lo", "-m", "comment",
                   "--comment", COMMENT, "-j", "DROP").returncode == 0:
            removed += 1
    return removed
