"""The canary controller's I/O shell: reads Canaries and metrics, asks webhooks, moves weights.

Every ``tick`` it takes each Canary in the store through :func:`machine.step` with what its two
versions served since the current interval began (a difference of two readings of the
:class:`~control_plane.canary.metrics.MetricsSource`), applies the route weights a decision sets
as a normal VirtualService change in the store (pushed to sidecars like any apply), and writes
the new status (:class:`~control_plane.canary.status_store.StatusStore`) before it acts on
anything else, so a killed control plane resumes from the last decision. Only the leader runs it
(``is_leader``, for control planes with replicas).

A changed Canary spec starts a new rollout; a deleted Canary's status is dropped (its routes are
left as they are: the operator owns them again).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from control_plane.api import canary as canary_api
from control_plane.api.hosts import fqdn
from control_plane.api.resources import InvalidConfig, from_dict
from control_plane.canary import machine, routes
from control_plane.canary.metrics import MetricsSource, Totals
from control_plane.canary.status_store import StatusStore

log = logging.getLogger(__name__)

DEFAULT_TICK_S = 0.2


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class CanaryController:
    def __init__(
        self,
        store: Any,  # control_plane.store.Store
        statuses: StatusStore,
        source: MetricsSource,
        *,
        clock: Callable[[], float] = time.time,
        tick_s: float = DEFAULT_TICK_S,
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        # ``is_leader`` is read every tick: with replicas only the elected leader decides; a
        # replica that becomes leader reloads the stored statuses and carries on from them.
        self.store = store
        self.statuses = statuses
        self.source = source
        self.clock = clock
        self.tick_s = tick_s
        self.is_leader = is_leader
        self.lock = asyncio.Lock()
        # (ns, name) -> readings at the start of the current interval (in memory: after a
        # restart the interval starts again, measured from then)
        self._baseline: dict[tuple[str, str], tuple[Totals, Totals, float]] = {}
        # meshlet_canary_decisions_total{canary, decision} since this process started
        self.decisions_total: dict[tuple[str, str], int] = {}
        self._task: asyncio.Task | None = None
        self._leading = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        while True:
            try:
                leading = self.is_leader()
                if leading and not self._leading:
                    await self.statuses.load()  # what the previous leader decided
                    self._baseline.clear()
                self._leading = leading
                if leading:
                    await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad tick must not end the controller
                log.exception("canary controller tick failed")
            await asyncio.sleep(self.tick_s)

    # -- one pass ----------------------------------------------------------------------------
    async def tick(self) -> None:
        canaries = self.store.get("Canary")
        live = {(sr.resource.namespace, sr.resource.name) for sr in canaries}
        for key in self.statuses.all_keys():
            if key not in live:
                await self.statuses.delete(*key)
                self._baseline.pop(key, None)
        work = [sr.resource for sr in canaries
                if self._status(sr.resource).get("phase") not in machine.TERMINAL]
        if not work:
            return
        # Read the metrics only when an analysis is due (or an interval starts): a scrape is the
        # expensive part of a tick.
        if any(self._needs_reading(res) for res in work):
            await self.source.refresh()
        async with self.lock:
            for res in work:
                await self._one(res, self._status(res))

    def _needs_reading(self, res: Any) -> bool:
        key = (res.namespace, res.name)
        status = self._status(res)
        phase = status.get("phase") or ""
        if phase in ("", machine.INITIALIZING) or key not in self._baseline:
            # the first step's baseline must be read now, or everything the versions served
            # before the rollout would count in its first interval
            return True
        if phase not in (machine.PROGRESSING, machine.WAITING):
            return False
        interval = canary_api.plan(res.spec).interval_s
        return self.clock() - float(status.get("intervalStart", 0.0)) >= interval - 1e-3

    def _status(self, res: Any) -> dict:
        h = spec_hash(res.spec)
        status = self.statuses.get(res.namespace, res.name)
        if status is None or status.get("specHash") != h:
            status = machine.new_status(self.clock(), h)
            self._baseline.pop((res.namespace, res.name), None)
        return status

    async def _one(self, res: Any, status: dict) -> None:
        key = (res.namespace, res.name)
        plan = canary_api.plan(res.spec)
        try:
            stable_v, canary_v = routes.subset_versions(plan, res.namespace,
                                                        [s.resource for s in
                                                         self.store.get("DestinationRule")])
        except ValueError as e:
            await self._blocked(res, status, f"cannot start: {e}")
            return
        host = fqdn(plan.host, res.namespace)
        now = self.clock()
        cur = (self.source.totals(host, canary_v), self.source.totals(host, stable_v))
        base = self._baseline.get(key)
        obs = None
        if base is None:
            # No reading at the interval's start (first sight, or a restart): start it now.
            self._baseline[key] = (cur[0], cur[1], now)
            if status.get("phase") in (machine.PROGRESSING, machine.WAITING):
                status["intervalStart"] = now
                await self.statuses.put(res.namespace, res.name, status)
        else:
            obs = machine.Observation(canary=cur[0].minus(base[0]),
                                      stable=cur[1].minus(base[1]), span_s=now - base[2])
        d = machine.step(plan, status, obs, now)
        if d.gate is not None:
            gate = await self._ask(plan, d.gate, res, status)
            d = machine.step(plan, status, obs, self.clock(), gate)
        if not d.decision:
            return
        await self._apply(res, plan, d)
        if d.consumed:
            self._baseline[key] = (cur[0], cur[1], now)

    async def _blocked(self, res: Any, status: dict, reason: str) -> None:
        """A canary that cannot run says why, once (not an event every tick)."""
        if status.get("reason") == reason:
            return
        status = dict(status)
        status["reason"] = reason
        status["lastDecision"] = "blocked"
        status.setdefault("events", []).append(
            {"time": self.clock(), "decision": "blocked", "phase": status.get("phase", ""),
             "weight": status.get("weight", 0), "reason": reason})
        await self.statuses.put(res.namespace, res.name, status)
        log.warning("canary %s/%s: %s", res.namespace, res.name, reason)

    async def _apply(self, res: Any, plan: canary_api.Plan, d: machine.Decision) -> None:
        """Routes first, then the status: a status never claims weights that are not applied.
        A route change that fails leaves the old status, so the same decision is taken again."""
        if d.weight is not None:
            await self.set_weight(res, plan, d.weight)
        await self.statuses.put(res.namespace, res.name, d.status)
        label = (f"{res.namespace}/{res.name}", d.decision)
        self.decisions_total[label] = self.decisions_total.get(label, 0) + 1
        log.info("canary %s/%s: %s", res.namespace, res.name, d.reason)

    async def set_weight(self, res: Any, plan: canary_api.Plan, weight: int) -> None:
        services = [s.resource for s in self.store.get("VirtualService", res.namespace)]
        vs = routes.find_virtual_service(plan, res.namespace, services)
        name = plan.virtual_service or (vs.name if vs is not None else res.name)
        new = routes.with_weights(plan, res.namespace, vs, weight, name)
        try:
            checked = from_dict(new.to_dict(), f"canary {res.namespace}/{res.name}", 1)
        except InvalidConfig as e:
            raise RuntimeError(f"the VirtualService the canary would write is invalid: {e}")
        await self.store.apply_async([checked])

    # -- webhooks --------------------------------------------------------------------------
    async def _ask(self, plan: canary_api.Plan, kind: str, res: Any, status: dict) -> machine.Gate:
        """Flagger's protocol: POST a JSON description; any 2xx is go, anything else (or no
        answer in ``timeout``) holds, with the hook's own words as the reason."""
        import aiohttp

        for hook in plan.hooks(kind):
            body = {"name": res.name, "namespace": res.namespace, "phase": status.get("phase"),
                    "weight": status.get("weight", 0), "type": kind, "metadata": hook.metadata}
            try:
                timeout = aiohttp.ClientTimeout(total=hook.timeout_s)
                async with aiohttp.ClientSession(timeout=timeout) as s, \
                        s.post(hook.url, json=body) as resp:
                    text = (await resp.text())[:200].strip()
                    if not 200 <= resp.status < 300:
                        return machine.Gate(False, f"{hook.name} answered {resp.status}"
                                            + (f": {text}" if text else ""))
            except (aiohttp.ClientError, TimeoutError) as e:
                return machine.Gate(False, f"{hook.name} did not answer "
                                    f"({type(e).__name__}{': ' + str(e) if str(e) else ''})")
        return machine.Gate(True)

    # -- operator API ------------------------------------------------------------------------
    def view(self, namespace: str, name: str) -> dict | None:
        found = self.store.get("Canary", namespace, name)
        if not found:
            return None
        res = found[0].resource
        status = self._status(res)
        plan = canary_api.plan(res.spec)
        counters = {d: n for (c, d), n in self.decisions_total.items()
                    if c == f"{namespace}/{name}"}
        return {"name": name, "namespace": namespace, "spec": res.spec,
                "steps": list(plan.steps), "intervalSeconds": plan.interval_s,
                "status": status, "decisionsTotal": counters}

    async def command(self, namespace: str, name: str, action: str) -> dict:
        """An operator's action, applied at once (routes, then status). Raises LookupError for
        an unknown canary and ValueError for an action the phase does not allow."""
        async with self.lock:
            found = self.store.get("Canary", namespace, name)
            if not found:
                raise LookupError(f"Canary {name!r} not found in namespace {namespace!r}")
            res = found[0].resource
            plan = canary_api.plan(res.spec)
            d = machine.command(plan, self._status(res), action, self.clock())
            await self._apply(res, plan, d)
            self._baseline.pop((namespace, name), None)  # measure afresh from the next tick
        view = self.view(namespace, name)
        assert view is not None
        return view

    def metrics_text(self) -> str:
        """The decision counters (of this process: a counter resets with it, as Prometheus
        expects) and every Canary's weight, in Prometheus' text format, for the control plane's
        ``/metrics``. The labels name Canaries (config names), never sidecars or tokens."""
        lines = ["# HELP meshlet_canary_decisions_total Canary controller decisions.",
                 "# TYPE meshlet_canary_decisions_total counter"]
        for (c, d), n in sorted(self.decisions_total.items()):
            lines.append(f'meshlet_canary_decisions_total{{canary="{c}",decision="{d}"}} {n}')
        lines += ["# HELP meshlet_canary_weight The canary's share of traffic, in percent.",
                  "# TYPE meshlet_canary_weight gauge"]
        for sr in self.store.get("Canary"):
            r = sr.resource
            st = self.statuses.get(r.namespace, r.name) or {}
            lines.append(f'meshlet_canary_weight{{canary="{r.namespace}/{r.name}"}} '
                         f'{st.get("weight", 0)}')
        return "\n".join(lines) + "\n"
