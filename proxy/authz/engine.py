"""The inbound authorization engine: Istio ``AuthorizationPolicy`` compiled once per config into
an :class:`Authorizer` whose ``check(req)`` decides one request in a few microseconds.

Semantics are Istio's (security-ops.md 2.2-2.5):

* Selection: a policy applies when it sits in the workload's namespace or in the root namespace
  (mesh-wide) and its ``selector.matchLabels`` is a subset of the workload's labels. A policy with
  ``targetRef``/``targetRefs`` binds gateways and waypoints in Istio, never a sidecar, so it is
  skipped with a warning (the validator refuses those fields anyway). A policy annotated
  ``istio.io/dry-run: "true"`` is not enforced; :attr:`Authorizer.shadow` enforces it, for logging.
* Order: CUSTOM (refused by the validator) -> DENY (any match denies) -> if no ALLOW policy,
  allow -> any ALLOW match allows -> deny. A policy without rules matches nothing (so an ALLOW
  one denies everything); a rule ``{}`` matches everything. AUDIT only sets ``audited``.
* Strings: exact, ``prefix*``, ``*suffix``, ``*`` (present and non-empty); a list ORs its values;
  ``notX`` holds when the value is absent or matches none of them; ``X`` and ``notX`` together AND.
* Identity: ``source_principal`` uses Istio's form, the peer's SPIFFE ID without ``spiffe://``
  (``cluster.local/ns/default/sa/orders``). ``principals``, ``namespaces``, ``serviceAccounts``
  and the ``source.principal``/``source.namespace`` conditions see an identity only over mTLS:
  for a plaintext request it is absent, so ``principals: ["*"]`` does not match it and
  ``notPrincipals: ["*"]`` does.
* Fail closed on what cannot be evaluated: HTTP-only fields on a TCP authorizer
  (``protocol="tcp"``: hosts, methods, paths, request principals, request headers) and what this
  sidecar has no attribute for (``requestPrincipals`` and ``request.auth.*`` without JWT
  authentication, ``destination.ip``, ``connection.sni``). In an ALLOW policy the whole rule is
  dropped (it can only narrow what is allowed); in a DENY or AUDIT policy the field is ignored and
  the rest of the rule kept (it can only widen what is denied). Each case is a compile warning.
* ``remote.ip``/``remoteIpBlocks`` use the connection's source address (no trusted proxies).

The request's path must already be normalized (:func:`proxy.authz.normalize.normalize_path`),
without its query, and the header getter should join repeated fields with ``,``
(:func:`merged_header_getter`).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "DENY_BODY",
    "DENY_STATUS",
    "Authorizer",
    "Decision",
    "RequestAttrs",
    "compile_policies",
    "merged_header_getter",
    "peer_identity",
    "request_attrs",
]

log = logging.getLogger("meshlet.proxy.authz")

DENY_STATUS = 403
DENY_BODY = "RBAC: access denied"  # Envoy's RBAC filter body, which clients and tests look for

def _no_headers(name: str) -> str | None:
    return None


class RequestAttrs:
    """What the engine may look at for one request (built once per request, read-only)."""

    __slots__ = (
        "source_principal",
        "source_namespace",
        "source_ip",
        "request_principal",
        "method",
        "host",
        "port",
        "path",
        "headers",
        "mtls",
    )

    def __init__(
        self,
        *,
        source_principal: str | None = None,
        source_namespace: str | None = None,
        source_ip: str = "",
        request_principal: str | None = None,
        method: str = "GET",
        host: str = "",
        port: int = 0,
        path: str = "/",
        headers: Callable[[str], str | None] = _no_headers,
        mtls: bool = False,
    ) -> None:
        self.source_principal = source_principal or None
        if source_namespace is None and source_principal:
            source_namespace = _namespace_of(source_principal)
        self.source_namespace = source_namespace or None
        self.source_ip = source_ip
        self.request_principal = request_principal
        self.method = method
        self.host = host
        self.port = port
        self.path = path
        self.headers = headers  # get(lowercase name) -> merged value or None
        self.mtls = mtls

    def __repr__(self) -> str:
        return (
            f"<RequestAttrs {self.method} {self.host}{self.path} port={self.port}"
            f" from={self.source_principal!r} ip={self.source_ip!r} mtls={self.mtls}>"
        )


class Decision:
    """The outcome: ``policy`` is ``"ns/name"`` of the policy that decided, or ``""`` when none
    did (no ALLOW policy at all, or no ALLOW policy matched)."""

    __slots__ = ("allowed", "audited", "policy", "reason")

    def __init__(self, allowed: bool, policy: str, reason: str, audited: bool) -> None:
        self.allowed = allowed
        self.policy = policy
        self.reason = reason
        self.audited = audited

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return (self.allowed, self.policy, self.reason, self.audited) == (
            other.allowed, other.policy, other.reason, other.audited,
        )  # fmt: skip

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Decision(allowed={self.allowed}, policy={self.policy!r}, reason={self.reason!r},"
            f" audited={self.audited})"
        )


def peer_identity(spiffe_id: str) -> tuple[str | None, str | None]:
    """``(principal, namespace)`` from a peer's SPIFFE ID, Istio's way: the principal is the ID
    without ``spiffe://``. Compute it once per connection, not per request."""
    if not spiffe_id:
        return None, None
    principal = spiffe_id[9:] if spiffe_id.startswith("spiffe://") else spiffe_id
    return principal, _namespace_of(principal)


