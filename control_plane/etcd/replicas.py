"""Which replicas are alive, kept current by a watch on etcd's ``replicas/`` prefix.

Each replica puts ``<prefix>replicas/<replica id>`` (its ``host:port`` as JSON) under its lease
(control_plane/registry_etcd.py), so a replica that starts appears at once and one that dies
disappears when its lease expires. A replica needs that list for the merged stats views and,
above all, for the hand-over (control_plane/etcd/handover.py): a replica cut off from etcd can
only hand its sidecars to a peer it already knows. A periodic re-read would leave a window in
which a replica just started is unknown; a watch delivers it within a round trip.

Every time the watch is (re)established (start, reconnect after a broken stream, a start
revision compacted away) the whole prefix is read again and the watch resumes from that read's
revision: nothing missed while the stream was down is ever lost, and a deleted key is never
kept because its DELETE event fell in a gap. While etcd does not answer, the last list is kept
unchanged: a replica cut off from etcd hands over to the peers it knew.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from control_plane.etcd.client import EtcdClient, WatchCompacted, prefix_end

log = logging.getLogger(__name__)


def _address(value: bytes) -> str | None:
    try:
        addr = json.loads(value).get("address")
    except (ValueError, AttributeError):
        return None
    return addr if isinstance(addr, str) and addr else None


class ReplicaSet:
    """The live replicas' addresses (``host:port``), mirrored from ``prefix`` in etcd."""

    def __init__(self, client: EtcdClient, prefix: bytes) -> None:
        self.client = client
        self.prefix = prefix
        self._by_key: dict[bytes, str] = {}
        self.on_change: list[Callable[[], None]] = []
        self.watching = False  # the watch stream is established (else the list may be stale)
        self.reloads = 0  # full reads done (the first one, then one per (re)established watch)
        self._task: asyncio.Task | None = None

    def addresses(self) -> list[str]:
        """Every live replica's address, sorted, this one included."""
        return sorted(set(self._by_key.values()))

    async def start(self) -> None:
        """Read the list once (so it is complete when this returns), then keep it current."""
        rev = await self.reload()
        self._task = asyncio.get_running_loop().create_task(self._loop(rev))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload(self) -> int:
        """Replace the list with what etcd holds now; returns the revision it was read at
        (the watch resumes after it). Raises StoreUnavailable, the list left as it was."""
        rev, kvs = await self.client.get_prefix(self.prefix)
        by_key = {}
        for kv in kvs:
            addr = _address(kv.value)
            if addr is not None:
                by_key[kv.key] = addr
        self.reloads += 1
        self._set(by_key)
        return rev

    def _set(self, by_key: dict[bytes, str]) -> None:
        before = self.addresses()
        self._by_key = by_key
        if self.addresses() != before:
            log.info("replicas: %s", ", ".join(self.addresses()) or "none")
            for fn in list(self.on_change):
                fn()

    def _apply(self, events: list) -> None:
        by_key = dict(self._by_key)
        for ev in events:
            addr = None if ev.type == "DELETE" else _address(ev.kv.value)
            if addr is None:
                by_key.pop(ev.kv.key, None)
            else:
                by_key[ev.kv.key] = addr
        self._set(by_key)

    async def _loop(self, rev: int | None) -> None:
        attempt = 0
        while True:
            try:
                if rev is None:
                    rev = await self.reload()
                async for _rev, events in self.client.watch(self.prefix,
                                                            prefix_end(self.prefix), rev + 1):
                    self.watching = True
                    attempt = 0
                    if events:
                        self._apply(events)
            except asyncio.CancelledError:
                raise
            except WatchCompacted:
                log.debug("replicas watch: history compacted, reading the list again")
            except Exception as e:  # noqa: BLE001 - etcd down or the stream broke: retry
                log.debug("replicas watch: %s", e)
            self.watching = False
            rev = None  # whatever happened, read everything again before watching again
            await asyncio.sleep(min(2.0, 0.05 * 2 ** min(attempt, 6)))
            attempt += 1
