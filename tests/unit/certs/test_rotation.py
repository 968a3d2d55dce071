"""The renewal schedule (Istio's rotateTime) and expiry reporting."""

from __future__ import annotations

import random

import pytest
from cryptography import x509

from certs import keys
from certs.rotation import expiry_report, renew_at, rfc3339


def test_half_life_without_jitter():
    assert renew_at(1000.0, 1000.0 + 86400, lambda: 0.0) == pytest.approx(1000 + 43200)


def test_jitter_bounds_for_60s_ttl():
    # research §8.4: a 60 s certificate renews at 30 s ± 0.6 s.
    rng = random.Random(7).random
    times = [renew_at(0.0, 60.0, rng) for _ in range(2000)]
    assert min(times) >= 29.4 and max(times) <= 30.6
    assert min(times) < 29.7 and max(times) > 30.3  # jitter goes both ways


def test_jitter_extremes():
    seq = iter([0.999999, 0.1])  # max magnitude, then sign: negative
    assert renew_at(0.0, 86400.0, lambda: next(seq)) == pytest.approx(43200 + 864, abs=0.01)
    seq = iter([0.999999, 0.9])  # positive: more grace, earlier renewal
    assert renew_at(0.0, 86400.0, lambda: next(seq)) == pytest.approx(43200 - 864, abs=0.01)


def test_degenerate_lifetimes():
    assert renew_at(100.0, 100.0, lambda: 0.5) == 100.0
    assert renew_at(200.0, 100.0, lambda: 0.5) == 100.0  # never after expiry


def test_expiry_report(issue):
    chain, _ = issue(ttl=600)
    leaf = keys.load_certificates(chain)[0]
    now = leaf.not_valid_after_utc.timestamp() - 100
    rep = expiry_report(leaf, now)
    assert rep["seconds_to_expiry"] == pytest.approx(100)
    assert rep["serial"] == format(leaf.serial_number, "x")
    assert rep["not_after"] == rfc3339(leaf.not_valid_after_utc.timestamp())
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert isinstance(leaf, x509.Certificate)
