"""Which peer replicas the telemetry hub merges (control_plane/telemetry.py): the replica list
as the etcd watch keeps it, and MESHLET_STATS_PEERS as an override."""

from __future__ import annotations

import asyncio

import pytest

from control_plane.telemetry import TelemetryHub


class Source:
    """The watched replica list (control_plane/etcd/replicas.py keeps it; no request here)."""

    def __init__(self) -> None:
        self.calls = 0
        self.answer = ["https://10.0.0.2:8443"]

    def __call__(self) -> list[str]:
        self.calls += 1
        return list(self.answer)


def hub(monkeypatch: pytest.MonkeyPatch, env: str = "") -> TelemetryHub:
    monkeypatch.setenv("MESHLET_STATS_PEERS", env)
    return TelemetryHub(None, None, lambda r: True)


def test_the_replica_list_is_read_as_it_is_now_not_cached(monkeypatch):
    h, src = hub(monkeypatch), Source()
    h.peer_source = src
    assert asyncio.run(h.peer_urls()) == ["https://10.0.0.2:8443"]
    src.answer = ["https://10.0.0.2:8443", "https://10.0.0.3:8443"]
    # a replica that just started is a peer at once (the old code cached the list 5 s)
    assert asyncio.run(h.peer_urls()) == src.answer and h.known_peers == src.answer
    assert src.calls == 3


def test_the_env_var_overrides_the_replica_list(monkeypatch):
    h, src = hub(monkeypatch, "https://a:1/, https://b:2"), Source()
    h.peer_source = src
    assert asyncio.run(h.peer_urls()) == ["https://a:1", "https://b:2"]
    assert src.calls == 0


def test_without_etcd_or_env_there_are_no_peers(monkeypatch):
    assert asyncio.run(hub(monkeypatch).peer_urls()) == []
