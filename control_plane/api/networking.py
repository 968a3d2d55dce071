"""Spec schemas of Istio's networking kinds: VirtualService, DestinationRule, ServiceEntry and
WorkloadEntry (``networking.istio.io`` v1 / v1beta1 / v1alpha3, one schema for all three).

Field names, enums and ranges follow istio/api and istiod's validation (research notes,
traffic-features.md sections 1 and 2). Fields Istio has and meshlet does not implement are
either accepted and documented as ignored (``tls``/``tcp`` routes, ``corsPolicy``) or refused
with a reason, never silently dropped.
"""

from __future__ import annotations

from typing import Any

from control_plane.api.schema import (
    LABELS,
    Ctx,
    any_value,
    boolean,
    check_regex,
    dns1123_label,
    dns1123_subdomain,
    duration,
    enum,
    hostname,
    http_header_name,
    index,
    integer,
    ip_or_cidr,
    join,
    list_of,
    map_of,
    number,
    obj,
    port_number,
    quote_hint,
    regex,
    shaped,
    string,
)

# -- shared pieces ----------------------------------------------------------------------------

HOST = string(nonempty=True, check=hostname)
HOSTS = list_of(HOST, nonempty=True)
PERCENT = obj({"value": number(0, 100)}, name="Percent")
# ServiceEntry.workloadSelector
SELECTOR_LABELS = obj({"labels": LABELS}, name="ServiceEntry.WorkloadSelector")
# DestinationRule.workloadSelector, the security kinds' selector
MATCH_LABELS = obj({"matchLabels": LABELS}, name="WorkloadSelector")
EXPORT_TO = list_of(string(nonempty=True))
MS_1 = 0.001

GRPC_STATUS = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip

# Envoy x-envoy-retry-on and x-envoy-retry-grpc-on tokens (traffic-features.md 1.7.2).
RETRY_ON_TOKENS = frozenset(
    {
        "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
        "envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
        "retriable-headers", "http3-post-connect-failure",
        "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
    }
)  # fmt: skip


_string_match_value = string()
_REGEX = regex()


def _match_regex(value: Any, path: str, ctx: Ctx) -> None:
    if value == "*":  # Istio: `regex: "*"` in headers/queryParams means "present"
        return
    _REGEX(value, path, ctx)


_STRING_MATCH_FIELDS = {
    "exact": _string_match_value,
    "prefix": _string_match_value,
    "regex": regex(),
}
# uri, method, authority, scheme: exactly one of exact/prefix/regex.
STRING_MATCH = obj(
    _STRING_MATCH_FIELDS, exactly_one=[("exact", "prefix", "regex")], name="StringMatch"
)
# headers, withoutHeaders, queryParams: `{}` (or regex "*") means the key is present.
PRESENCE_MATCH = obj(
    {**_STRING_MATCH_FIELDS, "regex": _match_regex},
    at_most_one=[("exact", "prefix", "regex")],
    name="StringMatch (headers, withoutHeaders, queryParams)",
)


def _header_key(key: str) -> str | None:
    if key.startswith("@request.auth.claims"):
        return "JWT claim matches (@request.auth.claims) are not supported by meshlet"
    if key != key.lower():
        return f"header name {key!r} must be lowercase"
    return http_header_name(key)


HEADER_MATCHES = map_of(PRESENCE_MATCH, key=_header_key)


def _ignored_header_keys(value: dict, path: str, ctx: Ctx) -> None:
    for field in ("headers", "withoutHeaders"):
        for k in value.get(field) or {}:
            if k in ("uri", "scheme", "method", "authority"):
                ctx.warn(
                    join(join(path, field), k),
                    f"Istio ignores {k!r} under {field}; use the match's own {k} field",
                )


