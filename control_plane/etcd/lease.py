"""One replica's etcd lease: granted at start, kept alive, re-granted if etcd forgot it.

Everything a replica owns in etcd that must vanish when it dies or stops (its ``replicas/<id>``
key, the registry entries of its sidecars, the leader key while it leads) is bound to this lease: a
SIGKILLed replica stops renewing and etcd deletes it all after ``ttl`` seconds, with no one
having to notice. After an etcd outage longer than the TTL the lease may be gone; the keeper
then grants a new one and calls ``on_new_lease`` so owners write their keys again.

``failing_since`` (monotonic) says since when the keep-alives fail, ``last_ok`` when etcd last
answered one and ``last_failed`` when one last failed: the replica's measure of being cut off
from etcd (:mod:`control_plane.etcd.handover`). After a failure the keeper tries again every
``RETRY_S`` rather than every ``ttl / 3``, so etcd's return is noticed quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from control_plane.etcd.client import EtcdClient
from control_plane.store.base import StoreUnavailable

log = logging.getLogger(__name__)

RETRY_S = 0.5


class LeaseKeeper:
    def __init__(self, client: EtcdClient, ttl: int = 10) -> None:
        self.client = client
        self.ttl = max(2, int(ttl))
        self.id = 0
        self.on_new_lease: list[Callable[[], Awaitable[None]]] = []
        self._task: asyncio.Task | None = None
        self.failing_since: float | None = None
        self.last_ok = 0.0  # monotonic time of the last keep-alive (or grant) etcd answered
        self.last_failed: float | None = None  # ... and of the last one that failed

    async def start(self) -> None:
        self.id = await self.client.lease_grant(self.ttl)
        self.failing_since = None
        self.last_ok = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._keepalive())

    async def stop(self, *, revoke: bool = False) -> None:
        """Stop renewing. The lease then expires after its TTL, as a dead replica's would: a
        replica stopping gracefully keeps its sidecars' registry entries (their endpoints)
        until they have reconnected elsewhere. ``revoke`` drops everything bound to it now."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if revoke and self.id:
            with contextlib.suppress(StoreUnavailable):
                await self.client.lease_revoke(self.id)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3 if self.failing_since is None
                                else min(RETRY_S, self.ttl / 3))
            sent = time.monotonic()
            try:
                left = await self.client.lease_keepalive(self.id)
                if left > 0:
                    self.failing_since = None
                    self.last_ok = time.monotonic()
                    continue
                log.warning("etcd lease %x expired; granting a new one", self.id)
                self.id = await self.client.lease_grant(self.ttl)
                self.failing_since = None
                self.last_ok = time.monotonic()
                for cb in list(self.on_new_lease):
                    try:
                        await cb()
                    except StoreUnavailable as e:
                        log.warning("re-registering under the new lease: %s", e)
            except StoreUnavailable as e:
                if self.failing_since is None:
                    # when the failed keep-alive was sent: a partition shows as a timeout,
                    # and the lease's time in etcd runs from the last keep-alive it received
                    self.failing_since = sent
                self.last_failed = sent
                log.debug("lease keep-alive: %s", e)
