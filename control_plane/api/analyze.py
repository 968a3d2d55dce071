"""Cross-resource checks on a set of valid resources, like ``istioctl analyze``.

Validation (``resources.py``) looks at one document at a time; this looks at how documents refer
to each other: routes to subsets no DestinationRule defines, routes to hosts nothing declares,
retry policies that cannot fit in their route timeout, duplicates, selectors that select nothing,
PeerAuthentications that contradict each other. Host names are compared in FQDN form, each
resolved in its own resource's namespace (``reviews`` in ``default`` is
``reviews.default.svc.cluster.local``), as Istio does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from control_plane.api.hosts import fqdn
from control_plane.api.resources import ConfigError, Resource, parse_duration

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning"
    source: str  # "configs/x.yaml#1"
    kind: str
    name: str
    field: str
    message: str
    namespace: str = "default"

    def __str__(self) -> str:
        where = f"{self.source} " if self.source else ""
        what = f"{self.kind} {self.namespace}/{self.name}" if self.kind else ""
        if self.kind and not self.name:
            what = self.kind
        head = (
            f"{self.level.capitalize()} [{self.field}] "
            if self.field
            else f"{self.level.capitalize()} "
        )
        sep = ": " if (where or what) else ""
        return f"{head}{where}{what}".rstrip() + f"{sep}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config_error(cls, e: ConfigError) -> Finding:
        source = f"{e.source}#{e.document}" if e.document else e.source
        return cls(e.level, source, e.kind, e.name, e.field, e.reason, e.namespace)


def _finding(level: str, r: Resource, field: str, message: str) -> Finding:
    return Finding(level, r.source, r.kind, r.name, field, message, r.namespace)


def _host_matches(pattern: str, host: str) -> bool:
    """``*.example.com`` covers ``api.example.com``; ``*`` covers everything."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) or host == pattern[2:]
    return pattern == host


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class _Index:
    """What the resources declare, by FQDN and namespace."""

    def __init__(
        self,
        resources: list[Resource],
        services: Iterable[str],
        workloads: Iterable[tuple[str, Mapping[str, str]]],
    ):
        self.by_kind: dict[str, list[Resource]] = defaultdict(list)
        for r in resources:
            self.by_kind[r.kind].append(r)
        self.services: set[str] = {fqdn(s) for s in services}
        self.ports: dict[str, set[int]] = defaultdict(set)  # ServiceEntry host -> port numbers
        # (namespace, labels, service fqdn or "") of every endpoint the config declares
        self.workloads: list[tuple[str, dict, str]] = [(ns, dict(lb), "") for ns, lb in workloads]
        for se in self.by_kind["ServiceEntry"]:
            hosts = [fqdn(h, se.namespace) for h in se.spec.get("hosts") or []]
            self.services.update(hosts)
            for h in hosts:
                self.ports[h].update(p["number"] for p in se.spec.get("ports") or [])
            for ep in se.spec.get("endpoints") or []:
                for h in hosts:
                    self.workloads.append((se.namespace, dict(ep.get("labels") or {}), h))
        for we in self.by_kind["WorkloadEntry"]:
            labels = {**we.labels, **(we.spec.get("labels") or {})}
            app = labels.get("app")
            svc = fqdn(app, we.namespace) if app else ""
            if svc:
                self.services.add(svc)
            self.workloads.append((we.namespace, labels, svc))
        self.drs: dict[str, list[Resource]] = defaultdict(list)
        for dr in self.by_kind["DestinationRule"]:
            self.drs[fqdn(dr.spec["host"], dr.namespace)].append(dr)

    def rules_for(self, host: str) -> list[Resource]:
        exact = self.drs.get(host)
        if exact:
            return exact
        return [dr for pat, drs in self.drs.items() if _host_matches(pat, host) for dr in drs]

    def known(self, host: str) -> bool:
        return any(_host_matches(s, host) for s in self.services)

    def endpoints_of(self, host: str) -> list[dict]:
        out = []
        for _ns, labels, svc in self.workloads:
            if svc == host:
                out.append(labels)
        for se in self.by_kind["ServiceEntry"]:
            sel = (se.spec.get("workloadSelector") or {}).get("labels")
            if sel and host in {fqdn(h, se.namespace) for h in se.spec.get("hosts") or []}:
                out += [
                    lb for ns, lb, _ in self.workloads if ns == se.namespace and _selects(sel, lb)
                ]
        return out