HTTP_MATCH = obj(
    {
        "name": string(),
        "uri": STRING_MATCH,
        "scheme": STRING_MATCH,
        "method": STRING_MATCH,
        "authority": STRING_MATCH,
        "headers": HEADER_MATCHES,
        "withoutHeaders": HEADER_MATCHES,
        "queryParams": map_of(PRESENCE_MATCH),
        "port": port_number,
        "sourceLabels": LABELS,
        "sourceNamespace": string(),
        "gateways": list_of(string(nonempty=True)),
        "ignoreUriCase": boolean(),
        "statPrefix": string(),
    },
    checks=[_ignored_header_keys],
    name="HTTPMatchRequest",
)

PORT_SELECTOR = obj({"number": port_number}, name="PortSelector")
DESTINATION = obj(
    {"host": HOST, "subset": string(), "port": PORT_SELECTOR},
    required=["host"],
    name="Destination",
)


def _header_ops_check(value: dict, path: str, ctx: Ctx) -> None:
    for op in ("set", "add"):
        for k in value.get(op) or {}:
            if k.startswith(":") and k.lower() != ":authority":
                ctx.warn(join(join(path, op), k), "pseudo-headers are ignored (Istio drops them)")
    for i, k in enumerate(value.get("remove") or []):
        if isinstance(k, str) and (k.startswith(":") or k.lower() == "host"):
            ctx.warn(index(join(path, "remove"), i), f"{k!r} cannot be removed and is ignored")


def _header_name_value(value: Any, path: str, ctx: Ctx) -> None:
    if not isinstance(value, str):
        ctx.error(path, f"header value must be a string{quote_hint(value)}")


HEADER_OPS = obj(
    {
        "set": map_of(_header_name_value, key=http_header_name),
        "add": map_of(_header_name_value, key=http_header_name),
        "remove": list_of(string(nonempty=True, check=http_header_name)),
    },
    checks=[_header_ops_check],
    name="HeaderOperations",
)
HEADERS = obj({"request": HEADER_OPS, "response": HEADER_OPS}, name="Headers")
HTTP_ROUTE_DESTINATION = obj(
    {"destination": DESTINATION, "weight": integer(0), "headers": HEADERS},
    required=["destination"],
    name="HTTPRouteDestination",
)


_ROUTE_DESTINATIONS = list_of(HTTP_ROUTE_DESTINATION, nonempty=True)
# tcp and tls routes: Istio's RouteDestination, which has no header operations
ROUTE_DESTINATION = obj(
    {"destination": DESTINATION, "weight": integer(0)},
    required=["destination"],
    name="RouteDestination",
)
_L4_ROUTE_DESTINATIONS = list_of(ROUTE_DESTINATION, nonempty=True)


@shaped(_ROUTE_DESTINATIONS)
def _route_destinations(value: Any, path: str, ctx: Ctx) -> None:
    _weighted(_ROUTE_DESTINATIONS, value, path, ctx)


@shaped(_L4_ROUTE_DESTINATIONS)
def _l4_route_destinations(value: Any, path: str, ctx: Ctx) -> None:
    _weighted(_L4_ROUTE_DESTINATIONS, value, path, ctx)


def _weighted(destinations: Any, value: Any, path: str, ctx: Ctx) -> None:
    before = len(ctx.errors)
    destinations(value, path, ctx)
    if len(ctx.errors) != before or len(value) < 2:
        return
    weights = [d.get("weight", 0) if isinstance(d, dict) else 0 for d in value]
    if not all(isinstance(w, int) and not isinstance(w, bool) for w in weights):
        return
    total = sum(weights)
    if total <= 0:
        ctx.error(path, "total destination weight must be > 0 when there are several destinations")
    elif total != 100:
        ctx.warn(path, f"weights sum to {total}, not 100; shares are weight/{total}")


