"""Every security-ops.md 2.8 bypass vector, end to end through normalization and the engine.

Given a DENY on ``paths: ["/admin*"]``, each request is denied or refused with 400, and the path
the rules saw is the path that would be forwarded.
"""

from __future__ import annotations

import pytest

from proxy.authz.engine import compile_policies
from proxy.authz.normalize import normalize_target
from proxy.http1.parser import ProtocolError, parse_request_head
from tests.unit.authz.helpers import WORKLOAD_LABELS, ap, req

DENY_ADMIN = ap("no-admin", {"action": "DENY", "rules": [{"to": [{"operation": {
    "paths": ["/admin*"]}}]}]})  # fmt: skip
AUTHZ = compile_policies([DENY_ADMIN], "default", WORKLOAD_LABELS)


def outcome(target: str) -> tuple[str, str | None]:
    """("400", None), ("403", forwarded) or ("200", forwarded)."""
    split = normalize_target(target)
    if split is None:
        return "400", None
    path, query = split
    forwarded = path + ("?" + query if query else "")
    d = AUTHZ.check(req(path=path))
    return ("200" if d.allowed else "403"), forwarded


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/admin", ("403", "/admin")),
        ("//admin", ("403", "/admin")),
        ("/./admin", ("403", "/admin")),
        ("/x/../admin", ("403", "/admin")),
        ("/%61dmin", ("403", "/admin")),
        ("/admin%2F", ("400", None)),
        ("/%2Fadmin", ("400", None)),
        ("/admin#x", ("403", "/admin")),
        ("/admin?x=1", ("403", "/admin?x=1")),
        ("\\admin", ("403", "/admin")),
        ("/%5Cadmin", ("400", None)),
        ("/admin;x=1", ("400", None)),
        ("/public/..;/admin", ("400", None)),
        ("/admin%00", ("400", None)),
        ("/%2e%2e/admin", ("403", "/admin")),
        ("/items", ("200", "/items")),
        # Path case is not normalized (as in Istio): a case-insensitive backend needs ALLOW rules
        # with positive matches, not a DENY on the lower-case path.
        ("/ADMIN", ("200", "/ADMIN")),
    ],
)
def test_deny_admin_vectors(target: str, expected: tuple[str, str | None]) -> None:
    assert outcome(target) == expected


def test_host_vector_is_case_insensitive() -> None:
    deny = ap("no-secret", {"action": "DENY", "rules": [{"to": [{"operation": {
        "hosts": ["example.com"], "paths": ["/admin"]}}]}]})  # fmt: skip
    authz = compile_policies([deny], "default", WORKLOAD_LABELS)
    assert not authz.check(req(host="EXAMPLE.com", path="/admin")).allowed
    assert not authz.check(req(host="Example.Com", path="/admin")).allowed


@pytest.mark.parametrize("method", [b"get", b"Get", b"gEt"])
def test_lowercase_method_is_400_before_authorization(method: bytes) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_request_head(method + b" /admin HTTP/1.1\r\nHost: x\r\n\r\n")
    assert exc.value.args[0] == 400 or getattr(exc.value, "status", None) == 400


def test_forwarded_path_is_authorized_path() -> None:
    # A second pass (the backend, or a proxy behind us) sees nothing new.
    for target in ("//admin/./x/../y", "/%61/%62/../c", "\\a\\b", "/a/./b?q=../"):
        split = normalize_target(target)
        assert split is not None
        assert normalize_target(split[0] + ("?" + split[1] if split[1] else "")) == split
