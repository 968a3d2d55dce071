"""The control plane's resource store: SQLite in the data dir, one transaction per change.

Every change (an ``apply`` of many documents, a ``delete`` of many keys) is one transaction and
bumps one global, monotonically increasing revision; each row remembers the revision that last
changed it. A change that changes nothing (every document ``unchanged``) does not bump the
revision. Listeners registered with :meth:`Store.add_listener` are called after each commit, on
the caller's thread, with the new revision: the push side uses that to rebuild snapshots.

The store knows resources only through :class:`control_plane.api.resources.Resource`; it never
validates (the caller already did, with the same code the sidecar uses).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from control_plane.api.resources import Resource

# Names an operator may type for a kind, kubectl-style: the Kind, lowercase, plural, short name.
KINDS: dict[str, tuple[str, ...]] = {
    "VirtualService": ("virtualservice", "virtualservices", "vs"),
    "DestinationRule": ("destinationrule", "destinationrules", "dr"),
    "ServiceEntry": ("serviceentry", "serviceentries", "se"),
    "WorkloadEntry": ("workloadentry", "workloadentries", "we"),
    "Sidecar": ("sidecar", "sidecars"),
    "AuthorizationPolicy": ("authorizationpolicy", "authorizationpolicies", "ap"),
    "PeerAuthentication": ("peerauthentication", "peerauthentications", "pa"),
    "ResiliencePolicy": ("resiliencepolicy", "resiliencepolicies", "rp"),
    "MeshConfig": ("meshconfig", "meshconfigs", "mc"),
}
_ALIASES = {alias: kind for kind, names in KINDS.items() for alias in (kind.lower(), *names)}


def canonical_kind(name: str) -> str | None:
    """``vs`` / ``virtualservices`` / ``VirtualService`` -> ``VirtualService``; None if unknown."""
    return _ALIASES.get(name.strip().lower())


Key = tuple[str, str, str]  # (kind, namespace, name)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind        TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    api_version TEXT NOT NULL,
    spec        TEXT NOT NULL,
    labels      TEXT NOT NULL,
    annotations TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
"""


@dataclass(frozen=True)
class Change:
    """What one apply or delete did to one resource (kubectl's words)."""

    kind: str
    namespace: str
    name: str
    api_version: str
    action: str  # created | configured | unchanged | deleted | not-found

    def to_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "apiVersion": self.api_version,
            "action": self.action,
        }


@dataclass(frozen=True)
class StoredResource:
    """A resource as stored, with the revision that last changed it."""

    resource: Resource
    revision: int
    created: float
    updated: float


def _canon_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class Store:
    """Resources persisted in ``<data_dir>/store.db``."""

    def __init__(self, path: str) -> None:
        self.path = path
        existed = os.path.exists(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if not existed:
            os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # nothing applied is ever lost
        self._db.executescript(_SCHEMA)
        self._listeners: list[Callable[[int], None]] = []

    def close(self) -> None:
        self._db.close()

    # -- reading ---------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0])

    def get(
        self, kind: str | None = None, namespace: str | None = None, name: str | None = None
    ) -> list[StoredResource]:
        """Resources of ``kind`` (all kinds if None), optionally narrowed, sorted by key."""
        sql = "SELECT * FROM resources"
        where, params = [], []
        for col, val in (("kind", kind), ("namespace", namespace), ("name", name)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY kind, namespace, name"
        return [self._row(r) for r in self._db.execute(sql, params).fetchall()]

    def snapshot(self) -> tuple[int, list[StoredResource]]:
        """Every resource and the revision they belong to, read in one transaction."""
        self._db.execute("BEGIN")
        try:
            return self.revision, self.get()
        finally:
            self._db.execute("COMMIT")

    @staticmethod
    def _row(row: tuple) -> StoredResource:
        kind, ns, name, api_version, spec, labels, annotations, revision, created, updated = row
        res = Resource(
            api_version=api_version,
            kind=kind,
            name=name,
            namespace=ns,
            spec=json.loads(spec),
            labels=json.loads(labels),
            source="store",
            annotations=json.loads(annotations),
        )
        return StoredResource(res, int(revision), float(created), float(updated))

    # -- writing ---------------------------------------------------------------------------
    def apply(self, resources: Iterable[Resource]) -> tuple[int, list[Change]]:
        """Create or update ``resources`` in one transaction; returns (revision, changes)."""
        resources = list(resources)
        changes: list[Change] = []
        now = time.time()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rev = self.revision
            new_rev = rev + 1
            for r in resources:
                spec, labels = _canon_json(r.spec), _canon_json(dict(r.labels or {}))
                annotations = _canon_json(dict(r.annotations or {}))
                old = db.execute(
                    "SELECT api_version, spec, labels, annotations FROM resources"
                    " WHERE kind=? AND namespace=? AND name=?",
                    (r.kind, r.namespace, r.name),
                ).fetchone()
                if old is None:
                    action = "created"
                    db.execute(
                        "INSERT INTO resources VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (r.kind, r.namespace, r.name, r.api_version, spec, labels, annotations,
                         new_rev, now, now),
                    )
                elif old == (r.api_version, spec, labels, annotations):
                    action = "unchanged"
                else:
                    action = "configured"
                    db.execute(
                        "UPDATE resources SET api_version=?, spec=?, labels=?, annotations=?,"
                        " revision=?, updated=? WHERE kind=? AND namespace=? AND name=?",
                        (r.api_version, spec, labels, annotations, new_rev, now,
                         r.kind, r.namespace, r.name),
                    )
                changes.append(Change(r.kind, r.namespace, r.name, r.api_version, action))
            changed = any(c.action != "unchanged" for c in changes)
            if changed:
                db.execute("UPDATE meta SET value=? WHERE key='revision'", (new_rev,))
                rev = new_rev
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if changed:
            self._notify(rev)
        return rev, changes

    def delete(self, keys: Iterable[Key]) -> tuple[int, list[Change]]:
        """Delete the resources named by ``(kind, namespace, name)`` keys in one transaction."""
        changes: list[Change] = []
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rev = self.revision
            for kind, ns, name in keys:
                row = db.execute(
                    "SELECT api_version FROM resources WHERE kind=? AND namespace=? AND name=?",
                    (kind, ns, name),
                ).fetchone()
                if row is None:
                    changes.append(Change(kind, ns, name, "", "not-found"))
                    continue
                db.execute(
                    "DELETE FROM resources WHERE kind=? AND namespace=? AND name=?",
                    (kind, ns, name),
                )
                changes.append(Change(kind, ns, name, row[0], "deleted"))
            changed = any(c.action == "deleted" for c in changes)
            if changed:
                rev += 1
                db.execute("UPDATE meta SET value=? WHERE key='revision'", (rev,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if changed:
            self._notify(rev)
        return rev, changes

    def writable(self) -> bool:
        """True if a write transaction can be opened now (used by health checks)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("COMMIT")
            return True
        except sqlite3.Error:
            return False

    # -- watching --------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[int], None]) -> None:
        self._listeners.append(fn)

    def _notify(self, revision: int) -> None:
        for fn in list(self._listeners):
            fn(revision)
