"""``meshlet ca rotate|activate --wait``: when is every sidecar "followed"?

It used to compare each sidecar's acknowledged version with the global snapshot's, so a mesh with
one Sidecar-scoped proxy (which acknowledges a version of its own) never counted as followed and
``--wait`` always timed out while ``proxy-status`` said SYNCED.
"""

from __future__ import annotations

from control_plane.cli.commands.ca import all_synced


def _proxy(acked: str, expected: str = "", **kw: object) -> dict:
    return {"sent_version": acked, "acked_version": acked, "expected_version": expected, **kw}


def test_a_scoped_sidecar_on_its_own_version_counts_as_synced() -> None:
    data = {"snapshot_version": "v7", "proxies": [_proxy("v7"), _proxy("v7-s1", expected="v7-s1")]}
    assert all_synced(data)


def test_a_sidecar_behind_is_not_synced() -> None:
    data = {"snapshot_version": "v7", "proxies": [_proxy("v7"), _proxy("v6")]}
    assert not all_synced(data)
    scoped = {"snapshot_version": "v7", "proxies": [_proxy("v6-s1", expected="v7-s1")]}
    assert not all_synced(scoped)


def test_a_disconnected_sidecar_does_not_block_the_wait() -> None:
    data = {"snapshot_version": "v7", "proxies": [_proxy("v7"), _proxy("v5", connected=False)]}
    assert all_synced(data)


def test_no_snapshot_yet_is_not_synced() -> None:
    assert not all_synced({"snapshot_version": "", "proxies": []})
