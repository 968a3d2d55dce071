from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.resilience.outlier import OutlierDetector

from .conftest import FakeClock

HOSTS = [f"10.0.0.{i}:80" for i in range(1, 11)]


def det(clock: FakeClock, hosts=HOSTS, **cfg) -> OutlierDetector:
    d = OutlierDetector(cfg, clock)
    d.set_endpoints(hosts)
    return d


def fail(d: OutlierDetector, host: str, n: int = 5, status: int | None = 500) -> None:
    for _ in range(n):
        d.record(host, status, local_origin_failure=status is None)


def test_defaults() -> None:
    d = OutlierDetector({})
    assert (d.consecutive_5xx, d.consecutive_gateway, d.interval, d.base_ejection_time,
            d.max_ejection_percent, d.min_health_percent, d.max_ejection_time) == (
        5, 0, 10.0, 30.0, 10, 0, 300.0)


def test_config_parsing() -> None:
    d = OutlierDetector({"consecutive5xxErrors": {"value": 3}, "consecutiveGatewayErrors": 2,
                         "interval": "1s", "baseEjectionTime": "2m", "maxEjectionPercent": 50,
                         "minHealthPercent": 20})
    assert (d.consecutive_5xx, d.consecutive_gateway, d.interval, d.base_ejection_time,
            d.max_ejection_percent, d.min_health_percent, d.max_ejection_time) == (
        3, 2, 1.0, 120.0, 50, 20, 300.0)
    with pytest.raises(ValueError):
        OutlierDetector({"consecutive5xxErrors": -1})
    with pytest.raises(ValueError):
        OutlierDetector({"interval": "often"})


@pytest.mark.parametrize(("cfg", "c5xx", "cgw"), [
    ({"consecutiveErrors": 3}, 0, 3),  # deprecated: gateway errors only (istio/api#617)
    ({"consecutiveErrors": 3, "consecutive5xxErrors": 7}, 7, 3),
    ({"consecutiveErrors": 3, "consecutiveGatewayErrors": 4}, 0, 4),
    ({"consecutiveErrors": 0}, 5, 0),
])
def test_deprecated_consecutive_errors(cfg, c5xx, cgw) -> None:
    d = OutlierDetector(cfg)
    assert (d.consecutive_5xx, d.consecutive_gateway) == (c5xx, cgw)


def test_eject_inline_on_fifth_5xx(clock: FakeClock) -> None:
    d = det(clock)
    fail(d, HOSTS[0], 4)
    assert not d.is_ejected(HOSTS[0])
    d.record(HOSTS[0], 503)
    assert d.is_ejected(HOSTS[0])
    assert d.ejections_total == 1
    assert d.status()[HOSTS[0]] == {"ejected": True, "ejections": 1, "consecutive_5xx": 0,
                                    "consecutive_gateway_errors": 0,
                                    "consecutive_local_origin_failures": 0}


def test_success_resets_counter(clock: FakeClock) -> None:
    d = det(clock)
    fail(d, HOSTS[0], 4)
    d.record(HOSTS[0], 200)
    fail(d, HOSTS[0], 4)
    assert not d.is_ejected(HOSTS[0])
    assert d.status()[HOSTS[0]]["consecutive_5xx"] == 4


@pytest.mark.parametrize("status", [404, 429, 200, 302])
def test_non_5xx_not_counted(clock: FakeClock, status: int) -> None:
    d = det(clock)
    fail(d, HOSTS[0], 10, status)
    assert not d.is_ejected(HOSTS[0])


def test_local_origin_failures_count(clock: FakeClock) -> None:
    d = det(clock)
    fail(d, HOSTS[0], 5, None)
    assert d.is_ejected(HOSTS[0])


def test_split_local_origin(clock: FakeClock) -> None:
    d = det(clock, splitExternalLocalOriginErrors=True, consecutiveLocalOriginFailures=2)
    d.record(HOSTS[0], None, local_origin_failure=True)
    fail(d, HOSTS[1], 3)
    d.record(HOSTS[0], 500)  # responses don't count towards local-origin failures
    d.record(HOSTS[0], None, local_origin_failure=True)
    d.record(HOSTS[0], None, local_origin_failure=True)
    assert d.is_ejected(HOSTS[0])
    assert d.status()[HOSTS[0]]["consecutive_5xx"] == 0


