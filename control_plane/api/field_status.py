"""What meshlet does with every field of every kind it accepts: the one source of truth.

Each field of each schema message (``obj(..., name="HTTPRoute")`` in ``networking.py``,
``security.py``, ``extensions.py``) has one status here:

* ``enforced``: the sidecar (or the control plane) does what the field says;
* ``refused``: validation rejects the document and names the field (the schema's
  ``unsupported``, or a value check);
* ``warned``: accepted, so an Istio manifest loads unchanged, but not enforced; validation (hence
  ``meshlet apply`` and ``meshlet analyze``) warns, and the sidecar logs one WARNING per field
  present when it loads a config.

An enforced field may still warn for some values (``warn_if``), e.g. a load balancer
``PASSTHROUGH``. ``docs/istio-compatibility.md`` is generated from this table
(``python -m control_plane.api.compat_doc``) and a test keeps both in step with the schema: a
field the schema gains without a status here fails it. Messages reachable only through a field
that is warned or refused need no entries (their whole subtree is not enforced).

Adding a kind: give its ``obj`` a ``name``, register the schema in ``resources.SCHEMAS``, and add
one ``"Name": {field: status}`` block below for it and each message it contains.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from control_plane.api.schema import Validator, index, join, shape_of

ENFORCED, REFUSED, WARNED = "enforced", "refused", "warned"


@dataclass(frozen=True)
class Status:
    status: str
    note: str = ""
    # for an enforced field: the values that are accepted but not honoured (warned)
    warn_if: Callable[[Any], bool] | None = None


def E(note: str = "", warn_if: Callable[[Any], bool] | None = None) -> Status:  # noqa: N802
    return Status(ENFORCED, note, warn_if)


def W(note: str) -> Status:  # noqa: N802
    return Status(WARNED, note)


def R(note: str) -> Status:  # noqa: N802
    return Status(REFUSED, note)


I19 = "(enforced since issue 19)"
L4_SUBNETS = "not matched: a tcp or tls route matches connections to any destination address"
L4_GATEWAYS = "match.gateways applies to gateways only and is ignored by sidecars"
_OPAQUE_NOT_SUPPORTED = ("UDP",)
_AUTH_KEYS_NOT_EVALUATED = re.compile(r"^(request\.auth\.|destination\.ip$|connection\.sni$)")

STATUS: dict[str, dict[str, Status]] = {
    # -- VirtualService -----------------------------------------------------------------------
    "VirtualService": {
        "hosts": E(),
        "gateways": E('a VirtualService whose gateways omit "mesh" is not applied to sidecars'),
        "http": E("first matching rule wins"),
        "tls": E("on opaque ports: passthrough, routed by the ClientHello's SNI (tls before tcp)"),
        "tcp": E("on opaque ports: first matching route wins; no match closes the connection"),
        "exportTo": W("visibility is not restricted: every sidecar sees every VirtualService"),
    },
    "HTTPRoute": {
        "name": E("names the route in proxy-config routes and telemetry"),
        "match": E(),
        "route": E(),
        "redirect": R("redirects are not implemented; use directResponse or route"),
        "directResponse": E(),
        "delegate": R("delegate VirtualServices are not implemented"),
        "rewrite": E(),
        "timeout": E(),
        "retries": E(),
        "fault": E(),
        "mirror": E(),
        "mirrors": E("at most one entry (more are refused)"),
        "mirrorPercentage": E(),
        "corsPolicy": W("CORS is not implemented; the app sees preflights and answers them"),
        "headers": E(),
        "mirrorPercent": R("removed from Istio; use mirrorPercentage"),
    },
    "HTTPMatchRequest": {
        "name": E("names the match in proxy-config routes"),
        "uri": E(),
        "scheme": E(),
        "method": E(),
        "authority": E(),
        "headers": E(),
        "withoutHeaders": E(),
        "queryParams": E(),
        "port": W("not matched: the rule matches requests on any port"),
        "sourceLabels": E("resolved at config time against the sidecar's own labels"),
        "sourceNamespace": E("resolved at config time against the sidecar's namespace"),
        "gateways": E('a match whose gateways omit "mesh" is dropped for sidecars'),
        "ignoreUriCase": E(),
        "statPrefix": W("no per-route statistics"),
    },
    "StringMatch": {"exact": E(), "prefix": E(), "regex": E("RE2 syntax, full match")},
    "StringMatch (headers, withoutHeaders, queryParams)": {
        "exact": E(),
        "prefix": E(),
        "regex": E('RE2 syntax, full match; "*" means present'),
    },
    "HTTPRouteDestination": {"destination": E(), "weight": E(), "headers": E()},
    "Destination": {"host": E(), "subset": E(), "port": E()},
    "PortSelector": {"number": E()},
    "Headers": {"request": E(), "response": E()},
    "HeaderOperations": {"set": E(), "add": E(), "remove": E()},
    "HTTPDirectResponse": {"status": E(), "body": E()},
    "HTTPBody": {
        "string": E(),
        "bytes": R("not implemented; use body.string"),
    },
    "HTTPRewrite": {"uri": E(), "authority": E(), "uriRegexRewrite": E()},
    "RegexRewrite": {"match": E(), "rewrite": E()},
    "HTTPRetry": {
        "attempts": E(),
        "perTryTimeout": E(),
        "retryOn": E(),
        "retryRemoteLocalities": W("no localities: retries go to any endpoint"),
        "retryIgnorePreviousHosts": E(
            "retries always avoid the endpoints already tried (Istio's default); "
            "false is warned and not honoured",
            warn_if=lambda v: v is False,
        ),
        "backoff": E(),
    },
    "HTTPFaultInjection": {"delay": E(), "abort": E()},
    "HTTPFaultInjection.Delay": {
        "fixedDelay": E(),
        "percentage": E(),
        "percent": E("deprecated in Istio; use percentage"),
        "exponentialDelay": R("not supported (Istio neither)"),
    },
    "HTTPFaultInjection.Abort": {
        "httpStatus": E(),
        "grpcStatus": E("a trailers-only gRPC answer with that grpc-status"),
        "percentage": E(),
        "http2Error": R("not supported (Istio neither)"),
    },
    "HTTPMirrorPolicy": {"destination": E(), "percentage": E()},
    "TLSRoute": {"match": E(), "route": E()},
    "TLSMatchAttributes": {
        "sniHosts": E("exact or *.suffix"),
        "destinationSubnets": W(L4_SUBNETS),
        "port": E(),
        "sourceLabels": E("resolved at config time against the sidecar's own labels"),
        "gateways": W(L4_GATEWAYS),
        "sourceNamespace": E("resolved at config time against the sidecar's namespace"),
    },
    "RouteDestination": {"destination": E(), "weight": E()},
    "TCPRoute": {"match": E(), "route": E()},
    "L4MatchAttributes": {
        "destinationSubnets": W(L4_SUBNETS),
        "port": E(),
        "sourceLabels": E("resolved at config time against the sidecar's own labels"),
        "gateways": W(L4_GATEWAYS),
        "sourceNamespace": E("resolved at config time against the sidecar's namespace"),
    },
    "Percent": {"value": E()},
    # -- DestinationRule ----------------------------------------------------------------------
    "DestinationRule": {
        "host": E(),
        "trafficPolicy": E(),
        "subsets": E(),
        "exportTo": W("visibility is not restricted: every sidecar sees every DestinationRule"),
        "workloadSelector": W("not applied: the rule applies to every sidecar"),
    },
    "TrafficPolicy": {
        "loadBalancer": E(),
        "connectionPool": E(),
        "outlierDetection": E(),
        "tls": E(f"ISTIO_MUTUAL, MUTUAL, SIMPLE, DISABLE {I19}"),
        "retryBudget": W("not implemented; use ResiliencePolicy retryBudget"),
        "tunnel": W("HTTP CONNECT tunnelling to the upstream is not implemented"),
        "proxyProtocol": W("PROXY protocol to the upstream is not implemented"),
        "portLevelSettings": E(),
    },
    "TrafficPolicy.PortTrafficPolicy": {
        "port": E(),
        "loadBalancer": E(),
        "connectionPool": E(),
        "outlierDetection": E(),
        "tls": E(I19),
    },
    "LoadBalancerSettings": {
        "simple": E(
            "ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN (as LEAST_REQUEST), RANDOM; "
            "UNSPECIFIED is ROUND_ROBIN; PASSTHROUGH is warned and picks at random",
            warn_if=lambda v: v == "PASSTHROUGH",
        ),
        "consistentHash": W("not implemented: requests are balanced by loadBalancer.simple"),
        "localityLbSetting": W("no locality-aware balancing"),
        "warmupDurationSecs": W("no slow start: new endpoints get their full share at once"),
        "warmup": W("no slow start: new endpoints get their full share at once"),
    },
    "ConnectionPoolSettings": {"tcp": E(), "http": E()},
    "ConnectionPoolSettings.TCPSettings": {
        "maxConnections": E(f"per endpoint; overflow answers 503 UO {I19}"),
        "connectTimeout": E(),
        "tcpKeepalive": E(f"on upstream sockets, HTTP and opaque TCP {I19}"),
        "maxConnectionDuration": E(
            f"an HTTP connection past it takes no new request {I19}; opaque TCP connections "
            "are not cut"
        ),
        "idleTimeout": E(
            "opaque TCP: no byte either way for that long closes the connection (default 1 h); "
            "for HTTP, http.idleTimeout applies"
        ),
    },
    "TCPSettings.TcpKeepalive": {"probes": E(), "time": E(), "interval": E()},
    "ConnectionPoolSettings.HTTPSettings": {
        "http1MaxPendingRequests": E(f"requests waiting for a connection; 503 UO {I19}"),
        "http2MaxRequests": E(f"concurrent requests; 503 UO {I19}"),
        "maxRequestsPerConnection": E(I19),
        "maxRetries": E(f"concurrent retries {I19}"),
        "idleTimeout": E(),
        "h2UpgradePolicy": W("meshlet picks the upstream protocol (HTTP/2 for gRPC and mTLS)"),
        "useClientProtocol": W("meshlet picks the upstream protocol (HTTP/2 for gRPC and mTLS)"),
        "maxConcurrentStreams": E(f"per HTTP/2 connection, under the peer's SETTINGS {I19}"),
    },
    "OutlierDetection": {
        "consecutive5xxErrors": E(),
        "consecutiveGatewayErrors": E(),
        "consecutiveErrors": E("deprecated in Istio: counts gateway errors"),
        "consecutiveLocalOriginFailures": E(),
        "splitExternalLocalOriginErrors": E(),
        "interval": E(),
        "baseEjectionTime": E(),
        "maxEjectionPercent": E(),
        "minHealthPercent": E(),
        "outlierDetectionHttpErrorCodes": E(),
    },
    "ClientTLSSettings": {
        "mode": E(I19),
        "clientCertificate": E(I19),
        "privateKey": E(I19),
        "caCertificates": E(I19),
        "subjectAltNames": E(I19),
        "sni": E(I19),
        "insecureSkipVerify": E(I19),
        "caCrl": E(I19),
        "credentialName": R("no Kubernetes secrets: use clientCertificate/privateKey files"),
    },
    "Subset": {"name": E(), "labels": E(), "trafficPolicy": E()},
    # -- ServiceEntry / WorkloadEntry ---------------------------------------------------------
    "ServiceEntry": {
        "hosts": E(),
        "addresses": E("for captured connections addressed to them"),
        "ports": E(),
        "location": E(
            "endpoints are dialled in plaintext unless a DestinationRule sets tls, as Istio "
            "does for MESH_EXTERNAL; MESH_INTERNAL is warned (no automatic mTLS)",
            warn_if=lambda v: v == "MESH_INTERNAL",
        ),
        "resolution": E(
            "STATIC, DNS and DNS_ROUND_ROBIN (the hosts are dialled when there are no "
            "endpoints); NONE (pass-through to the address the app dialled) is warned and "
            "treated as STATIC",
            warn_if=lambda v: v == "NONE",
        ),
        "endpoints": E(),
        "workloadSelector": E(),
        "exportTo": W("visibility is not restricted: every sidecar sees every ServiceEntry"),
        "subjectAltNames": W("not checked; use DestinationRule tls.subjectAltNames"),
    },
    "ServicePort": {
        "number": E(),
        "protocol": E(
            "HTTP, HTTP2, GRPC, GRPC-WEB are proxied as HTTP; TLS and HTTPS as TLS passthrough; "
            "TCP, MONGO, MYSQL, REDIS as opaque TCP; UDP is warned (TCP only)",
            warn_if=lambda v: str(v).upper() in _OPAQUE_NOT_SUPPORTED,
        ),
        "name": E("its prefix (tcp-, mysql-, http-...) gives the protocol when none is set"),
        "targetPort": E(),
        "appProtocol": E(
            "the protocol when protocol is not set (Kubernetes); udp is warned (TCP only)",
            warn_if=lambda v: str(v).upper() in _OPAQUE_NOT_SUPPORTED,
        ),
    },
    "ServiceEntry.WorkloadSelector": {"labels": E()},
    "ServiceEntry.endpoints[]": {
        "address": E(),
        "ports": E(),
        "labels": E(),
        "network": W("single network: not used"),
        "locality": W("no locality-aware balancing"),
        "weight": W("endpoints are balanced without weights"),
        "serviceAccount": E("the identity expected over ISTIO_MUTUAL"),
    },
    "WorkloadEntry": {
        "address": E(),
        "ports": E(),
        "labels": E("an app label joins the service of that name when no ServiceEntry selects it"),
        "network": W("single network: not used"),
        "locality": W("no locality-aware balancing"),
        "weight": W("endpoints are balanced without weights"),
        "serviceAccount": E("the identity expected over ISTIO_MUTUAL"),
    },
    # -- security -----------------------------------------------------------------------------
    # -- Sidecar --------------------------------------------------------------------------------
    "Sidecar": {
        "workloadSelector": E(),
        "egress": E("hosts scope what the control plane pushes; a port opens a local listener"),
        "ingress": E(),
        "outboundTrafficPolicy": W("not applied: unknown destinations are handled as without it"),
        "inboundConnectionPool": W("no inbound connection limits"),
    },
    "IstioEgressListener": {
        "hosts": E("namespace/dnsName: the services pushed to this sidecar, reached by port"),
        "port": E("an opaque TCP listener on bind:port; an HTTP port is warned and not opened"),
        "bind": E("default 127.0.0.1"),
        "captureMode": W("capture is set up by `meshlet iptables`, not per listener"),
    },
    "Sidecar.Port": {
        "number": E(),
        "protocol": E("egress: an HTTP protocol is warned and no listener is opened"),
        "name": E("a label, as in Istio"),
        "targetPort": W("not used: the listener's port is number"),
    },
    "IstioIngressListener": {
        "port": E("HBONE streams for this port go to defaultEndpoint"),
        "bind": W("not used: inbound traffic arrives through the sidecar's own ports"),
        "captureMode": W("capture is set up by `meshlet iptables`, not per listener"),
        "defaultEndpoint": E("a loopback HOST:PORT; default the app port"),
        "tls": W("not applied: inbound TLS is the mesh's mTLS (PeerAuthentication)"),
        "connectionPool": W("no inbound connection limits"),
    },
    "AuthorizationPolicy": {
        "selector": E(),
        "action": E("ALLOW, DENY, AUDIT; CUSTOM is refused"),
        "rules": E(),
        "provider": R("ext-authz providers are not supported"),
        "targetRef": R("binds gateways and waypoints, never a sidecar; use selector"),
        "targetRefs": R("binds gateways and waypoints, never a sidecar; use selector"),
    },
    "WorkloadSelector": {"matchLabels": E()},
    "Rule": {"from": E(), "to": E(), "when": E()},
    "Rule.From": {"source": E()},
    "Rule.To": {"operation": E()},
    "Source": {
        "principals": E(),
        "notPrincipals": E(),
        "requestPrincipals": W(
            "no JWT authentication: an ALLOW rule using it never matches, a DENY rule ignores it"
        ),
        "notRequestPrincipals": W(
            "no JWT authentication: an ALLOW rule using it never matches, a DENY rule ignores it"
        ),
        "namespaces": E(),
        "notNamespaces": E(),
        "serviceAccounts": E(),
        "notServiceAccounts": E(),
        "ipBlocks": E(),
        "notIpBlocks": E(),
        "remoteIpBlocks": E("the connection's source address (no trusted proxies)"),
        "notRemoteIpBlocks": E("the connection's source address (no trusted proxies)"),
    },
    "Operation": {
        "hosts": E(),
        "notHosts": E(),
        "ports": E(),
        "notPorts": E(),
        "methods": E(),
        "notMethods": E(),
        "paths": E(),
        "notPaths": E(),
    },
    "Condition": {
        "key": E(
            "request.auth.*, destination.ip and connection.sni are warned: an ALLOW rule using "
            "them never matches, a DENY rule ignores them",
            warn_if=lambda v: isinstance(v, str) and bool(_AUTH_KEYS_NOT_EVALUATED.match(v)),
        ),
        "values": E(),
        "notValues": E(),
    },
    "PeerAuthentication": {"selector": E(), "mtls": E(), "portLevelMtls": E()},
    "MutualTLS": {"mode": E()},
    # -- meshlet.dev --------------------------------------------------------------------------
    "ResiliencePolicy": {
        "host": E(),
        "circuitBreaker": E(),
        "bulkhead": E(),
        "rateLimiter": E(),
        "retryBudget": E(),
        "hedging": E(),
        "fallback": E("an answer instead of an error: static, or the last good one (stale)"),
    },
    "Fallback": {"static": E(), "stale": E(), "triggers": E(), "methods": E()},
    "Fallback.Static": {"status": E(), "headers": E(), "body": E()},
    "Fallback.Stale": {"maxAge": E(), "maxEntries": E(), "maxBodyBytes": E()},
    "CircuitBreaker": {
        "failureRateThreshold": E(),
        "slowCallRateThreshold": E(),
        "slowCallDurationThreshold": E(),
        "slidingWindowType": E(),
        "slidingWindowSize": E(),
        "minimumNumberOfCalls": E(),
        "waitDurationInOpenState": E(),
        "permittedNumberOfCallsInHalfOpenState": E(),
    },
    "Bulkhead": {"maxConcurrentCalls": E(), "maxWaitDuration": E()},
    "RateLimiter": {"limitForPeriod": E(), "limitRefreshPeriod": E(), "timeoutDuration": E()},
    "RetryBudget": {"retryRatio": E(), "minRetriesPerSecond": E(), "ttl": E()},
    "Hedging": {"delay": E(), "maxHedges": E(f"up to maxHedges hedges {I19}")},
    "InboundRateLimit": {
        "selector": E("the receiving workloads, by labels"),
        "match": E(),
        "total": E(),
        "identity": E("per caller identity (from mTLS)"),
        "overrides": E(),
        "targetRef": R("use selector (the workload's labels)"),
    },
    "InboundRateLimit.Match": {"paths": E(), "methods": E()},
    "RateLimit": {"requestsPerSecond": E()},
    "InboundRateLimit.Override": {"requestsPerSecond": E(), "clientRefs": E()},
    "ClientRef": {"kind": E(), "group": E(), "name": E(), "namespace": E()},
    "Canary": {
        "host": E(),
        "stable": E(),
        "canary": E(),
        "virtualService": E(),
        "analysis": E(),
    },
    "Canary.Analysis": {
        "interval": E(),
        "stepWeight": E(),
        "stepWeights": E(),
        "maxWeight": E(),
        "threshold": E(),
        "minRequests": E(),
        "checks": E(),
        "webhooks": E(),
    },
    "Canary.Checks": {"successRate": E(), "latencyP99": E()},
    "Canary.SuccessRate": {"min": E(), "maxDropFromStable": E()},
    "Canary.LatencyP99": {"max": E(), "maxRatioToStable": E()},
    "Canary.Webhook": {"name": E(), "type": E(), "url": E(), "timeout": E(), "metadata": E()},
    "MeshConfig.Tracing": {
        "sampling": E(f"percent of new traces sampled; OTEL_TRACES_SAMPLER overrides it {I19}"),
    },
    "MeshConfig": {
        "trustDomain": E("read by the control plane at start"),
        "certificateLifetime": E(),
        "defaultRetryPolicy": E(),
        "tracing": E(),
        "accessLog": W(
            "not applied: the sidecar logs every request unless started with --no-access-log"
        ),
    },
}


# -- walking the schema ------------------------------------------------------------------------


def messages(root: Validator) -> Iterator[tuple[str, Validator]]:
    """Every object message reachable from ``root`` through enforced fields, each once, in
    depth-first order of first appearance (the order the docs list them)."""
    seen: set[int] = set()

    def walk(v: Validator) -> Iterator[tuple[str, Validator]]:
        shape = shape_of(v)
        if shape.form in ("list", "map") and shape.item is not None:
            yield from walk(shape.item)
            return
        if shape.form != "object" or id(v) in seen:
            return
        seen.add(id(v))
        yield shape.name, v
        table = STATUS.get(shape.name, {})
        for field, sub in shape.fields.items():
            st = table.get(field)
            if st is None or st.status == ENFORCED:
                yield from walk(sub)

    yield from walk(root)


def unenforced(root: Validator, spec: Any, path: str = "spec") -> list[tuple[str, str]]:
    """``(field path, note)`` of each field present in ``spec`` that meshlet accepts without
    enforcing it (status ``warned``, or an enforced field's warned value). ``spec`` must be
    valid. A warned field's subtree is reported once, at the field."""
    out: list[tuple[str, str]] = []

    def walk(v: Validator, value: Any, at: str) -> None:
        shape = shape_of(v)
        if shape.form == "list" and isinstance(value, list) and shape.item is not None:
            for i, elem in enumerate(value):
                walk(shape.item, elem, index(at, i))
        elif shape.form == "map" and isinstance(value, dict) and shape.item is not None:
            for k, elem in value.items():
                walk(shape.item, elem, join(at, str(k)))
        elif shape.form == "object" and isinstance(value, dict):
            table = STATUS.get(shape.name, {})
            for k, elem in value.items():
                st = table.get(k)
                if st is None or elem is None or k not in shape.fields:
                    continue
                sub = join(at, k)
                if st.status == WARNED:
                    out.append((sub, st.note))
                elif st.status == ENFORCED:
                    if st.warn_if is not None and st.warn_if(elem):
                        out.append((sub, f"value {elem!r}: {st.note}"))
                    walk(shape.fields[k], elem, sub)

    walk(root, spec, path)
    return out


def warning_text(note: str) -> str:
    """The wording of an accepted-but-not-enforced warning, the same everywhere."""
    return f"accepted but not enforced by meshlet: {note}"


def problems(schemas: dict[str, Validator]) -> list[str]:
    """What keeps ``STATUS`` from describing ``schemas`` exactly (empty when it does): a message
    without a name, a field without a status, a status for a field the schema lacks, a refused
    field the schema accepts or the reverse. The unit tests run it on ``resources.SCHEMAS``."""
    out: list[str] = []
    reached: set[str] = set()
    for kind, root in schemas.items():
        if shape_of(root).name != kind:
            out.append(f"{kind}: the root obj() must be named {kind!r}")
        for name, v in messages(root):
            shape = shape_of(v)
            if not name:
                out.append(f"{kind}: an obj() with fields {sorted(shape.fields)} has no name")
                continue
            reached.add(name)
            table = STATUS.get(name)
            if table is None:
                out.append(f"{kind}: message {name!r} has no entry in STATUS")
                continue
            for field in shape.fields:
                st = table.get(field)
                if st is None:
                    out.append(f"{name}.{field}: no status in field_status.STATUS")
                elif st.status == REFUSED:
                    out.append(f"{name}.{field}: refused in STATUS but accepted by the schema")
            for field in shape.unsupported:
                st = table.get(field)
                if st is None or st.status != REFUSED:
                    out.append(f"{name}.{field}: refused by the schema, not in STATUS as refused")
            for field in table:
                if field not in shape.fields and field not in shape.unsupported:
                    out.append(f"{name}.{field}: in STATUS but not a field of the schema")
    out.extend(
        f"{name}: in STATUS but reached by no kind's enforced fields"
        for name in STATUS
        if name not in reached
    )
    return out
