"""Undo a chaos action after a deadline, from a process of its own, so an experiment that is
killed mid-way (or forgets its rollbacks) still ends what it started: resume a paused process,
start a stopped one again, heal a partition.

    python -m control_plane.chaos.watchdog --after 30 --cont PID
    python -m control_plane.chaos.watchdog --after 30 --start control-plane --mesh mesh.json
    python -m control_plane.chaos.watchdog --after 30 --heal NETNS
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from control_plane.chaos import mesh


def spawn(after: float, *what: str) -> int:
    """Start a watchdog detached from the caller (its own session: a SIGKILL of the experiment's
    process group does not reach it); returns its pid."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.Popen(
        [sys.executable, "-m", "control_plane.chaos.watchdog", "--after", str(after), *what],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    return mesh.detach(p)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--after", type=float, required=True)
    p.add_argument("--cont", type=int, help="SIGCONT this pid")
    p.add_argument("--start", help="start this mesh.json process unless it runs")
    p.add_argument("--mesh", help="the mesh.json (for --start)")
    p.add_argument("--heal", help="remove meshlet's partition rules in this network namespace")
    a = p.parse_args(argv)
    time.sleep(max(0.0, a.after))
    if a.cont:
        with contextlib.suppress(ProcessLookupError):
            os.kill(a.cont, signal.SIGCONT)
    if a.start:
        from control_plane.chaos import processes

        processes.start(a.start, {"meshlet_mesh": a.mesh} if a.mesh else None)
    if a.heal:
        from control_plane.chaos import partition

        partition.heal(a.heal)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(mesh.MeshError):
        sys.exit(main())
