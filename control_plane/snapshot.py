"""Builds the snapshot pushed to sidecars: every resource of one store revision plus the registry.

A snapshot is internally consistent (go-control-plane's rule): its resources all come from one
store revision, read in one transaction, and its registry from one moment of the loop. Its
version is ``"<revision>-<content hash>"``; the hash covers everything the sidecar receives, in a
canonical JSON form, so two builds with the same content have the same version and an unchanged
snapshot is never pushed again. Registry changes (a sidecar joining or leaving) change the hash
but not the revision.

Wire format (JSON)::

    {"version": "12-3f9a0c1d2e4b",
     "revision": 12,
     "resources": [Resource.to_dict(), ...],          # sorted by (kind, namespace, name)
     "registry": [{"service", "namespace", "version", "labels",
                   "address": "host:port",             # the sidecar's inbound mTLS port
                   "spiffe_id"}, ...],
     "mesh": {MeshConfig spec, trustDomain = the CA's}}

The push hub (:mod:`control_plane.push`) sends each sidecar the part of this snapshot its
``Sidecar`` resource scopes it to (:mod:`control_plane.api.scope`), as per-resource deltas
(:mod:`control_plane.api.delta`); the version of a scoped snapshot is computed the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from control_plane.api import delta
from control_plane.registry import Registration
from control_plane.store import StoredResource

DEFAULT_TRUST_DOMAIN = "cluster.local"


def spiffe_id(trust_domain: str, namespace: str, service: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service}"


def mesh_config(resources: Iterable[StoredResource]) -> dict:
    """The spec of the (single) MeshConfig, with the trust domain always present."""
    mesh: dict = {}
    for sr in resources:
        if sr.resource.kind == "MeshConfig":
            mesh = dict(sr.resource.spec or {})
            break
    mesh.setdefault("trustDomain", DEFAULT_TRUST_DOMAIN)
    return mesh


def content_hash(body: dict) -> str:
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def mesh_settings(
    resources: list[StoredResource], trust_domain: str | None = None,
    extra_mesh: dict | None = None,
) -> dict:
    """``mesh``: the MeshConfig's spec, the CA's trust domain (what certificates actually carry,
    so it wins over the MeshConfig's) and ``extra_mesh`` (control-plane state such as the trust
    bundle's fingerprints during a root rotation, pushed like any config)."""
    mesh = mesh_config(resources)
    if trust_domain:
        mesh["trustDomain"] = trust_domain
    if extra_mesh:
        mesh.update(extra_mesh)
    return mesh


def registry_entries(registrations: Iterable[Registration], trust_domain: str) -> list[dict]:
    """The registry as sidecars see it, sorted by (namespace, service, address); a sidecar with
    no inbound listener is not an endpoint."""
    return [
        {
            "service": r.service,
            "namespace": r.namespace,
            "version": r.version,
            "labels": dict(r.labels),
            "address": r.address,
            "spiffe_id": spiffe_id(trust_domain, r.namespace, r.service),
            **({"hbone_port": r.hbone_port} if r.hbone_port else {}),
        }
        for r in sorted(registrations, key=lambda r: (r.namespace, r.service, r.address))
        if r.address
    ]


def build(
    revision: int,
    resources: list[StoredResource],
    registrations: Iterable[Registration],
    trust_domain: str | None = None,
    extra_mesh: dict | None = None,
) -> dict:
    """The whole snapshot for ``revision`` (resources read with it) and the current
    registrations. Its version's hash is :func:`control_plane.api.delta.content_hash` of its items,
    the same a sidecar computes to check a delta."""
    mesh = mesh_settings(resources, trust_domain, extra_mesh)
    body = {
        "revision": revision,
        "resources": [sr.resource.to_dict() for sr in resources],
        "registry": registry_entries(registrations, str(mesh["trustDomain"])),
        "mesh": mesh,
    }
    hashes = {name: delta.item_hash(item) for name, item in delta.items_of(body).items()}
    return {"version": f"{revision}-{delta.content_hash(hashes)}", **body}
