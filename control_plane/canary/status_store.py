"""Canary status kept next to the resources (``store.db``), outside their revisions.

The controller writes a status after every decision, so a control plane killed mid-rollout
resumes where it stopped. Status is not config: writing it bumps no revision and pushes nothing
to sidecars (the route weights it causes are applied as ordinary VirtualService changes). It has
its own table on its own connection, so the resource store's transactions are untouched.
"""

from __future__ import annotations

import json
import sqlite3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS canary_status (
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    status    TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
"""


class StatusStore:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=10.0)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def get(self, namespace: str, name: str) -> dict | None:
        row = self._db.execute("SELECT status FROM canary_status WHERE namespace=? AND name=?",
                               (namespace, name)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, namespace: str, name: str, status: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO canary_status VALUES (?,?,?)",
                         (namespace, name, json.dumps(status, separators=(",", ":"))))

    def delete(self, namespace: str, name: str) -> None:
        self._db.execute("DELETE FROM canary_status WHERE namespace=? AND name=?",
                         (namespace, name))

    def all_keys(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in
                self._db.execute("SELECT namespace, name FROM canary_status").fetchall()]

    def close(self) -> None:
        self._db.close()
