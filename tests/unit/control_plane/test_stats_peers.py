"""Which peer replicas the telemetry hub merges (control_plane/telemetry.py): the replica list
from etcd, MESHLET_STATS_PEERS as an override, and the last list kept while etcd is down."""

from __future__ import annotations

import asyncio

import pytest

from control_plane import telemetry
from control_plane.store.base import StoreUnavailable
from control_plane.telemetry import TelemetryHub


class Source:
    def __init__(self) -> None:
        self.calls = 0
        self.answer: list[str] | Exception = ["https://10.0.0.2:8443"]

    async def __call__(self) -> list[str]:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return list(self.answer)


def hub(monkeypatch: pytest.MonkeyPatch, env: str = "") -> TelemetryHub:
    monkeypatch.setenv("MESHLET_STATS_PEERS", env)
    return TelemetryHub(None, None, lambda r: True)


def test_replicas_from_etcd_are_read_at_most_every_few_seconds(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(telemetry.time, "monotonic", lambda: now[0])
    h, src = hub(monkeypatch), Source()
    h.peer_source = src
    assert asyncio.run(h.peer_urls()) == ["https://10.0.0.2:8443"]
    src.answer = ["https://10.0.0.2:8443", "https://10.0.0.3:8443"]
    assert asyncio.run(h.peer_urls()) == ["https://10.0.0.2:8443"] and src.calls == 1
    now[0] += telemetry.PEERS_CACHE_S
    assert len(asyncio.run(h.peer_urls())) == 2
    src.answer = StoreUnavailable("etcd is unavailable")
    now[0] += telemetry.PEERS_CACHE_S
    assert len(asyncio.run(h.peer_urls())) == 2  # the last list, while etcd does not answer
    assert src.calls == 3


def test_the_env_var_overrides_the_replica_list(monkeypatch):
    h, src = hub(monkeypatch, "https://a:1/, https://b:2"), Source()
    h.peer_source = src
    assert asyncio.run(h.peer_urls()) == ["https://a:1", "https://b:2"]
    assert src.calls == 0


def test_without_etcd_or_env_there_are_no_peers(monkeypatch):
    assert asyncio.run(hub(monkeypatch).peer_urls()) == []