def _retry_on(value: Any, path: str, ctx: Ctx) -> None:
    if not isinstance(value, str):
        ctx.error(path, "must be a comma-separated string of retry conditions")
        return
    parts = value.split(",")
    if any(p != p.strip() for p in parts):
        ctx.warn(
            path, "whitespace around retryOn tokens is trimmed (Istio's validation rejects it)"
        )
    for raw in parts:
        tok = raw.strip()
        if not tok:
            ctx.error(path, f"empty retry condition in {value!r}")
        elif tok.isdigit():
            if not 100 <= int(tok) <= 599:
                ctx.error(path, f"retry status code {tok} must be between 100 and 599")
        elif tok not in RETRY_ON_TOKENS:
            ctx.error(
                path,
                f"unknown retry condition {tok!r}; known: {', '.join(sorted(RETRY_ON_TOKENS))}"
                " or an HTTP status code",
            )


def _retries_check(value: dict, path: str, ctx: Ctx) -> None:
    if value.get("attempts", 0) == 0:
        for k in ("perTryTimeout", "retryOn", "retryRemoteLocalities"):
            if k in value:
                ctx.error(join(path, k), "cannot be set when attempts is 0 (retries disabled)")


RETRIES = obj(
    {
        "attempts": integer(0),
        "perTryTimeout": duration(MS_1),
        "retryOn": _retry_on,
        "retryRemoteLocalities": boolean(),
        "retryIgnorePreviousHosts": boolean(),
        "backoff": duration(MS_1),
    },
    checks=[_retries_check],
    name="HTTPRetry",
)


def _abort_check(value: dict, path: str, ctx: Ctx) -> None:
    if "httpStatus" not in value and "grpcStatus" not in value:
        ctx.warn(path, "abort has no httpStatus or grpcStatus and does nothing")


FAULT = obj(
    {
        "delay": obj(
            {"fixedDelay": duration(MS_1), "percentage": PERCENT, "percent": integer(0, 100)},
            required=["fixedDelay"],
            unsupported={"exponentialDelay": "exponentialDelay is not supported (Istio neither)"},
            name="HTTPFaultInjection.Delay",
        ),
        "abort": obj(
            {
                "httpStatus": integer(200, 599),
                "grpcStatus": enum(*GRPC_STATUS),
                "percentage": PERCENT,
            },
            at_most_one=[("httpStatus", "grpcStatus")],
            checks=[_abort_check],
            unsupported={"http2Error": "http2Error aborts are not supported (Istio neither)"},
            name="HTTPFaultInjection.Abort",
        ),
    },
    at_least_one=[("delay", "abort")],
    name="HTTPFaultInjection",
)

REWRITE = obj(
    {
        "uri": string(),
        "authority": string(nonempty=True),
        "uriRegexRewrite": obj(
            {"match": regex(), "rewrite": string()},
            required=["match", "rewrite"],
            name="RegexRewrite",
        ),
    },
    at_most_one=[("uri", "uriRegexRewrite")],
    name="HTTPRewrite",
)


DIRECT_RESPONSE = obj(
    {
        "status": integer(200, 599),
        "body": obj(
            {"string": string()},
            required=["string"],
            unsupported={"bytes": "body.bytes is not supported by meshlet; use body.string"},
            name="HTTPBody",
        ),
    },
    required=["status"],
    name="HTTPDirectResponse",
)
CORS = obj(
    {
        "allowOrigins": list_of(STRING_MATCH),
        "allowOrigin": list_of(string()),
        "allowMethods": list_of(string()),
        "allowHeaders": list_of(string()),
        "exposeHeaders": list_of(string()),
        "maxAge": duration(),
        "allowCredentials": boolean(),
        "unmatchedPreflights": enum("UNSPECIFIED", "FORWARD", "IGNORE"),
    },
    name="CorsPolicy",
)


