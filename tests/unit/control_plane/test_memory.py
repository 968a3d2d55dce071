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
