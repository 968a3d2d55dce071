"""The registry shared through etcd: every replica sees every sidecar, whoever it is connected to.

Each replica keeps its own sidecars in the in-memory :class:`Registry` it inherits (its streams,
their push status, the grace period) and publishes each of them to etcd as
``<prefix>reg/<node id>/<replica id>`` bound to the replica's lease, so the entries of a replica
that dies vanish on their own after one lease TTL. A watch on ``reg/`` mirrors everyone else's
entries. :meth:`all` merges both by node id: a sidecar that moved from A to B has an entry under
each until A's expires; the connected one, else the most recent, wins. That merged view is what
snapshots take their endpoints from and what ``/v1/proxies`` (``meshlet proxy-status``) lists,
with the replica each sidecar is connected to. The replicas themselves are listed under
``<prefix>replicas/<replica id>`` (also bound to the lease), which a second watch mirrors
(control_plane/etcd/replicas.py): :meth:`replica_addresses` is current within a round trip.

Writes to etcd are coalesced per node and retried by one writer task: a config stream never
waits on etcd, and an etcd outage only delays what other replicas see. Remote changes fire the
registry's listeners only when what a snapshot carries (service, namespace, version, labels,
address) changed, not on every ACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import fields

from control_plane.etcd.client import (
    EtcdClient,
    WatchCompacted,
    op_delete,
    op_put,
    prefix_end,
)
from control_plane.etcd.lease import LeaseKeeper
from control_plane.etcd.replicas import ReplicaSet
from control_plane.registry import DEFAULT_GRACE_S, Registration, Registry
from control_plane.store.base import StoreUnavailable

log = logging.getLogger(__name__)

_FIELDS = {f.name for f in fields(Registration)} - {"disconnected_at"}
TXN_OPS = 100


def _endpoint_sig(regs: list[Registration]) -> tuple:
    return tuple(
        (r.namespace, r.service, r.version, tuple(sorted(r.labels.items())), r.address)
        for r in regs
    )


class SharedRegistry(Registry):
    def __init__(self, client: EtcdClient, lease: LeaseKeeper, replica_id: str,
                 replica_address: str, prefix: str = "/meshlet/",
                 grace_s: float = DEFAULT_GRACE_S) -> None:
        super().__init__(grace_s=grace_s)
        self.client = client
        self.lease = lease
        self.replica_id = replica_id
        self.replica_address = replica_address
        self._reg = prefix.encode() + b"reg/"
        self._replicas = prefix.encode() + b"replicas/"
        self._remote: dict[tuple[str, str], Registration] = {}  # (node, replica) -> entry
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._seen = 0
        self._tasks: list[asyncio.Task] = []
        self._sig: tuple = ()
        self.replicas = ReplicaSet(client, self._replicas)
        lease.on_new_lease.append(self._republish)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self._put_replica()
        await self.replicas.start()
        await self._load()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer()), loop.create_task(self._watch_loop())]

    async def stop(self) -> None:
        await self.replicas.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _put_replica(self) -> None:
        await self.client.put(self._replicas + self.replica_id.encode(),
                              json.dumps({"address": self.replica_address}).encode(),
                              self.lease.id)

    async def _republish(self) -> None:
        await self._put_replica()
        self._dirty.update(self._nodes)
        self._wake.set()

    def _key(self, node_id: str, replica: str) -> bytes:
        return self._reg + f"{node_id}/{replica}".encode()

    # -- publishing our sidecars -----------------------------------------------------------
    def _mark(self, node_id: str) -> None:
        self._dirty.add(node_id)
        self._wake.set()

    async def _writer(self) -> None:
        attempt = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._dirty = self._dirty, set()
            try:
                # Many sidecars ACK one push at once: their entries go in a few txns, not one
                # request each (etcd allows 128 operations per txn by default).
                ops = [self._op(node) for node in sorted(batch)]
                for i in range(0, len(ops), TXN_OPS):
                    await self.client.txn([], ops[i:i + TXN_OPS])
                attempt = 0
            except StoreUnavailable as e:
                log.debug("registry publish: %s", e)
                self._dirty |= batch
                self._wake.set()
                await asyncio.sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)))
                attempt += 1

    def _op(self, node: str) -> dict:
        reg = self._nodes.get(node)
        key = self._key(node, self.replica_id)
        if reg is None:
            return op_delete(key)
        d = {k: v for k, v in reg.to_dict().items() if k in _FIELDS}
        d["replica"] = self.replica_address
        return op_put(key, json.dumps(d).encode(), self.lease.id)

    def register(self, reg: Registration) -> None:
        reg.replica = self.replica_address
        super().register(reg)
        self._mark(reg.node_id)

    def disconnected(self, node_id: str, reg: Registration | None = None) -> None:
        super().disconnected(node_id, reg)
        self._mark(node_id)

    def deregister(self, node_id: str) -> None:
        super().deregister(node_id)
        self._mark(node_id)

    def expire(self) -> list[str]:
        gone = super().expire()
        for node in gone:
            self._mark(node)
        return gone

    def acked(self, node_id: str, version: str) -> None:
        super().acked(node_id, version)
        self._mark(node_id)

    def nacked(self, node_id: str, version: str, error: str) -> None:
        super().nacked(node_id, version, error)
        self._mark(node_id)

    def update(self, node_id: str, **fields: object) -> None:
        super().update(node_id, **fields)
        self._mark(node_id)

    # -- mirroring everyone else's ---------------------------------------------------------
    def _parse(self, key: bytes, value: bytes) -> tuple[tuple[str, str], Registration | None]:
        node, _, replica = key[len(self._reg):].decode(errors="replace").rpartition("/")
        try:
            d = json.loads(value) if value else None
            reg = Registration(**{k: v for k, v in d.items() if k in _FIELDS}) if d else None
        except (ValueError, TypeError):
            reg = None
        return (node, replica), reg

    async def _load(self) -> None:
        _, kvs = await self.client.get_prefix(self._reg)
        remote = {}
        for kv in kvs:
            k, reg = self._parse(kv.key, kv.value)
            if reg is not None and k[1] != self.replica_id:
                remote[k] = reg
            self._seen = max(self._seen, kv.mod_revision)
        self._remote = remote
        self._remote_changed()

    async def _watch_loop(self) -> None:
        attempt = 0
        while True:
            try:
                async for _rev, events in self.client.watch(
                    self._reg, prefix_end(self._reg), self._seen + 1
                ):
                    attempt = 0
                    moved = False  # did anything a snapshot carries change?
                    for ev in events:
                        self._seen = max(self._seen, ev.kv.mod_revision)
                        k, reg = self._parse(ev.kv.key, ev.kv.value)
                        if k[1] == self.replica_id:
                            continue
                        if ev.type == "DELETE" or reg is None:
                            old = self._remote.pop(k, None)
                            moved = moved or old is not None
                        else:
                            old = self._remote.get(k)
                            self._remote[k] = reg
                            moved = moved or old is None or _endpoint_sig([old]) != \
                                _endpoint_sig([reg]) or old.connected != reg.connected
                    if moved:  # an ACK alone changes nothing a snapshot carries
                        self._remote_changed()
            except asyncio.CancelledError:
                raise
            except WatchCompacted:
                with contextlib.suppress(StoreUnavailable):
                    await self._load()
                continue
            except Exception as e:
                log.debug("registry watch: %s", e)
            await asyncio.sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)))
            attempt += 1

    def _remote_changed(self) -> None:
        sig = _endpoint_sig(self.all())
        if sig != self._sig:
            self._sig = sig
            super()._changed()

    def _changed(self) -> None:
        self._sig = _endpoint_sig(self.all())
        super()._changed()

    # -- reading ---------------------------------------------------------------------------
    def all(self) -> list[Registration]:
        best: dict[str, Registration] = {}
        for reg in [*self._remote.values(), *self._nodes.values()]:
            cur = best.get(reg.node_id)
            if cur is None or (reg.connected, reg.connected_at) > (cur.connected, cur.connected_at):
                best[reg.node_id] = reg
        return sorted(best.values(), key=lambda r: (r.namespace, r.service, r.node_id))

    def find(self, name: str) -> list[Registration]:
        regs = self.all()
        exact = [r for r in regs if r.node_id == name]
        if exact:
            return exact
        svc, _, ns = name.partition(".")
        return [r for r in regs if r.service == svc and (not ns or r.namespace == ns)]

    def replica_addresses(self) -> list[str]:
        """The ``host:port`` of every other live replica, as a watch on ``replicas/`` keeps it
        (each replica's entry lives under its lease): current within a round trip of a replica
        starting or its lease expiring, and the last list known while etcd does not answer
        (what the hand-over needs). For the telemetry hub's merged stats views and for the
        hand-over, without a configured list."""
        return [a for a in self.replicas.addresses() if a != self.replica_address]

    async def collect_garbage(self) -> int:
        """Leader job: drop entries of replicas that no longer exist (their lease normally
        removes them; this catches entries written without one). Returns how many."""
        _, replicas = await self.client.get_prefix(self._replicas)
        alive = {kv.key[len(self._replicas):].decode() for kv in replicas}
        _, kvs = await self.client.get_prefix(self._reg)
        n = 0
        for kv in kvs:
            (_, replica), _reg = self._parse(kv.key, kv.value)
            if replica not in alive:
                await self.client.delete(kv.key)
                n += 1
        return n