def _http_route_check(value: dict, path: str, ctx: Ctx) -> None:
    # redirect and delegate are refused as unsupported fields before this check runs
    actions = [k for k in ("route", "directResponse") if k in value]
    if len(actions) != 1:
        names = ", ".join(actions) if actions else "none"
        ctx.error(path, f"must set exactly one of route, directResponse (found {names})")
    if "directResponse" in value:
        for k in ("fault", "rewrite"):
            if k in value:
                ctx.error(join(path, k), "cannot be combined with directResponse")
    if "mirror" in value and "mirrors" in value:
        ctx.error(join(path, "mirrors"), "cannot be combined with mirror")
    if "mirrorPercentage" in value and "mirror" not in value:
        ctx.warn(join(path, "mirrorPercentage"), "has no effect without mirror")
    rewrite_auth = "authority" in (value.get("rewrite") or {})
    req = (value.get("headers") or {}).get("request") or {}
    hdr_auth = any(
        k.lower() in (":authority", "host") for op in ("set", "add") for k in req.get(op) or {}
    )
    if rewrite_auth and hdr_auth:
        ctx.error(
            join(path, "headers"), "authority is rewritten both by rewrite.authority and headers"
        )


HTTP_ROUTE = obj(
    {
        "name": string(),
        "match": list_of(HTTP_MATCH),
        "route": _route_destinations,
        "directResponse": DIRECT_RESPONSE,
        "rewrite": REWRITE,
        "timeout": duration(0),  # 0s = no timeout (Istio's default)
        "retries": RETRIES,
        "fault": FAULT,
        "mirror": DESTINATION,
        # meshlet mirrors to one destination; a second one is refused rather than dropped
        "mirrors": list_of(
            obj(
                {"destination": DESTINATION, "percentage": PERCENT},
                required=["destination"],
                name="HTTPMirrorPolicy",
            ),
            max_items=1,
        ),
        "mirrorPercentage": PERCENT,
        "corsPolicy": CORS,
        "headers": HEADERS,
    },
    unsupported={
        "mirrorPercent": "mirrorPercent was removed from Istio; use mirrorPercentage",
        "redirect": "redirect is not supported by meshlet; use directResponse or route",
        "delegate": "delegate is not supported by meshlet; put the routes in this VirtualService",
    },
    checks=[_http_route_check],
    name="HTTPRoute",
)


# L4 routes (proxy/tcp/compile.py enforces them): TCP routes match the destination port,
# TLS routes the SNI of the client's ClientHello (passthrough: the bytes are not terminated).
# match.gateways and destinationSubnets are warned (field_status.py), not enforced.
L4_MATCH_COMMON = {
    "destinationSubnets": list_of(string(check=ip_or_cidr)),
    "port": port_number,
    "sourceLabels": LABELS,
    "gateways": list_of(string(nonempty=True)),
    "sourceNamespace": string(),
}
TCP_ROUTE = obj(
    {
        "match": list_of(obj(L4_MATCH_COMMON, name="L4MatchAttributes")),
        "route": _l4_route_destinations,
    },
    required=["route"],
    name="TCPRoute",
)
TLS_ROUTE = obj(
    {
        "match": list_of(
            obj(
                {"sniHosts": list_of(string(nonempty=True), nonempty=True), **L4_MATCH_COMMON},
                required=["sniHosts"],
                name="TLSMatchAttributes",
            ),
            nonempty=True,
        ),
        "route": _l4_route_destinations,
    },
    required=["match", "route"],
    name="TLSRoute",
)


VIRTUAL_SERVICE = obj(
    {
        "hosts": HOSTS,
        "gateways": list_of(string(nonempty=True)),
        "http": list_of(HTTP_ROUTE),
        "tls": list_of(TLS_ROUTE),
        "tcp": list_of(TCP_ROUTE),
        "exportTo": EXPORT_TO,
    },
    required=["hosts"],
    name="VirtualService",
)

# -- DestinationRule --------------------------------------------------------------------------


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def _maglev_size(value: Any, path: str, ctx: Ctx) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not _is_prime(value)
        or value >= 5000011
    ):
        ctx.error(path, "must be a prime number below 5000011")


