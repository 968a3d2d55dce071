"""CLI human output against golden files (``UPDATE_GOLDEN=1`` rewrites them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from control_plane.cli import output
from control_plane.cli.commands import check, get, proxy_status

GOLDEN = Path(__file__).with_name("golden")
NOW = 1_800_000_000.0


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text + "\n")
    assert text + "\n" == path.read_text()


ITEMS = [
    {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
     "metadata": {"name": "reviews", "namespace": "default"},
     "spec": {"hosts": ["reviews", "reviews.prod"]}, "revision": 4, "created": NOW - 300},
    {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
     "metadata": {"name": "reviews", "namespace": "default"},
     "spec": {"host": "reviews"}, "revision": 2, "created": NOW - 7200 * 24},
    {"apiVersion": "meshlet.dev/v1alpha1", "kind": "ResiliencePolicy",
     "metadata": {"name": "payment", "namespace": "shop"},
     "spec": {"host": "payment.shop.svc.cluster.local"}, "revision": 9, "created": NOW - 45},
]


def test_get_table_one_kind():
    golden("get_vs.txt", get.render(ITEMS[:1], "table", "list", now=NOW))


def test_get_table_many_kinds():
    golden("get_all.txt", get.render(ITEMS, "table", "list", now=NOW))


def test_get_yaml_is_reappliable_documents():
    golden("get_all.yaml", get.render(ITEMS, "yaml", "list", now=NOW))


def test_get_json_single_and_list():
    golden("get_one.json", get.render(ITEMS[:1], "json", "one", now=NOW))
    golden("get_list.json", get.render(ITEMS[:2], "json", "list", now=NOW))


PROXIES = {
    "snapshot_version": "7-0123456789abcdef",
    "proxies": [
        {"node_id": "orders-v1-1", "service": "orders", "namespace": "default", "version": "v1",
         "address": "127.0.0.1:15006", "connected": True, "sent_version": "7-0123456789abcdef",
         "acked_version": "7-0123456789abcdef", "nack_version": "", "nack_error": "",
         "cert_expiry": NOW + 23 * 3600},
        {"node_id": "orders-v2-1", "service": "orders", "namespace": "default", "version": "v2",
         "address": "127.0.0.1:16006", "connected": True, "sent_version": "7-0123456789abcdef",
         "acked_version": "6-fedcba9876543210", "nack_version": "7-0123456789abcdef",
         "nack_error": "document 1 (VirtualService default/orders): spec.http[0]: unknown "
                       "subset v3", "cert_expiry": NOW + 600},
        {"node_id": "payment-1", "service": "payment", "namespace": "shop", "version": "",
         "address": "127.0.0.1:17006", "connected": True, "sent_version": "7-0123456789abcdef",
         "acked_version": "6-fedcba9876543210", "nack_version": "", "nack_error": "",
         "cert_expiry": None},
        {"node_id": "inventory-1", "service": "inventory", "namespace": "default",
         "version": "v1", "address": "127.0.0.1:18006", "connected": False,
         "sent_version": "7-0123456789abcdef", "acked_version": "7-0123456789abcdef",
         "nack_version": "", "nack_error": "", "cert_expiry": NOW - 120},
    ],
}


def test_proxy_status_table():
    golden("proxy_status.txt", proxy_status.render(PROXIES, now=NOW))


def test_check_output():
    results = [
        check.Result("control plane is reachable", "ok"),
        check.Result("admin token is accepted", "ok"),
        check.Result("every sidecar acknowledged the current config", "fail",
                     "orders-v2-1: NACK: spec.http[0]: unknown subset v3",
                     "see `meshlet proxy-status`"),
    ]
    golden("check_fail.txt", check.render(results))
    golden("check_ok.txt", check.render(results[:2]))


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (119, "119s"), (120, "2m"), (7199, "119m"), (7200, "2h"), (172799, "47h"),
    (172800, "2d"),
])
def test_durations(seconds, text):
    assert output.duration(seconds) == text


def test_table_alignment_has_no_trailing_blanks():
    text = output.table(["A", "BB"], [["xxx", ""], ["y", "z"]])
    assert text == "A     BB\nxxx\ny     z"


CONFIG_DUMP = {
    "version": "7-0123456789abcdef",
    "resources": [],
    "routes": [
        {"host": "orders.default.svc.cluster.local", "virtual_service": "default/orders",
         "routes": [
             {"name": "canary", "match": ["headers x-canary exact true"],
              "destinations": [{"cluster": "orders.default.svc.cluster.local|v2", "weight": 100}],
              "timeout": None},
             {"name": "", "match": [],
              "destinations": [{"cluster": "orders.default.svc.cluster.local|v1", "weight": 90},
                               {"cluster": "orders.default.svc.cluster.local|v2", "weight": 10}],
              "timeout": 2.0}]},
        {"host": "payment.default.svc.cluster.local", "virtual_service": None,
         "routes": [{"name": "default", "match": [],
                     "destinations": [{"cluster": "payment.default.svc.cluster.local",
                                       "weight": 100}], "timeout": None}]},
    ],
}
CLUSTERS = {
    "version": "7-0123456789abcdef",
    "clusters": [
        {"name": "orders.default.svc.cluster.local|v1", "subset": "v1", "port": 8080,
         "lb": "ROUND_ROBIN", "circuit_breaker": {"state": "CLOSED"},
         "endpoints": [{"address": "127.0.0.1:15006", "healthy": True},
                       {"address": "127.0.0.1:15106", "healthy": False, "ejected": True}]},
        {"name": "payment.default.svc.cluster.local", "subset": None, "port": None,
         "lb": "LEAST_REQUEST", "circuit_breaker": {"state": "OPEN"},
         "endpoints": [{"address": "127.0.0.1:17006", "healthy": True}]},
    ],
}
CERTS = {"spiffe_id": "spiffe://cluster.local/ns/default/sa/orders", "serial": "3f2a",
         "not_before": "2027-01-15T08:00:00Z", "not_after": "2027-01-16T08:00:00Z",
         "next_renewal": "2027-01-15T20:00:00Z", "last_renewal_error": None}


def test_proxy_config_tables():
    from control_plane.cli.commands import proxy_config

    golden("proxy_config_routes.txt", proxy_config.render("routes", CONFIG_DUMP))
    golden("proxy_config_clusters.txt", proxy_config.render("clusters", CLUSTERS))
    golden("proxy_config_endpoints.txt", proxy_config.render("endpoints", CLUSTERS))
    golden("proxy_config_certs.txt", proxy_config.render("certs", CERTS))
    assert proxy_config.render("certs", {"odd": 1}) == '{\n  "odd": 1\n}'
