"""The config side of a canary: which subsets are which versions, and the VirtualService whose
weights the controller moves.

Pure functions over resources: the driver reads them from the store and applies what these
return as a normal versioned change, so each step shows in ``proxy-status`` like any apply.
"""

from __future__ import annotations

import copy
import dataclasses

from control_plane.api.canary import Plan
from control_plane.api.hosts import fqdn
from control_plane.api.resources import Resource


def subset_versions(plan: Plan, namespace: str, rules: list[Resource]) -> tuple[str, str]:
    """The ``version`` label of the stable and canary subsets (what the sidecars' metrics
    carry). Raises ValueError with a sentence saying what is missing."""
    host = fqdn(plan.host, namespace)
    for dr in rules:
        if fqdn(str(dr.spec.get("host", "")), dr.namespace) != host:
            continue
        subsets = {str(s.get("name")): s for s in dr.spec.get("subsets") or ()}
        out = []
        for role, name in (("stable", plan.stable), ("canary", plan.canary)):
            sub = subsets.get(name)
            if sub is None:
                raise ValueError(f"DestinationRule {dr.namespace}/{dr.name} has no subset "
                                 f"{name!r} (the {role}); subsets: "
                                 f"{', '.join(sorted(subsets)) or 'none'}")
            version = (sub.get("labels") or {}).get("version")
            if not version:
                raise ValueError(f"subset {name!r} of DestinationRule {dr.namespace}/{dr.name} "
                                 "has no version label, so its traffic cannot be measured")
            out.append(str(version))
        return out[0], out[1]
    raise ValueError(f"no DestinationRule for {host} defines the subsets {plan.stable!r} and "
                     f"{plan.canary!r}")


def find_virtual_service(plan: Plan, namespace: str,
                         services: list[Resource]) -> Resource | None:
    """``virtualService`` by name, else the one VirtualService whose hosts include the host."""
    if plan.virtual_service:
        for vs in services:
            if vs.namespace == namespace and vs.name == plan.virtual_service:
                return vs
        return None
    host = fqdn(plan.host, namespace)
    for vs in services:
        if any(fqdn(str(h), vs.namespace) == host for h in vs.spec.get("hosts") or ()):
            return vs
    return None


def _split(plan: Plan, weight: int, template: dict | None) -> list[dict]:
    base = copy.deepcopy((template or {}).get("destination") or {"host": plan.host})
    base.pop("subset", None)
    out = []
    for subset, w in ((plan.stable, 100 - weight), (plan.canary, weight)):
        d = copy.deepcopy(template) if template else {}
        d["destination"] = {**base, "subset": subset}
        d["weight"] = w
        out.append(d)
    return out


def with_weights(plan: Plan, namespace: str, vs: Resource | None, weight: int,
                 name: str) -> Resource:
    """``vs`` (or a new VirtualService named ``name``) with its default routes to the host (those
    without a ``match``) split ``100 - weight`` to stable and ``weight`` to canary. Matched
    routes are deliberate (a header that pins testers to a version) and are left as they are,
    as are destinations of other hosts; a VirtualService without a default route to the host
    gets one appended."""
    host = fqdn(plan.host, namespace)
    if vs is None:
        spec: dict = {"hosts": [plan.host], "http": [{"route": _split(plan, weight, None)}]}
        return Resource(api_version="networking.istio.io/v1", kind="VirtualService", name=name,
                        namespace=namespace, spec=spec, labels={}, source="canary")
    spec = copy.deepcopy(vs.spec)
    touched = False
    for http in spec.get("http") or ():
        if http.get("match"):
            continue
        routes = http.get("route") or []
        ours = [d for d in routes
                if fqdn(str((d.get("destination") or {}).get("host", "")), vs.namespace) == host]
        if not ours:
            continue
        others = [d for d in routes if d not in ours]
        http["route"] = others + _split(plan, weight, ours[0])
        touched = True
    if not touched:
        # after every matched route: a route is chosen by the first match
        spec.setdefault("http", []).append({"route": _split(plan, weight, None)})
    return dataclasses.replace(vs, spec=spec, source="canary")