CONSISTENT_HASH = obj(
    {
        "httpHeaderName": string(nonempty=True),
        "httpCookie": obj(
            {
                "name": string(nonempty=True),
                "path": string(),
                "ttl": duration(),
                "attributes": list_of(
                    obj(
                        {"name": string(nonempty=True), "value": string()},
                        required=["name"],
                        name="HTTPCookie.Attribute",
                    )
                ),
            },
            required=["name"],
            name="HTTPCookie",
        ),
        "useSourceIp": boolean(),
        "httpQueryParameterName": string(nonempty=True),
        "ringHash": obj({"minimumRingSize": integer(1)}, name="RingHash"),
        "maglev": obj({"tableSize": _maglev_size}, name="MagLev"),
        "minimumRingSize": integer(1),
    },
    exactly_one=[("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")],
    at_most_one=[("ringHash", "maglev", "minimumRingSize")],
    name="ConsistentHashLB",
)
LOAD_BALANCER = obj(
    {
        "simple": enum(
            "UNSPECIFIED", "LEAST_REQUEST", "LEAST_CONN", "ROUND_ROBIN", "RANDOM", "PASSTHROUGH"
        ),
        "consistentHash": CONSISTENT_HASH,
        "localityLbSetting": any_value(),
        "warmupDurationSecs": duration(),
        "warmup": obj(
            {"duration": duration(), "minimumPercent": number(0, 100), "aggression": number(1)},
            required=["duration"],
            name="WarmupConfiguration",
        ),
    },
    at_most_one=[("simple", "consistentHash"), ("warmupDurationSecs", "warmup")],
    name="LoadBalancerSettings",
)

CONNECTION_POOL = obj(
    {
        "tcp": obj(
            {
                "maxConnections": integer(0),
                "connectTimeout": duration(MS_1),
                "tcpKeepalive": obj(
                    {"probes": integer(0), "time": duration(), "interval": duration()},
                    name="TCPSettings.TcpKeepalive",
                ),
                "maxConnectionDuration": duration(MS_1),
                "idleTimeout": duration(),
            },
            name="ConnectionPoolSettings.TCPSettings",
        ),
        "http": obj(
            {
                "http1MaxPendingRequests": integer(0),
                "http2MaxRequests": integer(0),
                "maxRequestsPerConnection": integer(0),
                "maxRetries": integer(0),
                "idleTimeout": duration(),
                "h2UpgradePolicy": enum("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"),
                "useClientProtocol": boolean(),
                "maxConcurrentStreams": integer(0),
            },
            name="ConnectionPoolSettings.HTTPSettings",
        ),
    },
    at_least_one=[("tcp", "http")],
    name="ConnectionPoolSettings",
)


def _outlier_check(value: dict, path: str, ctx: Ctx) -> None:
    if "consecutiveLocalOriginFailures" in value and not value.get(
        "splitExternalLocalOriginErrors"
    ):
        ctx.error(
            join(path, "consecutiveLocalOriginFailures"),
            "requires splitExternalLocalOriginErrors: true",
        )


OUTLIER_DETECTION = obj(
    {
        "consecutive5xxErrors": integer(0),
        "consecutiveGatewayErrors": integer(0),
        "consecutiveErrors": integer(0),
        "consecutiveLocalOriginFailures": integer(0),
        "splitExternalLocalOriginErrors": boolean(),
        "interval": duration(MS_1),
        "baseEjectionTime": duration(MS_1),
        "maxEjectionPercent": integer(0, 100),
        "minHealthPercent": integer(0, 100),
        "outlierDetectionHttpErrorCodes": list_of(integer(100, 599)),
    },
    checks=[_outlier_check],
    name="OutlierDetection",
)


