"""Builders for authz tests: resources go through the same validation as a user's."""

from __future__ import annotations

from typing import Any

from control_plane.api.resources import Resource, from_dict
from proxy.authz.engine import RequestAttrs, merged_header_getter

ORDERS = "cluster.local/ns/default/sa/orders"
WORKLOAD_LABELS = {"app": "inventory", "version": "v1"}


def ap(name: str, spec: dict, ns: str = "default", annotations: dict | None = None) -> Resource:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    return from_dict(
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": meta, "spec": spec}
    )  # fmt: skip


def pa(name: str, spec: dict, ns: str = "default") -> Resource:
    return from_dict(
        {"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
         "metadata": {"name": name, "namespace": ns}, "spec": spec}
    )  # fmt: skip


def req(
    *,
    principal: str | None = ORDERS,
    mtls: bool | None = None,
    ip: str = "10.0.0.7",
    method: str = "GET",
    host: str = "inventory.default.svc.cluster.local",
    port: int = 8080,
    path: str = "/items",
    headers: list[tuple[str, str]] | None = None,
) -> RequestAttrs:
    return RequestAttrs(
        source_principal=principal,
        source_ip=ip,
        method=method,
        host=host,
        port=port,
        path=path,
        headers=merged_header_getter(headers or []),
        mtls=bool(principal) if mtls is None else mtls,
    )
