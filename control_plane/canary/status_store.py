"""Canary status kept next to the resources, outside their revisions.

The controller writes a status after every decision, so a control plane killed mid-rollout (or,
with replicas, the next leader) resumes where it stopped. Status is not config: writing it bumps
no revision and pushes nothing to sidecars (the route weights it causes are applied as ordinary
VirtualService changes).

Two backends, as the resource store's: :class:`SqliteStatusStore` (a table of its own in
``store.db``, on its own connection, so the resource store's transactions are untouched) and
:class:`EtcdStatusStore` (keys under ``<prefix>canary-status/``, read into memory by
:meth:`load`, which a replica calls when it becomes the leader). Reads are synchronous (from the
file or the memory copy); writes are coroutines.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Protocol

_SCHEMA = """
CREATE TABLE IF NOT EXISTS canary_status (
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    status    TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
"""


class StatusStore(Protocol):
    async def load(self) -> None: ...

    def get(self, namespace: str, name: str) -> dict | None: ...

    def all_keys(self) -> list[tuple[str, str]]: ...

    async def put(self, namespace: str, name: str, status: dict) -> None: ...

    async def delete(self, namespace: str, name: str) -> None: ...

    def close(self) -> None: ...


class SqliteStatusStore:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=10.0)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    async def load(self) -> None:
        return None  # reads go to the file

    def get(self, namespace: str, name: str) -> dict | None:
        row = self._db.execute("SELECT status FROM canary_status WHERE namespace=? AND name=?",
                               (namespace, name)).fetchone()
        return json.loads(row[0]) if row else None

    def all_keys(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in
                self._db.execute("SELECT namespace, name FROM canary_status").fetchall()]

    async def put(self, namespace: str, name: str, status: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO canary_status VALUES (?,?,?)",
                         (namespace, name, json.dumps(status, separators=(",", ":"))))

    async def delete(self, namespace: str, name: str) -> None:
        self._db.execute("DELETE FROM canary_status WHERE namespace=? AND name=?",
                         (namespace, name))

    def close(self) -> None:
        self._db.close()


class EtcdStatusStore:
    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client  # control_plane.etcd.client.EtcdClient
        self.prefix = (prefix + "canary-status/").encode()
        self._cache: dict[tuple[str, str], dict] = {}

    def _key(self, namespace: str, name: str) -> bytes:
        return self.prefix + f"{namespace}/{name}".encode()

    async def load(self) -> None:
        _rev, kvs = await self.client.get_prefix(self.prefix)
        cache = {}
        for kv in kvs:
            ns, _, name = kv.key[len(self.prefix):].decode().partition("/")
            cache[(ns, name)] = json.loads(kv.value)
        self._cache = cache

    def get(self, namespace: str, name: str) -> dict | None:
        found = self._cache.get((namespace, name))
        return json.loads(json.dumps(found)) if found is not None else None

    def all_keys(self) -> list[tuple[str, str]]:
        return list(self._cache)

    async def put(self, namespace: str, name: str, status: dict) -> None:
        await self.client.put(self._key(namespace, name),
                              json.dumps(status, separators=(",", ":")).encode())
        self._cache[(namespace, name)] = json.loads(json.dumps(status))

    async def delete(self, namespace: str, name: str) -> None:
        await self.client.delete(self._key(namespace, name))
        self._cache.pop((namespace, name), None)

    def close(self) -> None:
        return None
