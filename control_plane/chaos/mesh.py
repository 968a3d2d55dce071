"""The mesh an experiment acts on: where its control plane is, its sidecars' admin ports, and
for a local mesh (``meshlet demo``) every process with the command line that restarts it.

A local mesh is described by the ``mesh.json`` that ``meshlet demo`` writes in its work dir
(``MESHLET_MESH=/path/to/mesh.json``, or ``configuration: {meshlet_mesh: ...}`` in an
experiment). Without one, faults and probes still work against any mesh: the control plane comes
from ``MESHLET_CONTROL_PLANE``/``MESHLET_DATA_DIR`` as for every CLI command, and the sidecars
from its ``/v1/proxies``; only process actions need the file (or a pid).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Any

STATE_ENV = "MESHLET_MESH"


class MeshError(Exception):
    """The experiment names something this mesh does not have."""


def state_path(configuration: dict[str, Any] | None = None) -> Path | None:
    value = (configuration or {}).get("meshlet_mesh") or os.environ.get(STATE_ENV)
    return Path(value).expanduser() if value else None


def load(configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """The mesh state, or ``{}`` when none is configured."""
    path = state_path(configuration)
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise MeshError(f"cannot read the mesh state {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise MeshError(f"the mesh state {path} is not JSON: {exc}") from None


def save(state: dict[str, Any], configuration: dict[str, Any] | None = None) -> None:
    path = state_path(configuration)
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def client(configuration: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """The CLI's control-plane client, pointed at this mesh's control plane."""
    from control_plane.cli import client as cli_client

    cp = load(configuration).get("control_plane") or {}
    args = argparse.Namespace(
        control_plane=cp.get("url"),
        data_dir=cp.get("data_dir"),
        token_file=None,
        ca_file=None,
        timeout=timeout,
    )
    return cli_client.Client(args)


def process_names(
    state: dict[str, Any], name: str | None, service: str | None, role: str
) -> list[str]:
    """The processes an action means: an exact ``name`` (``sidecar-inventory-v1``), or every
    ``role`` (sidecar, app) process of ``service``."""
    procs = state.get("processes") or {}
    if not procs:
        raise MeshError(
            f"no processes known: set {STATE_ENV} to the mesh.json `meshlet demo` wrote"
        )
    if name:
        if name not in procs:
            raise MeshError(f"no process {name!r}; known: {', '.join(sorted(procs))}")
        return [name]
    if role == "control-plane":
        return ["control-plane"]
    prefix = f"{role}-{service}-"
    found = sorted(n for n in procs if n.startswith(prefix))
    if not found:
        raise MeshError(f"no {role} of service {service!r}; known: {', '.join(sorted(procs))}")
    return found


def admin_addresses(configuration: dict[str, Any] | None = None) -> dict[str, str]:
    """Sidecar name -> admin host:port: from the mesh state, else from the control plane."""
    state = load(configuration)
    if state.get("sidecars"):
        return {
            name: f"127.0.0.1:{ports['admin']}" for name, ports in state["sidecars"].items()
        }
    data = client(configuration).request("GET", "/v1/proxies")
    out = {}
    for p in data.get("proxies", []):
        if p.get("admin_address"):
            out[p["node_id"]] = p["admin_address"]
    return out


def pid_alive(pid: int) -> bool:
    """Running (or stopped), not gone and not a zombie waiting for its parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, 0)
        return True
    return False


_DETACHED: list[Any] = []  # processes started to outlive the action that started them


def detach(p: Any) -> int:
    """Keep a started process that is meant to outlive its caller (a watchdog, a restarted
    sidecar) referenced, so dropping its ``Popen`` neither warns that it still runs nor
    leaves it unreaped: finished ones are reaped here, on the next call."""
    _DETACHED[:] = [q for q in _DETACHED if q.poll() is None]
    _DETACHED.append(p)
    return int(p.pid)