def _namespace_of(principal: str) -> str | None:
    i = principal.find("/ns/")
    if i <= 0:
        return None
    rest = principal[i + 4 :]
    j = rest.find("/")
    return rest[:j] if j > 0 else None


def merged_header_getter(headers: list[tuple[str, str]]) -> Callable[[str], str | None]:
    """A getter over lowercase ``(name, value)`` pairs that joins repeated fields with ``,``
    (so a condition sees every value, CVE-2021-32777). Costs nothing until a rule asks."""

    def get(name: str) -> str | None:
        found = None
        for k, v in headers:
            if k == name:
                found = v if found is None else found + "," + v
        return found

    return get


def request_attrs(
    head: Any, path: str, *, peer_spiffe_id: str, peer_ip: str, port: int, tls: bool
) -> RequestAttrs:
    """The attributes of an inbound HTTP/1 request head (``method``, ``host``, lowercase
    ``headers`` pairs), given its *normalized* path and the connection's facts. ``port`` is the
    destination (application) port; ``tls`` says the peer presented a verified certificate."""
    principal, namespace = peer_identity(peer_spiffe_id) if tls else (None, None)
    return RequestAttrs(
        source_principal=principal,
        source_namespace=namespace,
        source_ip=peer_ip,
        method=head.method,
        host=head.host or head.get("host") or "",
        port=port,
        path=path,
        headers=merged_header_getter(head.headers),
        mtls=bool(tls and principal),
    )


class Authorizer:
    """The compiled policies for one workload. Immutable; swap it whole on a config change.

    ``check(req) -> Decision`` is one generated function: every rule is inlined as a boolean
    expression over the request's attributes and precompiled constants (frozensets, tuples,
    bound regex methods), so a decision costs one call, and the Decision returned is a shared,
    prebuilt object. The generated source (``source``) holds only names; every value from the
    config is bound in its namespace, never pasted into the text.
    """

    def __init__(
        self,
        check: Callable[[RequestAttrs], Decision],
        source: str,
        empty: bool,
        policies: list[str],
        warnings: list[str],
        shadow: Authorizer | None = None,
    ) -> None:
        self.check = check
        self.source = source  # the generated check(), for debugging and config_dump
        self.empty = empty  # no policy applies: the caller may skip building RequestAttrs
        self.policies = policies  # "ns/name (ACTION)" of every policy in force
        self.warnings = warnings
        self.shadow = shadow  # the same with dry-run policies enforced; None when there are none


# -- compilation --------------------------------------------------------------------------------


def compile_policies(
    resources: Iterable[Any],
    workload_namespace: str,
    workload_labels: Mapping[str, str],
    root_namespace: str = "istio-system",
    *,
    protocol: str = "http",
) -> Authorizer:
    """Compile the AuthorizationPolicies among ``resources`` that apply to this workload.

    ``protocol`` is ``"http"`` or ``"tcp"``; on ``"tcp"`` the HTTP-only fields fail closed.
    """
    if protocol not in ("http", "tcp"):
        raise ValueError(f"protocol must be 'http' or 'tcp', not {protocol!r}")
    enforced: list[Any] = []
    dry_run: list[Any] = []
    warnings: list[str] = []
    for res in sorted(
        (r for r in resources if r.kind == "AuthorizationPolicy"),
        key=lambda r: (r.namespace, r.name),
    ):
        if res.namespace not in (workload_namespace, root_namespace):
            continue
        spec = res.spec or {}
        labels = (spec.get("selector") or {}).get("matchLabels") or {}
        if any(workload_labels.get(k) != v for k, v in labels.items()):
            continue
        if "targetRef" in spec or "targetRefs" in spec:
            _warn(warnings, f"{res.namespace}/{res.name}: targetRef binds gateways and "
                            "waypoints, not sidecars; policy not applied")  # fmt: skip
            continue
        if str((res.annotations or {}).get("istio.io/dry-run", "")).lower() == "true":
            dry_run.append(res)
        else:
            enforced.append(res)
    shadow = None
    if dry_run:
        shadow = _build(enforced + dry_run, protocol, [])
    return _build(enforced, protocol, warnings, shadow)


