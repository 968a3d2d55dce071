"""Which part of the mesh concerns one sidecar: Istio's ``Sidecar`` kind, applied to a snapshot.

A sidecar with no ``Sidecar`` resource sees everything (Istio's default). Otherwise the one that
applies (Istio's order: a ``Sidecar`` in the workload's namespace whose ``workloadSelector``
matches its labels, else the namespace's ``Sidecar`` without selector, else the root namespace's
``Sidecar`` without selector; ties go to the first by name) limits its outbound view to the
services its ``egress[].hosts`` allow, as ``namespace/dnsName``: ``*/`` any namespace, ``./`` the
workload's own, ``~/`` none; dnsName ``*``, ``*.suffix`` or a host, short names completed in that
namespace as everywhere else.

What is kept: services (registry entries, ServiceEntries and the WorkloadEntries they select)
whose host is allowed; the ServiceEntries declaring the workload's own service (its inbound
ports); VirtualServices for an allowed host, and the destinations those route to (Istio has
included a VirtualService's destinations in the sidecar scope since 1.22, so a route never
points at a cluster the sidecar lacks); DestinationRules and ResiliencePolicies for a kept
host; the AuthorizationPolicies and PeerAuthentications that apply to this workload (its
namespace or the root namespace, selector matching); the MeshConfig; the ``Sidecar`` itself.

Sans-I/O and pure: the push hub calls :func:`compute` once per (namespace, service, labels) and
config generation, and shares the answer between every sidecar of that shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.api.hosts import fqdn

ROOT_NAMESPACE = "istio-system"
_INBOUND = ("AuthorizationPolicy", "PeerAuthentication")
_HOST_KINDS = ("DestinationRule", "ResiliencePolicy")


def host_matches(pattern: str, host: str) -> bool:
    """``*.example.com`` covers ``api.example.com``; ``*`` covers everything."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) or host == pattern[2:]
    return pattern == host


def hosts_overlap(a: str, b: str) -> bool:
    """Either name covers the other (a wildcard VirtualService host against an egress host)."""
    return host_matches(a, b) or host_matches(b, a)


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def select_sidecar(sidecars: Iterable[Any], namespace: str, labels: Mapping[str, str],
                   root_namespace: str = ROOT_NAMESPACE) -> Any | None:
    """The ``Sidecar`` resource that applies to a workload, or None (Istio's precedence)."""
    ordered = sorted(sidecars, key=lambda r: r.name)
    for r in ordered:
        sel = (r.spec.get("workloadSelector") or {}).get("labels")
        if r.namespace == namespace and sel and selects(sel, labels):
            return r
    for ns in (namespace, root_namespace):
        for r in ordered:
            if r.namespace == ns and not (r.spec.get("workloadSelector") or {}).get("labels"):
                return r
    return None


@dataclass(frozen=True)
class Egress:
    """The compiled ``egress[].hosts`` of one Sidecar for one workload namespace."""

    rules: tuple[tuple[str, str], ...]  # (namespace or "*", host pattern)

    @classmethod
    def of(cls, sidecar: Any, workload_namespace: str) -> Egress:
        if not sidecar.spec.get("egress"):
            return cls((("*", "*"),))  # no egress listener: Istio's default, everything
        rules = []
        for listener in sidecar.spec.get("egress") or ():
            for h in listener.get("hosts") or ():
                ns, _, host = str(h).partition("/")
                if ns == "~":
                    continue
                ns = workload_namespace if ns == "." else ns
                rules.append((ns, host if host == "*" else fqdn(host, ns if ns != "*" else
                                                                   workload_namespace)))
        return cls(tuple(rules))

    def allows(self, namespace: str, host: str) -> bool:
        return any((ns == "*" or ns == namespace) and hosts_overlap(pat, host)
                   for ns, pat in self.rules)


@dataclass
class Scope:
    """What one class of sidecars receives: indexes into a snapshot's resources and registry."""

    resources: list[int] = field(default_factory=list)
    registry: list[int] = field(default_factory=list)
    sidecar: Any | None = None  # the Sidecar resource in effect, if any

    @property
    def everything(self) -> bool:
        return self.sidecar is None


def _inbound_applies(r: Any, namespace: str, labels: Mapping[str, str],
                     root_namespace: str) -> bool:
    if r.namespace not in (namespace, root_namespace):
        return False
    sel = (r.spec.get("selector") or {}).get("matchLabels") or {}
    return selects(sel, labels)