def analyze(
    resources: list[Resource],
    *,
    services: Iterable[str] = (),
    workloads: Iterable[tuple[str, Mapping[str, str]]] = (),
) -> list[Finding]:
    """Findings about ``resources`` taken together, in the order of the resources they are about.

    ``services`` (host names) and ``workloads`` ((namespace, labels) pairs) add what a registry
    knows beyond the resources themselves; offline analysis passes neither.
    """
    idx = _Index(list(resources), services, list(workloads))
    findings: list[Finding] = []
    findings += _duplicates(resources)
    for vs in idx.by_kind["VirtualService"]:
        findings += _virtual_service(vs, idx)
    findings += _overlapping_hosts(idx)
    for dr in idx.by_kind["DestinationRule"]:
        findings += _destination_rule(dr, idx)
    for rp in idx.by_kind["ResiliencePolicy"]:
        findings += _resilience(rp, idx)
    for ap in idx.by_kind["AuthorizationPolicy"]:
        findings += _selector_matches(ap, idx)
    findings += _peer_authentications(idx)
    findings += _sidecars(idx)
    for canary in idx.by_kind["Canary"]:
        findings += _canary(canary, idx)
    meshes = idx.by_kind["MeshConfig"]
    for extra in meshes[1:]:
        findings.append(
            _finding(
                ERROR,
                extra,
                "metadata.name",
                f"only one MeshConfig is allowed; {meshes[0].ref} "
                f"({meshes[0].source or 'first'}) is already defined",
            )
        )
    position: dict[str, int] = {}
    for i, r in enumerate(resources):
        position.setdefault(r.source, i)
    order = {id(f): n for n, f in enumerate(findings)}
    return sorted(findings, key=lambda f: (position.get(f.source, len(position)), order[id(f)]))


def _duplicates(resources: Iterable[Resource]) -> list[Finding]:
    seen: dict[tuple[str, str, str], Resource] = {}
    out = []
    for r in resources:
        first = seen.get(r.key)
        if first is not None:
            where = f" in {first.source}" if first.source else ""
            out.append(
                _finding(
                    ERROR,
                    r,
                    "metadata.name",
                    f"duplicate {r.kind} {r.namespace}/{r.name}: already defined{where}",
                )
            )
        else:
            seen[r.key] = r
    return out


def _destinations(rule: dict, base: str) -> Iterable[tuple[str, dict]]:
    for j, d in enumerate(rule.get("route") or []):
        yield f"{base}.route[{j}].destination", d.get("destination") or {}
    if rule.get("mirror"):
        yield f"{base}.mirror", rule["mirror"]
    for j, m in enumerate(rule.get("mirrors") or []):
        yield f"{base}.mirrors[{j}].destination", m.get("destination") or {}


def _is_catch_all(rule: dict) -> bool:
    """Istio's ``IsCatchAllRoute``: no match, or a match on nothing but ``prefix: /`` or
    ``regex: .*`` (Istio emits no route after one)."""
    matches = rule.get("match") or []
    if not matches:
        return True
    for m in matches:
        rest = {k for k in m if k not in ("name", "uri")}
        uri = m.get("uri") or {}
        if not rest and (not uri or uri.get("prefix") == "/" or uri.get("regex") in (".*", "/.*")):
            return True
    return False


def _virtual_service(vs: Resource, idx: _Index) -> list[Finding]:
    out: list[Finding] = []
    gateways = vs.spec.get("gateways")
    if gateways and "mesh" not in gateways:
        out.append(
            _finding(
                WARNING,
                vs,
                "spec.gateways",
                'does not include "mesh", so sidecars ignore this VirtualService',
            )
        )
    catch_all = -1
    for i, rule in enumerate(vs.spec.get("http") or []):
        base = f"spec.http[{i}]"
        if catch_all >= 0:
            out.append(
                _finding(
                    WARNING,
                    vs,
                    base,
                    f"unreachable: spec.http[{catch_all}] before it matches every request "
                    "(the first matching rule wins)",
                )
            )
        elif _is_catch_all(rule):
            catch_all = i
        for path, dest in _destinations(rule, base):
            out += _destination(vs, idx, path, dest)
        route = rule.get("route") or []
        if len(route) > 1 and sum(d.get("weight") or 0 for d in route) <= 0:
            out.append(
                _finding(
                    ERROR,
                    vs,
                    f"{base}.route",
                    "destination weights sum to 0: no destination gets traffic",
                )
            )
        out += _retry_vs_timeout(vs, rule, base)
    return out


