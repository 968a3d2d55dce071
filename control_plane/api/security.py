"""Spec schemas of Istio's security kinds: AuthorizationPolicy and PeerAuthentication
(``security.istio.io`` v1 / v1beta1), per security-ops.md sections 1.10 and 2.

Where Istio silently ignores what it cannot evaluate (unknown ``when`` keys, for one), meshlet
refuses it: an authorization rule that quietly matches nothing is a security hole.
"""

from __future__ import annotations

import re
from typing import Any

from control_plane.api.networking import MATCH_LABELS
from control_plane.api.schema import (
    Ctx,
    enum,
    index,
    ip_or_cidr,
    join,
    list_of,
    map_of,
    obj,
    port_key,
    string,
)


def _wildcard(value: str) -> str | None:
    """Istio string matches: exact, ``prefix*``, ``*suffix`` or ``*`` (presence)."""
    if "*" in value.strip("*") or value.count("*") > 1 and value != "*":
        return f"{value!r}: '*' is only allowed at the start or the end"
    return None


def _path_template(value: str) -> str | None:
    if "{" not in value:
        return _wildcard(value)
    segments = value.split("/")
    for i, seg in enumerate(segments):
        if seg == "{**}" and any(s not in ("",) for s in segments[i + 1 :]):
            return f"{value!r}: {{**}} must be the last path segment"
        if seg not in ("{*}", "{**}") and ("{" in seg or "}" in seg or "*" in seg):
            return f"{value!r}: invalid path template segment {seg!r} (use {{*}} or {{**}})"
    return None


def _port_string(value: Any, path: str, ctx: Ctx) -> None:
    if not isinstance(value, str):
        ctx.error(path, f'port must be a string (quote it: "{value}")')
    elif not value.isdigit() or not 0 <= int(value) <= 65535:
        ctx.error(path, f"port {value!r} must be a number between 0 and 65535")


def _method(value: Any, path: str, ctx: Ctx) -> None:
    if not isinstance(value, str) or not value:
        ctx.error(path, "must be a non-empty string")
    elif value != value.upper() and "*" not in value:
        ctx.warn(path, f"method {value!r} is not upper-case and never matches (methods are exact)")


WILDCARD_LIST = list_of(string(nonempty=True, check=_wildcard))


def _principal(value: Any, path: str, ctx: Ctx) -> None:
    string(nonempty=True, check=_wildcard)(value, path, ctx)
    if isinstance(value, str) and value.startswith("spiffe://"):
        ctx.warn(
            path,
            f"{value!r} never matches: principals are written without spiffe:// "
            f"({value[len('spiffe://') :]!r})",
        )


PRINCIPALS = list_of(_principal)
IP_LIST = list_of(string(nonempty=True, check=ip_or_cidr))


def _source_check(value: dict, path: str, ctx: Ctx) -> None:
    if ("serviceAccounts" in value or "notServiceAccounts" in value) and (
        {"principals", "notPrincipals", "namespaces", "notNamespaces"} & value.keys()
    ):
        ctx.error(path, "serviceAccounts cannot be combined with principals or namespaces")


SOURCE = obj(
    {
        "principals": PRINCIPALS,
        "notPrincipals": PRINCIPALS,
        "requestPrincipals": WILDCARD_LIST,
        "notRequestPrincipals": WILDCARD_LIST,
        "namespaces": WILDCARD_LIST,
        "notNamespaces": WILDCARD_LIST,
        "serviceAccounts": list_of(string(nonempty=True), max_items=16),
        "notServiceAccounts": list_of(string(nonempty=True), max_items=16),
        "ipBlocks": IP_LIST,
        "notIpBlocks": IP_LIST,
        "remoteIpBlocks": IP_LIST,
        "notRemoteIpBlocks": IP_LIST,
    },
    nonempty="source must not be empty (set at least one field)",
    checks=[_source_check],
    name="Source",
)

