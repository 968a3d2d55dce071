"""Path normalization: security-ops.md 2.6 rules and the 2.8 bypass vectors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.authz.normalize import normalize_path, normalize_target

CASES = [
    # (raw, normalized) -- None means the caller answers 400
    ("/", "/"),
    ("/items/42", "/items/42"),
    ("/public/./data/abc/../xyz", "/public/data/xyz"),  # Istio's documented example
    # 2.8 vectors against DENY /admin*: each normalizes onto /admin or is refused
    ("//admin", "/admin"),
    ("/./admin", "/admin"),
    ("/x/../admin", "/admin"),
    ("/%61dmin", "/admin"),
    ("/admin%2F", None),
    ("/admin%2f", None),
    ("/%2Fadmin", None),
    ("/admin#x", "/admin"),
    ("/admin?x=1", "/admin"),
    ("\\admin", "/admin"),
    ("/%5Cadmin", None),
    ("/%5cadmin", None),
    ("/admin;x=1", None),
    ("/admin%00", None),
    ("/ADMIN", "/ADMIN"),  # case is not normalized (documented)
    # dot segments, decoded or not; never above the root
    ("/..", "/"),
    ("/../../admin", "/admin"),
    ("/a/b/..", "/a/"),
    ("/a/.", "/a/"),
    ("/a/b/../../../admin", "/admin"),
    ("/%2e%2e/admin", "/admin"),
    ("/%2E/admin", "/admin"),
    ("/a/%2e%2e/admin", "/admin"),
    ("/a//../b", "/a/b"),  # RFC 3986 first, then merge slashes (Istio's order)
    ("///a///b//", "/a/b/"),
    ("/a\\..\\admin", "/admin"),
    # percent-encoding: unreserved decoded once, the rest kept upper-cased, bad ones refused
    ("/%7Euser/%41", "/~user/A"),
    ("/%252e%252e/admin", "/%252e%252e/admin"),  # no double decoding ("2e" is text)
    ("/%252F", "/%252F"),
    ("/a%3bb", "/a%3Bb"),
    ("/a%20b", "/a%20b"),
    ("/a%zz", None),
    ("/a%2", None),
    ("/a%", None),
    ("/a%0a", None),
    ("/a%7f", None),
    # raw controls, space, non-ASCII
    ("/a\x00", None),
    ("/a\r\nX: y", None),
    ("/a b", None),
    ("/a\x7f", None),
    ("/caf\u00e9", None),
    # path parameters on dot segments (Tomcat's ..;)
    ("/public/..;/admin", None),
    ("/.;x/admin", None),
    # forms other than origin-form
    ("*", "*"),
    ("", None),
    ("admin", None),
    ("http://x/admin", None),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_normalize_path(raw: str, expected: str | None) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/admin%2F", "/admin/"),
        ("/%2Fadmin", "/admin"),
        ("/%5Cadmin", "/admin"),
        ("/a%2F..%2Fadmin", "/admin"),
        ("/a%2f%2fb", "/a/b"),
    ],
)
def test_decode_slashes_is_istio_decode_and_merge(raw: str, expected: str) -> None:
    assert normalize_path(raw, decode_slashes=True) == expected


def test_path_params_keep_still_refuses_dot_segments() -> None:
    assert normalize_path("/admin;x=1", path_params="keep") == "/admin;x=1"
    assert normalize_path("/a/b;v=2/../c", path_params="keep") == "/a/c"
    assert normalize_path("/public/..;/admin", path_params="keep") is None
    assert normalize_path("/public/.;x/admin", path_params="keep") is None


def test_clean_path_is_returned_unchanged() -> None:
    p = "/api/v1/items/42"
    assert normalize_path(p) is p


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/admin?x=1", ("/admin", "x=1")),
        ("/a/./b?q=/../x&y=%2F", ("/a/b", "q=/../x&y=%2F")),  # the query is never normalized
        ("/a#frag", ("/a", "")),
        ("/a?q=1#frag", ("/a", "q=1")),
        ("/a?q=\x00", None),
        ("/a%2F?q", None),
    ],
)
def test_normalize_target(target: str, expected: tuple[str, str] | None) -> None:
    assert normalize_target(target) == expected


_SEG = st.text(alphabet="ab.%2fF5cC\\;/?#e0", max_size=12)


@given(st.lists(_SEG, max_size=6).map("/".join))
def test_normalized_paths_are_fixed_points(raw: str) -> None:
    # What is authorized is what is forwarded: normalizing the forwarded path changes nothing,
    # so the backend (or a second proxy) can never see another path.
    out = normalize_path("/" + raw)
    if out is not None:
        assert out.startswith("/")
        assert "//" not in out
        assert "\\" not in out
        assert out.split("/").count("..") == 0
        assert out.split("/").count(".") == 0
        assert normalize_path(out) == out