def test_gateway_errors(clock: FakeClock) -> None:
    d = det(clock, consecutive5xxErrors=0, consecutiveGatewayErrors=3, maxEjectionPercent=50)
    for s in (502, 500, 503, 504):  # 500 breaks the gateway run
        d.record(HOSTS[0], s)
    assert not d.is_ejected(HOSTS[0])
    for s in (502, 503, 504):
        d.record(HOSTS[1], s)
    assert d.is_ejected(HOSTS[1])
    d.record(HOSTS[2], 200, gateway_error=True)
    d.record(HOSTS[2], None, gateway_error=True)
    d.record(HOSTS[2], None, local_origin_failure=True)
    assert d.is_ejected(HOSTS[2])


def test_disabled_5xx(clock: FakeClock) -> None:
    d = det(clock, consecutive5xxErrors=0)
    fail(d, HOSTS[0], 50)
    assert not d.is_ejected(HOSTS[0])


def test_custom_error_codes(clock: FakeClock) -> None:
    d = det(clock, outlierDetectionHttpErrorCodes=[429])
    fail(d, HOSTS[0], 5, 503)
    assert not d.is_ejected(HOSTS[0])
    fail(d, HOSTS[0], 5, 429)
    assert d.is_ejected(HOSTS[0])


def test_unejection_waits_for_sweep(clock: FakeClock) -> None:
    # Start 10.0 s; sweeps at 1010, 1020, ... Ejected at 1003 for 30 s -> back at the 1040 sweep.
    d = det(clock)
    clock.advance(3.0)
    fail(d, HOSTS[0])
    clock.now = 1033.0
    assert d.is_ejected(HOSTS[0])  # 30 s passed, but no sweep yet
    clock.now = 1039.99
    assert d.is_ejected(HOSTS[0])
    clock.now = 1040.0
    assert not d.is_ejected(HOSTS[0])


def test_ejection_time_grows_linearly_and_decays(clock: FakeClock) -> None:
    d = det(clock, interval="10s", baseEjectionTime="30s")
    fail(d, HOSTS[0])  # t=1000, multiplier 1
    clock.now = 1030.0
    d.tick()
    assert not d.is_ejected(HOSTS[0])
    fail(d, HOSTS[0])  # t=1030, multiplier 2 -> 60 s
    clock.now = 1080.0
    assert d.is_ejected(HOSTS[0])
    clock.now = 1090.0
    assert not d.is_ejected(HOSTS[0])
    # healthy sweeps decay the multiplier by one each: after 2 sweeps it is back to 0
    clock.now = 1110.0
    d.tick()
    fail(d, HOSTS[0])  # multiplier 1 again -> 30 s
    clock.now = 1140.0
    assert not d.is_ejected(HOSTS[0])
    assert d.status()[HOSTS[0]]["ejections"] == 3


def test_ejection_time_capped(clock: FakeClock) -> None:
    d = det(clock, interval="1s", baseEjectionTime="100s", maxEjectionTime="150s")
    for _ in range(5):
        fail(d, HOSTS[0])
        t0 = clock.now
        while d.is_ejected(HOSTS[0]):
            clock.advance(1.0)
        assert clock.now - t0 <= 150.0 + 1.0


def test_lazy_catch_up_after_long_idle(clock: FakeClock) -> None:
    d = det(clock)
    fail(d, HOSTS[0])
    clock.advance(86400.0 * 30)  # a month of silence: cheap, and fully recovered
    assert not d.is_ejected(HOSTS[0])
    assert d.healthy(HOSTS) is HOSTS
    t = tuple(HOSTS)
    assert d.healthy(t) is t  # no copy when nothing is ejected
    fail(d, HOSTS[0])
    clock.advance(30.0)
    d.tick()
    clock.advance(10.0)
    assert not d.is_ejected(HOSTS[0])  # multiplier had decayed to 0: 30 s again


