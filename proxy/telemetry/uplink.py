"""The I/O loop that sends the sidecar's stats reports and tap events over the config stream.

Every ``MESHLET_STATS_INTERVAL`` seconds (default 5) the delta of the request counters goes to
the control plane as one ``{"type": "stats", ...}`` message (:class:`~proxy.telemetry.report.
StatsReport`); nothing is sent while the stream is down (the counts then land in the next report
that goes out, so totals stay right). ``tap`` / ``untap`` messages from the control plane start
and stop a :class:`~proxy.telemetry.report.Tap`; its events are flushed every 100 ms at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from proxy.telemetry.report import StatsReport, Tap

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0
TAP_FLUSH_S = 0.1


def interval_from_env() -> float:
    raw = os.environ.get("MESHLET_STATS_INTERVAL", "")
    try:
        v = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        log.warning("MESHLET_STATS_INTERVAL=%r is not a number; using %s s", raw,
                    DEFAULT_INTERVAL_S)
        return DEFAULT_INTERVAL_S
    return min(max(v, 0.05), 300.0)


class Uplink:
    def __init__(self, telemetry: Any, discovery: Any, interval: float | None = None) -> None:
        self.telemetry = telemetry
        self.discovery = discovery
        self.interval = interval if interval is not None else interval_from_env()
        telemetry.route_counts = {}
        self.report = StatsReport(telemetry.requests, telemetry.route_counts)
        rt = telemetry.rt
        self._pending: dict | None = None  # a report built while the stream was down
        self._wake = asyncio.Event()
        self.tap = Tap(telemetry.workload, rt.spiffe_id or f"{rt.service}.{rt.namespace}",
                       self._wake.set)
        discovery.on_message = self.on_message
        self._tasks = [asyncio.get_running_loop().create_task(self._report_loop()),
                       asyncio.get_running_loop().create_task(self._tap_loop())]

    def on_message(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "tap":
            try:
                self.tap.start(msg)
            except (TypeError, ValueError) as e:
                log.warning("ignoring a malformed tap request: %s", e)
                return
        elif kind == "untap":
            self.tap.stop(str(msg.get("id") or ""))
        else:
            return
        # The request path sees the tap only while one is on.
        self.telemetry.tap = self.tap if self.tap.active else None

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        if self.telemetry.tap is not None and not self.tap.active:
            self.telemetry.tap = None  # every tap expired
        body = self.report.build()
        if self._pending is not None:  # not sent last time: add it, so no count is lost
            body = _combine(self._pending, body)
            self._pending = None
        if not body["edges"] and not body["routes"]:
            return
        if not await self.discovery.send({"type": "stats", "interval": self.interval, **body}):
            self._pending = body

    async def _tap_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(TAP_FLUSH_S)  # batch what arrives meanwhile
            self._wake.clear()
            for msg in self.tap.drain():
                await self.discovery.send(msg)
            if not self.tap.active:
                self.telemetry.tap = None

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


def _combine(a: dict, b: dict) -> dict:
    """Two report bodies as one (a report that could not be sent, then the next)."""
    def merge(items: list[dict], keys: tuple[str, ...]) -> list[dict]:
        out: dict[tuple, dict] = {}
        for it in items:
            k = tuple(it.get(n) for n in keys)
            cur = out.get(k)
            if cur is None:
                out[k] = {**it, "buckets": list(it["buckets"])}
                continue
            for n, v in it.items():
                if n == "buckets":
                    cur["buckets"] = [x + y for x, y in zip(cur["buckets"], v, strict=True)]
                elif n not in keys and isinstance(v, int | float):
                    cur[n] = cur.get(n, 0) + v
        return list(out.values())

    edge_keys = ("reporter", "source_namespace", "source", "source_version", "destination",
                 "destination_version")
    return {"edges": merge(a["edges"] + b["edges"], edge_keys),
            "routes": merge(a["routes"] + b["routes"], ("service", "route"))}
