"""The gRPC rules of ``proxy.server.h2.grpc`` (sans-I/O): content types, local-reply status
mapping, grpc-status from headers or trailers, grpc-timeout rewritten to the remaining budget."""

from __future__ import annotations

import pytest

from proxy.server.h2 import grpc


@pytest.mark.parametrize(("ctype", "expected"), [
    ("application/grpc", True), ("application/grpc+proto", True),
    ("application/grpc;charset=utf-8", True), ("application/grpc-web", False),
    ("application/json", False), (None, False), ("", False),
])
def test_is_grpc(ctype, expected):
    assert grpc.is_grpc(ctype) is expected


@pytest.mark.parametrize(("status", "flag", "code"), [
    (503, "UH", grpc.UNAVAILABLE), (503, "UF", grpc.UNAVAILABLE), (503, "UO", grpc.UNAVAILABLE),
    (502, "-", grpc.UNAVAILABLE), (504, "UT", grpc.DEADLINE_EXCEEDED),
    (403, "RBAC", grpc.PERMISSION_DENIED), (429, "RL", grpc.RESOURCE_EXHAUSTED),
    (404, "NR", grpc.UNIMPLEMENTED), (401, "-", grpc.UNAUTHENTICATED), (400, "DPE", grpc.INTERNAL),
    (418, "FI", grpc.UNKNOWN),
])
def test_local_reply_mapping(status, flag, code):
    assert grpc.status_for_local(status, flag) == code


def test_local_reply_headers_are_trailers_only():
    h = dict(grpc.local_reply_headers(504, "UT", "upstream request timeout"))
    assert h[":status"] == "200" and h["content-type"] == "application/grpc"
    assert h["grpc-status"] == "4" and h["grpc-message"] == "upstream request timeout"
    assert h["x-meshlet-response-flags"] == "UT"
    assert grpc.encode_message("50% done\n") == "50%25 done%0A"


def test_status_from_headers_or_trailers():
    assert grpc.status_of([("grpc-status", "14")]) == 14
    assert grpc.status_of([("grpc-status", "x")]) is None
    assert grpc.status_of(None) is None
    assert grpc.response_status([("grpc-status", "0")], [("grpc-status", "13")]) == 13
    assert grpc.response_status([("grpc-status", "14")], None) == 14
    assert grpc.response_status([], None) is None


def test_timeout_rewrite_only_shortens():
    assert grpc.rewrite_timeout([("grpc-timeout", "10S")], 0.5) == [("grpc-timeout", "500m")]
    assert grpc.rewrite_timeout([("grpc-timeout", "100m")], 5.0) == [("grpc-timeout", "100m")]
    assert grpc.rewrite_timeout([("a", "b")], 2.0) == [("a", "b"), ("grpc-timeout", "2S")]
    assert grpc.rewrite_timeout([("grpc-timeout", "1S")], None) == [("grpc-timeout", "1S")]
    assert grpc.timeout_extra("100m", 2.0) == "grpc-timeout: 100m"
    assert grpc.timeout_extra("10S", 0.25) == "grpc-timeout: 250m"
    assert grpc.timeout_extra(None, 1.5) == "grpc-timeout: 1500m"
    assert grpc.timeout_extra("garbage", 3.0) == "grpc-timeout: 3S"
    assert grpc.request_deadline("1500m") == 1.5
    assert grpc.request_deadline("2S", "500") == 0.5