def test_at_least_one_even_below_ten_hosts(clock: FakeClock) -> None:
    hosts = HOSTS[:3]
    d = det(clock, hosts)  # 10 % of 3 = 0, but meshlet ejects one
    fail(d, hosts[0])
    assert d.is_ejected(hosts[0])
    fail(d, hosts[1])
    assert not d.is_ejected(hosts[1])
    assert d.ejections_overflow == 1
    assert d.healthy(hosts) == hosts[1:]


def test_max_ejection_percent(clock: FakeClock) -> None:
    d = det(clock, maxEjectionPercent=30)  # 10 hosts -> 3
    for h in HOSTS[:5]:
        fail(d, h)
    assert [d.is_ejected(h) for h in HOSTS[:5]] == [True, True, True, False, False]
    assert d.ejected_count == 3


def test_never_the_last_healthy_host(clock: FakeClock) -> None:
    d = det(clock, HOSTS[:2], maxEjectionPercent=100)
    fail(d, HOSTS[0])
    fail(d, HOSTS[1])
    assert d.is_ejected(HOSTS[0]) and not d.is_ejected(HOSTS[1])
    single = det(clock, HOSTS[:1], maxEjectionPercent=100)
    fail(single, HOSTS[0], 50)
    assert not single.is_ejected(HOSTS[0])
    assert single.healthy(HOSTS[:1]) == HOSTS[:1]


def test_skipped_ejection_retried_after_next_run(clock: FakeClock) -> None:
    d = det(clock, HOSTS[:2])
    fail(d, HOSTS[0])
    fail(d, HOSTS[1])  # refused: would leave no healthy host
    clock.advance(40.0)
    d.tick()
    assert not d.is_ejected(HOSTS[0])
    fail(d, HOSTS[1])  # a fresh run of 5 gets it ejected now there is room
    assert d.is_ejected(HOSTS[1])


def test_panic_threshold(clock: FakeClock) -> None:
    d = det(clock, HOSTS[:4], maxEjectionPercent=75, minHealthPercent=60)
    fail(d, HOSTS[0])
    assert d.healthy(HOSTS[:4]) == HOSTS[1:4]  # 75 % healthy
    fail(d, HOSTS[1])
    assert d.healthy(HOSTS[:4]) == HOSTS[:4]  # 50 % < 60 %: panic, use all


def test_healthy_with_key_function(clock: FakeClock) -> None:
    class Ep:
        def __init__(self, addr: str) -> None:
            self.addr = addr

    eps = [Ep(h) for h in HOSTS[:3]]
    d = OutlierDetector({}, clock, key=lambda e: e.addr)
    d.set_endpoints(e.addr for e in eps)
    fail(d, HOSTS[1])
    assert d.healthy(eps) == [eps[0], eps[2]]


def test_set_endpoints_keeps_state_and_drops_gone(clock: FakeClock) -> None:
    d = det(clock, HOSTS[:3])
    fail(d, HOSTS[0])
    d.set_endpoints(HOSTS[:2] + ["new:80"])
    assert d.is_ejected(HOSTS[0])
    assert set(d.status()) == {HOSTS[0], HOSTS[1], "new:80"}
    d.set_endpoints(HOSTS[1:2])
    assert d.ejected_count == 0


def test_unknown_endpoint_is_added(clock: FakeClock) -> None:
    d = OutlierDetector({}, clock)
    d.record("a", 200)
    d.record("b", 200)
    fail(d, "a")
    assert d.is_ejected("a")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([200, 500, 503, None]),
                          st.floats(min_value=0, max_value=20)), max_size=300),
       st.integers(1, 6), st.sampled_from([0, 10, 50, 100]))
def test_never_all_ejected(events, n_hosts, pct) -> None:
    clock = FakeClock()
    hosts = [f"h{i}" for i in range(n_hosts)]
    d = OutlierDetector({"consecutive5xxErrors": 2, "maxEjectionPercent": pct}, clock)
    d.set_endpoints(hosts)
    allowed = max(1, (pct or 10) * n_hosts // 100)
    for idx, status, dt in events:
        clock.advance(dt)
        d.record(hosts[idx % n_hosts], status, local_origin_failure=status is None)
        healthy = d.healthy(hosts)
        assert healthy, "ejection alone must never leave no healthy host"
        assert d.ejected_count <= allowed
        assert n_hosts - len(healthy) == d.ejected_count
