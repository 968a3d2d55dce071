"""Table-driven invalid documents: each names the exact field path, the file and the document."""

from __future__ import annotations

import copy

import pytest
import yaml

from control_plane.api.resources import InvalidConfig, load_text, load_text_with_warnings

NET = "networking.istio.io/v1"
SEC = "security.istio.io/v1"
MESH = "meshlet.dev/v1alpha1"


def doc(kind: str, spec: dict, api: str = "", name: str = "r") -> dict:
    api = api or {
        "AuthorizationPolicy": SEC,
        "PeerAuthentication": SEC,
        "ResiliencePolicy": MESH,
        "MeshConfig": MESH,
    }.get(kind, NET)
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, "spec": spec}


def vs_route(**route) -> dict:
    base = {"route": [{"destination": {"host": "reviews"}}]}
    base.update(route)
    return doc("VirtualService", {"hosts": ["reviews"], "http": [base]})


def vs_match(**match) -> dict:
    return vs_route(match=[match])


def dr(**spec) -> dict:
    return doc("DestinationRule", {"host": "reviews", **spec})


def se(**spec) -> dict:
    base = {"hosts": ["api.example.com"], "ports": [{"number": 80, "name": "http"}]}
    base.update(spec)
    return doc("ServiceEntry", base)


def ap(**spec) -> dict:
    return doc("AuthorizationPolicy", spec)


def rules(**rule) -> dict:
    return ap(rules=[rule])


def rp(**spec) -> dict:
    return doc("ResiliencePolicy", {"host": "payment", **spec})


