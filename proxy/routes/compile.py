"""Compiles Istio resources into an immutable :class:`~proxy.routes.table.RouteTable`.

Runs once per config (file load, SIGHUP or push), never per request: host aliases, regexes,
cumulative weights, subsets and merged traffic policies are all resolved here, so the data path
only does dict lookups and comparisons. Semantics follow Istio (research notes, sections 1-2):
first matching rule wins, weights are ``weight / sum``, a host without a VirtualService gets a
default route to all its endpoints, short names resolve in the resource's namespace.

meshlet extension: a ``WorkloadEntry`` that no ``ServiceEntry`` selects joins the service named
by its ``app`` label, so a standalone sidecar's file can list endpoints without a selector.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.api.expiry import EXPIRES_AT
from control_plane.api.hosts import aliases, fqdn, split_host_port
from proxy.routes.table import (
    EXACT,
    PREFIX,
    PRESENT,
    REGEX,
    UNLIMITED,
    Cluster,
    Destination,
    Endpoint,
    HeaderOps,
    MatchBlock,
    Matcher,
    Route,
    RouteTable,
    UpstreamTLS,
    VirtualHost,
)
from proxy.tcp.compile import compile_l4
from proxy.tcp.protocol import port_protocol

#: VirtualService annotation: its routes may retry requests that are not idempotent (POST ...)
RETRY_NON_IDEMPOTENT = "retry.meshlet.dev/non-idempotent"


class CompileError(ValueError):
    """A config that validated but cannot be turned into a route table (names the resource)."""


@dataclass
class _Service:
    fqdn: str
    namespace: str
    ports: list[tuple[int, str, int]] = field(default_factory=list)  # (number, name, targetPort)
    addresses: list[str] = field(default_factory=list)  # ServiceEntry VIPs
    # (address, {port name: port}, labels, weight, tls, spiffe_id, fixed port or 0)
    endpoints: list[tuple[str, dict[str, int], dict[str, str], int, bool, str, int]] = field(
        default_factory=list
    )
    protocols: dict[int, str] = field(default_factory=dict)  # port -> proxy.tcp.protocol
    hbone: dict[str, int] = field(default_factory=dict)  # "address:port" -> peer's HBONE port


def _duration(value: Any) -> float | None:
    if value is None:
        return None
    from control_plane.api.resources import parse_duration

    return parse_duration(value)


def _string_match(name: str, spec: Mapping[str, Any] | None, invert: bool = False) -> Matcher:
    spec = spec or {}
    if "exact" in spec:
        return Matcher(name, EXACT, str(spec["exact"]), None, invert)
    if "prefix" in spec:
        return Matcher(name, PREFIX, str(spec["prefix"]), None, invert)
    if "regex" in spec:
        return Matcher(name, REGEX, str(spec["regex"]), re.compile(spec["regex"]), invert)
    return Matcher(name, PRESENT, "", None, invert)


def _header_ops(spec: Mapping[str, Any] | None) -> HeaderOps:
    if not spec:
        return HeaderOps()
    return HeaderOps(
        set=tuple((k.lower(), str(v)) for k, v in (spec.get("set") or {}).items()),
        add=tuple((k.lower(), str(v)) for k, v in (spec.get("add") or {}).items()),
        remove=tuple(k.lower() for k in (spec.get("remove") or ())),
    )


def _merge_policy(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Istio merge: a subset's trafficPolicy overrides the DR-level one field group by group."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if key == "portLevelSettings":
                continue
            out[key] = value
    return out


def _port_policy(policy: Mapping[str, Any] | None, number: int) -> Mapping[str, Any] | None:
    """The portLevelSettings entry of ``policy`` for service port ``number``, if any."""
    for pl in (policy or {}).get("portLevelSettings") or ():
        if int((pl.get("port") or {}).get("number", -1)) == number:
            return pl
    return None


class _Compiler:
    def __init__(
        self,
        resources: Iterable[Any],
        registry: Iterable[Mapping[str, Any]],
        namespace: str,
        labels: Mapping[str, str],
        version: str,
    ) -> None:
        self.resources = list(resources)
        self.registry = list(registry)
        self.namespace = namespace
        self.labels = dict(labels)
        self.version = version
        self.services: dict[str, _Service] = {}
        self.drs: dict[str, Any] = {}
        self.resilience: dict[str, dict[str, Any]] = {}
        self.clusters: dict[str, Cluster] = {}
        self.warnings: list[str] = []
        self.local_service = self.labels.get("app", "")

    # -- services and endpoints ------------------------------------------------------------
    def _service(self, host: str, namespace: str) -> _Service:
        fq = fqdn(host, namespace)
        svc = self.services.get(fq)
        if svc is None:
            svc = self.services[fq] = _Service(fq, namespace)
        return svc

    def collect_services(self) -> None:
        by_kind: dict[str, list[Any]] = {}
        for r in self.resources:
            by_kind.setdefault(r.kind, []).append(r)
        workload_entries = by_kind.get("WorkloadEntry", [])
        selected: set[tuple[str, str]] = set()
        for se in by_kind.get("ServiceEntry", []):
            spec = se.spec
            ports = [
                (int(p["number"]), str(p.get("name", "")), int(p.get("targetPort") or p["number"]))
                for p in spec.get("ports") or ()
            ]
            endpoints = []
            for ep in spec.get("endpoints") or ():
                endpoints.append(
                    (
                        str(ep["address"]),
                        {str(k): int(v) for k, v in (ep.get("ports") or {}).items()},
                        {str(k): str(v) for k, v in (ep.get("labels") or {}).items()},
                        int(ep.get("weight") or 1),
                        False,
                        _spiffe(ep.get("serviceAccount"), se.namespace),
                        0,
                    )
                )
            sel = (spec.get("workloadSelector") or {}).get("labels")
            if sel:
                for we in workload_entries:
                    wl = we.spec.get("labels") or {}
                    if we.namespace == se.namespace and all(wl.get(k) == v for k, v in sel.items()):
                        selected.add((we.namespace, we.name))
                        endpoints.append(_we_endpoint(we))
            if not endpoints and spec.get("resolution") in ("DNS", "DNS_ROUND_ROBIN"):
                for host in spec.get("hosts") or ():
                    endpoints.append((host, {}, {}, 1, False, "", 0))
            protocols = {
                int(p["number"]): port_protocol(p.get("protocol"), p.get("name"),
                                                p.get("appProtocol"))
                for p in spec.get("ports") or ()
            }  # fmt: skip
            for host in spec.get("hosts") or ():
                svc = self._service(host, se.namespace)
                for number, proto in protocols.items():
                    svc.protocols.setdefault(number, proto)
                svc.addresses.extend(a for a in spec.get("addresses") or () if "/" not in a)
                for p in ports:
                    if p not in svc.ports:
                        svc.ports.append(p)
                svc.endpoints.extend(endpoints)
        for we in workload_entries:
            if (we.namespace, we.name) in selected:
                continue
            app = (we.spec.get("labels") or {}).get("app") or we.labels.get("app")
            if not app:
                self.warnings.append(
                    f"WorkloadEntry {we.namespace}/{we.name}: no ServiceEntry selects it "
                    "and it has no app label; ignored"
                )
                continue
            self._service(app, we.namespace).endpoints.append(_we_endpoint(we))
        for reg in self.registry:
            svc = self._service(reg["service"], reg.get("namespace", "default"))
            host, port = split_host_port(reg["address"])
            labels = dict(reg.get("labels") or {})
            if reg.get("version"):
                labels.setdefault("version", str(reg["version"]))
            svc.endpoints.append((host, {}, labels, 1, True, str(reg.get("spiffe_id") or ""), port))
            if reg.get("hbone_port"):
                svc.hbone[f"{host}:{port}"] = int(reg["hbone_port"])
        for dr in by_kind.get("DestinationRule", []):
            self.drs.setdefault(fqdn(dr.spec["host"], dr.namespace), dr)
        for rp in by_kind.get("ResiliencePolicy", []):
            self.resilience.setdefault(fqdn(rp.spec["host"], rp.namespace), dict(rp.spec))

    # -- clusters ----------------------------------------------------------------------------
    def build_clusters(self) -> None:
        for svc in self.services.values():
            dr = self.drs.get(svc.fqdn)
            dr_spec = dr.spec if dr is not None else {}
            subsets = [("", {}, None)] + [
                (s["name"], s.get("labels") or {}, s.get("trafficPolicy"))
                for s in dr_spec.get("subsets") or ()
            ]
            ports = svc.ports or [(0, "", 0)]
            source = f"{dr.namespace}/{dr.name}" if dr is not None else ""
            for number, pname, target in ports:
                port_policy = _port_policy(dr_spec.get("trafficPolicy"), number)
                for subset, sel, sub_policy in subsets:
                    # Istio's order: DR level, DR port level, subset level, subset port level
                    policy = _merge_policy(
                        dr_spec.get("trafficPolicy"),
                        port_policy,
                        sub_policy,
                        _port_policy(sub_policy, number),
                    )
                    eps = []
                    for address, pmap, labels, weight, tls, spiffe, fixed in svc.endpoints:
                        if not all(labels.get(k) == v for k, v in sel.items()):
                            continue
                        port = fixed or pmap.get(pname) or target or number
                        if not port:
                            continue
                        eps.append(
                            Endpoint(
                                address,
                                port,
                                labels,
                                weight,
                                tls,
                                spiffe,
                                f"{address}:{port}",
                                svc.hbone.get(f"{address}:{fixed}", 0) if fixed else 0,
                            )
                        )
                    name = f"outbound|{number}|{subset}|{svc.fqdn}"
                    self.clusters[name] = _cluster(
                        name,
                        svc.fqdn,
                        subset,
                        number,
                        eps,
                        policy,
                        self.resilience.get(svc.fqdn),
                        source,
                    )

    def cluster_map(
        self, host: str, namespace: str, subset: str, port: int
    ) -> tuple[dict[int, str], str]:
        fq = fqdn(host, namespace)
        svc = self.services.get(fq)
        if svc is None:
            # a destination with no known endpoints: an empty cluster answers 503 UH (Istio/Envoy)
            name = f"outbound|{port}|{subset}|{fq}"
            self.clusters.setdefault(name, _cluster(name, fq, subset, port, [], {}, None))
            return {}, name
        ports = [p[0] for p in svc.ports] or [0]
        by_port: dict[int, str] = {}
        for number in ports:
            name = f"outbound|{number}|{subset}|{fq}"
            if name not in self.clusters:
                # a subset the DestinationRule does not define: Envoy answers 503 NC at runtime
                self.warnings.append(
                    f"subset {subset!r} of {fq} is not defined by a DestinationRule"
                )
                self.clusters[name] = _cluster(name, fq, subset, number, [], {}, None)
            by_port[number] = name
        if port and port in by_port:
            return {}, by_port[port]
        return ({} if len(by_port) == 1 else by_port), by_port[ports[0]]

    # -- routes ------------------------------------------------------------------------------
    def destination(self, spec: Mapping[str, Any], namespace: str) -> Destination:
        d = spec["destination"]
        port = int((d.get("port") or {}).get("number") or 0)
        by_port, default = self.cluster_map(d["host"], namespace, d.get("subset") or "", port)
        hdr = spec.get("headers") or {}
        return Destination(
            service=fqdn(d["host"], namespace),
            subset=d.get("subset") or "",
            port=port,
            weight=int(spec.get("weight") or 0),
            request_headers=_header_ops(hdr.get("request")),
            response_headers=_header_ops(hdr.get("response")),
            clusters=by_port,
            default_cluster=default,
        )

    def match_block(self, m: Mapping[str, Any], index: int) -> MatchBlock | None:
        src = m.get("sourceLabels")
        if src and not all(self.labels.get(k) == v for k, v in src.items()):
            return None  # Istio drops it at config time for sidecars whose labels differ
        if m.get("sourceNamespace") and m["sourceNamespace"] != self.namespace:
            return None
        if not _for_sidecars(m.get("gateways")):
            return None
        headers = [_string_match(k.lower(), v) for k, v in (m.get("headers") or {}).items()]
        headers += [
            _string_match(k.lower(), v, invert=True)
            for k, v in (m.get("withoutHeaders") or {}).items()
        ]
        ignore_case = bool(m.get("ignoreUriCase"))
        uri = _string_match("uri", m["uri"]) if m.get("uri") else None
        if uri is not None and ignore_case:
            uri = Matcher(
                "uri",
                uri.op,
                uri.value.lower(),
                re.compile(uri.value, re.I) if uri.op == REGEX else None,
            )
        return MatchBlock(
            name=str(m.get("name") or index),
            uri=uri,
            method=_string_match("method", m["method"]) if m.get("method") else None,
            authority=_string_match("authority", m["authority"]) if m.get("authority") else None,
            scheme=_string_match("scheme", m["scheme"]) if m.get("scheme") else None,
            headers=tuple(headers),
            query=tuple(_string_match(k, v) for k, v in (m.get("queryParams") or {}).items()),
            ignore_uri_case=ignore_case,
        )

    def route(self, vs: Any, index: int, spec: Mapping[str, Any]) -> Route | None:
        ns = vs.namespace
        matches = []
        for i, m in enumerate(spec.get("match") or ()):
            block = self.match_block(m, i)
            if block is not None:
                matches.append(block)
        if spec.get("match") and not matches:
            return None  # every match block was for other sources
        dests = tuple(self.destination(d, ns) for d in spec.get("route") or ())
        if len(dests) == 1:
            weights = [1]  # a single destination gets 100 % whatever its weight (Istio)
        else:
            weights = [d.weight for d in dests]
        cum, total = [], 0
        for w in weights:
            total += w
            cum.append(total)
        mirror = None
        mspec = spec.get("mirror") or ((spec.get("mirrors") or [{}])[0].get("destination"))
        if mspec:
            pct = spec.get("mirrorPercentage") or (
                (spec.get("mirrors") or [{}])[0].get("percentage")
            )
            frac = float(pct.get("value", 100.0)) / 100.0 if pct else 1.0
            _, mcluster = self.cluster_map(
                mspec["host"],
                ns,
                mspec.get("subset") or "",
                int((mspec.get("port") or {}).get("number") or 0),
            )
            mirror = (mcluster, frac)
        rewrite = spec.get("rewrite") or {}
        rx_rw = rewrite.get("uriRegexRewrite")
        hdr = spec.get("headers") or {}
        direct = spec.get("directResponse")
        timeout = _duration(spec.get("timeout"))
        return Route(
            name=str(spec.get("name") or f"{vs.name}.{index}"),
            virtual_service=f"{vs.namespace}/{vs.name}",
            matches=tuple(matches),
            destinations=dests,
            cum_weights=tuple(cum),
            total_weight=total,
            timeout=timeout if timeout else None,
            retries=spec.get("retries"),
            fault=spec.get("fault"),
            mirror=mirror,
            rewrite_uri=rewrite.get("uri"),
            rewrite_uri_regex=(re.compile(rx_rw["match"]), rx_rw["rewrite"]) if rx_rw else None,
            rewrite_authority=rewrite.get("authority"),
            request_headers=_header_ops(hdr.get("request")),
            response_headers=_header_ops(hdr.get("response")),
            retry_non_idempotent=str(
                (getattr(vs, "annotations", None) or {}).get(RETRY_NON_IDEMPOTENT, "")
            ).lower()
            == "true",
            direct_response=(
                (int(direct["status"]), str((direct.get("body") or {}).get("string", "")))
                if direct
                else None
            ),
        )

    def build(self) -> RouteTable:
        self.collect_services()
        self.build_clusters()
        vhosts: dict[str, list[Route]] = {}
        vs_names: dict[str, str] = {}
        # an expiring VirtualService (a chaos overlay, control_plane/api/expiry.py) goes first
        ordered = sorted(
            (r for r in self.resources if r.kind == "VirtualService"),
            key=lambda r: EXPIRES_AT not in (getattr(r, "annotations", None) or {}),
        )
        regular: set[str] = set()  # hosts with a VirtualService that is not an overlay
        for vs in ordered:
            overlay = EXPIRES_AT in (getattr(vs, "annotations", None) or {})
            if not _vs_for_sidecars(vs.spec):
                continue
            for host in vs.spec.get("hosts") or ():
                fq = fqdn(host, vs.namespace)
                if not overlay:
                    regular.add(fq)
                routes = vhosts.setdefault(fq, [])
                vs_names.setdefault(fq, f"{vs.namespace}/{vs.name}")
                for i, rspec in enumerate(vs.spec.get("http") or ()):
                    route = self.route(vs, i, rspec)
                    if route is not None:
                        routes.append(route)
        for fq, svc in self.services.items():
            if fq in regular:
                continue
            _, default = self.cluster_map(fq, svc.namespace, "", 0)
            by_port, _ = self.cluster_map(fq, svc.namespace, "", 0)
            dest = Destination(fq, "", 0, 100, HeaderOps(), HeaderOps(), by_port, default)
            # after an overlay's routes (if any), the default route the host has without one
            vhosts[fq] = vhosts.get(fq, []) + [
                Route(
                    name="default",
                    virtual_service="",
                    matches=(),
                    destinations=(dest,),
                    cum_weights=(1,),
                    total_weight=1,
                )
            ]
            vs_names.setdefault(fq, "")
        hosts: dict[str, VirtualHost] = {}
        for fq, routes in vhosts.items():
            vh = VirtualHost(name=vs_names.get(fq) or fq, service=fq, routes=tuple(routes))
            for alias in aliases(fq, self.namespace):
                hosts.setdefault(alias, vh)
        services = {fq: tuple(p[0] for p in s.ports) for fq, s in self.services.items()}
        by_address: dict[str, str] = {}
        for fq, svc in self.services.items():
            for vip in svc.addresses:
                by_address.setdefault(vip, fq)
                for number, _, _ in svc.ports:
                    by_address.setdefault(f"{vip}:{number}", fq)
        for c in self.clusters.values():
            for ep in c.endpoints:
                by_address.setdefault(ep.key, c.service)
        l4, l4_warnings = compile_l4(self)
        self.warnings.extend(l4_warnings)
        return RouteTable(
            l4=l4,
            version=self.version,
            hosts=hosts,
            clusters=dict(self.clusters),
            services=services,
            by_address=by_address,
            resources=tuple(self.resources),
            warnings=tuple(self.warnings),
        )


def _for_sidecars(gateways: Any) -> bool:
    """Istio applies a match block to sidecars only when its ``gateways`` are unset or name
    the reserved gateway ``mesh``."""
    return not gateways or "mesh" in gateways


def _vs_for_sidecars(spec: Mapping[str, Any]) -> bool:
    """A VirtualService reaches sidecars when its ``gateways`` are unset or name ``mesh``, or
    one of its match blocks names ``mesh`` (Istio collects the gateways of both levels)."""
    if _for_sidecars(spec.get("gateways")):
        return True
    return any(
        "mesh" in (m.get("gateways") or ())
        for rule in spec.get("http") or ()
        for m in rule.get("match") or ()
    )


def _spiffe(sa: Any, namespace: str) -> str:
    return f"spiffe://cluster.local/ns/{namespace}/sa/{sa}" if sa else ""


def _we_endpoint(we: Any) -> tuple[str, dict[str, int], dict[str, str], int, bool, str, int]:
    spec = we.spec
    return (
        str(spec["address"]),
        {str(k): int(v) for k, v in (spec.get("ports") or {}).items()},
        {str(k): str(v) for k, v in (spec.get("labels") or {}).items()},
        int(spec.get("weight") or 1),
        False,
        _spiffe(spec.get("serviceAccount"), we.namespace),
        0,
    )


def _limit(value: Any) -> int:
    """A connectionPool threshold: 0 and unset both mean Istio's default, no limit."""
    return int(value) if value else UNLIMITED


