"""Chaos Toolkit actions on a meshlet mesh. An experiment names them as

    {"type": "action", "name": "payment-slow",
     "provider": {"type": "python", "module": "control_plane.chaos.actions",
                  "func": "inject_delay",
                  "arguments": {"service": "payment", "delay": "2s", "expires_in": "60s"}}}

Faults are VirtualServices the control plane pushes, annotated ``meshlet.dev/expires-at``: every
sidecar drops them on time by itself, so a crashed experiment cannot leave one behind
(control_plane/api/expiry.py); ``remove_fault``/``remove_all_faults`` are the rollbacks. An
optional ``header`` limits a fault to requests that carry it, so test traffic can be singled out.
Process actions (kill, pause, restart, the control plane down and up) act on the local mesh
described by ``mesh.json`` (control_plane/chaos/mesh.py); a pause or a stop given a ``duration``
is undone by a detached watchdog even if the experiment dies.
"""

from __future__ import annotations

import time
from typing import Any

from control_plane.api.expiry import EXPIRES_AT, format_expires_at
from control_plane.api.schema import parse_duration
from control_plane.chaos import mesh, processes, watchdog

CHAOS_LABEL = "meshlet.dev/chaos"

__all__ = [
    "inject_delay",
    "inject_abort",
    "remove_fault",
    "remove_all_faults",
    "list_faults",
    "kill_process",
    "pause_process",
    "resume_process",
    "restart_process",
    "stop_control_plane",
    "start_control_plane",
    "partition_workload",
    "heal_partition",
    "hold",
]


def hold(seconds: float) -> float:
    """Let the fault act for ``seconds`` (a method step; unlike ``pauses`` it takes a
    configuration value such as ``${outage_s}``, so durations can be set per run)."""
    time.sleep(float(seconds))
    return float(seconds)


# -- faults ------------------------------------------------------------------------------------
def _header_match(header: Any) -> dict[str, Any] | None:
    """``{"x-chaos": "1"}``, ``"x-chaos=1"`` or ``"x-chaos: 1"`` -> an Istio headers match."""
    if not header:
        return None
    if isinstance(header, str):
        sep = "=" if "=" in header else ":"
        name, _, value = header.partition(sep)
        header = {name.strip(): value.strip()}
    return {str(k).lower(): {"exact": str(v)} for k, v in dict(header).items()}


def fault_resource(
    service: str,
    fault: dict[str, Any],
    header: Any = None,
    expires_in: str = "5m",
    namespace: str = "default",
    name: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The VirtualService overlay that carries ``fault`` for ``service``'s traffic."""
    ttl = parse_duration(expires_in)
    if ttl <= 0:
        raise ValueError("expires_in must be positive: a fault without an end is not injected")
    route: dict[str, Any] = {
        "name": "chaos",
        "fault": fault,
        "route": [{"destination": {"host": service}}],
    }
    match = _header_match(header)
    if match:
        route["match"] = [{"headers": match}]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": name or f"chaos-{service}",
            "namespace": namespace,
            "labels": {CHAOS_LABEL: "true"},
            "annotations": {EXPIRES_AT: format_expires_at((now or time.time()) + ttl)},
        },
        "spec": {"hosts": [service], "http": [route]},
    }


def _apply(doc: dict[str, Any], configuration: dict[str, Any] | None) -> dict[str, Any]:
    c = mesh.client(configuration)
    c.request(
        "POST",
        "/v1/resources",
        json_body={"documents": [{"source": "chaos", "index": 1, "document": doc}]},
    )
    return {
        "virtualservice": f"{doc['metadata']['namespace']}/{doc['metadata']['name']}",
        "expires_at": doc["metadata"]["annotations"][EXPIRES_AT],
    }