def compute(resources: list[Any], registry: list[Mapping[str, Any]], namespace: str,
            labels: Mapping[str, str], root_namespace: str = ROOT_NAMESPACE,
            service: str = "") -> Scope:
    """The scope of a workload of ``service`` in ``namespace`` with ``labels``. ``resources``
    are :class:`~control_plane.api.resources.Resource`; ``registry`` the snapshot's entries.

    Egress hosts scope the outbound view only: a ServiceEntry that declares this workload's own
    service (by host, or by a ``workloadSelector`` matching it) is always kept, because the
    inbound side reads its ports and protocols (which HBONE streams to accept as opaque TCP),
    as Istio builds inbound listeners from the services selecting a workload whatever the
    Sidecar's egress says."""
    sidecar = select_sidecar((r for r in resources if r.kind == "Sidecar"), namespace, labels,
                             root_namespace)
    if sidecar is None:
        return Scope(list(range(len(resources))), list(range(len(registry))), None)
    egress = Egress.of(sidecar, namespace)
    wanted: set[str] = set()  # hosts pulled in by a kept VirtualService's destinations
    scope = Scope(sidecar=sidecar)
    kept_vs = []
    for i, r in enumerate(resources):
        if r.kind == "VirtualService":
            hosts = [fqdn(h, r.namespace) for h in r.spec.get("hosts") or ()]
            if any(egress.allows(r.namespace, h) for h in hosts):
                kept_vs.append(i)
                for rule in r.spec.get("http") or ():
                    for d in rule.get("route") or ():
                        wanted.add(fqdn(d["destination"]["host"], r.namespace))
                    if (rule.get("mirror") or {}).get("host"):
                        wanted.add(fqdn(rule["mirror"]["host"], r.namespace))

    def kept(ns: str, host: str) -> bool:
        return egress.allows(ns, host) or any(host_matches(w, host) for w in wanted)

    own = service or labels.get("app") or ""
    own_host = fqdn(own, namespace) if own else ""

    def declares_own(r: Any, se_hosts: list[str]) -> bool:
        sel = (r.spec.get("workloadSelector") or {}).get("labels")
        return (own_host in se_hosts and r.namespace == namespace) or bool(
            sel and r.namespace == namespace and selects(sel, labels))

    hosts: set[str] = set()
    selected_by: list[tuple[str, Mapping[str, str]]] = []
    for i, r in enumerate(resources):
        k = r.kind
        if k == "ServiceEntry":
            se_hosts = [fqdn(h, r.namespace) for h in r.spec.get("hosts") or ()]
            if any(kept(r.namespace, h) for h in se_hosts) or declares_own(r, se_hosts):
                scope.resources.append(i)
                hosts.update(se_hosts)
                sel = (r.spec.get("workloadSelector") or {}).get("labels")
                if sel:
                    selected_by.append((r.namespace, sel))
    for j, e in enumerate(registry):
        host = fqdn(str(e.get("service")), str(e.get("namespace") or "default"))
        if kept(str(e.get("namespace") or "default"), host):
            scope.registry.append(j)
            hosts.add(host)
    for i, r in enumerate(resources):
        k = r.kind
        if k == "WorkloadEntry":
            wl = {**r.labels, **(r.spec.get("labels") or {})}
            app = wl.get("app")
            if any(ns == r.namespace and selects(sel, wl) for ns, sel in selected_by) or (
                app and kept(r.namespace, fqdn(app, r.namespace))
            ):
                scope.resources.append(i)
                if app:
                    hosts.add(fqdn(app, r.namespace))
        elif k in _HOST_KINDS:
            h = fqdn(r.spec["host"], r.namespace)
            if kept(r.namespace, h) or any(hosts_overlap(h, s) for s in hosts):
                scope.resources.append(i)
        elif k in _INBOUND:
            if _inbound_applies(r, namespace, labels, root_namespace):
                scope.resources.append(i)
        elif k == "MeshConfig" or r is sidecar:
            scope.resources.append(i)
    scope.resources.extend(kept_vs)
    scope.resources.sort()
    return scope


def unused_hosts(sidecar: Any, known: Iterable[tuple[str, str]]) -> list[tuple[int, int, str]]:
    """``(egress index, host index, text)`` of each egress host that matches no known
    ``(namespace, host)`` service: a typo there silently cuts a sidecar off a service."""
    known = list(known)
    out = []
    for li, listener in enumerate(sidecar.spec.get("egress") or ()):
        for hi, h in enumerate(listener.get("hosts") or ()):
            ns, _, host = str(h).partition("/")
            if ns == "~" or host == "*" or ns == ".":
                continue  # deliberate: none, or anything in a namespace
            pat = fqdn(host, ns if ns != "*" else sidecar.namespace)
            if not any((ns == "*" or ns == kns) and hosts_overlap(pat, kh) for kns, kh in known):
                out.append((li, hi, str(h)))
    return out