def _keepalive(spec: Mapping[str, Any] | None) -> tuple[int, int, int] | tuple[()]:
    """tcp.tcpKeepalive as (idle time s, probe interval s, probes); 0 keeps the OS's value."""
    if spec is None:
        return ()

    def secs(v: Any) -> int:
        d = _duration(v) or 0.0
        return max(1, math.ceil(d)) if d > 0 else 0  # the socket options take whole seconds

    return (secs(spec.get("time")), secs(spec.get("interval")), int(spec.get("probes") or 0))


def _origination(spec: Mapping[str, Any], source: str) -> UpstreamTLS | None:
    mode = spec.get("mode") or ""
    if mode in ("", "DISABLE"):
        return None
    return UpstreamTLS(
        mode=mode,
        ca_certificates=str(spec.get("caCertificates") or ""),
        client_certificate=str(spec.get("clientCertificate") or ""),
        private_key=str(spec.get("privateKey") or ""),
        sni=str(spec.get("sni") or ""),
        subject_alt_names=tuple(str(s) for s in spec.get("subjectAltNames") or ()),
        insecure_skip_verify=bool(spec.get("insecureSkipVerify")),
        ca_crl=str(spec.get("caCrl") or ""),
        source=source,
    )


def _cluster(
    name: str,
    service: str,
    subset: str,
    port: int,
    endpoints: list[Endpoint],
    policy: Mapping[str, Any],
    resilience: Mapping[str, Any] | None,
    source: str = "",
) -> Cluster:
    lb = (policy.get("loadBalancer") or {}).get("simple") or "ROUND_ROBIN"
    if lb == "UNSPECIFIED":
        lb = "ROUND_ROBIN"
    elif lb == "LEAST_CONN":
        lb = "LEAST_REQUEST"
    pool = policy.get("connectionPool") or {}
    tcp = pool.get("tcp") or {}
    http = pool.get("http") or {}
    tls_spec = policy.get("tls") or {}
    tls = tls_spec.get("mode") or ""
    if tls:
        # the DestinationRule decides how every endpoint is dialled: ISTIO_MUTUAL is mesh mTLS
        # even to a ServiceEntry endpoint, DISABLE plaintext even to a mesh peer; SIMPLE and
        # MUTUAL originate TLS with the rule's own files (see ``origination``)
        mesh = tls == "ISTIO_MUTUAL"
        endpoints = [e if e.tls == mesh else dataclasses.replace(e, tls=mesh) for e in endpoints]
    return Cluster(
        name=name,
        service=service,
        subset=subset,
        port=port,
        endpoints=tuple(endpoints),
        lb=lb,
        connect_timeout=_duration(tcp.get("connectTimeout")) or 10.0,
        max_connections=_limit(tcp.get("maxConnections")),
        max_pending=_limit(http.get("http1MaxPendingRequests")),
        max_requests=_limit(http.get("http2MaxRequests")),
        max_retries=_limit(http.get("maxRetries")),
        max_requests_per_connection=int(http.get("maxRequestsPerConnection") or 0),
        max_concurrent_streams=int(http.get("maxConcurrentStreams") or 0),
        max_connection_duration=_duration(tcp.get("maxConnectionDuration")) or 0.0,
        tcp_keepalive=_keepalive(tcp.get("tcpKeepalive")),
        idle_timeout=_duration(http.get("idleTimeout")) or 55.0,
        tcp_idle_timeout=_duration(tcp.get("idleTimeout")) or 3600.0,
        outlier=policy.get("outlierDetection"),
        tls_mode=tls,
        origination=_origination(tls_spec, source),
        resilience=dict(resilience or {}),
    )


def compile_table(
    resources: Iterable[Any],
    registry: Iterable[Mapping[str, Any]] = (),
    namespace: str = "default",
    labels: Mapping[str, str] | None = None,
    version: str = "",
) -> RouteTable:
    """Resources (already validated) -> RouteTable. Raises CompileError on an unusable config."""
    try:
        return _Compiler(resources, registry, namespace, labels or {}, version).build()
    except (KeyError, TypeError, ValueError, re.error) as exc:
        raise CompileError(f"cannot compile routes: {exc!r}") from exc
