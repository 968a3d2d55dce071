from __future__ import annotations

import random

import pytest

from proxy.resilience.fault import NO_FAULT, FaultPolicy


def test_absent() -> None:
    assert FaultPolicy.from_spec(None) is None


@pytest.mark.parametrize("spec", [{"abort": {"percentage": {"value": 100}}}, {"abort": {}}])
def test_abort_without_status_does_nothing(spec) -> None:
    # Validation only warns about it (as Istio does), so the sidecar must accept it.
    p = FaultPolicy.from_spec(spec)
    assert p is not None and p.decide(random.Random(0)) is NO_FAULT


@pytest.mark.parametrize(("spec", "expected"), [
    ({"delay": {"fixedDelay": "5s", "percentage": {"value": 10.5}}},
     FaultPolicy(delay_s=5.0, delay_probability=0.105)),
    ({"delay": {"fixedDelay": "5s"}}, FaultPolicy(delay_s=5.0, delay_probability=0.0)),
    ({"delay": {"fixedDelay": "100ms", "percent": 30}},
     FaultPolicy(delay_s=0.1, delay_probability=0.3)),
    ({"delay": {"fixedDelay": "1s", "percent": 30, "percentage": {"value": 1}}},
     FaultPolicy(delay_s=1.0, delay_probability=0.01)),  # percentage wins over percent
    ({"delay": {"fixedDelay": "1s", "percentage": {}}},
     FaultPolicy(delay_s=1.0, delay_probability=0.0)),
    ({"abort": {"httpStatus": 503, "percentage": {"value": 100}}},
     FaultPolicy(abort_status=503, abort_probability=1.0)),
    ({"abort": {"httpStatus": 400}}, FaultPolicy(abort_status=400, abort_probability=0.0)),
    ({"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 50}}},
     FaultPolicy(abort_status=200, grpc_status=14, abort_probability=0.5)),
    ({"abort": {"grpcStatus": 4, "percent": 5}},
     FaultPolicy(abort_status=200, grpc_status=4, abort_probability=0.05)),
])
def test_from_spec(spec, expected) -> None:
    assert FaultPolicy.from_spec(spec) == expected


@pytest.mark.parametrize("spec", [
    {}, {"delay": {"percentage": {"value": 5}}},
    {"delay": {"exponentialDelay": "1s", "percentage": {"value": 5}}},
    {"delay": {"fixedDelay": "1s", "percentage": {"value": 101}}},
    {"delay": {"fixedDelay": "1s", "percentage": {"value": -1}}},
    {"abort": {"httpStatus": 199}}, {"abort": {"httpStatus": 600}},
    {"abort": {"grpcStatus": "unavailable"}}, {"abort": {"grpcStatus": "NOPE"}},
    {"abort": {"http2Error": "REFUSED_STREAM"}},
])
def test_from_spec_invalid(spec) -> None:
    with pytest.raises(ValueError):
        FaultPolicy.from_spec(spec)


class CountingRandom(random.Random):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return super().random()


def test_zero_and_full_probability_skip_draws() -> None:
    rng = CountingRandom(1)
    zero = FaultPolicy.from_spec({"delay": {"fixedDelay": "1s"}, "abort": {"httpStatus": 500}})
    full = FaultPolicy.from_spec({"delay": {"fixedDelay": "1s", "percentage": {"value": 100}},
                                  "abort": {"httpStatus": 500, "percentage": {"value": 100}}})
    assert zero is not None and full is not None
    assert zero.decide(rng) is NO_FAULT
    assert full.decide(rng) == (1.0, 500, None)
    assert rng.draws == 0


def test_grpc_abort() -> None:
    p = FaultPolicy.from_spec({"abort": {"grpcStatus": "RESOURCE_EXHAUSTED",
                                         "percentage": {"value": 100}}})
    assert p is not None
    assert p.decide(random.Random(0)) == (0.0, 200, 8)


def test_independent_draws_frequencies() -> None:
    p = FaultPolicy.from_spec({
        "delay": {"fixedDelay": "2s", "percentage": {"value": 30}},
        "abort": {"httpStatus": 503, "percentage": {"value": 10}},
    })
    assert p is not None
    rng = random.Random(42)
    n = 20_000
    results = [p.decide(rng) for _ in range(n)]
    delayed = sum(1 for d, _, _ in results if d == 2.0)
    aborted = sum(1 for _, a, _ in results if a == 503)
    both = sum(1 for d, a, _ in results if d and a)
    assert abs(delayed / n - 0.30) < 0.02
    assert abs(aborted / n - 0.10) < 0.01
    assert abs(both / n - 0.03) < 0.01  # independent: 0.3 * 0.1
    assert all(r == (0.0, None, None) for r in results if not r[0] and r[1] is None)