def _decisions(allowed: bool, policy: str, reason: str) -> tuple[Decision, Decision]:
    """The (not audited, audited) pair: check() returns one of these shared objects."""
    return Decision(allowed, policy, reason, False), Decision(allowed, policy, reason, True)


def _build(
    policies: list[Any], protocol: str, warnings: list[str], shadow: Authorizer | None = None
) -> Authorizer:
    gen = _Gen()
    deny: list[tuple[str, str]] = []
    allow: list[tuple[str, str]] = []
    audit: list[str] = []
    has_allow = False
    names = []
    for res in policies:
        name = f"{res.namespace}/{res.name}"
        action = res.spec.get("action") or "ALLOW"
        names.append(f"{name} ({action})")
        if action == "CUSTOM":
            # Refused by the validator; if one gets here anyway, fail closed as Istio does
            # for a bad provider (getBadCustomDenyRules).
            _warn(warnings, f"{name}: CUSTOM is not supported; denying every request")
            deny.append(("True", name))
            continue
        if action == "ALLOW":
            has_allow = True
        for i, rule in enumerate(res.spec.get("rules") or ()):
            expr = _Rule(gen, name, i, action, protocol, res.namespace, warnings).compile(rule)
            if expr is None:
                continue  # an ALLOW rule that cannot be evaluated never matches
            if action == "DENY":
                deny.append((expr, name))
            elif action == "ALLOW":
                allow.append((expr, name))
            elif action == "AUDIT":
                audit.append(expr)
    lines = ["def check(r):"]
    if audit:
        lines.append("    a = 1 if " + " or ".join(f"({e})" for e in audit) + " else 0")
    else:
        lines.append("    a = 0")
    for expr, name in deny:
        d = gen.bind(_decisions(False, name, f"denied by DENY policy {name}"))
        lines.append(f"    if {expr}:\n        return {d}[a]")
    if has_allow:
        for expr, name in allow:
            d = gen.bind(_decisions(True, name, f"allowed by ALLOW policy {name}"))
            lines.append(f"    if {expr}:\n        return {d}[a]")
        last = gen.bind(_decisions(False, "", "no ALLOW policy matched"))
    else:
        last = gen.bind(_decisions(True, "", "no ALLOW policy applies"))
    lines.append(f"    return {last}[a]")
    source = "\n".join(lines) + "\n"
    namespace = dict(gen.ns)
    exec(compile(source, "<meshlet authz>", "exec"), namespace)  # names only, see Authorizer
    empty = not (deny or allow or audit or has_allow)
    return Authorizer(namespace["check"], source, empty, names, warnings, shadow)


def _warn(warnings: list[str], msg: str) -> None:
    if msg not in warnings:
        warnings.append(msg)
        log.warning("authorization: %s", msg)


