"""Shared fixtures: a tmp work dir per test and the fast-path selection."""

from __future__ import annotations

import atexit
import gc
import os
import subprocess
import sys
import traceback

import pytest


@pytest.fixture(params=["cython", "python"])
def fastpath_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment for a sidecar process running the compiled fast path or its twin."""
    from tests.support import env

    if request.param == "python":
        return env(MESHLET_NO_EXTENSIONS="1")
    if os.environ.get("MESHLET_NO_EXTENSIONS") == "1":
        pytest.fail("the cython parametrization needs the extensions (unset MESHLET_NO_EXTENSIONS)")
    return env(MESHLET_REQUIRE_EXTENSIONS="1")


def _live_children() -> dict[int, str]:
    """This process's children that still run (not zombies), with their command lines."""
    me = os.getpid()
    out: dict[int, str] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2:].split()
            if int(fields[1]) != me or fields[0] == b"Z":
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                out[int(d)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
    return out


_LEFT_RUNNING: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _no_process_left_running(request: pytest.FixtureRequest):
    """Why: a process a test module starts and never stops outlives it (and the suite: Python
    then warns at exit that a subprocess is still running). Naming the module that left it is
    what makes that warning actionable, so every module's leftovers are listed in the summary."""
    before = set(_live_children())
    yield
    for pid, cmd in _live_children().items():
        if pid not in before:
            _LEFT_RUNNING.append(f"{request.node.nodeid}: pid {pid}: {cmd[:200]}")


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's hook
    # and those started outside any module (collection, session fixtures), still running now
    left = _LEFT_RUNNING + [f"(at the end of the session): pid {pid}: {cmd[:200]}"
                            for pid, cmd in _live_children().items()]
    if left:
        terminalreporter.section("processes a test module left running")
        for line in left:
            terminalreporter.write_line(line)


_popen_init = subprocess.Popen.__init__


def _popen_init_noting_origin(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
    self._meshlet_origin = "".join(traceback.format_stack(limit=10)[:-1])
    _popen_init(self, *args, **kwargs)


subprocess.Popen.__init__ = _popen_init_noting_origin  # type: ignore[method-assign]


@atexit.register
def _reap_and_name_leftover_popens() -> None:
    """Why: a process still running when the interpreter exits makes Popen.__del__ warn with no
    hint of who started it (and it outlives the suite). Registered first, so it runs after every
    other exit handler (a library's own clean-up may still stop its processes): whatever is left
    is named with the stack that started it, then stopped."""
    gc.collect()
    for obj in gc.get_objects():
        try:
            alive = isinstance(obj, subprocess.Popen) and obj.poll() is None
        except Exception:  # noqa: BLE001 - a half-built object
            continue
        if alive:
            print(f"process left running at exit: pid {obj.pid}: {obj.args!r}\nstarted at:\n"
                  f"{getattr(obj, '_meshlet_origin', '?')}", file=sys.stderr)
            obj.kill()
            obj.wait(10)
