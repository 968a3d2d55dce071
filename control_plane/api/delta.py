"""Per-resource deltas of a config snapshot (Envoy's delta xDS, reduced), shared by both ends.

A snapshot is a set of named items, each with a content hash:

* ``resource/<kind>/<namespace>/<name>`` -> the resource's dict (``Resource.to_dict()``);
* ``registry/<namespace>/<service>/<address>`` -> one registry entry;
* ``mesh`` -> the mesh settings.

Its version is ``"<revision>-<hash>"`` where the hash covers every ``name=item hash`` pair
(:func:`content_hash`), so a version names its content and either end can check it: the control
plane sends a delta (items added or changed, names removed) from a base version, the sidecar
applies it to its last good snapshot (:class:`Bundle`), checks that the result has the announced
version, and rebuilds the whole snapshot, which it validates and applies as a full one.

Pure functions on plain dicts: no I/O, nothing from the control plane's server side.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

MESH = "mesh"


def item_hash(body: Any) -> str:
    return hash_text(canonical(body))


def resource_name(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"resource/{doc.get('kind')}/{meta.get('namespace') or 'default'}/{meta.get('name')}"


def registry_name(entry: Mapping[str, Any]) -> str:
    return f"registry/{entry.get('namespace')}/{entry.get('service')}/{entry.get('address')}"


def items_of(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """A full snapshot as named items."""
    items: dict[str, Any] = {resource_name(d): d for d in snapshot.get("resources") or ()}
    items.update((registry_name(e), e) for e in snapshot.get("registry") or ())
    items[MESH] = snapshot.get("mesh") or {}
    return items


_MOD = 1 << 64


def line_digest(name: str, h: str) -> int:
    """One item's share of :func:`content_hash`."""
    return int.from_bytes(hashlib.sha256(f"{name}={h}".encode()).digest()[:8], "big")


def content_hash(hashes: Mapping[str, str]) -> str:
    """The hash part of a version: the sum, modulo 2**64, of a digest of each ``name=hash``.

    A sum rather than a hash of the sorted list so that either end can update it in O(changed)
    when a delta arrives (a thousand registry entries need not be re-sorted and re-hashed per
    push). It guards against mistakes (a lost or reordered message, a wrong base), not against
    the control plane, which the stream's mTLS already authenticates."""
    return f"{sum(line_digest(n, h) for n, h in hashes.items()) % _MOD:016x}"


def content_of(total: int) -> str:
    """:func:`content_hash` from the sum of :func:`line_digest` of every item."""
    return f"{total % _MOD:016x}"


def canonical(body: Any) -> str:
    """The canonical JSON of an item: what :func:`item_hash` hashes, and what the control plane
    puts on the wire (encoded once per item, not once per sidecar)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)


def hash_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hash_part(version: str) -> str:
    return version.rpartition("-")[2]


def revision_part(version: str) -> int:
    head = version.rpartition("-")[0]
    return int(head) if head.isdigit() else 0


def _sort_key(name: str) -> str:
    """Orders names as their ``/``-separated parts would order as tuples (NUL sorts first)."""
    return name.replace("/", "\0")


def assemble(version: str, items: Mapping[str, Any]) -> dict[str, Any]:
    """The full snapshot (the wire format of ``control_plane.snapshot``) from named items:
    resources sorted by (kind, namespace, name), registry by (namespace, service, address)."""
    res = sorted((n for n in items if n.startswith("resource/")), key=_sort_key)
    reg = sorted((n for n in items if n.startswith("registry/")), key=_sort_key)
    return {
        "version": version,
        "revision": revision_part(version),
        "resources": [items[n] for n in res],
        "registry": [items[n] for n in reg],
        "mesh": items.get(MESH) or {},
    }


def diff(base: Mapping[str, str], target: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(names added or changed, names removed) to go from hashes ``base`` to ``target``."""
    changed = [n for n, h in target.items() if base.get(n) != h]
    removed = [n for n in base if n not in target]
    return changed, removed


