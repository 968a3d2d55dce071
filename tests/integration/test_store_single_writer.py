"""SQLite is single-writer on purpose: a second control plane on the same data dir refuses to
start, names the process holding it and exits non-zero; once the first is gone (even killed),
the dir is free again."""

from __future__ import annotations

import signal
import subprocess

from tests.support import PY, ROOT, env, start_control_plane, wait_until


def _second(data_dir) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "control_plane.cli", "control-plane", "--data-dir", str(data_dir),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, env=env(), cwd=str(ROOT), timeout=30,
    )


def test_second_control_plane_on_one_data_dir_is_refused(tmp_path):
    cp = start_control_plane(tmp_path)
    try:
        r = _second(cp.data_dir)
        assert r.returncode == 1, r.stderr
        assert f"pid {cp.proc.p.pid}" in r.stderr
        assert str(cp.data_dir) in r.stderr
        assert "refusing to start" in r.stderr
        # the first one still serves, unharmed
        assert cp.cli("get", "vs").returncode == 0
    finally:
        cp.proc.signal(signal.SIGKILL)
        cp.proc.p.wait(10)
        cp.stop()
    # SIGKILL leaves the lock file behind; the lock itself died with the process
    again = start_control_plane(tmp_path, cp.data_dir)
    try:
        wait_until(lambda: again.cli("get", "vs").returncode == 0, timeout=20, what="restart")
    finally:
        again.stop()
