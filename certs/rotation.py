"""When to renew a certificate, and how to report how long it has left.

The schedule is Istio's ``rotateTime`` (secretcache.go, research §1.5)::

    jitter      = U(0, JITTER) * (±1)
    ratio       = clamp(GRACE_RATIO + jitter, 0, 1)
    gracePeriod = ratio * (notAfter - createdTime)
    rotateAt    = notAfter - gracePeriod

With GRACE_RATIO 0.5 and JITTER 0.01, a 24 h certificate renews 12 h ± 14.4 min after issue.
``createdTime`` is when the certificate was received, not its NotBefore: the CA backdates
NotBefore by two minutes for clock skew, which would otherwise skew short lifetimes badly.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

from cryptography import x509

GRACE_RATIO = 0.5
GRACE_RATIO_JITTER = 0.01


def renew_at(
    not_before: float,
    not_after: float,
    rng: Callable[[], float] = random.random,
    *,
    grace_ratio: float = GRACE_RATIO,
    jitter: float = GRACE_RATIO_JITTER,
) -> float:
    """The wall-clock time (epoch seconds) to renew a certificate valid until ``not_after``.

    ``not_before`` should be the time the certificate was obtained (Istio's CreatedTime).
    ``rng`` returns uniform floats in [0, 1); it is called twice (magnitude, then sign).
    """
    lifetime = max(not_after - not_before, 0.0)
    offset = rng() * jitter
    if rng() < 0.5:
        offset = -offset
    ratio = min(max(grace_ratio + offset, 0.0), 1.0)
    return not_after - ratio * lifetime


def seconds_to_expiry(not_after: float, now: float) -> float:
    """Seconds until ``not_after``; negative once expired."""
    return not_after - now


def cert_times(cert: x509.Certificate) -> tuple[float, float]:
    """(not_before, not_after) as epoch seconds."""
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def rfc3339(ts: float) -> str:
    """An epoch time as RFC 3339 UTC, seconds precision (``2026-01-02T03:04:05Z``)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expiry_report(cert: x509.Certificate, now: float) -> dict[str, object]:
    """What /certs and proxy-status show about one certificate."""
    nb, na = cert_times(cert)
    return {
        "serial": format(cert.serial_number, "x"),
        "not_before": rfc3339(nb),
        "not_after": rfc3339(na),
        "seconds_to_expiry": round(seconds_to_expiry(na, now), 3),
    }
