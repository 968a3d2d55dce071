"""Processes of a local mesh: signal them, and start them again from their recorded command
line (``mesh.json``), recording the new pid so ``meshlet demo`` stops them on exit."""

from __future__ import annotations

import os
import signal as _signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from control_plane.chaos import mesh

ROOT = Path(__file__).resolve().parents[2]


def send(spec: dict[str, Any], sig: int) -> bool:
    pid = int(spec.get("pid") or 0)
    if not pid or not mesh.pid_alive(pid):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while mesh.pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def argv_for(name: str, spec: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """The recorded command line; a control plane started on port 0 gets the port it had, so
    its sidecars find it again."""
    argv = list(spec["argv"])
    if name == "control-plane" and "--listen" in argv:
        url = (state.get("control_plane") or {}).get("url", "")
        hostport = url.split("://", 1)[-1]
        if hostport:
            argv[argv.index("--listen") + 1] = hostport
    return argv


def start(name: str, configuration: dict[str, Any] | None = None, timeout: float = 30.0) -> int:
    """Start ``name`` again unless it runs; wait until it is ready; return its pid."""
    state = mesh.load(configuration)
    spec = (state.get("processes") or {}).get(name)
    if spec is None:
        raise mesh.MeshError(f"no process {name!r} in the mesh state")
    pid = int(spec.get("pid") or 0)
    if pid and mesh.pid_alive(pid):
        return pid
    owner = int(state.get("owner_pid") or 0)
    if owner and not mesh.pid_alive(owner):
        # the mesh itself was stopped (`meshlet demo` exited): nothing to bring back
        raise mesh.MeshError(f"the mesh's owner (pid {owner}) is gone; not starting {name}")
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    log = open(spec.get("log") or os.devnull, "ab")  # noqa: SIM115 - the child keeps it
    try:
        p = subprocess.Popen(
            argv_for(name, spec, state),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    finally:
        log.close()
    spec["pid"] = mesh.detach(p)
    # re-read: another action may have written meanwhile; only this process's pid changes
    fresh = mesh.load(configuration)
    fresh.setdefault("processes", {})[name] = spec
    mesh.save(fresh, configuration)
    wait_ready(name, state, timeout, p)
    return p.pid


def wait_ready(name: str, state: dict[str, Any], timeout: float, p: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready(name, state):
        if p is not None and p.poll() is not None:
            raise mesh.MeshError(f"{name} exited with {p.returncode} on restart")
        if time.monotonic() > deadline:
            raise mesh.MeshError(f"{name} not ready after {timeout:.0f} s")
        time.sleep(0.1)


def ready(name: str, state: dict[str, Any]) -> bool:
    if name == "control-plane":
        url = (state.get("control_plane") or {}).get("url", "")
        return _get_ok(url + "/healthz", tls=True)
    role, _, workload = name.partition("-")
    ports = (state.get("sidecars") or {}).get(workload) or {}
    if role == "sidecar" and ports.get("admin"):
        return _get_ok(f"http://127.0.0.1:{ports['admin']}/healthz/ready")
    if role == "app" and ports.get("app"):
        import socket

        try:
            socket.create_connection(("127.0.0.1", ports["app"]), timeout=1).close()
            return True
        except OSError:
            return False
    return True


def _get_ok(url: str, tls: bool = False) -> bool:
    import ssl

    ctx = None
    if tls and url.startswith("https://"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # a liveness check only; nothing is sent or trusted
    try:
        with urllib.request.urlopen(url, timeout=1, context=ctx) as r:
            return r.status == 200
    except OSError:
        return False


SIGNALS = {"SIGKILL": _signal.SIGKILL, "SIGTERM": _signal.SIGTERM, "SIGSTOP": _signal.SIGSTOP,
           "SIGCONT": _signal.SIGCONT, "SIGINT": _signal.SIGINT}
