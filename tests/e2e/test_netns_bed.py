"""The namespace test bed is named per run: two beds (in two processes, as two test runs on one
host) get their own namespaces, bridge, veths and subnet; closing one leaves the other whole; a
bed whose owner was killed is removed by the next bed, a live run's bed never is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.netns import TestBed, can_run
from tests.support import ROOT, env

pytestmark = [pytest.mark.root, pytest.mark.skipif(bool(can_run()), reason=can_run() or "ok")]

# another run: a bed in another process, which prints its names and waits on stdin
OTHER = """
import sys
from tests.e2e.netns import TestBed
bed = TestBed({"pod-a": 2, "pod-b": 3})
print(bed.bridge, bed.subnet, *(p.netns for p in bed.pods.values()), flush=True)
if sys.stdin.readline().strip() == "close":
    bed.close()
else:
    import os; os._exit(0)  # killed: nothing cleaned up
"""


def netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {ln.split()[0] for ln in out.splitlines() if ln.strip()}


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def other_run() -> tuple[subprocess.Popen[str], list[str]]:
    p = subprocess.Popen([sys.executable, "-c", OTHER], cwd=str(ROOT), env=env(), text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None
    return p, p.stdout.readline().split()


def test_two_runs_have_their_own_beds_and_remove_only_their_own():
    p, (bridge, subnet, *spaces) = other_run()
    try:
        with TestBed({"pod-a": 2, "pod-b": 3}) as bed:
            mine = {pod.netns for pod in bed.pods.values()}
            assert bed.bridge != bridge and bed.subnet != subnet
            assert not mine & set(spaces) and mine | set(spaces) <= netns()
            for name in (bed.bridge, *(pod.veth for pod in bed.pods.values())):
                assert len(name) <= 15 and link_exists(name)
            a = bed.pod("pod-a")
            assert a.exec("ip", "-4", "-o", "addr", "show", "eth0").stdout.count(
                f"{bed.subnet}.2/24") == 1
            # the pods of one bed reach each other: pod-b answers (nothing listens on :9)
            r = a.exec("bash", "-c", f"echo > /dev/tcp/{bed.pod('pod-b').ip}/9", check=False)
            assert "Connection refused" in r.stderr, r.stderr
        assert not mine & netns() and not link_exists(bed.bridge)
        assert set(spaces) <= netns() and link_exists(bridge)  # the other run's bed is whole
    finally:
        p.communicate("close\n", timeout=60)
    assert not set(spaces) & netns() and not link_exists(bridge)


def test_a_killed_runs_bed_is_removed_by_the_next_one():
    p, (bridge, _, *spaces) = other_run()
    p.communicate("die\n", timeout=60)
    assert set(spaces) <= netns() and link_exists(bridge)  # left behind
    live, (live_bridge, _, *live_spaces) = other_run()
    try:
        with TestBed({"pod-a": 2}):
            assert not set(spaces) & netns() and not link_exists(bridge)
            assert set(live_spaces) <= netns() and link_exists(live_bridge)
    finally:
        live.communicate("close\n", timeout=60)


def test_owner_pid_is_in_every_name():
    with TestBed({"pod-a": 2}) as bed:
        tag = f"{os.getpid():x}-"
        assert bed.bridge.startswith(f"mlb{tag}")
        assert bed.pod("pod-a").netns.startswith(f"pod-a-ml{tag}")
        assert bed.pod("pod-a").veth.startswith(f"mlv{tag}")