def inject_delay(
    service: str,
    delay: str = "2s",
    percentage: float = 100.0,
    header: Any = None,
    expires_in: str = "5m",
    namespace: str = "default",
    name: str | None = None,
    configuration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Delay ``percentage`` % of calls to ``service`` (only those carrying ``header``, if
    given) by ``delay``, until ``expires_in`` from now at the latest."""
    fault = {"delay": {"fixedDelay": delay, "percentage": {"value": float(percentage)}}}
    return _apply(
        fault_resource(service, fault, header, expires_in, namespace, name), configuration
    )


def inject_abort(
    service: str,
    status: int = 503,
    percentage: float = 100.0,
    header: Any = None,
    expires_in: str = "5m",
    namespace: str = "default",
    name: str | None = None,
    configuration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Answer ``percentage`` % of calls to ``service`` with ``status`` (flag FI) instead."""
    fault = {"abort": {"httpStatus": int(status), "percentage": {"value": float(percentage)}}}
    return _apply(
        fault_resource(service, fault, header, expires_in, namespace, name), configuration
    )


def list_faults(configuration: dict[str, Any] | None = None) -> list[str]:
    """Every fault an experiment injected that the control plane still has."""
    data = mesh.client(configuration).request("GET", "/v1/resources/VirtualService")
    return [
        f"{i['metadata'].get('namespace', 'default')}/{i['metadata']['name']}"
        for i in data.get("items", [])
        if (i["metadata"].get("labels") or {}).get(CHAOS_LABEL) == "true"
    ]


def remove_fault(
    service: str | None = None,
    name: str | None = None,
    namespace: str = "default",
    configuration: dict[str, Any] | None = None,
) -> int:
    """Remove the fault injected for ``service`` (or the one called ``name``)."""
    vs = name or f"chaos-{service}"
    data = mesh.client(configuration).request(
        "POST",
        "/v1/resources:delete",
        json_body={"keys": [{"kind": "VirtualService", "namespace": namespace, "name": vs}]},
    )
    return sum(1 for r in data.get("results", []) if r.get("action") != "not-found")


def remove_all_faults(configuration: dict[str, Any] | None = None) -> int:
    """Remove every fault an experiment injected (the rollback that is always safe)."""
    keys = []
    for ref in list_faults(configuration):
        ns, _, name = ref.partition("/")
        keys.append({"kind": "VirtualService", "namespace": ns, "name": name})
    if not keys:
        return 0
    mesh.client(configuration).request("POST", "/v1/resources:delete", json_body={"keys": keys})
    return len(keys)


# -- processes ---------------------------------------------------------------------------------
def _targets(
    configuration: dict[str, Any] | None, name: str | None, service: str | None, role: str
) -> tuple[dict[str, Any], list[str]]:
    state = mesh.load(configuration)
    return state, mesh.process_names(state, name, service, role)


def kill_process(
    service: str | None = None,
    role: str = "sidecar",
    name: str | None = None,
    signal: str = "SIGKILL",
    configuration: dict[str, Any] | None = None,
) -> list[str]:
    """Send ``signal`` (default SIGKILL) to the ``role`` (sidecar, app) processes of
    ``service``, or to the process ``name`` of mesh.json; returns who got it."""
    state, names = _targets(configuration, name, service, role)
    sig = processes.SIGNALS[signal.upper()]
    hit = [n for n in names if processes.send(state["processes"][n], sig)]
    if signal.upper() in ("SIGKILL", "SIGTERM"):
        for n in hit:
            processes.wait_gone(int(state["processes"][n]["pid"]), 10.0)
    return hit


def pause_process(
    service: str | None = None,
    role: str = "sidecar",
    name: str | None = None,
    duration: float | None = None,
    configuration: dict[str, Any] | None = None,
) -> list[str]:
    """SIGSTOP: the process holds its sockets and answers nothing (a hung, not a dead, peer).
    With ``duration`` a detached watchdog sends SIGCONT after that many seconds whatever
    becomes of the experiment."""
    state, names = _targets(configuration, name, service, role)
    hit = []
    for n in names:
        spec = state["processes"][n]
        if processes.send(spec, processes.SIGNALS["SIGSTOP"]):
            hit.append(n)
            if duration is not None:
                watchdog.spawn(float(duration), "--cont", str(spec["pid"]))
    return hit


def resume_process(
    service: str | None = None,
    role: str = "sidecar",
    name: str | None = None,
    configuration: dict[str, Any] | None = None,
) -> list[str]:
    state, names = _targets(configuration, name, service, role)
    return [n for n in names if processes.send(state["processes"][n], processes.SIGNALS["SIGCONT"])]


def restart_process(
    service: str | None = None,
    role: str = "sidecar",
    name: str | None = None,
    timeout: float = 30.0,
    configuration: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Start again (from mesh.json's command line) whichever of them is not running, and wait
    until it is ready; returns name -> pid."""
    _, names = _targets(configuration, name, service, role)
    return {n: processes.start(n, configuration, timeout) for n in names}


def stop_control_plane(
    duration: float | None = None, configuration: dict[str, Any] | None = None
) -> int:
    """Stop the control plane (SIGTERM, then SIGKILL after 10 s). Sidecars keep their last
    config and certificates. With ``duration`` a detached watchdog starts it again after that
    many seconds unless something already did."""
    state = mesh.load(configuration)
    spec = (state.get("processes") or {}).get("control-plane")
    if spec is None:
        raise mesh.MeshError("no control-plane process in the mesh state")
    pid = int(spec.get("pid") or 0)
    if processes.send(spec, processes.SIGNALS["SIGTERM"]) and not processes.wait_gone(pid, 10):
        processes.send(spec, processes.SIGNALS["SIGKILL"])
        processes.wait_gone(pid, 5)
    if duration is not None:
        path = mesh.state_path(configuration)
        watchdog.spawn(float(duration), "--start", "control-plane", "--mesh", str(path))
    return pid


def start_control_plane(
    timeout: float = 30.0, configuration: dict[str, Any] | None = None
) -> int:
    """Start the control plane again on its address and data dir; wait until it answers."""
    return processes.start("control-plane", configuration, timeout)


# -- partitions (network-namespace beds only) --------------------------------------------------
def partition_workload(
    netns: str, duration: float | None = None, configuration: dict[str, Any] | None = None
) -> str:
    """Cut a workload's network namespace off (iptables DROP, everything but loopback, both
    ways). Needs root; see control_plane/chaos/partition.py. With ``duration`` a watchdog
    heals it after that many seconds."""
    from control_plane.chaos import partition

    partition.cut(netns)
    if duration is not None:
        watchdog.spawn(float(duration), "--heal", netns)
    return netns


def heal_partition(netns: str, configuration: dict[str, Any] | None = None) -> int:
    from control_plane.chaos import partition

    return partition.heal(netns)
