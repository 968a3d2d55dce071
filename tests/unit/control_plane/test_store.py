"""The SQLite store: one transaction per change, a monotonic revision, persistence."""

from __future__ import annotations

import os
import stat

from control_plane.api.resources import load_text
from control_plane.store import Store, canonical_kind

VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: %s}
"""
DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
"""


def test_apply_created_configured_unchanged(tmp_path):
    st = Store(str(tmp_path / "store.db"))
    assert st.revision == 0
    rev, ch = st.apply(load_text(VS % "v1" + "---" + DR, "a.yaml"))
    assert rev == 1 and [c.action for c in ch] == ["created", "created"]
    rev, ch = st.apply(load_text(VS % "v1", "a.yaml"))
    assert rev == 1 and [c.action for c in ch] == ["unchanged"]  # nothing changed: no new revision
    rev, ch = st.apply(load_text(VS % "v2", "a.yaml"))
    assert rev == 2 and [c.action for c in ch] == ["configured"]
    [vs] = st.get("VirtualService")
    assert vs.revision == 2
    assert vs.resource.spec["http"][0]["route"][0]["destination"]["subset"] == "v2"
    assert st.get("DestinationRule")[0].revision == 1


def test_revision_monotonic_and_persistent_across_restart(tmp_path):
    path = str(tmp_path / "store.db")
    st = Store(path)
    revs = [st.apply(load_text(VS % subset, "a.yaml"))[0] for subset in ("v1", "v2", "v3")]
    rev, ch = st.delete([("VirtualService", "default", "reviews")])
    revs.append(rev)
    assert revs == sorted(revs) and len(set(revs)) == 4
    st.apply(load_text(DR, "b.yaml"))
    st.close()
    st2 = Store(path)
    assert st2.revision == 5
    [dr] = st2.get("DestinationRule", "default", "reviews")
    assert dr.resource.spec["subsets"][0]["labels"] == {"version": "v1"}
    assert st2.get("VirtualService") == []
    assert st2.apply(load_text(VS % "v1", "a.yaml"))[0] == 6
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_delete_reports_not_found_and_does_not_bump(tmp_path):
    st = Store(str(tmp_path / "store.db"))
    rev, ch = st.delete([("VirtualService", "default", "nope")])
    assert rev == 0 and ch[0].action == "not-found"


def test_listener_called_after_commit_only_on_change(tmp_path):
    st = Store(str(tmp_path / "store.db"))
    seen = []
    st.add_listener(seen.append)
    st.apply(load_text(DR, "b.yaml"))
    st.apply(load_text(DR, "b.yaml"))
    st.delete([("DestinationRule", "default", "reviews")])
    assert seen == [1, 2]


def test_apply_is_one_transaction(tmp_path):
    st = Store(str(tmp_path / "store.db"))
    good = load_text(DR, "b.yaml")[0]
    bad = object()  # fails half-way through the loop
    try:
        st.apply([good, bad])  # type: ignore[list-item]
    except AttributeError:
        pass
    assert st.get() == [] and st.revision == 0


def test_wal_mode(tmp_path):
    st = Store(str(tmp_path / "store.db"))
    assert st._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_kind_aliases():
    for alias in ("vs", "VirtualService", "virtualservices", "VIRTUALSERVICE"):
        assert canonical_kind(alias) == "VirtualService"
    assert canonical_kind("ap") == "AuthorizationPolicy"
    assert canonical_kind("pa") == "PeerAuthentication"
    assert canonical_kind("we") == "WorkloadEntry"
    assert canonical_kind("bogus") is None
