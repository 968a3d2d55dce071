"""Chaos Toolkit probes on a meshlet mesh: how a service's callers see it, from the sidecars'
own metrics (no Prometheus needed; ``prometheus_url`` to ask one instead), and whether the
mesh's own state is whole (faults left, sidecars in sync).

Windows are the last ``window`` seconds: inside ``meshlet chaos run`` they are read from the
runner's metrics timeline at once; elsewhere a probe scrapes twice, ``window`` seconds apart.
A window without a single request meets no SLO: silence is not success.

With ``route`` (a VirtualService http route's ``name``, or ``<VirtualService name>.<index>``
for an unnamed one, as ``meshlet top routes`` shows them), ``success_rate``, ``p99_latency``,
``request_rate``, ``slo`` and ``slo_holds`` give the figures of that route of ``service`` only:
from the control plane's per-route golden metrics, two reads ``window`` seconds apart (also
inside ``meshlet chaos run``, whose timeline has no routes), with the admin token the actions
use. They count what the sidecars reported in the window (every ``MESHLET_STATS_INTERVAL``
seconds, 5 by default), and only what reached the control plane asked (not its peer replicas).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from control_plane.chaos import actions, mesh, metrics

log = logging.getLogger("meshlet.chaos")

__all__ = [
    "success_rate",
    "p99_latency",
    "request_rate",
    "slo",
    "error_budget_consumed",
    "recovery_time",
    "slo_holds",
    "faults_left",
    "proxies_synced",
    "remember_config",
    "config_unchanged",
]


def _window(
    service: str,
    window: Any,
    prometheus_url: str | None,
    configuration: dict[str, Any] | None,
    route: str | None = None,
) -> metrics.Window:
    if route:
        if prometheus_url:
            raise ValueError("route figures come from the control plane, not from Prometheus "
                             "(Istio's metrics have no route label): drop prometheus_url")
        return metrics.route_window(
            service, str(route), float(window),
            lambda: mesh.client(configuration, timeout=10).request("GET", "/v1/stats/local"),
        )
    return metrics.window(
        service, float(window), lambda: mesh.admin_addresses(configuration), prometheus_url
    )


def success_rate(
    service: str,
    window: float = 5.0,
    prometheus_url: str | None = None,
    configuration: dict[str, Any] | None = None,
    route: str | None = None,
) -> float:
    """Share of calls to ``service`` that did not end in a 5xx (or no answer); 0.0 when
    there were none. ``route``: only the calls on that route of ``service``."""
    w = _window(service, window, prometheus_url, configuration, route)
    return w.success_rate if w.success_rate is not None else 0.0


def p99_latency(
    service: str,
    window: float = 5.0,
    prometheus_url: str | None = None,
    configuration: dict[str, Any] | None = None,
    route: str | None = None,
) -> float:
    """p99 of calls to ``service``, in ms, as their callers' sidecars measured it (0.0 when
    there were none). ``route``: only the calls on that route of ``service``."""
    w = _window(service, window, prometheus_url, configuration, route)
    return w.p99_ms if w.p99_ms is not None else 0.0


def request_rate(
    service: str,
    window: float = 5.0,
    prometheus_url: str | None = None,
    configuration: dict[str, Any] | None = None,
    route: str | None = None,
) -> float:
    """Calls per second to ``service``. ``route``: only the calls on that route."""
    return _window(service, window, prometheus_url, configuration, route).rate


def slo(
    service: str,
    min_success_rate: float = 0.99,
    max_p99_ms: float | None = None,
    min_rate: float = 0.1,
    window: float = 5.0,
    prometheus_url: str | None = None,
    configuration: dict[str, Any] | None = None,
    route: str | None = None,
) -> bool:
    """True when the last ``window`` seconds of ``service`` (of its ``route`` only, if given)
    meet the SLO (for a hypothesis with ``"tolerance": true``); the figures go to the
    experiment's log either way."""
    w = _window(service, window, prometheus_url, configuration, route)
    sr = w.success_rate
    ok = (
        w.rate >= float(min_rate)
        and sr is not None
        and sr >= float(min_success_rate)
        and (max_p99_ms is None or (w.p99_ms or 0.0) <= float(max_p99_ms))
    )
    log.info(
        "SLO %s%s %s: %.1f req/s, success %s, p99 %s ms over %.1f s (want success >= %s%s)",
        service,
        f" route {route}" if route else "",
        "met" if ok else "NOT met",
        w.rate,
        "-" if sr is None else f"{sr:.4f}",
        "-" if w.p99_ms is None else f"{w.p99_ms:.0f}",
        w.seconds,
        min_success_rate,
        "" if max_p99_ms is None else f", p99 <= {max_p99_ms} ms",
    )
    return ok