def _destination(vs: Resource, idx: _Index, path: str, dest: dict) -> list[Finding]:
    out: list[Finding] = []
    host = fqdn(dest.get("host", ""), vs.namespace)
    subset = dest.get("subset")
    if subset:
        drs = idx.rules_for(host)
        defined = {s.get("name") for dr in drs for s in dr.spec.get("subsets") or []}
        if subset not in defined:
            out.append(
                _finding(
                    ERROR,
                    vs,
                    f"{path}.subset",
                    f'subset "{subset}" not defined in any DestinationRule for {host}',
                )
            )
    if not idx.known(host):
        out.append(
            _finding(
                WARNING,
                vs,
                f"{path}.host",
                f"host {host} is not declared by any ServiceEntry or "
                "WorkloadEntry, nor known to the registry",
            )
        )
    port = (dest.get("port") or {}).get("number")
    declared = idx.ports.get(host)
    if port and declared and port not in declared:
        shown = ", ".join(str(p) for p in sorted(declared))
        out.append(
            _finding(
                WARNING,
                vs,
                f"{path}.port.number",
                f"port {port} is not a port of {host} (its ServiceEntry declares {shown})",
            )
        )
    return out


def _retry_vs_timeout(vs: Resource, rule: dict, base: str) -> list[Finding]:
    retries = rule.get("retries") or {}
    if (retries.get("attempts") or 0) > 0 and not retries.get("perTryTimeout"):
        if not rule.get("timeout") or parse_duration(rule["timeout"]) == 0:
            return [
                _finding(
                    WARNING,
                    vs,
                    f"{base}.retries",
                    "retries without perTryTimeout on a route without timeout: a hung "
                    "upstream is neither retried nor timed out",
                )
            ]
    if "timeout" not in rule or "perTryTimeout" not in retries:
        return []
    timeout = parse_duration(rule["timeout"])
    per_try = parse_duration(retries["perTryTimeout"])
    attempts = retries.get("attempts", 0)
    if timeout <= 0 or attempts <= 0:
        return []
    if per_try >= timeout:
        return [
            _finding(
                WARNING,
                vs,
                f"{base}.retries.perTryTimeout",
                f"perTryTimeout {retries['perTryTimeout']} is not shorter than the route "
                f"timeout {rule['timeout']}, so it is ignored and retries never happen "
                "after a slow attempt",
            )
        ]
    tries = attempts + 1  # the first try is bounded by perTryTimeout too
    if tries * per_try > timeout:
        return [
            _finding(
                WARNING,
                vs,
                f"{base}.retries",
                f"{tries} tries x perTryTimeout {retries['perTryTimeout']} = "
                f"{tries * per_try:g}s exceeds the route timeout {rule['timeout']}; "
                "the last attempts will be cut short by the timeout",
            )
        ]
    return []


def _overlapping_hosts(idx: _Index) -> list[Finding]:
    out: list[Finding] = []
    owners: dict[str, Resource] = {}
    for vs in idx.by_kind["VirtualService"]:
        gateways = vs.spec.get("gateways")
        if gateways and "mesh" not in gateways:
            continue
        for i, h in enumerate(vs.spec.get("hosts") or []):
            host = fqdn(h, vs.namespace)
            first = owners.setdefault(host, vs)
            if first is not vs and first.key != vs.key:
                out.append(
                    _finding(
                        WARNING,
                        vs,
                        f"spec.hosts[{i}]",
                        f"host {host} is also routed by {first.ref}; only the first "
                        "VirtualService for a host takes effect",
                    )
                )
    for host, drs in idx.drs.items():
        out.extend(
            _finding(
                WARNING,
                dr,
                "spec.host",
                f"host {host} already has {drs[0].ref}; only the first "
                "DestinationRule for a host takes effect",
            )
            for dr in drs[1:]
            if dr.key != drs[0].key
        )
    return out


