"""What every resource store offers the control plane (SQLite or etcd), and the types it speaks.

The interface (method names are stable; push.py, snapshot.py and server.py use only these):

Reads are synchronous and never block on the network: the SQLite store reads its file, the etcd
store reads its local mirror, which a watch keeps current. A snapshot is therefore always
internally consistent (one revision).

* ``revision`` -> int: the mesh revision; with etcd, the etcd revision of the last change to a
  resource (monotonic, survives restarts, equal on every replica once they have caught up).
* ``get(kind=None, namespace=None, name=None)`` -> list[StoredResource], sorted by key.
* ``snapshot()`` -> (revision, list[StoredResource]) read at one revision.
* ``add_listener(fn)``: ``fn(revision)`` after each change, on the event loop's thread. With
  etcd that includes changes made through other replicas (it is how a replica learns of them).

Writes are coroutines (the etcd store waits for its quorum; the SQLite store commits at once):

* ``await apply_async(resources)`` -> (revision, list[Change]); all or nothing.
* ``await delete_async(keys)`` -> (revision, list[Change]); all or nothing.
* ``await writable_async()`` -> bool (health: can a write transaction open now?).

Lifecycle: ``await start()`` (the etcd store loads its mirror and starts its watch; SQLite does
nothing), ``close()``. Errors of the backend surface as :class:`StoreUnavailable` (the HTTP API
answers 503 with the message); a change too large for one backend transaction as
:class:`StoreLimit` (413), before anything is written.

The SQLite store also keeps its historic synchronous ``apply``/``delete``/``writable``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

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
    "InboundRateLimit": ("inboundratelimit", "inboundratelimits", "irl"),
    "MeshConfig": ("meshconfig", "meshconfigs", "mc"),
    "Canary": ("canary", "canaries", "can"),
}
_ALIASES = {alias: kind for kind, names in KINDS.items() for alias in (kind.lower(), *names)}


def canonical_kind(name: str) -> str | None:
    """``vs`` / ``virtualservices`` / ``VirtualService`` -> ``VirtualService``; None if unknown."""
    return _ALIASES.get(name.strip().lower())


Key = tuple[str, str, str]  # (kind, namespace, name)


class StoreUnavailable(Exception):
    """The backend cannot be reached or refused the operation (etcd down, no quorum, disk)."""


class StoreLimit(Exception):
    """The change is larger than the backend takes in one transaction (the API answers 413)."""


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


def canon_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))




class ResourceStore(Protocol):
    """The interface described in the module docstring."""

    @property
    def revision(self) -> int: ...

    def get(
        self, kind: str | None = None, namespace: str | None = None, name: str | None = None
    ) -> list[StoredResource]: ...

    def snapshot(self) -> tuple[int, list[StoredResource]]: ...

    def add_listener(self, fn: Callable[[int], None]) -> None: ...

    async def apply_async(self, resources: Iterable[Resource]) -> tuple[int, list[Change]]: ...

    async def delete_async(self, keys: Iterable[Key]) -> tuple[int, list[Change]]: ...

    async def writable_async(self) -> bool: ...

    async def start(self) -> None: ...

    def close(self) -> None: ...
