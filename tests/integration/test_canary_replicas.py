"""A canary rollout on control-plane replicas (a real 3-member etcd cluster, two replicas): only
the elected leader decides, its status is in etcd, and when the leader is killed with SIGKILL
mid-rollout the next leader resumes from that status and finishes the rollout."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.test_canary import BASE, Load, canary, trace
from tests.integration.test_replicas_etcd import Mesh, Replica
from tests.support import start_app, start_sidecar, wait_until

pytestmark = pytest.mark.slow


def api(replica: Replica, token_dir, method: str, path: str) -> dict:
    ctx = ssl.create_default_context(cafile=str(replica.data_dir / "ca" / "trust-bundle.pem"))
    req = urllib.request.Request(
        replica.url + path, method=method, data=b"{}" if method == "POST" else None,
        headers={"Authorization": "Bearer " + (token_dir / "admin.token").read_text().strip(),
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.loads(r.read())


def test_next_leader_resumes_a_rollout_from_etcd(tmp_path):
    m = Mesh(tmp_path)
    m.etcd.start_all()
    procs: list = []
    try:
        m.a = Replica("a", tmp_path, m.etcd, None)
        m.a.start()
        m.b = Replica("b", tmp_path, m.etcd, m.a.data_dir / "admin.token")
        m.b.start()
        tokens = m.a.data_dir

        def status(r: Replica) -> dict:
            return api(r, tokens, "GET", "/v1/status")

        leader, other = wait_until(
            lambda: ((m.a, m.b) if status(m.a).get("is_leader") else
                     (m.b, m.a) if status(m.b).get("is_leader") else None),
            timeout=30, interval=0.2, what="a leader")
        urls = f"{leader.url},{other.url}"  # every sidecar reports to the leader first
        r = m.cli(urls, "apply", "-f", "-", input=BASE)
        assert r.returncode == 0, r.stderr

        def token(service: str):
            r = m.cli(urls, "token", "create", "--service", service)
            assert r.returncode == 0, r.stderr
            path = tmp_path / f"{service}.token"
            path.write_text(r.stdout.strip())
            return path

        environ = {"MESHLET_STATS_INTERVAL": "0.2"}
        for version in ("v1", "v2"):
            app, port = start_app(tmp_path, "orders", version)
            procs.append(app)
            procs.append(start_sidecar(
                tmp_path, "orders", port, None, "--version", version, "--control-plane", urls,
                "--token-file", str(token("orders")), "--state-dir",
                str(tmp_path / f"orders-{version}"), "--no-access-log",
                name=f"orders-{version}", environ=environ))
        caller = start_sidecar(
            tmp_path, "frontend", 1, None, "--control-plane", urls, "--token-file",
            str(token("frontend")), "--state-dir", str(tmp_path / "frontend"), "--no-access-log",
            name="frontend", environ=environ)
        procs.append(caller)

        def canary_status(r: Replica) -> dict:
            return api(r, tokens, "GET", "/v1/canaries/default/orders")["status"]

        with Load(caller.outbound, max_s=120):
            r = m.cli(urls, "apply", "-f", "-", input=canary("v2", [20, 40, 60, 80]))
            assert r.returncode == 0, r.stderr
            wait_until(lambda: canary_status(leader)["weight"] >= 40, timeout=40, interval=0.1,
                       what="the canary at 40% or more")
            # the follower serves the leader's status, from etcd
            assert canary_status(other)["weight"] >= 40
            # a decision asked of the follower is refused, naming the leader
            try:
                api(other, tokens, "POST", "/v1/canaries/default/orders/pause")
                raise AssertionError("the follower took a decision")
            except urllib.error.HTTPError as e:
                assert e.code == 503 and "not the leader" in json.loads(e.read())["error"]
            leader.kill()
            killed = time.monotonic()
            wait_until(lambda: status(other).get("is_leader"), timeout=30, interval=0.2,
                       what="the other replica elected")
            s = wait_until(lambda: (s := canary_status(other))["phase"] == "Succeeded" and s,
                           timeout=60, interval=0.2, what="the rollout finished by the new leader")
        decisions = [e["decision"] for e in s["events"]]
        assert decisions.count("initialized") == 1, trace(s)  # resumed, not started again
        assert [e["weight"] for e in s["events"] if e["decision"] == "advanced"] == \
            [20, 40, 60, 80], trace(s)
        assert any(e["time"] > time.time() - (time.monotonic() - killed)
                   and e["decision"] in ("advanced", "promoted") for e in s["events"]), trace(s)
        (vs,) = api(other, tokens, "GET", "/v1/resources/vs?name=orders")["items"]
        assert {d["destination"]["subset"]: d["weight"]
                for d in vs["spec"]["http"][0]["route"]} == {"v1": 0, "v2": 100}
    finally:
        for p in reversed(procs):
            p.stop()
        for rep in (getattr(m, "a", None), getattr(m, "b", None)):
            if rep is not None:
                rep.stop()
        m.etcd.stop()
