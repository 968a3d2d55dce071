from __future__ import annotations

import pytest

from certs.spiffe import InvalidSpiffeId, SpiffeId


def test_for_workload_and_accessors():
    sid = SpiffeId.for_workload("cluster.local", "default", "orders")
    assert str(sid) == "spiffe://cluster.local/ns/default/sa/orders"
    assert sid.namespace == "default"
    assert sid.service_account == "orders"
    assert SpiffeId.parse(str(sid)) == sid


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://cluster.local/ns/default/sa/sleep",
        "spiffe://td",
        "spiffe://a.b-c_d/x.y/Z-9_",
        "SPIFFE://td/path",  # scheme is case-insensitive on parse
        "spiffe://10.0.0.1/ns/a/sa/b",  # dotted-quad trust domains are allowed
        "spiffe://td/" + "a" * 2030,
    ],
)
def test_valid(text):
    sid = SpiffeId.parse(text)
    assert str(sid).startswith("spiffe://")  # emitted lowercase


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("https://td/ns/a/sa/b", "scheme"),
        ("spiffe:///ns/a/sa/b", "empty"),
        ("spiffe://TD/x", "lowercase"),
        ("spiffe://t%41/x", "percent"),
        ("spiffe://u@td/x", "userinfo"),
        ("spiffe://td:8443/x", "port"),
        ("spiffe://[::1]/x", "IPv6"),
        ("spiffe://td/x?y", "query"),
        ("spiffe://td/x#y", "fragment"),
        ("spiffe://td/a//b", "empty segment"),
        ("spiffe://td/a/../b", "'..'"),
        ("spiffe://td/./b", "'.'"),
        ("spiffe://td/a/", "end with"),
        ("spiffe://td/a b", "path segment"),
        ("spiffe://td/ä", "path segment"),
        ("spiffe://td/a%20b", "percent"),
        ("spiffe://td/" + "a" * 2040, "2048"),
        ("spiffe://" + "a" * 256 + "/x", "255"),
        ("spiffe:/td/x", "scheme"),
    ],
)
def test_invalid(text, rule):
    with pytest.raises(InvalidSpiffeId, match=rule):
        SpiffeId.parse(text)


def test_comparison_rules():
    # Trust domain case-insensitive (through parse), path case-sensitive.
    assert SpiffeId.parse("spiffe://td/A") != SpiffeId.parse("spiffe://td/a")
    assert SpiffeId.parse("SPIFFE://td/a") == SpiffeId.parse("spiffe://td/a")
    assert SpiffeId.parse("spiffe://td/a").member_of("TD")


def test_non_workload_ids_have_no_namespace():
    sid = SpiffeId.parse("spiffe://td/meshlet/control-plane")
    assert sid.namespace is None and sid.service_account is None
    assert sid.is_control_plane
    assert SpiffeId.parse("spiffe://td").is_root


@pytest.mark.parametrize("bad", ["", "a/b", "..", "a b"])
def test_for_workload_rejects_bad_names(bad):
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.for_workload("td", bad, "sa")
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.for_workload("td", "ns", bad)