def _tls_check(value: dict, path: str, ctx: Ctx) -> None:
    if value.get("mode") == "ISTIO_MUTUAL":
        extra = sorted(k for k in value if k not in ("mode", "sni", "subjectAltNames"))
        if extra:
            ctx.error(path, f"ISTIO_MUTUAL uses mesh certificates; remove {', '.join(extra)}")
    if value.get("mode") == "MUTUAL":
        for k in ("clientCertificate", "privateKey"):
            if k not in value:
                ctx.error(join(path, k), "is required for MUTUAL")


CLIENT_TLS = obj(
    {
        "mode": enum("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"),
        "clientCertificate": string(nonempty=True),
        "privateKey": string(nonempty=True),
        "caCertificates": string(),
        "subjectAltNames": list_of(string(nonempty=True)),
        "sni": string(),
        "insecureSkipVerify": boolean(),
        "caCrl": string(),
    },
    checks=[_tls_check],
    # a Kubernetes secret; the sidecar reads certificate files (and has no secret store)
    unsupported={
        "credentialName": "credentialName is not supported by meshlet: name the files with "
        "clientCertificate, privateKey and caCertificates"
    },
    name="ClientTLSSettings",
)
RETRY_BUDGET = obj(
    {"percent": PERCENT, "minRetryConcurrency": integer(0), "budgetInterval": duration()},
    name="TrafficPolicy.RetryBudget",
)

_POLICY_FIELDS = {
    "loadBalancer": LOAD_BALANCER,
    "connectionPool": CONNECTION_POOL,
    "outlierDetection": OUTLIER_DETECTION,
    "tls": CLIENT_TLS,
    "retryBudget": RETRY_BUDGET,
    "tunnel": any_value(),
    "proxyProtocol": any_value(),
}
PORT_TRAFFIC_POLICY = obj(
    {
        "port": PORT_SELECTOR,
        **{
            k: _POLICY_FIELDS[k]
            for k in ("loadBalancer", "connectionPool", "outlierDetection", "tls")
        },
    },
    required=["port"],
    name="TrafficPolicy.PortTrafficPolicy",
)
_PORT_LEVEL = list_of(PORT_TRAFFIC_POLICY)


@shaped(_PORT_LEVEL)
def _port_level_unique(value: Any, path: str, ctx: Ctx) -> None:
    before = len(ctx.errors)
    _PORT_LEVEL(value, path, ctx)
    if len(ctx.errors) != before:
        return  # cross-entry checks need well-formed entries
    seen: set[int] = set()
    for i, p in enumerate(value if isinstance(value, list) else []):
        n = ((p or {}).get("port") or {}).get("number") if isinstance(p, dict) else None
        if isinstance(n, int):
            if n in seen:
                ctx.error(index(path, i), f"port {n} appears twice in portLevelSettings")
            seen.add(n)


TRAFFIC_POLICY = obj(
    {**_POLICY_FIELDS, "portLevelSettings": _port_level_unique}, name="TrafficPolicy"
)

SUBSET = obj(
    {
        "name": string(nonempty=True, check=dns1123_label),
        "labels": LABELS,
        "trafficPolicy": TRAFFIC_POLICY,
    },
    required=["name"],
    name="Subset",
)
_SUBSETS = list_of(SUBSET)


@shaped(_SUBSETS)
def _subsets(value: Any, path: str, ctx: Ctx) -> None:
    before = len(ctx.errors)
    _SUBSETS(value, path, ctx)
    if len(ctx.errors) != before:
        return  # cross-entry checks need well-formed entries
    seen: set[str] = set()
    for i, s in enumerate(value if isinstance(value, list) else []):
        name = s.get("name") if isinstance(s, dict) else None
        if isinstance(name, str):
            if name in seen:
                ctx.error(join(index(path, i), "name"), f"duplicate subset name {name!r}")
            seen.add(name)


DESTINATION_RULE = obj(
    {
        "host": HOST,
        "trafficPolicy": TRAFFIC_POLICY,
        "subsets": _subsets,
        "exportTo": EXPORT_TO,
        "workloadSelector": MATCH_LABELS,
    },
    required=["host"],
    name="DestinationRule",
)