def _destination_rule(dr: Resource, idx: _Index) -> list[Finding]:
    out: list[Finding] = []
    host = fqdn(dr.spec["host"], dr.namespace)
    endpoints = idx.endpoints_of(host)
    if endpoints:
        for i, s in enumerate(dr.spec.get("subsets") or []):
            labels = s.get("labels") or {}
            if not any(_selects(labels, ep) for ep in endpoints):
                out.append(
                    _finding(
                        WARNING,
                        dr,
                        f"spec.subsets[{i}].labels",
                        f'subset "{s.get("name")}" selects none of the '
                        f"{len(endpoints)} endpoint(s) of {host}; requests routed "
                        "to it get 503 no healthy upstream",
                    )
                )
    tls = (dr.spec.get("trafficPolicy") or {}).get("tls") or {}
    if tls.get("mode") == "DISABLE":
        ns = host.split(".")[1] if host.endswith(".svc.cluster.local") else None
        out.extend(
            _finding(
                WARNING,
                dr,
                "spec.trafficPolicy.tls.mode",
                f"plaintext (DISABLE) to {host}, but {pa.ref} requires "
                "STRICT mTLS in its namespace: connections will be refused",
            )
            for pa in idx.by_kind["PeerAuthentication"]
            if pa.namespace == ns and not pa.spec.get("selector") and _mode(pa) == "STRICT"
        )
    return out


def _resilience(rp: Resource, idx: _Index) -> list[Finding]:
    out: list[Finding] = []
    ratio = (rp.spec.get("retryBudget") or {}).get("retryRatio")
    if isinstance(ratio, (int, float)) and ratio > 1:
        out.append(
            _finding(
                WARNING,
                rp,
                "spec.retryBudget.retryRatio",
                f"retryRatio {ratio:g} allows more retries than requests; a failing "
                f"upstream sees up to {1 + ratio:g}x its normal load",
            )
        )
    host = fqdn(rp.spec["host"], rp.namespace)
    if not idx.known(host):
        out.append(
            _finding(
                WARNING,
                rp,
                "spec.host",
                f"host {host} is not declared by any ServiceEntry or WorkloadEntry, "
                "nor known to the registry",
            )
        )
    for other in idx.by_kind["ResiliencePolicy"]:
        if other is rp:
            break
        if fqdn(other.spec["host"], other.namespace) == host and other.key != rp.key:
            out.append(
                _finding(
                    WARNING,
                    rp,
                    "spec.host",
                    f"host {host} already has {other.ref}; only one applies",
                )
            )
            break
    return out


def _selector_matches(r: Resource, idx: _Index) -> list[Finding]:
    sel = (r.spec.get("selector") or {}).get("matchLabels")
    if not sel:
        return []
    if any(ns == r.namespace and _selects(sel, lb) for ns, lb, _ in idx.workloads):
        return []
    shown = ", ".join(f"{k}={v}" for k, v in sorted(sel.items()))
    return [
        _finding(
            WARNING,
            r,
            "spec.selector.matchLabels",
            f"selector {shown} matches no workload in namespace {r.namespace} "
            "(WorkloadEntry or ServiceEntry endpoint labels)",
        )
    ]


def _mode(pa: Resource) -> str:
    return (pa.spec.get("mtls") or {}).get("mode") or "UNSET"


def _peer_authentications(idx: _Index) -> list[Finding]:
    out: list[Finding] = []
    pas = idx.by_kind["PeerAuthentication"]
    ns_wide: dict[str, Resource] = {}
    by_selector: dict[tuple[str, tuple], Resource] = {}
    for pa in pas:
        out += _selector_matches(pa, idx)
        sel = (pa.spec.get("selector") or {}).get("matchLabels") or {}
        if not sel:
            first = ns_wide.setdefault(pa.namespace, pa)
            if first is not pa and first.key != pa.key:
                level = ERROR if _mode(first) != _mode(pa) else WARNING
                out.append(
                    _finding(
                        level,
                        pa,
                        "spec",
                        f"namespace {pa.namespace} already has a namespace-wide "
                        f"PeerAuthentication ({first.ref}, mode {_mode(first)}); "
                        f"this one sets mode {_mode(pa)} and which wins is undefined",
                    )
                )
            continue
        key = (pa.namespace, tuple(sorted(sel.items())))
        first = by_selector.setdefault(key, pa)
        if first is not pa and first.key != pa.key:
            level = ERROR if _mode(first) != _mode(pa) else WARNING
            out.append(
                _finding(
                    level,
                    pa,
                    "spec.selector",
                    f"{first.ref} has the same selector (mode {_mode(first)}); this "
                    f"one sets mode {_mode(pa)} and which wins is undefined",
                )
            )
            continue
        # Overlapping selectors that both match a known workload with different modes.
        for (ns, _), other in by_selector.items():
            if other is pa or ns != pa.namespace or _mode(other) == _mode(pa):
                continue
            osel = (other.spec.get("selector") or {}).get("matchLabels") or {}
            both = [
                lb
                for wns, lb, _ in idx.workloads
                if wns == ns and _selects(sel, lb) and _selects(osel, lb)
            ]
            if both:
                out.append(
                    _finding(
                        WARNING,
                        pa,
                        "spec.selector",
                        f"selects the same workload as {other.ref} "
                        f"(labels {both[0]}) with a different mode "
                        f"({_mode(pa)} vs {_mode(other)})",
                    )
                )
    return out