CASES = [
    # top level and metadata
    (
        {"kind": "VirtualService", "metadata": {"name": "r"}, "spec": {"hosts": ["a"]}},
        "apiVersion",
        "is required; use one of networking.istio.io/v1",
    ),
    (
        doc("VirtualService", {"hosts": ["a"]}, api="security.istio.io/v1"),
        "apiVersion",
        "is not an API version",
    ),
    (doc("AuthorizationPolicy", {}, api=NET), "apiVersion", "use one of security.istio.io/v1"),
    ({"apiVersion": NET, "metadata": {"name": "r"}}, "kind", "is required"),
    (doc("Gateway", {}), "kind", "unknown kind 'Gateway'"),
    (doc("Sidecar", {"egress": [{"hosts": ["reviews"]}]}), "spec.egress[0].hosts[0]",
     "must be namespace/dnsName"),
    (doc("Sidecar", {"workloadSelector": {"matchLabels": {"a": "b"}}}),
     "spec.workloadSelector.matchLabels", "unknown field"),
    (doc("Sidecar", {"egress": [{"port": {"number": 6379}}]}), "spec.egress[0].hosts",
     "is required"),
    (doc("Sidecar", {"egress": [{"hosts": ["cache"]}]}), "spec.egress[0].hosts[0]",
     "namespace/dnsName"),
    (doc("Sidecar", {"ingress": [{"port": {"number": 1}, "defaultEndpoint": "10.1.1.1:80"}]}),
     "spec.ingress[0].defaultEndpoint", "loopback"),
    (doc("VirtualService", {"hosts": ["a"], "tls": [{"route": [{"destination": {"host": "a"}}]}]}),
     "spec.tls[0].match", "is required"),
    (doc("VirtualService", {"hosts": ["a"], "tcp": [{"match": [{"port": 0}]}]}),
     "spec.tcp[0].route", "is required"),
    (doc("VirtualService", {"hosts": ["a"]}, name="Bad_Name"), "metadata.name", "DNS-1123"),
    (
        {"apiVersion": NET, "kind": "DestinationRule", "metadata": {}, "spec": {"host": "a"}},
        "metadata.name",
        "is required",
    ),
    (
        {"apiVersion": NET, "kind": "DestinationRule", "spec": {"host": "a"}},
        "metadata",
        "is required",
    ),
    ({**dr(), "metadata": {"name": "r", "namespace": "Prod"}}, "metadata.namespace", "DNS-1123"),
    (
        {**dr(), "metadata": {"name": "r", "labels": {"version": 1.0}}},
        "metadata.labels.version",
        'quote it: "1.0"',
    ),
    ({**dr(), "extra": 1}, "extra", 'unknown top-level field "extra"'),
    ({**dr(), "metadata": {"name": "r", "nmespace": "x"}}, "metadata.nmespace", "unknown field"),
    # VirtualService
    (doc("VirtualService", {}), "spec.hosts", "is required"),
    (doc("VirtualService", {"hosts": []}), "spec.hosts", "must not be empty"),
    (doc("VirtualService", {"hosts": "reviews"}), "spec.hosts", "must be a list"),
    (doc("VirtualService", {"hosts": ["re*views"]}), "spec.hosts[0]", "wildcard"),
    (
        doc("VirtualService", {"hosts": ["a"], "htp": []}),
        "spec.htp",
        'unknown field "htp" (did you mean "http"?)',
    ),
    (vs_route(route=[]), "spec.http[0].route", "must not be empty"),
    (vs_route(route=[{"weight": 100}]), "spec.http[0].route[0].destination", "is required"),
    (
        vs_route(route=[{"destination": {"subset": "v1"}}]),
        "spec.http[0].route[0].destination.host",
        "is required",
    ),
    (
        vs_route(route=[{"destination": {"host": "a"}, "weight": -1}]),
        "spec.http[0].route[0].weight",
        "must be an integer >= 0",
    ),
    (
        vs_route(route=[{"destination": {"host": "a"}, "weight": "50"}]),
        "spec.http[0].route[0].weight",
        "must be an integer >= 0",
    ),
    (
        vs_route(
            route=[
                {"destination": {"host": "a"}, "weight": 0},
                {"destination": {"host": "b"}, "weight": 0},
            ]
        ),
        "spec.http[0].route",
        "total destination weight must be > 0",
    ),
    (
        vs_route(route=[{"destination": {"host": "a", "port": {"number": 70000}}}]),
        "spec.http[0].route[0].destination.port.number",
        "between 1 and 65535",
    ),
    (
        vs_route(route=[{"destination": {"host": "a"}, "wieght": 1}]),
        "spec.http[0].route[0].wieght",
        'did you mean "weight"',
    ),
    (
        {**vs_route(), "spec": {"hosts": ["a"], "http": [{"match": []}]}},
        "spec.http[0]",
        "exactly one of route, directResponse",
    ),
    (vs_match(uri={}), "spec.http[0].match[0].uri", "exactly one of exact, prefix, regex"),
    (
        vs_match(uri={"exact": "/a", "prefix": "/b"}),
        "spec.http[0].match[0].uri",
        "(found exact, prefix)",
    ),
    (vs_match(uri={"regex": "/a(?=b)"}), "spec.http[0].match[0].uri.regex", "look-ahead"),
    (vs_match(uri={"regex": "(a)\\1"}), "spec.http[0].match[0].uri.regex", "back-reference"),
    (vs_match(uri={"regex": "[a-"}), "spec.http[0].match[0].uri.regex", "invalid regex"),
    (vs_match(uri={"regex": "[[:alpha:]]"}), "spec.http[0].match[0].uri.regex", "invalid regex"),
    (vs_match(uri={"suffix": "/a"}), "spec.http[0].match[0].uri.suffix", "unknown field"),
    (vs_match(method={}), "spec.http[0].match[0].method", "exactly one"),
    (vs_match(authority={"regex": "("}), "spec.http[0].match[0].authority.regex", "invalid regex"),
    (
        vs_match(headers={"X-User": {"exact": "a"}}),
        "spec.http[0].match[0].headers.X-User",
        "must be lowercase",
    ),
    (
        vs_match(headers={"x-user": {"exact": "a", "regex": "b"}}),
        "spec.http[0].match[0].headers.x-user",
        "at most one",
    ),
    (
        vs_match(headers={"x-user": {"exact": 5}}),
        "spec.http[0].match[0].headers.x-user.exact",
        "must be a string",
    ),
    (
        vs_match(withoutHeaders={"x-a": {"prefix": 1}}),
        "spec.http[0].match[0].withoutHeaders.x-a.prefix",
        "must be a string",
    ),
    (
        vs_match(queryParams={"q": {"regex": "+"}}),
        "spec.http[0].match[0].queryParams.q.regex",
        "invalid regex",
    ),
    (vs_match(port=0), "spec.http[0].match[0].port", "between 1 and 65535"),
    (vs_match(ignoreUriCase="yes"), "spec.http[0].match[0].ignoreUriCase", "true or false"),
    (vs_route(timeout="5"), "spec.http[0].timeout", "invalid duration '5'"),
    (vs_route(timeout=5), "spec.http[0].timeout", 'must be a duration string such as "5s"'),
    (vs_route(timeout="-1s"), "spec.http[0].timeout", "invalid duration"),
    (
        vs_route(retries={"attempts": -1}),
        "spec.http[0].retries.attempts",
        "must be an integer >= 0",
    ),
    (
        vs_route(retries={"attempts": 2, "perTryTimeout": "0.5ms"}),
        "spec.http[0].retries.perTryTimeout",
        "must be at least 1ms",
    ),
    (
        vs_route(retries={"attempts": 2, "retryOn": "5xx,bogus"}),
        "spec.http[0].retries.retryOn",
        "unknown retry condition 'bogus'",
    ),
    (
        vs_route(retries={"attempts": 2, "retryOn": "5xx,,reset"}),
        "spec.http[0].retries.retryOn",
        "empty retry condition",
    ),
    (
        vs_route(retries={"attempts": 2, "retryOn": "999"}),
        "spec.http[0].retries.retryOn",
        "between 100 and 599",
    ),
    (
        vs_route(retries={"retryOn": "5xx"}),
        "spec.http[0].retries.retryOn",
        "cannot be set when attempts is 0",
    ),
    (vs_route(fault={}), "spec.http[0].fault", "at least one of delay, abort"),
    (
        vs_route(fault={"delay": {"percentage": {"value": 10}}}),
        "spec.http[0].fault.delay.fixedDelay",
        "is required",
    ),
    (
        vs_route(fault={"delay": {"fixedDelay": "1s", "percentage": {"value": 101}}}),
        "spec.http[0].fault.delay.percentage.value",
        "between 0 and 100",
    ),
    (
        vs_route(fault={"delay": {"fixedDelay": "1s", "exponentialDelay": "1s"}}),
        "spec.http[0].fault.delay.exponentialDelay",
        "not supported",
    ),
    (
        vs_route(fault={"abort": {"httpStatus": 600}}),
        "spec.http[0].fault.abort.httpStatus",
        "between 200 and 599",
    ),
    (
        vs_route(fault={"abort": {"grpcStatus": "14"}}),
        "spec.http[0].fault.abort.grpcStatus",
        "must be one of OK, CANCELLED",
    ),
    (
        vs_route(fault={"abort": {"httpStatus": 503, "grpcStatus": "UNAVAILABLE"}}),
        "spec.http[0].fault.abort",
        "at most one of httpStatus, grpcStatus",
    ),
    (vs_route(mirror={"subset": "v2"}), "spec.http[0].mirror.host", "is required"),
    (
        vs_route(mirror={"host": "a"}, mirrorPercentage={"value": -1}),
        "spec.http[0].mirrorPercentage.value",
        "between 0 and 100",
    ),
    (
        vs_route(mirror={"host": "a"}, mirrors=[{"destination": {"host": "b"}}]),
        "spec.http[0].mirrors",
        "cannot be combined with mirror",
    ),
    (
        vs_route(headers={"request": {"set": {"x-a": 1}}}),
        "spec.http[0].headers.request.set.x-a",
        "header value must be a string",
    ),
    (
        vs_route(headers={"request": {"set": {"bad header": "v"}}}),
        'spec.http[0].headers.request.set["bad header"]',
        "not a valid HTTP header name",
    ),
    (
        vs_route(headers={"request": {"remove": "x-a"}}),
        "spec.http[0].headers.request.remove",
        "must be a list",
    ),
    (vs_route(headers={"reqest": {}}), "spec.http[0].headers.reqest", "unknown field"),
    (
        vs_route(rewrite={"uri": "/a", "uriRegexRewrite": {"match": "a", "rewrite": "b"}}),
        "spec.http[0].rewrite",
        "at most one of uri, uriRegexRewrite",
    ),
    (
        vs_route(rewrite={"uriRegexRewrite": {"match": "(?<=a)", "rewrite": "b"}}),
        "spec.http[0].rewrite.uriRegexRewrite.match",
        "look-behind",
    ),
    (
        vs_route(rewrite={"uriRegexRewrite": {"match": "a"}}),
        "spec.http[0].rewrite.uriRegexRewrite.rewrite",
        "is required",
    ),
    (
        vs_route(rewrite={"authority": "a"}, headers={"request": {"set": {"host": "b"}}}),
        "spec.http[0].headers",
        "authority is rewritten both",
    ),
    # DestinationRule
    (doc("DestinationRule", {}), "spec.host", "is required"),
    (dr(subsets=[{"labels": {"version": "v1"}}]), "spec.subsets[0].name", "is required"),
    (dr(subsets=[{"name": "v1"}, {"name": "v1"}]), "spec.subsets[1].name", "duplicate subset"),
    (
        dr(subsets=[{"name": "v1", "labels": {"version": 1}}]),
        "spec.subsets[0].labels.version",
        "label value must be a string",
    ),
    (
        dr(trafficPolicy={"loadBalancer": {"simple": "ROUND_ROBN"}}),
        "spec.trafficPolicy.loadBalancer.simple",
        "must be one of UNSPECIFIED, LEAST_REQUEST",
    ),
    (
        dr(
            trafficPolicy={
                "loadBalancer": {"simple": "RANDOM", "consistentHash": {"useSourceIp": True}}
            }
        ),
        "spec.trafficPolicy.loadBalancer",
        "at most one of simple, consistentHash",
    ),
    (
        dr(trafficPolicy={"loadBalancer": {"consistentHash": {}}}),
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "exactly one of httpHeaderName",
    ),
    (
        dr(
            trafficPolicy={
                "loadBalancer": {
                    "consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 1000}}
                }
            }
        ),
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        "prime",
    ),
    (
        dr(trafficPolicy={"connectionPool": {}}),
        "spec.trafficPolicy.connectionPool",
        "at least one of tcp, http",
    ),
    (
        dr(trafficPolicy={"connectionPool": {"tcp": {"maxConnections": -5}}}),
        "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        "must be an integer >= 0",
    ),
    (
        dr(trafficPolicy={"connectionPool": {"tcp": {"connectTimeout": "fast"}}}),
        "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        "invalid duration",
    ),
    (
        dr(trafficPolicy={"connectionPool": {"http": {"http2MaxRequests": 1.5}}}),
        "spec.trafficPolicy.connectionPool.http.http2MaxRequests",
        "must be an integer",
    ),
    (
        dr(trafficPolicy={"connectionPool": {"http": {"idleTimeout": "1y"}}}),
        "spec.trafficPolicy.connectionPool.http.idleTimeout",
        "invalid duration",
    ),
    (
        dr(trafficPolicy={"outlierDetection": {"maxEjectionPercent": 101}}),
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        "between 0 and 100",
    ),
    (
        dr(trafficPolicy={"outlierDetection": {"minHealthPercent": -1}}),
        "spec.trafficPolicy.outlierDetection.minHealthPercent",
        "between 0 and 100",
    ),
    (
        dr(trafficPolicy={"outlierDetection": {"interval": "0s"}}),
        "spec.trafficPolicy.outlierDetection.interval",
        "at least 1ms",
    ),
    (
        dr(trafficPolicy={"outlierDetection": {"consecutiveLocalOriginFailures": 3}}),
        "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
        "requires splitExternalLocalOriginErrors",
    ),
    (
        dr(trafficPolicy={"outlierDetection": {"consecutive5xxErrors": "5"}}),
        "spec.trafficPolicy.outlierDetection.consecutive5xxErrors",
        "must be an integer >= 0",
    ),
    (
        dr(trafficPolicy={"tls": {"mode": "STRICT"}}),
        "spec.trafficPolicy.tls.mode",
        "must be one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL",
    ),
    (
        dr(trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL", "privateKey": "/k"}}),
        "spec.trafficPolicy.tls",
        "remove privateKey",
    ),
    (
        dr(trafficPolicy={"tls": {"mode": "MUTUAL", "privateKey": "/k"}}),
        "spec.trafficPolicy.tls.clientCertificate",
        "is required for MUTUAL",
    ),
    (
        dr(trafficPolicy={"tls": {"mode": "MUTUAL", "credentialName": "c"}}),
        "spec.trafficPolicy.tls.credentialName",
        "is not supported by meshlet",
    ),
    (
        dr(trafficPolicy={"portLevelSettings": [{"tls": {"mode": "DISABLE"}}]}),
        "spec.trafficPolicy.portLevelSettings[0].port",
        "is required",
    ),
    (
        dr(
            trafficPolicy={
                "portLevelSettings": [{"port": {"number": 80}}, {"port": {"number": 80}}]
            }
        ),
        "spec.trafficPolicy.portLevelSettings[1]",
        "appears twice",
    ),
    (
        dr(subsets=[{"name": "v1", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}]),
        "spec.subsets[0].trafficPolicy.loadBalancer.simple",
        "must be one of",
    ),
    # ServiceEntry
    (doc("ServiceEntry", {"ports": []}), "spec.hosts", "is required"),
    (se(ports=[{"number": 80}]), "spec.ports[0].name", "is required"),
    (
        se(ports=[{"number": 80, "name": "http", "protocol": "QUIC"}]),
        "spec.ports[0].protocol",
        "must be one of HTTP",
    ),
    (se(ports=[{"number": 0, "name": "http"}]), "spec.ports[0].number", "between 1 and 65535"),
    (
        se(ports=[{"number": 80, "name": "a"}, {"number": 80, "name": "b"}]),
        "spec.ports[1].number",
        "declared twice",
    ),
    (se(resolution="STATICAL"), "spec.resolution", "must be one of NONE, STATIC, DNS"),
    (se(location="OUTSIDE"), "spec.location", "must be one of MESH_EXTERNAL, MESH_INTERNAL"),
    (
        se(resolution="STATIC", endpoints=[{"address": "db.example.com"}]),
        "spec.endpoints[0].address",
        "must be an IP address with resolution STATIC",
    ),
    (
        se(resolution="STATIC", endpoints=[{"ports": {"http": 80}}]),
        "spec.endpoints[0].address",
        "is required",
    ),
    (
        se(resolution="STATIC", endpoints=[{"address": "10.0.0.1", "ports": {"grpc": 80}}]),
        "spec.endpoints[0].ports.grpc",
        "not one of the ServiceEntry's ports",
    ),
    (
        se(resolution="STATIC", endpoints=[{"address": "10.0.0.1", "ports": {"http": 0}}]),
        "spec.endpoints[0].ports.http",
        "between 1 and 65535",
    ),
    (
        se(resolution="STATIC", endpoints=[{"address": "10.0.0.1", "weight": -1}]),
        "spec.endpoints[0].weight",
        "must be an integer >= 0",
    ),
    (
        se(
            endpoints=[{"address": "10.0.0.1"}],
            workloadSelector={"labels": {"app": "a"}},
            resolution="STATIC",
        ),
        "spec.workloadSelector",
        "cannot be combined with endpoints",
    ),
    (se(resolution="DNS", hosts=["*.example.com"]), "spec.hosts[0]", "wildcard host"),
    (se(addresses=["10.0.0.300"]), "spec.addresses[0]", "not an IP address"),
    # WorkloadEntry
    (doc("WorkloadEntry", {"ports": {"http": 80}}), "spec.address", "is required"),
    (
        doc("WorkloadEntry", {"address": "10.0.0.1", "ports": {"http": "80"}}),
        "spec.address" if False else "spec.ports.http",
        "between 1 and 65535",
    ),
    (
        doc("WorkloadEntry", {"address": "10.0.0.1", "serviceAccount": "Orders"}),
        "spec.serviceAccount",
        "DNS-1123",
    ),
    (
        doc("WorkloadEntry", {"address": "10.0.0.1", "labels": {"app": ["x"]}}),
        "spec.labels.app",
        "label value must be a string",
    ),
    (doc("WorkloadEntry", {"address": "not a host!"}), "spec.address", "not a valid host name"),
    # AuthorizationPolicy
    (ap(action="CUSTOM", rules=[{}]), "spec.action", "CUSTOM is not supported"),
    (ap(action="REJECT"), "spec.action", "must be one of ALLOW, DENY, AUDIT, CUSTOM"),
    (ap(provider={"name": "x"}), "spec.provider", "not supported"),
    (ap(selector={"labels": {"app": "a"}}), "spec.selector.labels", "unknown field"),
    (rules(**{"from": [{}]}), "spec.rules[0].from[0].source", "is required"),
    (
        rules(**{"from": [{"source": {}}]}),
        "spec.rules[0].from[0].source",
        "source must not be empty",
    ),
    (
        rules(**{"from": [{"source": {"principals": "cluster.local/ns/a/sa/b"}}]}),
        "spec.rules[0].from[0].source.principals",
        "must be a list",
    ),
    (
        rules(**{"from": [{"source": {"namespaces": ["a*b"]}}]}),
        "spec.rules[0].from[0].source.namespaces[0]",
        "'*' is only allowed at the start or the end",
    ),
    (
        rules(**{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}),
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "not an IP address or CIDR",
    ),
    (
        rules(**{"from": [{"source": {"serviceAccounts": ["a/b"], "namespaces": ["a"]}}]}),
        "spec.rules[0].from[0].source",
        "serviceAccounts cannot be combined",
    ),
    (rules(to=[{"operation": {}}]), "spec.rules[0].to[0].operation", "operation must not be empty"),
    (
        rules(to=[{"operation": {"ports": [8080]}}]),
        "spec.rules[0].to[0].operation.ports[0]",
        'quote it: "8080"',
    ),
    (
        rules(to=[{"operation": {"ports": ["http"]}}]),
        "spec.rules[0].to[0].operation.ports[0]",
        "between 0 and 65535",
    ),
    (
        rules(to=[{"operation": {"paths": ["/a/{**}/b"]}}]),
        "spec.rules[0].to[0].operation.paths[0]",
        "{**} must be the last",
    ),
    (
        rules(to=[{"operation": {"paths": ["/a/{x}"]}}]),
        "spec.rules[0].to[0].operation.paths[0]",
        "invalid path template segment",
    ),
    (
        rules(to=[{"operation": {"verbs": ["GET"]}}]),
        "spec.rules[0].to[0].operation.verbs",
        "unknown field",
    ),
    (
        rules(when=[{"key": "request.headers[x-a]"}]),
        "spec.rules[0].when[0]",
        "at least one of values, notValues",
    ),
    (
        rules(when=[{"key": "request.header[x-a]", "values": ["a"]}]),
        "spec.rules[0].when[0].key",
        "unknown condition key 'request.header[x-a]'",
    ),
    (
        rules(when=[{"key": "source.ip", "values": ["nope"]}]),
        "spec.rules[0].when[0].values[0]",
        "not an IP address",
    ),
    (
        rules(when=[{"key": "destination.port", "notValues": ["99999"]}]),
        "spec.rules[0].when[0].notValues[0]",
        "between 0 and 65535",
    ),
    (rules(when=[{"values": ["a"]}]), "spec.rules[0].when[0].key", "is required"),
    # PeerAuthentication
    (
        doc("PeerAuthentication", {"mtls": {"mode": "STRICTER"}}),
        "spec.mtls.mode",
        "must be one of UNSET, DISABLE, PERMISSIVE, STRICT",
    ),
    (
        doc("PeerAuthentication", {"portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
        "spec.portLevelMtls",
        "requires a selector",
    ),
    (
        doc(
            "PeerAuthentication",
            {
                "selector": {"matchLabels": {"app": "a"}},
                "portLevelMtls": {"http": {"mode": "DISABLE"}},
            },
        ),
        "spec.portLevelMtls.http",
        "must be a number",
    ),
    (doc("PeerAuthentication", {"mtls": "STRICT"}), "spec.mtls", "must be a mapping"),
    # ResiliencePolicy
    (doc("ResiliencePolicy", {}), "spec.host", "is required"),
    (
        rp(circuitBreaker={"failureRateThreshold": 0}),
        "spec.circuitBreaker.failureRateThreshold",
        "must be a number > 0 and <= 100",
    ),
    (
        rp(circuitBreaker={"slowCallRateThreshold": 150}),
        "spec.circuitBreaker.slowCallRateThreshold",
        "must be a number > 0 and <= 100",
    ),
    (
        rp(circuitBreaker={"slidingWindowType": "COUNT"}),
        "spec.circuitBreaker.slidingWindowType",
        "must be one of COUNT_BASED, TIME_BASED",
    ),
    (
        rp(circuitBreaker={"slidingWindowSize": 0}),
        "spec.circuitBreaker.slidingWindowSize",
        "must be an integer >= 1",
    ),
    (
        rp(circuitBreaker={"minimumNumberOfCalls": 0}),
        "spec.circuitBreaker.minimumNumberOfCalls",
        "must be an integer >= 1",
    ),
    (
        rp(circuitBreaker={"waitDurationInOpenState": 60}),
        "spec.circuitBreaker.waitDurationInOpenState",
        'such as "60s"',
    ),
    (
        rp(circuitBreaker={"permittedNumberOfCallsInHalfOpenState": 0}),
        "spec.circuitBreaker.permittedNumberOfCallsInHalfOpenState",
        ">= 1",
    ),
    (
        rp(circuitBreaker={"failureRate": 50}),
        "spec.circuitBreaker.failureRate",
        'did you mean "failureRateThreshold"',
    ),
    (rp(bulkhead={"maxConcurrentCalls": -1}), "spec.bulkhead.maxConcurrentCalls", ">= 0"),
    (rp(bulkhead={"maxWaitDuration": "soon"}), "spec.bulkhead.maxWaitDuration", "invalid duration"),
    (rp(rateLimiter={"limitForPeriod": 0}), "spec.rateLimiter.limitForPeriod", ">= 1"),
    (
        rp(rateLimiter={"limitRefreshPeriod": "0s"}),
        "spec.rateLimiter.limitRefreshPeriod",
        "must be at least",
    ),
    (rp(retryBudget={"retryRatio": -0.1}), "spec.retryBudget.retryRatio", "must be a number >= 0"),
    (
        rp(retryBudget={"minRetriesPerSecond": 1.5}),
        "spec.retryBudget.minRetriesPerSecond",
        "must be an integer >= 0",
    ),
    (rp(retryBudget={"ttl": "120s"}), "spec.retryBudget.ttl", "must be at most 1m"),
    (rp(retryBudget={"ttl": "100ms"}), "spec.retryBudget.ttl", "must be at least 1s"),
    (rp(hedging={"delay": "p100"}), "spec.hedging.delay", "percentile"),
    (rp(hedging={"delay": "fast"}), "spec.hedging.delay", 'a percentile such as "p95"'),
    (rp(hedging={"delay": "0s"}), "spec.hedging.delay", "greater than 0"),
    (rp(hedging={"maxHedges": 0}), "spec.hedging.maxHedges", ">= 1"),
    (rp(retries={"attempts": 1}), "spec.retries", "unknown field"),
    # MeshConfig
    (
        doc("MeshConfig", {"trustDomain": "Cluster Local"}),
        "spec.trustDomain",
        "not a valid trust domain",
    ),
    (
        doc("MeshConfig", {"certificateLifetime": "2s"}),
        "spec.certificateLifetime",
        "must be at least 5s",
    ),
    (
        doc("MeshConfig", {"defaultRetryPolicy": {"attempts": 2, "retryOn": "sometimes"}}),
        "spec.defaultRetryPolicy.retryOn",
        "unknown retry condition",
    ),
    (
        doc("MeshConfig", {"tracing": {"sampling": 150}}),
        "spec.tracing.sampling",
        "between 0 and 100",
    ),
    (
        doc("MeshConfig", {"accessLog": {"encoding": "XML"}}),
        "spec.accessLog.encoding",
        "must be one of JSON, TEXT",
    ),
]


def _id(case):
    d, field, _ = case
    return f"{d.get('kind', 'nokind')}:{field}"


@pytest.mark.parametrize("document,field,reason", CASES, ids=[_id(c) for c in CASES])
def test_invalid(document, field, reason):
    text = yaml.safe_dump(copy.deepcopy(document), sort_keys=False)
    ok = yaml.safe_dump(
        {"apiVersion": MESH, "kind": "MeshConfig", "metadata": {"name": "m"}, "spec": {}}
    )
    with pytest.raises(InvalidConfig) as exc:
        load_text(ok + "---\n" + text, "configs/bad.yaml")
    errors = exc.value.errors
    matching = [e for e in errors if e.field == field]
    assert matching, f"no error at {field}; got {[str(e) for e in errors]}"
    e = matching[0]
    assert reason in e.reason, str(e)
    assert e.source == "configs/bad.yaml" and e.document == 2
    assert str(e).startswith("configs/bad.yaml: document 2 (")
    assert f": {field}: " in str(e)
    assert str(e) in str(exc.value).splitlines()


WARNINGS = [
    (
        vs_route(
            route=[
                {"destination": {"host": "a"}, "weight": 50},
                {"destination": {"host": "b"}, "weight": 20},
            ]
        ),
        "spec.http[0].route",
        "weights sum to 70",
    ),
    (
        vs_route(retries={"attempts": 2, "retryOn": "5xx, reset"}),
        "spec.http[0].retries.retryOn",
        "whitespace",
    ),
    (
        vs_route(fault={"abort": {"percentage": {"value": 5}}}),
        "spec.http[0].fault.abort",
        "does nothing",
    ),
    (vs_route(mirrorPercentage={"value": 5}), "spec.http[0].mirrorPercentage", "no effect"),
    (
        vs_route(headers={"request": {"remove": ["host"]}}),
        "spec.http[0].headers.request.remove[0]",
        "cannot be removed",
    ),
    (
        doc("VirtualService", {"hosts": ["a"], "tcp": [
            {"match": [{"port": 5432, "gateways": ["mesh"]}],
             "route": [{"destination": {"host": "a"}}]}]}),
        "spec.tcp[0].match[0].gateways",
        "applies to gateways only",
    ),  # tcp routes are enforced (proxy/tcp); match.gateways is the one part a sidecar ignores
    (
        rules(to=[{"operation": {"methods": ["get"]}}]),
        "spec.rules[0].to[0].operation.methods[0]",
        "never matches",
    ),
    (
        se(resolution="NONE", endpoints=[{"address": "10.0.0.1"}]),
        "spec.resolution",
        "accepted but not enforced by meshlet: value 'NONE'",
    ),
    (se(resolution="STATIC"), "spec.resolution", "no endpoints"),
    (
        rules(**{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/a/sa/b"]}}]}),
        "spec.rules[0].from[0].source.principals[0]",
        "written without spiffe://",
    ),
    (
        vs_match(headers={"uri": {"prefix": "/a"}}),
        "spec.http[0].match[0].headers.uri",
        "Istio ignores 'uri' under headers",
    ),
]


@pytest.mark.parametrize("document,field,reason", WARNINGS, ids=[_id(c) for c in WARNINGS])
def test_warning(document, field, reason):
    resources, warnings = load_text_with_warnings(yaml.safe_dump(document), "w.yaml")
    assert len(resources) == 1
    matching = [w for w in warnings if w.field == field]
    assert matching, [str(w) for w in warnings]
    assert reason in matching[0].reason
    assert matching[0].level == "warning"


VALID = [
    vs_match(headers={"x-user": {}}),
    vs_match(headers={"x-user": {"regex": "*"}}),
    vs_match(queryParams={"debug": {}}, withoutHeaders={"x-a": {}}),
    vs_match(uri={"regex": "(?i)/api/(?P<v>v[0-9]+)/.*"}),
    vs_route(retries={"attempts": 3, "retryOn": "gateway-error,503,cancelled,unavailable"}),
    vs_route(retries={}),
    vs_route(timeout="0s"),
    vs_route(fault={"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}),
    vs_route(mirrors=[{"destination": {"host": "b"}, "percentage": {"value": 10}}]),
    vs_route(rewrite={"uriRegexRewrite": {"match": "^/a/(.*)", "rewrite": "/b/\\1"}}),
    {**vs_route(), "spec": {"hosts": ["a"], "http": [{"directResponse": {"status": 503}}]}},
    {
        **vs_route(),
        "spec": {
            "hosts": ["*.example.com", "*"],
            "http": [{"directResponse": {"status": 302, "body": {"string": "moved"}}}],
        },
    },
    dr(
        trafficPolicy={
            "loadBalancer": {"consistentHash": {"httpCookie": {"name": "u", "ttl": "0s"}}}
        }
    ),
    dr(trafficPolicy={"tls": {"mode": "MUTUAL", "clientCertificate": "/c", "privateKey": "/k"}}),
    doc("WorkloadEntry", {"address": "db.internal.example.com"}),
    se(resolution="DNS", endpoints=[{"address": "db.example.com", "ports": {"http": 8080}}]),
    ap(),
    ap(action="DENY", rules=[{}]),
    rules(when=[{"key": "request.auth.claims[groups][admin]", "values": ["x"]}]),
    doc("PeerAuthentication", {}),
    rp(),
    rp(hedging={"delay": "50ms"}, retryBudget={"retryRatio": 2.5}),
    doc("MeshConfig", {}),
]


NORMALIZED = {id(VALID[1]): vs_match(headers={"x-user": {}})["spec"]}


@pytest.mark.parametrize("document", VALID, ids=[c["kind"] for c in VALID])
def test_valid_edge_cases(document):
    [r] = load_text(yaml.safe_dump(document), "ok.yaml")
    assert r.spec == document["spec"] or r.spec == NORMALIZED.get(id(document))


def test_presence_regex_normalized_to_empty_match():
    d = vs_match(
        headers={"x-a": {"regex": "*"}},
        queryParams={"q": {"regex": "*"}},
        withoutHeaders={"x-b": {"regex": "*"}},
        uri={"regex": "/.*"},
    )
    [r] = load_text(yaml.safe_dump(d))
    assert r.spec["http"][0]["match"][0] == {
        "headers": {"x-a": {}},
        "queryParams": {"q": {}},
        "withoutHeaders": {"x-b": {}},
        "uri": {"regex": "/.*"},
    }
