"""The etcd resource store: what replicas share, with etcd's revision as the mesh revision.

Layout under the prefix (default ``/meshlet/``)::

    r/res/<kind>/<namespace>/<name>   one resource (JSON: apiVersion, spec, labels, annotations,
                                      created, updated); its mod_revision is its revision
    r/rev                             rewritten by every change: its mod_revision is the mesh
                                      revision (monotonic, also across deletes)

A change is one etcd txn guarded by ``r/rev``'s mod_revision (optimistic concurrency): the
store reads the keys it is about to change, decides created / configured / unchanged as the
SQLite store does, and commits only if no other change landed in between (else it re-reads
and tries again). Every replica keeps a mirror of ``r/`` that one watch keeps current, so reads
and snapshots never wait on the network and are each of one revision; listeners are called
after each watched change, whichever replica made it: that is how replica B learns of an apply
through A. A write waits (bounded) until its own watch has seen it, so an apply followed by a
get on the same replica reads what it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable

from control_plane.api.resources import Resource
from control_plane.etcd.client import (
    KV,
    EtcdClient,
    EtcdUnavailable,
    WatchCompacted,
    cmp_mod,
    op_delete,
    op_put,
    op_range,
    prefix_end,
)
from control_plane.store.base import Change, Key, StoredResource, StoreLimit, StoreUnavailable

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
CATCH_UP_S = 2.0
# etcd's default --max-txn-ops: a change is one txn, so one apply changes at most
# TXN_OPS - 1 resources (r/rev is the last operation).
TXN_OPS = 128


class EtcdStore:
    def __init__(self, client: EtcdClient, prefix: str = "/meshlet/") -> None:
        self.client = client
        self.prefix = prefix.encode()
        self._r = self.prefix + b"r/"
        self._res = self._r + b"res/"
        self._rev_key = self._r + b"rev"
        self._items: dict[Key, StoredResource] = {}
        self._rev = 0  # mesh revision (mod_revision of r/rev)
        self._seen = 0  # the last etcd revision the mirror reflects
        self._listeners: list[Callable[[int], None]] = []
        self._watch_task: asyncio.Task | None = None
        self._caught_up = asyncio.Condition()
        self.watch_connected = False

    # -- keys ------------------------------------------------------------------------------
    def _key(self, kind: str, ns: str, name: str) -> bytes:
        return self._res + f"{kind}/{ns}/{name}".encode()

    def _parse(self, kv: KV) -> StoredResource | None:
        try:
            kind, ns, name = kv.key[len(self._res):].decode().split("/", 2)
            d = json.loads(kv.value)
        except (ValueError, UnicodeDecodeError):
            log.warning("ignoring malformed key %r in etcd", kv.key)
            return None
        res = Resource(
            api_version=str(d.get("apiVersion", "")), kind=kind, name=name, namespace=ns,
            spec=d.get("spec") or {}, labels=d.get("labels") or {}, source="store",
            annotations=d.get("annotations") or {},
        )
        return StoredResource(res, kv.mod_revision, float(d.get("created", 0)),
                              float(d.get("updated", 0)))

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self._load()
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_loop())

    def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()

    async def _load(self) -> None:
        rev, kvs = await self.client.get_prefix(self._r)
        items: dict[Key, StoredResource] = {}
        mesh_rev = 0
        for kv in kvs:
            if kv.key == self._rev_key:
                mesh_rev = kv.mod_revision
            elif kv.key.startswith(self._res):
                sr = self._parse(kv)
                if sr is not None:
                    items[sr.resource.key] = sr
        changed = mesh_rev != self._rev
        self._items, self._rev, self._seen = items, mesh_rev, rev
        if changed:
            self._notify()

    async def _watch_loop(self) -> None:
        attempt = 0
        while True:
            try:
                async for rev, events in self.client.watch(self._r, prefix_end(self._r),
                                                           self._seen + 1):
                    self.watch_connected = True
                    attempt = 0
                    self._apply_events(rev, events)
            except asyncio.CancelledError:
                raise
            except WatchCompacted:
                log.info("etcd history compacted past our revision: reloading")
                with contextlib.suppress(StoreUnavailable):
                    await self._load()
                continue
            except Exception as e:  # the stream broke: reconnect from where we were
                log.debug("etcd watch: %s", e)
            self.watch_connected = False
            await asyncio.sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)))
            attempt += 1

    def _apply_events(self, rev: int, events: list) -> None:
        changed = False
        for ev in events:
            kv = ev.kv
            if kv.key == self._rev_key:
                if ev.type != "DELETE":
                    self._rev = kv.mod_revision
                    changed = True
                continue
            if not kv.key.startswith(self._res):
                continue
            if ev.type == "DELETE":
                try:
                    kind, ns, name = kv.key[len(self._res):].decode().split("/", 2)
                except ValueError:
                    continue
                self._items.pop((kind, ns, name), None)
            else:
                sr = self._parse(kv)
                if sr is not None:
                    self._items[sr.resource.key] = sr
        if events:
            # Not the header's revision: the first message's header can be ahead of events
            # still to be replayed, and resuming after it would skip them.
            self._seen = max(self._seen, max(ev.kv.mod_revision for ev in events))
        if changed:
            self._notify()
            self._wake()

    def _wake(self) -> None:
        async def notify() -> None:
            async with self._caught_up:
                self._caught_up.notify_all()

        asyncio.get_running_loop().create_task(notify())

    async def _wait_seen(self, revision: int) -> None:
        """Until the mirror reflects ``revision`` (our own write), bounded."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CATCH_UP_S), self._caught_up:
                await self._caught_up.wait_for(lambda: self._rev >= revision)

    # -- reading ---------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        return self._rev

    def get(self, kind: str | None = None, namespace: str | None = None,
            name: str | None = None) -> list[StoredResource]:
        out = [
            sr for (k, ns, n), sr in self._items.items()
            if (kind is None or k == kind) and (namespace is None or ns == namespace)
            and (name is None or n == name)
        ]
        out.sort(key=lambda sr: sr.resource.key)
        return out

    def snapshot(self) -> tuple[int, list[StoredResource]]:
        return self._rev, self.get()

    def add_listener(self, fn: Callable[[int], None]) -> None:
        self._listeners.append(fn)

    def _notify(self) -> None:
        for fn in list(self._listeners):
            fn(self._rev)

    # -- writing ---------------------------------------------------------------------------
    async def _read(self, keys: list[bytes]) -> tuple[int, list[KV | None]]:
        """(mod_revision of r/rev, each key's KV), as of one mesh revision: read in txns of
        at most TXN_OPS ranges (etcd's --max-txn-ops), each with r/rev, and read again if a
        change landed between them."""
        for _ in range(MAX_ATTEMPTS):
            guards: set[int] = set()
            found: list[KV | None] = []
            for i in range(0, max(len(keys), 1), TXN_OPS - 1):
                ops = [op_range(self._rev_key)] + [op_range(k) for k in keys[i:i + TXN_OPS - 1]]
                _, _, responses = await self.client.txn([], ops)
                got: list[KV | None] = []
                for resp in responses:
                    kvs = (resp.get("response_range") or {}).get("kvs") or []
                    got.append(KV.from_json(kvs[0]) if kvs else None)
                guards.add(got[0].mod_revision if got[0] else 0)
                found.extend(got[1:])
            if len(guards) == 1:
                return guards.pop(), found
        raise StoreUnavailable("too many concurrent changes; try again")

    async def apply_async(self, resources: Iterable[Resource]) -> tuple[int, list[Change]]:
        resources = list(resources)
        keys = [self._key(r.kind, r.namespace, r.name) for r in resources]
        for _ in range(MAX_ATTEMPTS):
            guard, old = await self._read(keys)
            now = time.time()
            changes: list[Change] = []
            ops = []
            for r, key, kv in zip(resources, keys, old, strict=True):
                body = {"apiVersion": r.api_version, "spec": r.spec,
                        "labels": dict(r.labels or {}), "annotations": dict(r.annotations or {})}
                prev = json.loads(kv.value) if kv is not None else None
                if prev is None:
                    action = "created"
                    created = now
                elif {k: prev.get(k) for k in body} == _canon(body):
                    action = "unchanged"
                else:
                    action = "configured"
                    created = float(prev.get("created", now))
                changes.append(Change(r.kind, r.namespace, r.name, r.api_version, action))
                if action != "unchanged":
                    value = json.dumps({**body, "created": created, "updated": now},
                                       sort_keys=True, separators=(",", ":"))
                    ops.append(op_put(key, value.encode()))
            if not ops:
                return guard, changes
            ok, rev = await self._commit(guard, ops)
            if ok:
                await self._wait_seen(rev)
                return rev, changes
        raise StoreUnavailable("too many concurrent changes; try again")

    async def delete_async(self, keys: Iterable[Key]) -> tuple[int, list[Change]]:
        keys = list(keys)
        ekeys = [self._key(*k) for k in keys]
        for _ in range(MAX_ATTEMPTS):
            guard, old = await self._read(ekeys)
            changes, ops = [], []
            for (kind, ns, name), key, kv in zip(keys, ekeys, old, strict=True):
                if kv is None:
                    changes.append(Change(kind, ns, name, "", "not-found"))
                    continue
                api = str(json.loads(kv.value).get("apiVersion", ""))
                changes.append(Change(kind, ns, name, api, "deleted"))
                ops.append(op_delete(key))
            if not ops:
                return guard, changes
            ok, rev = await self._commit(guard, ops)
            if ok:
                await self._wait_seen(rev)
                return rev, changes
        raise StoreUnavailable("too many concurrent changes; try again")

    async def _commit(self, guard: int, ops: list[dict]) -> tuple[bool, int]:
        if len(ops) + 1 > TXN_OPS:
            raise StoreLimit(
                f"this change touches {len(ops)} resources; with etcd one change is one "
                f"transaction of at most {TXN_OPS - 1} (etcd's --max-txn-ops {TXN_OPS}): apply "
                "it in parts")
        ok, rev, _ = await self.client.txn(
            [cmp_mod(self._rev_key, guard)], [*ops, op_put(self._rev_key, b"")]
        )
        return ok, rev

    async def writable_async(self) -> bool:
        try:
            await self.client.range(self._rev_key)
            return True
        except EtcdUnavailable:
            return False
        except StoreUnavailable:
            return False


def _canon(body: dict) -> dict:
    """``body`` as it reads back from JSON (tuples become lists...), for the unchanged test."""
    return json.loads(json.dumps(body))
