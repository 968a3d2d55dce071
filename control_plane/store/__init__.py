"""The control plane's resource store: SQLite (the default, :mod:`.sqlite`) or etcd
(:mod:`.etcd`), behind the interface described in :mod:`.base`.

``Store`` stays the SQLite store so ``from control_plane.store import Store`` keeps working.
"""

from control_plane.store.base import (
    KINDS,
    Change,
    Key,
    ResourceStore,
    StoredResource,
    StoreLimit,
    StoreUnavailable,
    canon_json,
    canonical_kind,
)
from control_plane.store.sqlite import Store

__all__ = [
    "KINDS",
    "Change",
    "Key",
    "ResourceStore",
    "Store",
    "StoreLimit",
    "StoreUnavailable",
    "StoredResource",
    "canon_json",
    "canonical_kind",
]