def _sidecars(idx: _Index) -> list[Finding]:
    """Istio's ``Sidecar``: a selector that selects nothing, two selector-less Sidecars in one
    namespace (only one applies), and egress hosts that match no service (a typo there cuts the
    sidecar off that service without a word)."""
    from control_plane.api.hosts import service_namespace
    from control_plane.api.scope import unused_hosts

    out: list[Finding] = []
    known: list[tuple[str, str]] = [(service_namespace(h), h) for h in idx.services]
    for se in idx.by_kind["ServiceEntry"]:
        known += [(se.namespace, fqdn(h, se.namespace)) for h in se.spec.get("hosts") or []]
    default: dict[str, Resource] = {}
    for sc in idx.by_kind["Sidecar"]:
        sel = (sc.spec.get("workloadSelector") or {}).get("labels")
        if sel:
            if not any(ns == sc.namespace and _selects(sel, lb) for ns, lb, _ in idx.workloads):
                shown = ", ".join(f"{k}={v}" for k, v in sorted(sel.items()))
                out.append(_finding(
                    WARNING, sc, "spec.workloadSelector.labels",
                    f"selector {shown} matches no workload in namespace {sc.namespace} "
                    "(WorkloadEntry or ServiceEntry endpoint labels; sidecars that register "
                    "later are not known here)",
                ))
        elif sc.namespace in default:
            out.append(_finding(
                WARNING, sc, "spec.workloadSelector",
                f"{default[sc.namespace].ref} already applies to every workload of namespace "
                f"{sc.namespace} without a selector; only the first by name is used",
            ))
        else:
            default[sc.namespace] = sc
        for li, hi, text in unused_hosts(sc, known):
            out.append(_finding(
                WARNING, sc, f"spec.egress[{li}].hosts[{hi}]",
                f"{text!r} matches no known service: sidecars this applies to cannot reach it",
            ))
        if not sc.spec.get("egress"):
            out.append(_finding(
                WARNING, sc, "spec.egress",
                "no egress listener: sidecars this applies to still see every service "
                "(the default); list egress hosts to narrow what they receive",
            ))
    return out


def _canary(c: Resource, idx: _Index) -> list[Finding]:
    """What would keep a Canary from starting, said before it is applied: its subsets must be
    the host's DestinationRule's, with a ``version`` label (what the sidecars' reports carry);
    two Canaries on one host would fight over its weights."""
    out: list[Finding] = []
    host = fqdn(c.spec["host"], c.namespace)
    rules = idx.drs.get(host) or []
    subsets: dict[str, dict] = {}
    for dr in rules:
        for sub in dr.spec.get("subsets") or ():
            subsets.setdefault(str(sub.get("name")), dict(sub.get("labels") or {}))
    for role in ("stable", "canary"):
        name = c.spec[role]
        if not rules:
            out.append(_finding(ERROR, c, "spec.host", f"no DestinationRule for {host}: the "
                                f"canary controller needs its subsets {c.spec['stable']!r} and "
                                f"{c.spec['canary']!r}"))
            break
        if name not in subsets:
            out.append(_finding(ERROR, c, f"spec.{role}", f"subset {name!r} is not defined by "
                                f"the DestinationRule for {host} (subsets: "
                                f"{', '.join(sorted(subsets)) or 'none'})"))
        elif not subsets[name].get("version"):
            out.append(_finding(ERROR, c, f"spec.{role}", f"subset {name!r} has no version "
                                "label, so its traffic cannot be measured"))
    for other in idx.by_kind["Canary"]:
        if other is c:
            break
        if fqdn(other.spec["host"], other.namespace) == host:
            out.append(_finding(WARNING, c, "spec.host", f"{other.ref} also rolls out {host}; "
                                "both would move its VirtualService weights"))
            break
    return out