class DeltaMismatch(ValueError):
    """A delta that does not apply to what this end has: ask for the whole snapshot."""


def _picker(names: list[str]) -> Callable[[Mapping[str, Any]], list[Any]]:
    """``lambda d: [d[n] for n in names]`` at C speed (itemgetter): a sidecar of a large mesh
    rebuilds its snapshot's thousand-entry registry list on every delta."""
    if not names:
        return lambda d: []
    if len(names) == 1:
        only = names[0]
        return lambda d: [d[only]]
    get = itemgetter(*names)
    return lambda d: list(get(d))


class Bundle:
    """A snapshot held as named items, ready for the next delta: item hashes, their running
    content sum, and the item names in snapshot order (re-sorted only when names come or go)."""

    __slots__ = ("_pick", "_reg", "_res", "_sum", "hashes", "items")

    def __init__(self, items: dict[str, Any], hashes: dict[str, str] | None = None,
                 total: int | None = None, res: list[str] | None = None,
                 reg: list[str] | None = None,
                 pick: tuple[Callable[..., list[Any]], Callable[..., list[Any]]] | None = None,
                 ) -> None:
        self.items = items
        self.hashes = hashes if hashes is not None else {n: item_hash(b) for n, b in items.items()}
        self._sum = (total if total is not None
                     else sum(line_digest(n, h) for n, h in self.hashes.items()) % _MOD)
        self._res = res if res is not None else sorted(
            (n for n in items if n.startswith("resource/")), key=_sort_key)
        self._reg = reg if reg is not None else sorted(
            (n for n in items if n.startswith("registry/")), key=_sort_key)
        self._pick = pick  # built on first use, shared with the next bundle while names stay

    @classmethod
    def of(cls, snapshot: Mapping[str, Any]) -> Bundle:
        return cls(items_of(snapshot))

    @property
    def content(self) -> str:
        return f"{self._sum:016x}"

    def apply(self, msg: Mapping[str, Any]) -> Bundle:
        """A new bundle: this one with the delta message ``msg`` applied. Raises DeltaMismatch
        when the result is not the announced version (a lost or reordered message, a wrong
        base); this bundle is left as it was."""
        changed = msg.get("resources") or {}
        removed = msg.get("removed") or []
        if not isinstance(changed, dict) or not isinstance(removed, list):
            raise DeltaMismatch("delta resources must be an object and removed a list")
        items, hashes, total = dict(self.items), dict(self.hashes), self._sum
        names_moved = False
        for name in removed:
            old = hashes.pop(name, None)
            if old is not None:
                total -= line_digest(name, old)
                del items[name]
                names_moved = True
        for name, body in changed.items():
            h = item_hash(body)
            old = hashes.get(name)
            if old is not None:
                total -= line_digest(name, old)
            else:
                names_moved = True
            items[name], hashes[name] = body, h
            total += line_digest(name, h)
        total %= _MOD
        version = str(msg.get("version", ""))
        if f"{total:016x}" != hash_part(version):
            raise DeltaMismatch(
                f"the delta from {msg.get('base')} does not give {version}: resync needed"
            )
        if names_moved:
            return Bundle(items, hashes, total)
        return Bundle(items, hashes, total, self._res, self._reg, self._pick)

    def snapshot(self, version: str) -> dict[str, Any]:
        """The whole snapshot, as :func:`assemble` gives it."""
        items = self.items
        if self._pick is None:
            self._pick = (_picker(self._res), _picker(self._reg))
        res, reg = self._pick
        return {
            "version": version,
            "revision": revision_part(version),
            "resources": res(items),
            "registry": reg(items),
            "mesh": items.get(MESH) or {},
        }


def apply(items: Mapping[str, Any], hashes: Mapping[str, str], msg: Mapping[str, Any]
          ) -> tuple[dict[str, Any], dict[str, str]]:
    """``items``/``hashes`` with the delta message ``msg`` applied (see :meth:`Bundle.apply`)."""
    b = Bundle(dict(items), dict(hashes)).apply(msg)
    return b.items, b.hashes
