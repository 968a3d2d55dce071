"""The generated check() against a slow reference written straight from security-ops.md 2.2-2.3:
random policies, random requests, the same decision."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.authz.engine import RequestAttrs, compile_policies, merged_header_getter
from tests.unit.authz.helpers import ap

PRINCIPALS = ["td/ns/a/sa/x", "td/ns/b/sa/y", "td/ns/a/sa/y"]
PATHS = ["/", "/items", "/items/1", "/admin", "/admin/x"]
IPS = ["10.0.0.1", "10.0.1.1", "192.168.0.1"]


def _pattern(values: list[str]) -> st.SearchStrategy[str]:
    exact = st.sampled_from(values)
    return st.one_of(
        exact, exact.map(lambda v: v[:3] + "*"), exact.map(lambda v: "*" + v[-2:]), st.just("*")
    )


def _patterns(values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(_pattern(values), min_size=1, max_size=3)


_SOURCE_FIELDS = {
    "principals": _patterns(PRINCIPALS),
    "notPrincipals": _patterns(PRINCIPALS),
    "namespaces": _patterns(["a", "b", "c"]),
    "notNamespaces": _patterns(["a", "b", "c"]),
    "ipBlocks": st.lists(st.sampled_from(["10.0.0.0/24", "10.0.0.0/8", "192.168.0.1"]),
                         min_size=1, max_size=2),  # fmt: skip
    "notIpBlocks": st.lists(st.sampled_from(["10.0.0.0/24", "192.168.0.0/16"]), min_size=1,
                            max_size=2),  # fmt: skip
}
_OP_FIELDS = {
    "hosts": _patterns(["svc", "svc:80", "Other"]),
    "notHosts": _patterns(["svc", "other"]),
    "ports": st.lists(st.sampled_from(["80", "8080"]), min_size=1, max_size=2),
    "notPorts": st.lists(st.sampled_from(["80", "8080"]), min_size=1, max_size=2),
    "methods": _patterns(["GET", "POST"]),
    "notMethods": _patterns(["GET", "POST"]),
    "paths": _patterns(PATHS),
    "notPaths": _patterns(PATHS),
}
_CONDITIONS = st.one_of(
    st.fixed_dictionaries({"key": st.just("request.headers[x-a]")},
                          optional={"values": _patterns(["1", "2"]),
                                    "notValues": _patterns(["1", "2"])}),  # fmt: skip
    st.fixed_dictionaries({"key": st.just("source.ip"),
                           "values": st.lists(st.sampled_from(["10.0.0.0/16", "192.168.0.1"]),
                                              min_size=1, max_size=2)}),  # fmt: skip
    st.fixed_dictionaries({"key": st.just("destination.port"),
                           "notValues": st.lists(st.sampled_from(["80", "8080"]), min_size=1)}),
).filter(lambda c: "values" in c or "notValues" in c)


def _fields(fields: dict) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({}, optional=fields).filter(bool)


RULE = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(_fields(_SOURCE_FIELDS).map(lambda s: {"source": s}), min_size=1,
                         max_size=2),  # fmt: skip
        "to": st.lists(_fields(_OP_FIELDS).map(lambda o: {"operation": o}), min_size=1,
                       max_size=2),  # fmt: skip
        "when": st.lists(_CONDITIONS, min_size=1, max_size=2),
    },
)
POLICY = st.fixed_dictionaries(
    {"action": st.sampled_from(["ALLOW", "DENY", "AUDIT"])},
    optional={"rules": st.lists(RULE, max_size=3)},
)
REQUEST = st.fixed_dictionaries({
    "principal": st.one_of(st.none(), st.sampled_from(PRINCIPALS)),
    "ip": st.sampled_from(IPS),
    "host": st.sampled_from(["svc", "SVC:80", "other", "svc:8080"]),
    "port": st.sampled_from([80, 8080, 9090]),
    "method": st.sampled_from(["GET", "POST", "PUT"]),
    "path": st.sampled_from(PATHS),
    "headers": st.lists(st.tuples(st.just("x-a"), st.sampled_from(["1", "2", ""])), max_size=2),
})  # fmt: skip


# -- the reference ------------------------------------------------------------------------------


def s_match(pattern: str, value: str | None) -> bool:
    if not value:
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def ip_match(blocks: list[str], ip: str) -> bool:
    return any(ipaddress.ip_address(ip) in ipaddress.ip_network(b, strict=False) for b in blocks)


def field(values: list[str], value: str | None, neg: bool, match=s_match) -> bool:
    hit = any(match(v, value) for v in values)
    return not hit if neg else hit


def ref_rule(rule: dict, q: dict) -> bool:
    mtls = q["principal"] is not None
    principal = q["principal"] if mtls else None
    namespace = principal.split("/")[2] if principal else None
    headers = [v for k, v in q["headers"] if k == "x-a"]
    header = ",".join(headers) if headers else None

    def source_ok(s: dict) -> bool:
        ok = True
        for k, vals in s.items():
            neg = k.startswith("not")
            if k in ("principals", "notPrincipals"):
                ok &= field(vals, principal, neg)
            elif k in ("namespaces", "notNamespaces"):
                ok &= field(vals, namespace, neg)
            else:
                hit = ip_match(vals, q["ip"])
                ok &= (not hit) if neg else hit
        return ok

    def op_ok(o: dict) -> bool:
        ok = True
        for k, vals in o.items():
            neg = k.startswith("not")
            if k in ("hosts", "notHosts"):
                ok &= field([v.lower() for v in vals], q["host"].lower(), neg)
            elif k in ("ports", "notPorts"):
                hit = str(q["port"]) in vals
                ok &= (not hit) if neg else hit
            elif k in ("methods", "notMethods"):
                ok &= field(vals, q["method"], neg)
            else:
                ok &= field(vals, q["path"], neg)
        return ok

    def cond_ok(c: dict) -> bool:
        ok = True
        for fname, neg in (("values", False), ("notValues", True)):
            if fname not in c:
                continue
            vals = c[fname]
            if c["key"] == "source.ip":
                hit = ip_match(vals, q["ip"])
            elif c["key"] == "destination.port":
                hit = str(q["port"]) in vals
            else:
                hit = any(s_match(v, header) for v in vals)
            ok &= (not hit) if neg else hit
        return ok

    froms = rule.get("from") or []
    tos = rule.get("to") or []
    return (
        (not froms or any(source_ok(f["source"]) for f in froms))
        and (not tos or any(op_ok(t["operation"]) for t in tos))
        and all(cond_ok(c) for c in rule.get("when") or [])
    )


def reference(policies: list[dict], q: dict) -> tuple[bool, bool]:
    def matches(p: dict) -> bool:
        return any(ref_rule(r, q) for r in p.get("rules") or [])

    audited = any(matches(p) for p in policies if p["action"] == "AUDIT")
    if any(matches(p) for p in policies if p["action"] == "DENY"):
        return False, audited
    allows = [p for p in policies if p["action"] == "ALLOW"]
    if not allows:
        return True, audited
    return any(matches(p) for p in allows), audited


@settings(max_examples=150, deadline=None)
@given(st.lists(POLICY, max_size=3), st.lists(REQUEST, min_size=1, max_size=5))
def test_generated_check_agrees_with_the_reference(policies: list[dict], reqs: list[dict]) -> None:
    resources = [ap(f"p{i}", p) for i, p in enumerate(policies)]
    authz = compile_policies(resources, "default", {})
    for q in reqs:
        r = RequestAttrs(
            source_principal=q["principal"], source_ip=q["ip"], method=q["method"],
            host=q["host"], port=q["port"], path=q["path"],
            headers=merged_header_getter(q["headers"]), mtls=q["principal"] is not None,
        )  # fmt: skip
        d = authz.check(r)
        assert (d.allowed, d.audited) == reference(policies, q), authz.source
