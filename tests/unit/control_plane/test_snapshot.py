"""Snapshot building: one revision, stable content hash, registry entries."""

from __future__ import annotations

from control_plane import snapshot
from control_plane.api.resources import load_text
from control_plane.registry import Registration
from control_plane.store import Store

MESH = """
apiVersion: meshlet.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {trustDomain: example.org}
"""


def test_version_stable_and_content_addressed(tmp_path):
    st = Store(str(tmp_path / "s.db"))
    regs = [Registration("n1", "orders", "default", "v1", {"version": "v1"}, "127.0.0.1:9")]
    a = snapshot.build(*st.snapshot(), regs)
    b = snapshot.build(*st.snapshot(), regs)
    assert a == b and a["version"].startswith("0-")
    assert a["registry"] == [{
        "service": "orders", "namespace": "default", "version": "v1",
        "labels": {"version": "v1"}, "address": "127.0.0.1:9",
        "spiffe_id": "spiffe://cluster.local/ns/default/sa/orders",
    }]
    regs.append(Registration("n2", "orders", "default", "v2", {}, "127.0.0.1:10"))
    c = snapshot.build(*st.snapshot(), regs)
    assert c["version"] != a["version"] and c["version"].startswith("0-")


def test_mesh_config_and_resources(tmp_path):
    st = Store(str(tmp_path / "s.db"))
    st.apply(load_text(MESH, "m.yaml"))
    snap = snapshot.build(*st.snapshot(), [Registration("n", "pay", address="h:1")])
    assert snap["revision"] == 1 and snap["version"].startswith("1-")
    assert snap["mesh"]["trustDomain"] == "example.org"
    assert snap["registry"][0]["spiffe_id"] == "spiffe://example.org/ns/default/sa/pay"
    assert snap["resources"][0]["kind"] == "MeshConfig"


def test_sidecar_without_address_is_not_an_endpoint(tmp_path):
    st = Store(str(tmp_path / "s.db"))
    snap = snapshot.build(*st.snapshot(), [Registration("n", "pay")])
    assert snap["registry"] == []


def test_every_example_survives_store_and_snapshot_and_revalidates(tmp_path):
    """What the sidecar receives validates with the same code that accepted it."""
    from pathlib import Path

    from control_plane.api.resources import from_dict, load_path

    examples = Path(__file__).resolve().parents[3] / "configs" / "examples"
    applied = load_path(str(examples))
    st = Store(str(tmp_path / "s.db"))
    st.apply(applied)
    snap = snapshot.build(*st.snapshot(), [])
    back = [from_dict(doc, "cp", i) for i, doc in enumerate(snap["resources"], 1)]
    assert {r.key: r.to_dict() for r in back} == {r.key: r.to_dict() for r in applied}


def test_the_cas_trust_domain_wins(tmp_path):
    st = Store(str(tmp_path / "s.db"))
    st.apply(load_text(MESH, "m.yaml"))
    snap = snapshot.build(*st.snapshot(), [Registration("n", "pay", address="h:1")],
                          "cluster.local")
    assert snap["mesh"]["trustDomain"] == "cluster.local"
    assert snap["registry"][0]["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/pay"
