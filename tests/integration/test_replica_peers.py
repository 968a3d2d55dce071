"""Replicas know each other at once: each keeps the list of the others with a watch on etcd's
``replicas/`` keys, so a replica that starts is listed in the others' ``/healthz`` ``peers``
within a round trip, and one SIGKILLed is dropped when its lease expires.

A real 3-member etcd cluster and three replicas as real processes. The old code re-read the
list at most every 5 s (a replica read it when it started, then 5 s later): a replica started
right after another, or right after the others last read the list, stayed unknown for up to
5 s, long enough for a replica cut off from etcd in that window to keep its sidecars.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Callable

import pytest

from tests.integration.test_replicas_etcd import Replica
from tests.support import EtcdCluster, wait_until

pytestmark = pytest.mark.slow

LEASE_TTL = 2  # seconds, the least `--lease-ttl` accepts: a killed replica goes quickly
# The watch delivers a new replica's key within milliseconds on loopback. 2 s leaves slack for a
# box shared with other test runs (a replica's /healthz answer, 0.1-s polling, a busy event
# loop) and still fails the old code: it learnt of a replica up to 5 s after the others' last
# re-read, and each replica here starts right after the others last looked (the first one
# read the list when it started; later, right after it listed the previous replica).
KNOWN_WITHIN = 2.0


def peers(rep: Replica) -> list[str]:
    """``peers`` of the replica's ``/healthz`` (its certificate checked against the mesh's)."""
    ctx = ssl.create_default_context(cafile=str(rep.data_dir / "ca/trust-bundle.pem"))
    try:
        with urllib.request.urlopen(rep.url + "/healthz", timeout=5, context=ctx) as r:
            return list(json.loads(r.read()).get("peers") or [])
    except OSError:
        return []


def seconds_until(cond: Callable[[], bool], bound: float, what: str) -> float:
    """Seconds until ``cond()`` holds, polled every 0.1 s; fails past ``bound`` (with the
    measured time, so a failure says how late it was)."""
    t0 = time.monotonic()
    wait_until(cond, timeout=bound + 10, interval=0.1, what=what)
    took = time.monotonic() - t0
    assert took <= bound, f"{what}: {took:.2f}s > {bound}s"
    return took


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("peers")
    etcd = EtcdCluster(work)
    etcd.start_all()
    reps: list[Replica] = []
    try:
        yield work, etcd, reps
    finally:
        for rep in reps:
            rep.stop()
        etcd.stop()


def test_a_replica_started_is_known_at_once_and_one_killed_goes_with_its_lease(cluster):
    work, etcd, reps = cluster
    ttl = f"{LEASE_TTL}s"
    a = Replica("a", work, etcd, None, lease_ttl=ttl)
    a.start()
    reps.append(a)
    token = a.data_dir / "admin.token"
    b = Replica("b", work, etcd, token, lease_ttl=ttl)
    b.start()  # returns once B listens; it registers in etcd just after
    reps.append(b)
    took_b = seconds_until(lambda: b.url in peers(a), KNOWN_WITHIN, "A lists B")
    c = Replica("c", work, etcd, token, lease_ttl=ttl)
    c.start()
    reps.append(c)
    took_c = seconds_until(lambda: c.url in peers(a) and c.url in peers(b), KNOWN_WITHIN,
                           "A and B list C")
    # a replica lists every other one, never itself
    assert sorted(peers(a)) == sorted([b.url, c.url])
    assert sorted(peers(b)) == sorted([a.url, c.url])
    assert sorted(peers(c)) == sorted([a.url, b.url])
    print(f"A listed B {took_b:.2f}s and A, B listed C {took_c:.2f}s after it listened")

    c.kill()  # no clean stop: its key goes only when etcd expires its lease
    reps.remove(c)
    # at most the TTL (counted from C's last keep-alive, before the kill), etcd's expiry check
    # (every 0.5 s), the DELETE event: 2.0-2.4 s measured; 3 s more for polling and a busy box
    took = seconds_until(lambda: c.url not in peers(a) and c.url not in peers(b),
                         LEASE_TTL + 3.0, "C dropped from A's and B's lists")
    print(f"C dropped {took:.2f}s after SIGKILL (lease TTL {LEASE_TTL}s)")
    assert peers(a) == [b.url] and peers(b) == [a.url]
