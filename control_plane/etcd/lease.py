"""One replica's etcd lease: granted at start, kept alive, re-granted if etcd forgot it.

Everything a replica owns in etcd that must vanish when it dies or stops (its ``replicas/<id>``
key, the registry entries of its sidecars, the leader key while it leads) is bound to this lease: a
SIGKILLed replica stops renewing and etcd deletes it all after ``ttl`` seconds, with no one
having to notice. After an etcd outage longer than the TTL the lease may be gone; the keeper
then grants a new one and calls ``on_new_lease`` so owners write their keys again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from control_plane.etcd.client import EtcdClient
from control_plane.store.base import StoreUnavailable

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, client: EtcdClient, ttl: int = 10) -> None:
        self.client = client
        self.ttl = max(2, int(ttl))
        self.id = 0
        self.on_new_lease: list[Callable[[], Awaitable[None]]] = []
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.id = await self.client.lease_grant(self.ttl)
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
            await asyncio.sleep(self.ttl / 3)
            try:
                left = await self.client.lease_keepalive(self.id)
                if left > 0:
                    continue
                log.warning("etcd lease %x expired; granting a new one", self.id)
                self.id = await self.client.lease_grant(self.ttl)
                for cb in list(self.on_new_lease):
                    try:
                        await cb()
                    except StoreUnavailable as e:
                        log.warning("re-registering under the new lease: %s", e)
            except StoreUnavailable as e:
                log.debug("lease keep-alive: %s", e)
