"""When a replica hands its sidecars over (control_plane/etcd/handover.py): only after its
keep-alives have failed for the bound, only if another replica reaches etcd, once; and it
serves again when they succeed. The lease keeper stands in with its two attributes (etcd itself
is exercised by tests/integration/test_replica_cut_off.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from control_plane.etcd.handover import Handover


@dataclass
class Lease:
    ttl: int = 6
    failing_since: float | None = None


@dataclass
class World:
    now: float = 100.0
    reaching: set[str] = field(default_factory=set)  # peers that reach etcd
    stale: set[str] = field(default_factory=set)  # peers whose last contact predates the outage
    recovered: set[str] = field(default_factory=set)  # peers back after failing themselves
    probed: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


def handover(lease: Lease, w: World) -> Handover:
    async def peers() -> list[str]:
        return ["https://b", "https://c"]

    async def probe(url: str) -> tuple[float, float | None] | None:
        """(seconds since it last reached etcd, since one of its keep-alives failed)."""
        w.probed.append(url)
        if url in w.reaching:
            return 0.5, None
        if url in w.recovered:
            return 0.2, 1.0
        return (60.0, 1.0) if url in w.stale else None

    async def cut_off() -> None:
        w.events.append("cut off")

    return Handover(lease, peers, probe, cut_off, lambda: w.events.append("back"),  # type: ignore[arg-type]
                    clock=lambda: w.now)


async def test_hands_over_after_the_bound_to_a_replica_that_reaches_etcd_then_serves_again():
    lease, w = Lease(), World(reaching={"https://c"})
    h = handover(lease, w)
    assert h.bound == 2.0  # a third of the lease TTL
    await h.check()
    assert h.reachable and not w.probed
    lease.failing_since = w.now
    w.now += 1.9
    await h.check()  # within the bound: a keep-alive may just have been slow
    assert not h.cut_off and not w.probed and not h.reachable
    w.now += 0.2
    await h.check()
    assert h.cut_off and w.probed == ["https://b", "https://c"] and w.events == ["cut off"]
    w.now += 5
    await h.check()
    assert w.events == ["cut off"]  # once
    lease.failing_since = None
    await h.check()
    assert not h.cut_off and w.events == ["cut off", "back"]


async def test_keeps_its_sidecars_when_no_other_replica_reaches_etcd():
    # c answers, but has not reached etcd since before this replica lost it (the same outage,
    # noticed later): not a replica to hand over to
    # and b is back from the same outage a moment before this replica: staying is better than
    # moving every sidecar twice
    lease, w = Lease(failing_since=100.0), World(stale={"https://c"}, recovered={"https://b"})
    h = handover(lease, w)
    w.now += 3
    await h.check()
    assert not h.cut_off and w.probed == ["https://b", "https://c"]
    w.now += 0.5
    await h.check()  # peers are asked again after probe_interval, not every check
    assert len(w.probed) == 2
    w.recovered.clear()
    w.reaching.add("https://b")
    w.now += 1
    await h.check()
    assert h.cut_off and w.events == ["cut off"]


async def test_a_peer_that_failed_once_during_the_outage_and_recovered_is_handed_to():
    # Killing A's etcd member made etcd elect a new leader, and one of B's keep-alives failed
    # meanwhile (3 s into A's 6-s outage). B has reached etcd steadily for longer than the bound
    # since: A hands over. (It used to require B never to have failed since A's outage began,
    # so A kept its sidecars on stale config for as long as the outage lasted.)
    lease, w = Lease(failing_since=100.0), World()
    h = handover(lease, w)

    async def probe(url: str) -> tuple[float, float | None] | None:
        w.probed.append(url)
        return (0.3, w.now - 103.0) if url == "https://b" else None

    h.probe = probe
    w.now = 104.0  # B failed 1 s ago: not yet steady for the bound
    await h.check()
    assert not h.cut_off
    w.now = 106.0  # B steady for 3 s > the bound of 2 s
    await h.check()
    assert h.cut_off and w.events == ["cut off"]
