"""PeerAuthentication precedence (security-ops.md 1.10) and first-byte classification."""

from __future__ import annotations

import pytest

from control_plane.api.resources import InvalidConfig
from proxy.authz.peer_auth import classify_first_bytes, resolve_mtls_mode
from tests.unit.authz.helpers import WORKLOAD_LABELS, pa

MESH_STRICT = pa("default", {"mtls": {"mode": "STRICT"}}, ns="istio-system")
NS_PERMISSIVE = pa("ns", {"mtls": {"mode": "PERMISSIVE"}})
NS_DISABLE = pa("ns", {"mtls": {"mode": "DISABLE"}})
NS_UNSET = pa("ns", {"mtls": {"mode": "UNSET"}})
WL_STRICT = pa("wl", {"selector": {"matchLabels": {"app": "inventory"}},
                      "mtls": {"mode": "STRICT"}})  # fmt: skip
WL_PORTS = pa("wl", {
    "selector": {"matchLabels": {"app": "inventory"}},
    "mtls": {"mode": "STRICT"},
    "portLevelMtls": {8080: {"mode": "DISABLE"}, "9090": {"mode": "PERMISSIVE"},
                      9091: {"mode": "UNSET"}},
})  # fmt: skip
WL_UNSET_PORTS = pa("wl", {
    "selector": {"matchLabels": {"app": "inventory"}},
    "portLevelMtls": {8080: {"mode": "STRICT"}},
})  # fmt: skip
OTHER_APP = pa("other", {"selector": {"matchLabels": {"app": "payment"}},
                         "mtls": {"mode": "DISABLE"}})  # fmt: skip
ROOT_SELECTOR = pa("root-sel", {"selector": {"matchLabels": {"app": "inventory"}},
                                "mtls": {"mode": "DISABLE"}}, ns="istio-system")  # fmt: skip
OTHER_NS = pa("ns", {"mtls": {"mode": "STRICT"}}, ns="prod")


@pytest.mark.parametrize(
    ("resources", "port", "expected"),
    [
        ([], 8080, "PERMISSIVE"),
        ([MESH_STRICT], 8080, "STRICT"),
        ([MESH_STRICT, NS_PERMISSIVE], 8080, "PERMISSIVE"),
        ([MESH_STRICT, NS_DISABLE, WL_STRICT], 8080, "STRICT"),
        ([MESH_STRICT, NS_UNSET], 8080, "STRICT"),  # UNSET inherits
        ([NS_UNSET], 8080, "PERMISSIVE"),
        ([NS_DISABLE, OTHER_APP], 8080, "DISABLE"),  # selector must match
        ([MESH_STRICT, ROOT_SELECTOR], 8080, "STRICT"),  # selectors ignored in the root ns
        ([OTHER_NS], 8080, "PERMISSIVE"),
        ([MESH_STRICT, WL_PORTS], 8080, "DISABLE"),  # port-level override
        ([MESH_STRICT, WL_PORTS], 9090, "PERMISSIVE"),
        ([MESH_STRICT, WL_PORTS], 9091, "STRICT"),  # port-level UNSET inherits
        ([NS_DISABLE, WL_PORTS], 7000, "STRICT"),  # other ports: the policy's mode
        ([NS_DISABLE, WL_UNSET_PORTS], 8080, "STRICT"),
        ([NS_DISABLE, WL_UNSET_PORTS], 7000, "DISABLE"),  # workload UNSET inherits ns
        ([pa("empty", {})], 8080, "PERMISSIVE"),
    ],
)
def test_precedence(resources: list, port: int, expected: str) -> None:
    assert resolve_mtls_mode(resources, "default", WORKLOAD_LABELS, port) == expected


def test_custom_root_namespace_and_root_workloads() -> None:
    mesh = pa("default", {"mtls": {"mode": "STRICT"}}, ns="mesh-root")
    assert resolve_mtls_mode([mesh], "default", {}, 80, root_namespace="mesh-root") == "STRICT"
    assert resolve_mtls_mode([mesh], "default", {}, 80) == "PERMISSIVE"
    # a workload in the root namespace itself still gets its selector policy
    assert resolve_mtls_mode([MESH_STRICT, ROOT_SELECTOR], "istio-system",
                             WORKLOAD_LABELS, 80) == "DISABLE"  # fmt: skip


def test_same_level_first_by_name_wins() -> None:
    a = pa("a", {"mtls": {"mode": "DISABLE"}})
    b = pa("b", {"mtls": {"mode": "STRICT"}})
    assert resolve_mtls_mode([b, a], "default", {}, 80) == "DISABLE"


def test_port_level_needs_a_selector() -> None:
    with pytest.raises(InvalidConfig, match="selector"):
        pa("bad", {"portLevelMtls": {8080: {"mode": "STRICT"}}})


def test_ignores_other_kinds() -> None:
    from tests.unit.authz.helpers import ap

    assert resolve_mtls_mode([ap("x", {})], "default", {}, 80) == "PERMISSIVE"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01", "tls"),  # ClientHello, TLS 1.0 record version
        (b"\x16\x03\x03\x00\x50", "tls"),
        (b"\x16\x03\x00", "tls"),
        (b"\x16\x03\x04", "tls"),
        (b"\x16\x03\x05", "unknown"),
        (b"\x16\x02\x01", "unknown"),
        (b"\x17\x03\x03", "unknown"),  # application data, not a handshake
        (b"\x16", "unknown"),  # too short to tell yet
        (b"GET / HTTP/1.1\r\n", "http"),
        (b"POST /x", "http"),
        (b"OPTIONS * HTTP/1.1", "http"),
        (b"M-SEARCH * HTTP/1.1", "http"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http"),  # h2c prior knowledge
        (b"GET", "unknown"),  # no space yet
        (b"get / HTTP/1.1", "unknown"),  # methods are upper-case
        (b" GET /", "unknown"),
        (b"", "unknown"),
        (b"\x00\x00\x00\x01", "unknown"),
        (b"SSH-2.0-OpenSSH", "unknown"),
        (b"A" * 40 + b" /", "unknown"),  # no method is that long
    ],
)
def test_classify_first_bytes(data: bytes, expected: str) -> None:
    assert classify_first_bytes(data) == expected