def slo_holds(
    service: str,
    min_success_rate: float = 0.99,
    max_p99_ms: float | None = None,
    min_rate: float = 0.1,
    window: float = 5.0,
    prometheus_url: str | None = None,
    configuration: dict[str, Any] | None = None,
    route: str | None = None,
) -> bool:
    """``slo`` as a check inside the method: the probe fails (and ``meshlet chaos run`` exits
    1) when the SLO does not hold while the fault acts (``route``: as for ``slo``)."""
    if slo(service, min_success_rate, max_p99_ms, min_rate, window, prometheus_url,
           configuration, route):
        return True
    from chaoslib.exceptions import ActivityFailed

    what = f"route {route} of {service}" if route else service
    raise ActivityFailed(f"the SLO of {what} did not hold (see the log for the figures)")


def error_budget_consumed(
    service: str,
    slo: float = 0.99,
    window: float = 30.0,
    prometheus_url: str | None = None,
    configuration: dict[str, Any] | None = None,
) -> dict[str, float]:
    """How much of the error budget of the last ``window`` seconds went: failed calls over the
    failures an ``slo`` success rate allows (1.0 = all of it, 2.5 = two and a half times)."""
    w = _window(service, window, prometheus_url, configuration)
    allowed = (1.0 - float(slo)) * w.requests
    used = w.errors / allowed if allowed > 0 else (0.0 if w.errors == 0 else float("inf"))
    return {"requests": w.requests, "errors": w.errors, "budget_used": round(used, 3)}


def recovery_time(
    service: str,
    min_success_rate: float = 0.99,
    window: float = 2.0,
    timeout: float = 60.0,
    configuration: dict[str, Any] | None = None,
) -> float:
    """Seconds from now until ``service`` meets ``min_success_rate`` again over a whole
    ``window`` of traffic after now (so an upper bound: at least ``window``); raises (the probe
    fails) after ``timeout``. Use the hypothesis' window, so that once this returns the
    hypothesis after the method sees the recovered service only."""
    t0 = time.monotonic()
    window = float(window)
    while True:
        w = _window(service, window, None, configuration)
        sr = w.success_rate
        # the window must lie wholly after the start, or old successes would count
        if sr is not None and sr >= float(min_success_rate) and time.monotonic() - t0 >= window:
            return round(time.monotonic() - t0, 2)
        if time.monotonic() - t0 > float(timeout):
            raise RuntimeError(
                f"{service} did not recover to {min_success_rate} within {timeout} s "
                f"(last: {sr})"
            )
        time.sleep(0.5 if metrics.CURRENT is not None else 0.0)


def faults_left(configuration: dict[str, Any] | None = None) -> list[str]:
    """Faults an experiment injected that are still in the control plane's store."""
    return actions.list_faults(configuration)


def proxies_synced(
    timeout: float = 30.0, configuration: dict[str, Any] | None = None
) -> bool:
    """Every sidecar connected to the control plane and on its current config (waits up to
    ``timeout`` seconds for a control plane that just came back)."""
    deadline = time.monotonic() + float(timeout)
    while True:
        try:
            data = mesh.client(configuration, timeout=5).request("GET", "/v1/proxies")
            current = data.get("snapshot_version")
            ps = data.get("proxies", [])
            if ps and all(p.get("connected") and p.get("acked_version") == current for p in ps):
                return True
        except Exception as exc:  # the control plane is not up (yet)
            log.debug("proxies_synced: %s", exc)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


_REMEMBERED: dict[str, Any] = {}


def _config_state(configuration: dict[str, Any] | None) -> dict[str, Any]:
    import hashlib
    import json

    c = mesh.client(configuration, timeout=5)
    res = c.request("GET", "/v1/resources")
    proxies = c.request("GET", "/v1/proxies")
    return {
        "revision": res.get("revision"),
        "resources": hashlib.sha256(
            json.dumps(res.get("items", []), sort_keys=True).encode()
        ).hexdigest()[:16],
        "proxies": sorted(p["node_id"] for p in proxies.get("proxies", [])),
        "synced": all(
            p.get("connected") and p.get("acked_version") == proxies.get("snapshot_version")
            for p in proxies.get("proxies", [])
        ),
    }


def remember_config(configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Note the store's revision and resources and the sidecars connected, to compare later."""
    _REMEMBERED.clear()
    _REMEMBERED.update(_config_state(configuration))
    return dict(_REMEMBERED)


def config_unchanged(
    timeout: float = 60.0, configuration: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Nothing lost: the same revision and resources as ``remember_config`` saw, and every
    sidecar it saw connected again and on the current config (waits up to ``timeout``
    seconds for them to come back); the probe fails otherwise."""
    deadline = time.monotonic() + float(timeout)
    while True:
        try:
            now = _config_state(configuration)
        except Exception as exc:  # not up yet
            now = {"error": str(exc)}
        back = set(_REMEMBERED.get("proxies", ())) <= set(now.get("proxies", ()))
        if back and now.get("synced"):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lost = [
        k for k in ("revision", "resources") if now.get(k) != _REMEMBERED.get(k)
    ] + ([] if back and now.get("synced") else ["sidecars in sync"])
    if lost:
        from chaoslib.exceptions import ActivityFailed

        raise ActivityFailed(f"not as before: {', '.join(lost)} (before {_REMEMBERED}, now {now})")
    return now
