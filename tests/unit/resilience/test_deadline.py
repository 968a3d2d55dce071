from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.resilience.deadline import (
    MIN_TIMEOUT,
    attempt_timeout,
    effective_timeout,
    format_grpc_timeout,
    format_timeout_ms,
    incoming_deadline,
    parse_expected_timeout_ms,
    parse_grpc_timeout,
    per_try_timeout,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100m", 0.1),
        ("5S", 5.0),
        ("1H", 3600.0),
        ("2M", 120.0),
        ("250u", 250e-6),
        ("7n", 7e-9),
        ("0S", 0.0),
        ("99999999S", 99999999.0),
        ("123456789S", None),  # 9 digits
        ("", None),
        ("S", None),
        ("10", None),
        ("10s", None),  # units are case-sensitive: s is not a unit
        ("-1S", None),
        ("+1S", None),
        (" 1S", None),
        ("1.5S", None),
        ("１S", None),  # non-ASCII digit
        ("1x", None),
    ],
)
def test_parse_grpc_timeout(value: str, expected: float | None) -> None:
    got = parse_grpc_timeout(value)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (1e-9, "1n"),
        (0.0, "1n"),
        (-3.0, "1n"),
        (0.05, "50m"),
        (0.1, "100m"),
        (1.0, "1S"),
        (90.0, "90S"),
        (120.0, "2M"),
        (7200.0, "2H"),
        (0.1234567891, "123457u"),  # not exact within 8 digits: finest fitting unit, rounded up
        (1e6, "1000000S"),
        (1e9 + 1, "16666667M"),
    ],
)
def test_format_grpc_timeout(seconds: float, expected: str) -> None:
    assert format_grpc_timeout(seconds) == expected


@given(st.floats(min_value=1e-9, max_value=1e9, allow_nan=False))
def test_grpc_timeout_roundtrip_never_shortens(seconds: float) -> None:
    text = format_grpc_timeout(seconds)
    assert len(text) <= 9
    parsed = parse_grpc_timeout(text)
    assert parsed is not None
    # Rounded up to the unit: never shorter (beyond float noise), at most one unit longer.
    assert parsed >= seconds * (1 - 1e-9)
    assert parsed <= seconds * 1.00001 + 1e-9


@pytest.mark.parametrize(
    ("header", "expected"),
    [("1500", 1.5), ("0", 0.0), ("1", 0.001), (" 20 ", 0.02), (None, None), ("", None),
     ("-5", None), ("1.5", None), ("abc", None), ("9" * 16, None)],
)
def test_parse_expected_timeout_ms(header: str | None, expected: float | None) -> None:
    assert parse_expected_timeout_ms(header) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"), [(1.5, "1500"), (0.0001, "1"), (0.0, "1"), (-1, "1"), (0.0015, "2"),
                              (0.003, "3")]
)
def test_format_timeout_ms(seconds: float, expected: str) -> None:
    assert format_timeout_ms(seconds) == expected


@pytest.mark.parametrize(
    ("route", "downstream", "override", "expected"),
    [
        (None, None, None, None),  # Istio default: no timeout
        (0.0, None, None, None),  # 0 = off
        (3.0, None, None, 3.0),
        (None, 2.0, None, 2.0),  # inbound: honour the caller's deadline uncapped
        (3.0, 2.0, None, 2.0),  # the smaller wins
        (1.0, 2.0, None, 1.0),
        (0.0, 2.0, None, 2.0),
        (3.0, 0.0, None, MIN_TIMEOUT),  # expired: 1 ms, never 0
        (3.0, -1.0, None, MIN_TIMEOUT),
        (3.0, None, 10.0, 10.0),  # the app's override replaces the route timeout...
        (3.0, None, 0.0, None),  # ...0 meaning none
        (3.0, 2.0, 10.0, 2.0),  # ...but never extends the downstream deadline (Envoy would)
        (3.0, 5.0, 1.0, 1.0),
    ],
)
def test_effective_timeout(route, downstream, override, expected) -> None:
    assert effective_timeout(route, downstream, rq_timeout_override_s=override) == expected


@given(
    st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
    st.floats(min_value=-10, max_value=1e6),
    st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
)
def test_effective_timeout_never_extends_downstream(route, downstream, override) -> None:
    t = effective_timeout(route, downstream, rq_timeout_override_s=override)
    assert t is not None
    assert t <= max(downstream, MIN_TIMEOUT)
    assert t >= MIN_TIMEOUT


@pytest.mark.parametrize(
    ("per_try", "global_", "expected"),
    [(None, 5.0, None), (0.0, 5.0, None), (1.0, 5.0, 1.0), (5.0, 5.0, None), (6.0, 5.0, None),
     (1.0, None, 1.0)],
)
def test_per_try_timeout(per_try, global_, expected) -> None:
    assert per_try_timeout(per_try, global_) == expected


@pytest.mark.parametrize(
    ("per_try", "remaining", "hedging", "expected"),
    [
        (1.0, 5.0, False, 1.0),
        (1.0, 0.5, False, 0.5),
        (1.0, 5.0, True, 5.0),  # hedged tries advertise the global budget
        (None, 5.0, False, 5.0),
        (None, None, False, None),
        (1.0, None, False, 1.0),
        (1.0, -0.2, False, MIN_TIMEOUT),
    ],
)
def test_attempt_timeout(per_try, remaining, hedging, expected) -> None:
    assert attempt_timeout(per_try, remaining, hedging) == expected


@pytest.mark.parametrize(
    ("grpc", "expected_ms", "result"),
    [
        (None, None, None),
        ("2S", None, 2.0),
        (None, "1500", 1.5),
        ("2S", "1500", 1.5),
        ("1S", "1500", 1.0),
        ("bogus", "1500", 1.5),  # an invalid header is ignored, not fatal
        ("2S", "x", 2.0),
        (None, "0", 0.0),
    ],
)
def test_incoming_deadline(grpc, expected_ms, result) -> None:
    assert incoming_deadline(grpc, expected_ms) == result