# -- ServiceEntry / WorkloadEntry -------------------------------------------------------------

PROTOCOLS = (
    "HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "TCP", "TLS", "MONGO", "MYSQL", "REDIS", "UDP",
)  # fmt: skip


def _address(value: str) -> str | None:
    if value.startswith("unix://"):
        return None
    if ip_or_cidr(value) is None and "/" not in value:
        return None
    return hostname(value, wildcard=False)


WORKLOAD_ENTRY_FIELDS = {
    "address": string(check=_address),
    "ports": map_of(port_number),
    "labels": LABELS,
    "network": string(),
    "locality": string(),
    "weight": integer(0),
    "serviceAccount": string(check=dns1123_subdomain),
}


WORKLOAD_ENTRY = obj(WORKLOAD_ENTRY_FIELDS, required=["address"], name="WorkloadEntry")
SE_ENDPOINT = obj(WORKLOAD_ENTRY_FIELDS, required=["address"], name="ServiceEntry.endpoints[]")

SE_PORT = obj(
    {
        "number": port_number,
        "protocol": enum(*PROTOCOLS, case_insensitive=True),
        "name": string(nonempty=True),
        "targetPort": port_number,
        # Kubernetes Service.ports[].appProtocol: the protocol by another name (proxy/tcp)
        "appProtocol": string(nonempty=True),
    },
    required=["number", "name"],
    name="ServicePort",
)
_SE_PORTS = list_of(SE_PORT)


@shaped(_SE_PORTS)
def _ports_unique(value: Any, path: str, ctx: Ctx) -> None:
    before = len(ctx.errors)
    _SE_PORTS(value, path, ctx)
    if len(ctx.errors) != before:
        return  # cross-entry checks need well-formed entries
    numbers: set[Any] = set()
    names: set[Any] = set()
    for i, p in enumerate(value if isinstance(value, list) else []):
        if not isinstance(p, dict):
            continue
        if p.get("number") in numbers:
            ctx.error(join(index(path, i), "number"), f"port {p['number']} is declared twice")
        if p.get("name") in names:
            ctx.error(join(index(path, i), "name"), f"port name {p['name']!r} is declared twice")
        numbers.add(p.get("number"))
        names.add(p.get("name"))


def _service_entry_check(value: dict, path: str, ctx: Ctx) -> None:
    endpoints = value.get("endpoints") or []
    if endpoints and "workloadSelector" in value:
        ctx.error(join(path, "workloadSelector"), "cannot be combined with endpoints")
    resolution = value.get("resolution", "NONE")
    port_names = {p.get("name") for p in value.get("ports") or []}
    for i, ep in enumerate(endpoints):
        ep_path = index(join(path, "endpoints"), i)
        addr = ep.get("address", "")
        if resolution == "STATIC" and not addr.startswith("unix://") and ip_or_cidr(addr):
            ctx.error(
                join(ep_path, "address"), f"{addr!r} must be an IP address with resolution STATIC"
            )
        for name in ep.get("ports") or {}:
            if name not in port_names:
                ctx.error(
                    join(join(ep_path, "ports"), name),
                    f"port name {name!r} is not one of the ServiceEntry's ports",
                )
    if resolution == "STATIC" and not endpoints and "workloadSelector" not in value:
        ctx.warn(
            join(path, "resolution"),
            "STATIC without endpoints or workloadSelector: the service has no endpoints",
        )
    for i, h in enumerate(value.get("hosts") or []):
        if h == "*" or (h.startswith("*.") and resolution == "DNS"):
            ctx.error(
                index(join(path, "hosts"), i),
                f"wildcard host {h!r} cannot be used with resolution {resolution}",
            )


