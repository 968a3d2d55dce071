"""The replica list kept by a watch on etcd's ``replicas/`` prefix (control_plane/etcd/replicas.py)
against a real etcd member: puts and deletes (a lease expiring included) seen within a round
trip, the last list kept while etcd cannot be reached, and a full re-read when the watch is
established again, also past a compaction of what happened meanwhile.

The replica's connection to etcd goes through a small TCP relay the test can cut: etcd itself
stays up and is changed by a second client meanwhile (what happens to a replica cut off from a
cluster that goes on without it)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from control_plane.etcd.client import EtcdClient
from control_plane.etcd.replicas import ReplicaSet
from tests.integration.test_store_etcd import prefix, start_etcd
from tests.support import etcd_healthy, wait_until


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    work = tmp_path_factory.mktemp("etcd-replicas")
    proc, url = start_etcd(work, "replicas")
    try:
        wait_until(lambda: etcd_healthy(url), timeout=30, interval=0.1, what="etcd healthy")
        yield url
    finally:
        proc.stop()


class Relay:
    """Forwards loopback TCP to etcd until :meth:`cut` (every connection closed, new ones
    refused) and again after :meth:`mend`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.close()
            return
        self._writers |= {w, uw}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        self._writers -= {w, uw}

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def close(self) -> None:
        if self._server is not None:
            await self.cut()


def value(addr: str) -> bytes:
    return json.dumps({"address": addr}).encode()


async def until(cond, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``cond()`` holds, polled every 10 ms; fails after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


# A watch event reaches the replica within milliseconds on loopback; 2 s is slack for a box
# shared with other test runs, and still well under the 5 s the old periodic re-read took.
SEEN_WITHIN = 2.0


async def test_puts_deletes_and_lease_expiry_are_seen_within_a_round_trip(etcd):
    p = prefix().encode() + b"replicas/"
    writer, client = EtcdClient([etcd]), EtcdClient([etcd])
    rs = ReplicaSet(client, p)
    changes: list[list[str]] = []
    rs.on_change.append(lambda: changes.append(rs.addresses()))
    try:
        await writer.put(p + b"a#1", value("10.0.0.1:15012"))
        await rs.start()
        assert rs.addresses() == ["10.0.0.1:15012"] and rs.reloads == 1
        await writer.put(p + b"b#2", value("10.0.0.2:15012"))
        await until(lambda: "10.0.0.2:15012" in rs.addresses(), SEEN_WITHIN, "b listed")
        await writer.put(p + b"junk", b"not json")  # ignored, not fatal to the watch
        await writer.delete(p + b"a#1")
        await until(lambda: rs.addresses() == ["10.0.0.2:15012"], SEEN_WITHIN, "a gone")
        # a key bound to a lease goes when the lease does (a SIGKILLed replica's, after its TTL)
        lease = await writer.lease_grant(2)
        await writer.put(p + b"c#3", value("10.0.0.3:15012"), lease)
        await until(lambda: "10.0.0.3:15012" in rs.addresses(), SEEN_WITHIN, "c listed")
        took = await until(lambda: "10.0.0.3:15012" not in rs.addresses(), 10,
                           "c gone with its lease")
        assert took < 2 + SEEN_WITHIN + 1  # the TTL, etcd's expiry check, the event
        assert rs.reloads == 1  # events only: the watch never broke
        assert changes == [["10.0.0.1:15012"], ["10.0.0.1:15012", "10.0.0.2:15012"],
                           ["10.0.0.2:15012"],
                           ["10.0.0.2:15012", "10.0.0.3:15012"], ["10.0.0.2:15012"]]
    finally:
        await rs.stop()
        await client.close()
        await writer.close()


async def test_cut_off_keeps_the_last_list_then_rereads_everything_past_a_compaction(etcd):
    p = prefix().encode() + b"replicas/"
    relay = Relay(int(etcd.rsplit(":", 1)[1]))
    await relay.open()
    writer = EtcdClient([etcd])
    client = EtcdClient([f"http://127.0.0.1:{relay.port}"], timeout=1.0)
    rs = ReplicaSet(client, p)
    try:
        await writer.put(p + b"a#1", value("10.0.0.1:15012"))
        await writer.put(p + b"b#2", value("10.0.0.2:15012"))
        await rs.start()
        await until(lambda: rs.watching, SEEN_WITHIN, "watch established")
        assert rs.addresses() == ["10.0.0.1:15012", "10.0.0.2:15012"]

        await relay.cut()  # this replica cannot reach etcd; the cluster goes on
        await until(lambda: not rs.watching, SEEN_WITHIN, "watch broken")
        await writer.delete(p + b"a#1")
        await writer.put(p + b"c#3", value("10.0.0.3:15012"))
        rev = await writer.put(p + b"d#4", value("10.0.0.4:15012"))
        await writer.delete(p + b"d#4")
        # what this replica missed is compacted away: only a full read can tell it
        await writer.call("kv/compaction", {"revision": str(rev + 1), "physical": True})
        reloads = rs.reloads
        await asyncio.sleep(1.5)  # several failed attempts to read and watch again
        assert rs.addresses() == ["10.0.0.1:15012", "10.0.0.2:15012"]  # the last list known
        assert not rs.watching and rs.reloads == reloads

        await relay.open()  # same port: etcd reachable again
        await until(lambda: rs.addresses() == ["10.0.0.2:15012", "10.0.0.3:15012"], 10,
                    "the list read again once etcd answers")
        assert rs.reloads == reloads + 1
        await until(lambda: rs.watching, SEEN_WITHIN, "watching again")
        await writer.put(p + b"e#5", value("10.0.0.5:15012"))  # and the watch goes on
        await until(lambda: "10.0.0.5:15012" in rs.addresses(), SEEN_WITHIN, "e listed")
    finally:
        await rs.stop()
        await client.close()
        await writer.close()
        await relay.close()
