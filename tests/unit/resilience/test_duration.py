from __future__ import annotations

import pytest

from proxy.resilience import _duration
from proxy.resilience._duration import parse_duration, parse_optional_duration

CASES = [("60s", 60.0), ("500ms", 0.5), ("1m", 60.0), ("1m30s", 90.0), ("0.5s", 0.5),
         ("1h", 3600.0), ("250us", 250e-6), ("0", 0.0), (" 2s ", 2.0)]
BAD = ["-1s", "1d", "fast", "", "1", "s", "1 s"]


@pytest.fixture(params=["shared", "local"])
def grammar(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "local":
        monkeypatch.setattr(_duration, "_shared", None)
    return request.param


@pytest.mark.parametrize(("text", "seconds"), CASES)
def test_parse(grammar: str, text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", BAD)
def test_reject(grammar: str, text: str) -> None:
    with pytest.raises(ValueError, match="^spec.x: "):
        parse_duration(text, "spec.x")


def test_numbers_are_seconds() -> None:
    assert parse_duration(3) == 3.0
    assert parse_duration(0.25) == 0.25
    for bad in (-1, True, None):
        with pytest.raises(ValueError):
            parse_duration(bad)  # type: ignore[arg-type]


def test_optional() -> None:
    assert parse_optional_duration(None, 7.0, "f") == 7.0
    assert parse_optional_duration("1s", 7.0, "f") == 1.0
