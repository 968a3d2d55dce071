"""A replica cut off from etcd hands its sidecars over to a replica that still reaches it.

Why: a replica that cannot reach etcd no longer sees what is applied through the other replicas
nor who joined or left the mesh, yet its sidecars would keep taking its (stale) config as
current and ``proxy-status`` would show them ``SYNCED``. So once its lease keep-alives have
failed for longer than ``bound`` and another replica reaches etcd (it reached etcd since this one
lost it, so it is not a replica slower to notice the same outage, and none of its own
keep-alives failed for at least ``bound``, so it is not one merely quicker to see etcd return
after an outage they shared), this replica closes
its config streams, refuses new ones and answers ``/readyz`` with 503: its sidecars go to the
next URL of their failover list, keep serving their last config meanwhile, and resume there
from the version they ACKed. When its keep-alives succeed again it serves again.

``bound`` defaults to a third of the lease TTL: the first failed keep-alive comes at most a third
of the TTL after the last good one, so the sidecars move while etcd still holds this replica's
lease, and with it their registry entries (their endpoints in everyone's config), with a third
of the TTL to spare for reconnecting.

When no other replica reaches etcd (etcd down for everyone), nothing moves: every replica's
view is as old as the others', and moving the sidecars would only cost a reconnect storm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from control_plane.etcd.lease import LeaseKeeper

log = logging.getLogger(__name__)


class Handover:
    def __init__(
        self,
        lease: LeaseKeeper,
        peers: Callable[[], Awaitable[list[str]]],
        probe: Callable[[str], Awaitable[tuple[float, float | None] | None]],
        on_cut_off: Callable[[], Awaitable[None]],
        on_back: Callable[[], None],
        bound: float | None = None,
        interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lease = lease
        # other replicas' URLs: an etcd watch keeps the list current, and once this replica is
        # cut off it is the last list it knew (control_plane/etcd/replicas.py)
        self.peers = peers
        # (seconds since the replica at this URL last reached etcd, since one of its keep-alives
        # last failed or None); None: it does not answer, or does not serve config streams
        self.probe = probe
        self.on_cut_off = on_cut_off
        self.on_back = on_back
        self.bound = bound if bound is not None else lease.ttl / 3
        self.interval = interval
        self.clock = clock
        self.cut_off = False
        self.probe_interval = 1.0  # between rounds of asking the peers, once cut off
        self._next_probe = 0.0
        self._alone_logged = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def reachable(self) -> bool:
        """etcd answers this replica's keep-alives (what a peer's probe asks)."""
        return self.lease.failing_since is None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the monitor must outlive one bad round
                log.exception("etcd reachability check failed")

    async def check(self) -> None:
        since = self.lease.failing_since
        if since is None:
            self._alone_logged = False
            if self.cut_off:
                self.cut_off = False
                log.warning("etcd reachable again: serving config streams again")
                self.on_back()
            return
        now = self.clock()
        if self.cut_off or now - since < self.bound or now < self._next_probe:
            return
        self._next_probe = now + self.probe_interval
        for url in await self.peers():
            ages = await self.probe(url)
            if ages is None:
                continue
            ok_age, failed_age = ages
            # It reached etcd since this replica lost it, and has kept reaching it for at least
            # the bound: a keep-alive of its own that failed *during* this outage (etcd electing
            # a leader when a member died) must not rule it out for good, and one just back from
            # an outage everyone had gets a bound's time for this replica to see etcd return too.
            if ok_age < now - since and (failed_age is None or failed_age > self.bound):
                self.cut_off = True
                log.warning("etcd unreachable for %.1fs and replica %s reaches it: closing "
                            "this replica's config streams so its sidecars move there",
                            self.clock() - since, url)
                await self.on_cut_off()
                return
        if not self._alone_logged:
            self._alone_logged = True
            log.warning("etcd unreachable for %.1fs, and no other replica reaches it: keeping "
                        "this replica's sidecars (their config stays as it is)",
                        self.clock() - since)
