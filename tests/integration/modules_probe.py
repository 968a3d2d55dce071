"""Runs the ``meshlet`` CLI and, when it exits, writes the names in ``sys.modules`` (one a
line) to the file named by ``$MESHLET_MODULES_OUT``.

tests/integration/test_idle_imports.py starts real sidecars through it: a module not loaded
when a sidecar exits (after its requests, scrapes and drain) was not loaded while it idled,
which is what keeps the lazily imported stacks out of its idle RSS. Deterministic where an RSS
threshold would depend on the machine.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys


def _write() -> None:
    with open(os.environ["MESHLET_MODULES_OUT"], "w", encoding="utf-8") as f:
        f.write("\n".join(sorted(sys.modules)) + "\n")


if __name__ == "__main__":
    atexit.register(_write)
    sys.argv = ["meshlet", *sys.argv[1:]]
    runpy.run_module("control_plane.cli", run_name="__main__", alter_sys=True)