class _Gen:
    """Names for the constants the generated code refers to."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"__builtins__": {}}
        self._ids: dict[int, str] = {}

    def bind(self, value: Any) -> str:
        key = id(value)
        name = self._ids.get(key)
        if name is None:
            name = f"_k{len(self._ids)}"
            self._ids[key] = name
            self.ns[name] = value
        return name


_HTTP_ONLY = frozenset(
    {"hosts", "notHosts", "methods", "notMethods", "paths", "notPaths",
     "requestPrincipals", "notRequestPrincipals"}
)  # fmt: skip
_NO_ATTRIBUTE = frozenset({"requestPrincipals", "notRequestPrincipals"})
_HEADER_KEY = re.compile(r"^request\.headers\[([^\[\]]+)\]$")


class _Unsupported(Exception):
    """Raised by a field compiler in an ALLOW policy: the whole rule is dropped."""


class _Rule:
    """Compiles one rule of one policy into a boolean expression over ``r``; carries what the
    fail-closed choice depends on."""

    def __init__(
        self, gen: _Gen, policy: str, index: int, action: str, protocol: str, namespace: str,
        warnings: list[str],
    ) -> None:  # fmt: skip
        self.gen = gen
        self.where = f"{policy}: rules[{index}]"
        self.action = action
        self.protocol = protocol
        self.namespace = namespace
        self.warnings = warnings

    def compile(self, rule: Mapping[str, Any]) -> str | None:
        try:
            clauses: list[str] = []
            sources = [self._source(f.get("source") or {}) for f in rule.get("from") or ()]
            if sources:
                clauses.append(_any(sources))
            ops = [self._operation(t.get("operation") or {}) for t in rule.get("to") or ()]
            if ops:
                clauses.append(_any(ops))
            for cond in rule.get("when") or ():
                clauses.extend(self._condition(cond))
        except _Unsupported:
            return None
        return _all(clauses)

    def _unsupported(self, what: str, why: str) -> None:
        """Fail closed: drop the rule of an ALLOW policy; ignore the field of a DENY/AUDIT one."""
        if self.action == "ALLOW":
            _warn(self.warnings, f"{self.where}: {what} {why}; the rule never matches")
            raise _Unsupported(what)
        _warn(self.warnings, f"{self.where}: {what} {why}; ignored, which widens the "
                             f"{self.action}")  # fmt: skip

    def _source(self, source: Mapping[str, Any]) -> str:
        g = self.gen
        exprs: list[str] = []
        for key, values in source.items():
            if key in _NO_ATTRIBUTE:
                self._unsupported(key, "needs JWT authentication, which meshlet lacks")
                continue
            neg = key.startswith("not")
            base = key[3].lower() + key[4:] if neg else key
            if base == "principals":
                e = f"(r.mtls and {_str(g, values, 'r.source_principal')})"
            elif base == "namespaces":
                e = f"(r.mtls and {_str(g, values, 'r.source_namespace')})"
            elif base == "serviceAccounts":
                e = f"{g.bind(_service_accounts(values, self.namespace))}(r)"
            elif base in ("ipBlocks", "remoteIpBlocks"):
                e = f"{g.bind(_ip_matcher(values))}(r.source_ip)"
            else:
                self._unsupported(key, "is not supported")
                continue
            exprs.append(_not(e) if neg else e)
        return _all(exprs)

    def _operation(self, op: Mapping[str, Any]) -> str:
        g = self.gen
        exprs: list[str] = []
        for key, values in op.items():
            if self.protocol == "tcp" and key in _HTTP_ONLY:
                self._unsupported(key, "is HTTP-only and this is a TCP authorizer")
                continue
            neg = key.startswith("not")
            base = key[3].lower() + key[4:] if neg else key
            if base == "hosts":
                e = _str(g, values, "r.host.lower()", lower=True)
            elif base == "ports":
                e = f"r.port in {g.bind(frozenset(int(p) for p in values))}"
            elif base == "methods":
                e = _str(g, values, "r.method")
            elif base == "paths":
                e = _paths(g, values)
            else:
                self._unsupported(key, "is not supported")
                continue
            exprs.append(_not(e) if neg else e)
        return _all(exprs)

    def _condition(self, cond: Mapping[str, Any]) -> list[str]:
        g = self.gen
        key = cond.get("key", "")
        exprs: list[str] = []
        header = _HEADER_KEY.match(key)
        for field, neg in (("values", False), ("notValues", True)):
            if field not in cond:
                continue
            values = cond[field]
            if header is not None:
                if self.protocol == "tcp":
                    self._unsupported(key, "is HTTP-only and this is a TCP authorizer")
                    return []
                name = g.bind(header.group(1).strip().lower())
                e = _str(g, values, f"r.headers({name})")
            elif key in ("source.ip", "remote.ip"):
                e = f"{g.bind(_ip_matcher(values))}(r.source_ip)"
            elif key == "source.namespace":
                e = f"(r.mtls and {_str(g, values, 'r.source_namespace')})"
            elif key == "source.principal":
                e = f"(r.mtls and {_str(g, values, 'r.source_principal')})"
            elif key == "destination.port":
                e = f"r.port in {g.bind(frozenset(int(v) for v in values))}"
            elif key.startswith("request.auth."):
                self._unsupported(key, "needs JWT authentication, which meshlet lacks")
                return []
            else:
                self._unsupported(key, "cannot be evaluated by the sidecar")
                return []
            exprs.append(_not(e) if neg else e)
        return exprs


# -- expressions --------------------------------------------------------------------------------


def _all(exprs: list[str]) -> str:
    if not exprs:
        return "True"
    return exprs[0] if len(exprs) == 1 else "(" + " and ".join(exprs) + ")"


def _any(exprs: list[str]) -> str:
    if "True" in exprs:
        return "True"
    return exprs[0] if len(exprs) == 1 else "(" + " or ".join(exprs) + ")"


def _not(expr: str) -> str:
    return f"(not {expr})"


def _str(g: _Gen, values: Iterable[str], value: str, lower: bool = False) -> str:
    """An expression matching ``value`` (evaluated once) against an ORed list of Istio string
    matches; ``None`` and ``""`` never match. Exact sets inline as one frozenset lookup."""
    m = _strings(values, lower)
    if isinstance(m, frozenset):
        return f"({value} in {g.bind(m)})"
    return f"{g.bind(m)}({value})"


StrMatch = Callable[[Any], bool]


def _strings(values: Iterable[str], lower: bool = False) -> frozenset[str] | StrMatch:
    """A frozenset (exact values only) or a matcher function for an ORed list of matches."""
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    for v in values:
        if lower:
            v = v.lower()
        if v == "*":
            return bool  # presence: any non-empty value (every other form needs one too)
        if v.endswith("*"):
            prefixes.append(v[:-1])
        elif v.startswith("*"):
            suffixes.append(v[1:])
        else:
            exact.add(v)
    ex = frozenset(exact)
    pre = tuple(prefixes)
    suf = tuple(suffixes)
    if not pre and not suf:
        return ex
    if not pre:
        return lambda s: s in ex or (s is not None and s.endswith(suf))
    if not suf:
        return lambda s: s in ex or (s is not None and s.startswith(pre))
    return lambda s: s in ex or (s is not None and (s.startswith(pre) or s.endswith(suf)))


def _service_accounts(values: Iterable[str], policy_ns: str) -> Callable[[RequestAttrs], bool]:
    # "<ns>/<sa>" or "<sa>" (the policy's namespace); matched as "<td>/ns/<ns>/sa/<sa>" with a
    # non-empty trust domain. No wildcards, no regex: dots are dots (CVE-2026-39350).
    suffixes = tuple(
        "/ns/{}/sa/{}".format(*(v.split("/", 1) if "/" in v else (policy_ns, v))) for v in values
    )

    def match(r: RequestAttrs) -> bool:
        p = r.source_principal
        return bool(r.mtls and p and p.endswith(suffixes) and not p.startswith("/ns/"))

    return match


def _paths(g: _Gen, values: Iterable[str]) -> str:
    values = list(values)
    plain = [v for v in values if "{" not in v]
    templates = [v for v in values if "{" in v]
    exprs = [_str(g, plain, "r.path")] if plain else []
    if templates:
        rx = re.compile("|".join(f"(?:{_template(t)})" for t in templates))
        exprs.append(f"({g.bind(rx.fullmatch)}(r.path) is not None)")
    return _any(exprs)


def _template(t: str) -> str:
    """Istio path template: ``{*}`` is one segment, ``{**}`` zero or more (it comes last; a
    trailing ``/`` after it is optional: Istio's ``/foo/{**}/`` matches ``/foo/bar/baz.txt``)."""
    segments = t.split("/")
    if "{**}" in segments:
        k = segments.index("{**}")
        head = "/".join(_segment(s) for s in segments[:k])
        return head + "/.*" if k else ".*"
    return "/".join(_segment(s) for s in segments)


def _segment(s: str) -> str:
    return "[^/]+" if s == "{*}" else re.escape(s)


# IPs: networks as (version, network int, mask int); request addresses parsed once and cached.
_IPS: dict[str, tuple[int, int] | None] = {}
_IPS_MAX = 4096


def _parse_ip(s: str) -> tuple[int, int] | None:
    got = _IPS.get(s, False)
    if got is not False:
        return got  # type: ignore[return-value]
    try:
        ip = ipaddress.ip_address(s)
        if ip.version == 6 and ip.ipv4_mapped is not None:  # type: ignore[union-attr]
            ip = ip.ipv4_mapped  # type: ignore[union-attr]
        val: tuple[int, int] | None = (ip.version, int(ip))
    except ValueError:
        val = None
    if len(_IPS) >= _IPS_MAX:
        _IPS.clear()
    _IPS[s] = val
    return val


def _ip_matcher(values: Iterable[str]) -> Callable[[str], bool]:
    nets = []
    for v in values:
        net = ipaddress.ip_network(v, strict=False)
        nets.append((net.version, int(net.network_address), int(net.netmask)))
    items = tuple(nets)

    def match(ip: str) -> bool:
        addr = _parse_ip(ip)
        if addr is None:
            return False
        version, value = addr
        for v, net, mask in items:  # noqa: SIM110 (a loop, not a generator: no allocation)
            if v == version and value & mask == net:
                return True
        return False

    return match
