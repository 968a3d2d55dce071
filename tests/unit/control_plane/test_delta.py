"""Per-resource deltas: names, hashes, versions, diff, apply, and the check that catches a
delta applied to the wrong base."""

from __future__ import annotations

import pytest

from control_plane import snapshot
from control_plane.api import delta
from control_plane.api.resources import load_text
from control_plane.push import PushHub
from control_plane.registry import Registration, Registry
from control_plane.store import Store

DOCS = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b}
spec: {host: b}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a-x}
spec: {host: a-x}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a}
spec: {host: a}
"""


def full(tmp_path, regs=()):
    st = Store(str(tmp_path / "s.db"))
    st.apply(load_text(DOCS))
    return st, snapshot.build(*st.snapshot(), regs)


def hashes_of(snap):
    return {n: delta.item_hash(b) for n, b in delta.items_of(snap).items()}


def test_version_names_content_and_assemble_restores_the_wire_format(tmp_path):
    st, snap = full(tmp_path, [Registration("n", "pay", address="h:1")])
    items = delta.items_of(snap)
    assert set(items) == {"resource/DestinationRule/default/a",
                          "resource/DestinationRule/default/a-x",
                          "resource/DestinationRule/default/b",
                          "registry/default/pay/h:1", "mesh"}
    assert delta.hash_part(snap["version"]) == delta.content_hash(hashes_of(snap))
    # the store's order (kind, namespace, name) survives: "a" before "a-x"
    assert delta.assemble(snap["version"], items) == snap


def test_diff_and_apply_round_trip(tmp_path):
    st, old = full(tmp_path)
    st.apply(load_text(DOCS.split("---\n")[0].replace("{host: b}", "{host: b.other}")))
    st.delete([("DestinationRule", "default", "a")])
    new = snapshot.build(*st.snapshot(), [Registration("n", "pay", address="h:1")])
    changed, removed = delta.diff(hashes_of(old), hashes_of(new))
    assert sorted(changed) == ["registry/default/pay/h:1", "resource/DestinationRule/default/b"]
    assert removed == ["resource/DestinationRule/default/a"]
    new_items = delta.items_of(new)
    msg = {"version": new["version"], "base": old["version"],
           "resources": {n: new_items[n] for n in changed}, "removed": removed}
    items, hashes = delta.apply(delta.items_of(old), hashes_of(old), msg)
    assert delta.assemble(new["version"], items) == new
    assert hashes == hashes_of(new)


def test_a_delta_on_the_wrong_base_is_detected(tmp_path):
    st, old = full(tmp_path)
    msg = {"version": "9-0000000000000000", "resources": {}, "removed": []}
    with pytest.raises(delta.DeltaMismatch, match="resync"):
        delta.apply(delta.items_of(old), hashes_of(old), msg)


def test_the_hub_and_the_snapshot_agree_on_the_version(tmp_path):
    st = Store(str(tmp_path / "s.db"))
    st.apply(load_text(DOCS))
    reg = Registry()
    reg.register(Registration("n", "pay", address="h:1"))
    hub = PushHub(st, reg)
    assert hub.rebuild()["version"] == snapshot.build(*st.snapshot(), reg.all())["version"]


def test_bundle_updates_incrementally_to_what_a_fresh_build_gives(tmp_path):
    st, old = full(tmp_path)
    b = delta.Bundle.of(old)
    regs = [Registration("n", "pay", address="h:1")]
    st.apply(load_text(DOCS.split("---\n")[0].replace("{host: b}", "{host: b.x}")))
    for step in range(2):  # a change of a known name, then names coming and going
        if step:
            st.delete([("DestinationRule", "default", "a")])
            regs.append(Registration("m", "pay", address="h:0"))
        new = snapshot.build(*st.snapshot(), regs)
        changed, removed = delta.diff(b.hashes, hashes_of(new))
        items = delta.items_of(new)
        b = b.apply({"version": new["version"], "removed": removed,
                     "resources": {n: items[n] for n in changed}})
        assert b.content == delta.hash_part(new["version"])
        assert b.snapshot(new["version"]) == new


@pytest.mark.parametrize("n_res,n_reg", [(0, 0), (1, 1), (1, 3), (3, 0)])
def test_bundle_snapshot_lists_every_item_in_order_for_any_count(n_res, n_reg):
    """Bundle.snapshot picks its lists with itemgetter: none, one (a scalar for itemgetter)
    and many items all give assemble()'s lists, also after a delta that keeps the names."""
    items: dict = {delta.MESH: {"trustDomain": "cluster.local"}}
    for i in range(n_res):
        items[f"resource/VirtualService/default/r{i}"] = {"kind": "VirtualService", "i": i}
    for i in range(n_reg):
        items[f"registry/default/s/127.0.0.1:{1000 + i}"] = {"address": f"127.0.0.1:{1000 + i}"}
    b = delta.Bundle(dict(items))
    assert b.snapshot("1-x") == delta.assemble("1-x", items)
    if n_res:
        name = "resource/VirtualService/default/r0"
        changed = {**items, name: {"kind": "VirtualService", "i": "changed"}}
        after = delta.Bundle(changed)
        b2 = b.apply({"version": "2-" + after.content, "resources": {name: changed[name]},
                      "removed": []})
        assert b2.snapshot("2-x") == delta.assemble("2-x", changed)
