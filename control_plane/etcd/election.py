"""Leader election among replicas, for singleton jobs only.

Replicas are equal for everything a request needs (API, config streams, signing); a few jobs
must run in one place at a time: registry garbage collection, pruning expired join tokens, and
later the canary controller. The leader is the replica whose id a txn wrote to the leader key
while it was absent, bound to the replica's lease: if the leader dies, the key goes with its
lease and the next replica to try takes over within about a lease TTL.

Use: ``election.on_leader(job)`` registers ``async def job()``; it is started when this replica
becomes leader and cancelled if it stops being one. ``election.is_leader`` answers now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from control_plane.etcd.client import (
    KV,
    EtcdClient,
    cmp_absent,
    cmp_value,
    op_delete,
    op_put,
    op_range,
)
from control_plane.etcd.lease import LeaseKeeper
from control_plane.store.base import StoreUnavailable

log = logging.getLogger(__name__)


class Election:
    def __init__(self, client: EtcdClient, key: bytes, identity: str, lease: LeaseKeeper,
                 interval: float | None = None) -> None:
        self.client = client
        self.key = key
        self.identity = identity.encode()
        self.lease = lease
        self.interval = interval if interval is not None else max(0.5, lease.ttl / 3)
        self.is_leader = False
        self.leader = ""  # the current leader's identity, as last seen
        self._jobs: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._running: list[asyncio.Task] = []
        self._task: asyncio.Task | None = None

    def on_leader(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._jobs.append(job)
        if self.is_leader:
            self._running.append(asyncio.get_running_loop().create_task(job()))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop campaigning and resign: the next replica takes over at its next campaign,
        not one lease TTL later."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.is_leader:
            with contextlib.suppress(StoreUnavailable):
                await self.client.txn([cmp_value(self.key, self.identity)], [op_delete(self.key)])
        self._set(False)

    async def campaign(self) -> bool:
        """One attempt: take the key if free, or confirm we still hold it."""
        ok, _, responses = await self.client.txn(
            [cmp_absent(self.key)], [op_put(self.key, self.identity, self.lease.id)],
            [op_range(self.key)],
        )
        if ok:
            self.leader = self.identity.decode()
            return True
        kvs = (responses[0].get("response_range") or {}).get("kvs") or [] if responses else []
        holder = KV.from_json(kvs[0]) if kvs else None
        self.leader = holder.value.decode(errors="replace") if holder else ""
        if holder is not None and holder.value == self.identity and holder.lease != self.lease.id:
            # Ours, under a lease we no longer keep (re-granted): rebind it to the live one.
            ok, _, _ = await self.client.txn(
                [cmp_value(self.key, self.identity)],
                [op_put(self.key, self.identity, self.lease.id)],
            )
            return ok
        return holder is not None and holder.value == self.identity

    async def _loop(self) -> None:
        while True:
            try:
                self._set(await self.campaign())
            except StoreUnavailable as e:
                # Without etcd we cannot know whether our lease still stands: step down.
                log.debug("election: %s", e)
                self._set(False)
            await asyncio.sleep(self.interval)

    def _set(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        if leader:
            log.info("this replica (%s) is now the leader", self.identity.decode())
            loop = asyncio.get_running_loop()
            self._running = [loop.create_task(job()) for job in self._jobs]
        else:
            log.info("this replica (%s) is no longer the leader", self.identity.decode())
            for t in self._running:
                t.cancel()
            self._running = []