PATHS = list_of(string(nonempty=True, check=_path_template))
OPERATION = obj(
    {
        "hosts": WILDCARD_LIST,
        "notHosts": WILDCARD_LIST,
        "ports": list_of(_port_string),
        "notPorts": list_of(_port_string),
        "methods": list_of(_method),
        "notMethods": list_of(_method),
        "paths": PATHS,
        "notPaths": PATHS,
    },
    nonempty="operation must not be empty (set at least one field)",
    name="Operation",
)

# security-ops.md 2.5; `request.headers[...]` and `request.auth.claims[...]` take a name.
WHEN_KEYS = (
    "source.ip", "remote.ip", "source.namespace", "source.principal", "request.auth.principal",
    "request.auth.audiences", "request.auth.presenter", "destination.ip", "destination.port",
    "connection.sni",
)  # fmt: skip
_HEADER_KEY = re.compile(r"^request\.headers\[[^\[\]]+\]$")
_CLAIM_KEY = re.compile(r"^request\.auth\.claims(\[[^\[\]]+\])+$")
_IP_KEYS = ("source.ip", "remote.ip", "destination.ip")


def _when_check(value: dict, path: str, ctx: Ctx) -> None:
    key = value["key"]
    if not (key in WHEN_KEYS or _HEADER_KEY.match(key) or _CLAIM_KEY.match(key)):
        if key.startswith("experimental.envoy.filters."):
            ctx.error(join(path, "key"), f"{key!r}: experimental keys are not supported")
        else:
            ctx.error(
                join(path, "key"),
                f"unknown condition key {key!r}; known: {', '.join(WHEN_KEYS)}, "
                "request.headers[NAME], request.auth.claims[NAME]",
            )
        return
    for field in ("values", "notValues"):
        for i, v in enumerate(value.get(field) or []):
            p = index(join(path, field), i)
            if key in _IP_KEYS and (reason := ip_or_cidr(v)):
                ctx.error(p, reason)
            elif key == "destination.port" and (not v.isdigit() or int(v) > 65535):
                ctx.error(p, f"port {v!r} must be a number between 0 and 65535")


CONDITION = obj(
    {
        "key": string(nonempty=True),
        "values": list_of(string()),
        "notValues": list_of(string()),
    },
    required=["key"],
    at_least_one=[("values", "notValues")],
    checks=[_when_check],
    name="Condition",
)

RULE = obj(
    {
        "from": list_of(
            obj({"source": SOURCE}, required=["source"], name="Rule.From"), max_items=512
        ),
        "to": list_of(
            obj({"operation": OPERATION}, required=["operation"], name="Rule.To"), max_items=512
        ),
        "when": list_of(CONDITION),
    },
    name="Rule",
)


def _no_custom_action(value: dict, path: str, ctx: Ctx) -> None:
    if value.get("action") == "CUSTOM":
        ctx.error(
            join(path, "action"),
            "CUSTOM is not supported by meshlet (no external authorization provider); "
            "use ALLOW, DENY or AUDIT",
        )


AUTHORIZATION_POLICY = obj(
    {
        "selector": MATCH_LABELS,
        "action": enum("ALLOW", "DENY", "AUDIT", "CUSTOM"),
        "rules": list_of(RULE, max_items=512),
    },
    unsupported={
        "provider": "provider (ext-authz for CUSTOM) is not supported by meshlet",
        "targetRef": "targetRef is not supported by meshlet; use selector",
        "targetRefs": "targetRefs is not supported by meshlet; use selector",
    },
    checks=[_no_custom_action],
    name="AuthorizationPolicy",
)

MTLS_MODE = obj({"mode": enum("UNSET", "DISABLE", "PERMISSIVE", "STRICT")}, name="MutualTLS")


def _peer_auth_check(value: dict, path: str, ctx: Ctx) -> None:
    if value.get("portLevelMtls") and not (value.get("selector") or {}).get("matchLabels"):
        ctx.error(join(path, "portLevelMtls"), "requires a selector with matchLabels")


PEER_AUTHENTICATION = obj(
    {
        "selector": MATCH_LABELS,
        "mtls": MTLS_MODE,
        "portLevelMtls": map_of(MTLS_MODE, key=port_key, int_keys=True),
    },
    checks=[_peer_auth_check],
    name="PeerAuthentication",
)