SERVICE_ENTRY = obj(
    {
        "hosts": HOSTS,
        "addresses": list_of(string(check=ip_or_cidr)),
        "ports": _ports_unique,
        "location": enum("MESH_EXTERNAL", "MESH_INTERNAL"),
        "resolution": enum("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"),
        "endpoints": list_of(SE_ENDPOINT),
        "workloadSelector": SELECTOR_LABELS,
        "exportTo": EXPORT_TO,
        "subjectAltNames": list_of(string(nonempty=True)),
    },
    required=["hosts"],
    checks=[_service_entry_check],
    name="ServiceEntry",
)

# ``check_regex`` is re-exported for the sidecar's route compiler.
__all__ = [
    "DESTINATION_RULE",
    "SERVICE_ENTRY",
    "SIDECAR",
    "VIRTUAL_SERVICE",
    "WORKLOAD_ENTRY",
    "check_regex",
]


# -- Sidecar ----------------------------------------------------------------------------------
# Istio's Sidecar kind. meshlet enforces egress[].port/bind (a local TCP listener per port,
# proxy/tcp/egress.py), egress[].hosts (the services such a listener reaches) and
# ingress[].port/defaultEndpoint (where an HBONE stream for that port goes, proxy/tcp/inbound.py).


def _egress_host(value: str) -> str | None:
    """Istio's ``namespace/dnsName``: namespace ``*`` (any), ``.`` (the workload's) or ``~``
    (none), or a namespace name; dnsName ``*``, ``*.suffix`` or a host name."""
    ns, sep, host = value.partition("/")
    if not sep:
        return f"{value!r} must be namespace/dnsName (for example \"./*\" or \"*/{value}\")"
    if ns not in ("*", ".", "~") and dns1123_label(ns):
        return f"{value!r}: namespace {ns!r} must be *, ., ~ or a namespace name"
    if not host:
        return f"{value!r}: the dnsName after '/' is empty"
    return hostname(host)


def _endpoint(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if value.startswith("unix://"):
        return "unix domain socket endpoints are not supported; use 127.0.0.1:PORT"
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{value!r} must be HOST:PORT (for example 127.0.0.1:8080)"
    if host not in ("127.0.0.1", "0.0.0.0", "localhost", "[::1]", "::1"):
        return f"{value!r}: the default endpoint must be a loopback address"
    return None


def _bind(value: str) -> str | None:
    return ip_or_cidr(value) if "/" not in value else f"{value!r} must be an IP address"


SIDECAR_PORT = obj(
    {
        "number": port_number,
        "protocol": enum(*PROTOCOLS, case_insensitive=True),
        "name": string(),
        "targetPort": port_number,
    },
    required=["number"],
    name="Sidecar.Port",
)


# captureMode, ingress[].tls and connectionPool, outboundTrafficPolicy and
# inboundConnectionPool are accepted and warned about (field_status.py), not enforced.
_CAPTURE_MODE = enum("DEFAULT", "IPTABLES", "NONE")


SIDECAR_EGRESS = obj(
    {
        "hosts": list_of(string(nonempty=True, check=_egress_host), nonempty=True),
        "port": SIDECAR_PORT,
        "bind": string(nonempty=True, check=_bind),
        "captureMode": _CAPTURE_MODE,
    },
    required=["hosts"],
    name="IstioEgressListener",
)
SIDECAR_INGRESS = obj(
    {
        "port": SIDECAR_PORT,
        "bind": string(nonempty=True, check=_bind),
        "captureMode": _CAPTURE_MODE,
        "defaultEndpoint": string(nonempty=True, check=_endpoint),
        "tls": any_value(),
        "connectionPool": any_value(),
    },
    required=["port"],
    name="IstioIngressListener",
)
SIDECAR = obj(
    {
        "workloadSelector": SELECTOR_LABELS,
        "egress": list_of(SIDECAR_EGRESS),
        "ingress": list_of(SIDECAR_INGRESS),
        "outboundTrafficPolicy": any_value(),
        "inboundConnectionPool": any_value(),
    },
    name="Sidecar",
)
__all__ += ["SIDECAR"]
