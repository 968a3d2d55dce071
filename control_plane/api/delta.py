"""Per-resource deltas of a config snapshot (Envoy's delta xDS, reduced), shared by both ends.

A snapshot is a set of named items, each with a content hash:

* ``resource/<kind>/<namespace>/<name>`` -> the resource's dict (``Resource.to_dict()``);
* ``registry/<namespace>/<service>/<address>`` -> one registry entry;
* ``mesh`` -> the mesh settings.

Its version is ``"<revision>-<hash>"`` where the hash covers the sorted ``name=item hash`` lines,
so a version names its content exactly and either end can check it: the control plane sends a
delta (items added or changed, names removed) from a base version, the sidecar applies it to its
last good snapshot, rebuilds the whole snapshot (:func:`assemble`) and checks that the result has
the announced version before it validates and applies it.

Pure functions on plain dicts: no I/O, nothing from the control plane's server side.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

MESH = "mesh"


def item_hash(body: Any) -> str:
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


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


def content_hash(hashes: Mapping[str, str]) -> str:
    """The hash part of a version: over every item's name and hash."""
    lines = "".join(f"{name}={hashes[name]}\n" for name in sorted(hashes))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


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


def apply(items: Mapping[str, Any], hashes: Mapping[str, str], msg: Mapping[str, Any]
          ) -> tuple[dict[str, Any], dict[str, str]]:
    """``items``/``hashes`` with the delta message ``msg`` applied; raises DeltaMismatch when
    the result is not the announced version (a lost or reordered message, a wrong base)."""
    new_items = dict(items)
    new_hashes = dict(hashes)
    for name in msg.get("removed") or ():
        new_items.pop(name, None)
        new_hashes.pop(name, None)
    changed = msg.get("resources") or {}
    if not isinstance(changed, dict):
        raise DeltaMismatch("delta resources must be an object")
    for name, body in changed.items():
        new_items[name] = body
        new_hashes[name] = item_hash(body)
    version = str(msg.get("version", ""))
    if content_hash(new_hashes) != hash_part(version):
        raise DeltaMismatch(
            f"the delta from {msg.get('base')} does not give {version}: resync needed"
        )
    return new_items, new_hashes
