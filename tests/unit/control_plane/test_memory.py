"""The control plane fixes glibc's mmap threshold, unless the operator set one."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import ctypes, ctypes.util, sys
from control_plane.memory import fix_mmap_threshold
print(fix_mmap_threshold())
"""


def run(env_extra: dict[str, str]) -> str:
    import os

    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         env=env, check=True, timeout=60)
    return out.stdout.strip()


def test_fixed_on_glibc_and_the_operators_setting_wins():
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert run({}) == "True"
    assert run({"MALLOC_MMAP_THRESHOLD_": "65536"}) == "False"


DUMP = """
import os, signal
from control_plane.memory import start_debug_dumps
assert start_debug_dumps()
keep = [bytes(1000) for _ in range(100)]
os.kill(os.getpid(), signal.SIGUSR2)
os.kill(os.getpid(), signal.SIGUSR2)
"""


def test_debug_dumps_on_sigusr2_only_when_asked(tmp_path):
    """MESHLET_MEMORY_DUMP_DIR: one tracemalloc snapshot, smaps_rollup and malloc_info per
    SIGUSR2 (what ``loadtests/bench_push.py --memory-dump`` reads); without it, nothing."""
    import os
    import platform
    import tracemalloc

    out = tmp_path / "dumps"
    env = {**os.environ, "MESHLET_MEMORY_DUMP_DIR": str(out)}
    subprocess.run([sys.executable, "-c", DUMP], env=env, check=True, timeout=60)
    names = sorted(p.name for p in out.iterdir())
    snaps = [n for n in names if n.startswith("snap-")]
    assert len(snaps) == 2 and len([n for n in names if n.startswith("smaps-")]) == 2
    snap = tracemalloc.Snapshot.load(str(out / snaps[0]))
    assert sum(s.size for s in snap.statistics("filename")) > 100_000  # the 100 KB it holds
    if platform.libc_ver()[0] == "glibc":
        assert "<malloc" in (out / names[0]).read_text()
    assert "Rss:" in (out / [n for n in names if n.startswith("smaps-")][0]).read_text()

    env["MESHLET_MEMORY_DUMP_FRAMES"] = "0"  # dumps without tracemalloc
    out2 = tmp_path / "untraced"
    env["MESHLET_MEMORY_DUMP_DIR"] = str(out2)
    subprocess.run([sys.executable, "-c", DUMP], env=env, check=True, timeout=60)
    assert not [p for p in out2.iterdir() if p.name.startswith("snap-")]
    assert [p for p in out2.iterdir() if p.name.startswith("smaps-")]

    del env["MESHLET_MEMORY_DUMP_DIR"]
    off = subprocess.run([sys.executable, "-c", "from control_plane.memory import "
                          "start_debug_dumps; print(start_debug_dumps())"],
                         env=env, capture_output=True, text=True, check=True, timeout=60)
    assert off.stdout.strip() == "None"
