"""The ``meshlet`` CLI run in-process (``main(argv)``) against a real control plane process."""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from control_plane.cli.main import main
from proxy.discovery import DiscoveryClient
from tests.integration.test_control_plane import DR, VS, ControlPlaneProcess, registration

BAD = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy: {loadBalancer: {simple: SOMETIMES}}
"""


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    p = ControlPlaneProcess(tmp_path_factory.mktemp("cli") / "cp").start()
    yield p
    p.stop()


@pytest.fixture(autouse=True)
def env(monkeypatch, cp):
    for var in ("MESHLET_CONTROL_PLANE", "MESHLET_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MESHLET_DATA_DIR", str(cp.data_dir))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return str(p)


# -- apply / get / delete -----------------------------------------------------------------


def test_apply_created_unchanged_configured(cp, capsys, tmp_path):
    f = write(tmp_path, "reviews.yaml", VS.format(subset="v1") + "---\n" + DR)
    code, out, err = run(capsys, "apply", "-f", f)
    assert (code, err) == (0, "")
    assert out == ("virtualservice.networking.istio.io/reviews created\n"
                   "destinationrule.networking.istio.io/reviews created\n")
    code, out, _ = run(capsys, "apply", "-f", f)
    assert out.split("\n")[0] == "virtualservice.networking.istio.io/reviews unchanged"
    write(tmp_path, "reviews.yaml", VS.format(subset="v2") + "---\n" + DR)
    code, out, _ = run(capsys, "apply", "-f", f)
    assert out == ("virtualservice.networking.istio.io/reviews configured\n"
                   "destinationrule.networking.istio.io/reviews unchanged\n")


def test_apply_folder_with_one_invalid_document_applies_nothing(cp, capsys, tmp_path):
    d = tmp_path / "configs"
    write(d, "a.yaml", VS.format(subset="v1").replace("name: reviews", "name: ratings"))
    bad = write(d, "b.yaml", BAD)
    code, out, err = run(capsys, "apply", "-f", str(d))
    assert code == 1 and out == ""
    assert err.splitlines()[0] == "error: invalid configuration; nothing was applied"
    assert f"{bad}: document 1 (DestinationRule default/ratings): " \
           "spec.trafficPolicy.loadBalancer.simple" in err
    code, out, err = run(capsys, "get", "vs", "ratings")
    assert code == 1 and "not found" in err


def test_apply_missing_file_is_a_usage_error(capsys, tmp_path):
    code, out, err = run(capsys, "apply", "-f", str(tmp_path / "nope.yaml"))
    assert code == 2 and err == f"error: cannot read {tmp_path / 'nope.yaml'}: no such file " \
                                "or directory\n"


def test_apply_from_stdin_and_dry_run(cp, capsys, monkeypatch, tmp_path):
    doc = DR.replace("name: reviews", "name: stdin-dr")
    monkeypatch.setattr("sys.stdin", io.StringIO(doc))
    code, out, _ = run(capsys, "apply", "-f", "-")
    assert (code, out) == (0, "destinationrule.networking.istio.io/stdin-dr created\n")
    f = write(tmp_path, "x.yaml", DR.replace("name: reviews", "name: dry"))
    code, out, _ = run(capsys, "apply", "--dry-run", "-f", f)
    assert (code, out) == (0, "destinationrule.networking.istio.io/dry valid (dry run)\n")
    assert run(capsys, "get", "dr", "dry")[0] == 1


def test_get_forms(cp, capsys, tmp_path):
    f = write(tmp_path, "g.yaml", VS.format(subset="v1").replace("name: reviews", "name: getme"))
    assert run(capsys, "apply", "-f", f)[0] == 0
    for kind in ("vs", "VirtualService", "virtualservices", "virtualservice"):
        code, out, _ = run(capsys, "get", kind, "getme")
        assert code == 0
        head, row = out.splitlines()
        assert head.split() == ["NAMESPACE", "NAME", "HOSTS", "REVISION", "AGE"]
        assert row.split()[:3] == ["default", "getme", "reviews"]
    code, out, _ = run(capsys, "get", "vs", "getme", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert doc["kind"] == "VirtualService" and doc["metadata"]["name"] == "getme"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}  # re-appliable as is
    code, out, _ = run(capsys, "get", "vs", "-o", "json", "-n", "default")
    body = json.loads(out)
    assert body["kind"] == "List" and "getme" in [i["metadata"]["name"] for i in body["items"]]
    code, out, err = run(capsys, "get", "vs", "-n", "empty-ns")
    assert code == 0 and out == "" and "no vs resources found in namespace 'empty-ns'" in err


def test_get_unknown_kind(capsys):
    code, out, err = run(capsys, "get", "widgets")
    assert code == 1 and err.startswith("error: unknown kind 'widgets'")


def test_delete_by_name_and_by_file(cp, capsys, tmp_path):
    f = write(tmp_path, "d.yaml", DR.replace("name: reviews", "name: del1") + "---\n"
              + DR.replace("name: reviews", "name: del2"))
    assert run(capsys, "apply", "-f", f)[0] == 0
    code, out, _ = run(capsys, "delete", "dr", "del1")
    assert (code, out) == (0, 'destinationrule.networking.istio.io "del1" deleted\n')
    code, out, err = run(capsys, "delete", "dr", "del1")
    assert code == 1 and err == "error: DestinationRule default/del1 not found\n"
    assert run(capsys, "delete", "dr", "del1", "--ignore-not-found")[0] == 0
    code, out, err = run(capsys, "delete", "-f", f)
    assert code == 1 and out == 'destinationrule.networking.istio.io "del2" deleted\n'
    code, out, err = run(capsys, "delete")
    assert code == 2 and "KIND NAME" in err


# -- tokens -------------------------------------------------------------------------------


def test_token_create_prints_the_token_alone(capsys):
    code, out, err = run(capsys, "token", "create", "--service", "orders", "--ttl", "10m")
    assert code == 0 and err == ""
    assert re.fullmatch(r"meshlet1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{32}\.[0-9a-f]{64}\n", out)
    code, out, err = run(capsys, "token", "create", "--service", "orders", "--ttl", "soon")
    assert code == 2 and "--ttl 'soon'" in err


# -- credentials and connection errors ----------------------------------------------------


def test_bad_token_exit_4(capsys, tmp_path):
    tok = write(tmp_path, "t", "not-the-token\n")
    code, out, err = run(capsys, "get", "vs", "--token-file", tok)
    assert code == 4 and "rejected the admin token" in err and err.count("\n") == 1


def test_token_from_env(cp, capsys, monkeypatch):
    monkeypatch.setenv("MESHLET_TOKEN", cp.token)
    monkeypatch.setenv("MESHLET_DATA_DIR", str(cp.data_dir.parent / "nowhere"))
    monkeypatch.setenv("MESHLET_CONTROL_PLANE", cp.url)
    code, _, err = run(capsys, "get", "vs", "--ca-file",
                       str(cp.data_dir / "ca" / "trust-bundle.pem"))
    assert code == 0, err


def test_missing_token_exit_4(capsys, tmp_path, cp):
    code, _, err = run(capsys, "get", "vs", "--data-dir", str(tmp_path),
                       "--control-plane", cp.url)
    assert code == 4 and "no admin token" in err


def test_unreachable_exit_5(capsys):
    code, out, err = run(capsys, "get", "vs", "--control-plane", "https://127.0.0.1:1")
    assert code == 5
    assert err.startswith("error: cannot reach the control plane at https://127.0.0.1:1")
    assert err.count("\n") == 1


def test_untrusted_certificate_exit_6(capsys, tmp_path, cp):
    from certs.authority import CertificateAuthority

    other = CertificateAuthority.create_self_signed(tmp_path / "other")
    bundle = write(tmp_path, "other.pem", other.bundle_pem().decode())
    code, out, err = run(capsys, "get", "vs", "--ca-file", bundle)
    assert code == 6 and "not issued by the CA" in err


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["get", "--help"])
    out = capsys.readouterr().out
    assert "5  control plane unreachable" in out and "4  missing or rejected admin token" in out


# -- sidecars: proxy-status, proxy-config, check -----------------------------------------


class ThreadedSidecar:
    """A DiscoveryClient and a stand-in admin port on their own loop in a thread (the CLI
    under test is synchronous)."""

    def __init__(self, cp: ControlPlaneProcess, tmp: Path, reject: str | None = None) -> None:
        self.cp, self.tmp, self.reject = cp, tmp, reject
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.acked = threading.Event()

    def __enter__(self) -> ThreadedSidecar:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        answers = {
            # The shapes of the sidecar's admin endpoints (proxy/sidecar.py).
            "/config_dump": {"version": "7-abc",
                             "resources": [yaml.safe_load(VS.format(subset="v1"))],
                             "routes": [{"host": "reviews.default.svc.cluster.local",
                                         "virtual_service": "default/reviews",
                                         "routes": [{"name": "", "match": [],
                                                     "destinations": [
                                                         {"cluster": "reviews|v1", "weight": 100}],
                                                     "timeout": None}]}]},
            "/clusters": {"version": "7-abc", "clusters": [
                {"name": "reviews|v1", "service": "reviews.default.svc.cluster.local",
                 "subset": "v1", "port": 9080, "lb": "ROUND_ROBIN",
                 "endpoints": [{"address": "127.0.0.1:9080", "labels": {}, "tls": True,
                                "active_requests": 0, "healthy": True, "ejected": False}],
                 "retry_budget_available": 10,
                 "circuit_breaker": {"state": "CLOSED", "failure_rate": -1}}]},
            "/certs": {"spiffe_id": "spiffe://cluster.local/ns/default/sa/reviews",
                       "serial": "1a", "not_before": "2026-01-01T00:00:00Z",
                       "not_after": "2026-01-02T00:00:00Z", "next_renewal": None,
                       "last_renewal_error": None},
        }

        async def admin(request: web.Request) -> web.Response:
            return web.json_response(answers[request.path])

        app = web.Application()
        for path in answers:
            app.router.add_get(path, admin)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        admin = site._server.sockets[0].getsockname()
        reg = registration()
        reg["admin_address"] = f"{admin[0]}:{admin[1]}"
        reg["cert_expiry"] = time.time() + 60  # the certificate presented wins over this
        ctx = self.cp.workload_context("reviews", ttl=7200)
        self.client = DiscoveryClient(self.cp.url, lambda: ctx, reg, self._apply,
                                      str(self.tmp / "cache.json"), self._status)
        self.client.start()

    def _apply(self, snap: dict) -> None:
        if self.reject:
            raise ValueError(self.reject)

    def _status(self, ev: dict) -> None:
        if ev["event"] in ("acked", "nacked"):
            self.acked.set()

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self.client.stop()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def wait_until(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_proxy_status_and_check_with_a_synced_sidecar(cp, capsys, tmp_path):
    with ThreadedSidecar(cp, tmp_path) as sc:
        assert sc.acked.wait(5)

        def synced() -> bool:
            return run(capsys, "proxy-status")[1].splitlines()[1].endswith("SYNCED")

        wait_until(synced)
        code, out, _ = run(capsys, "proxy-status")
        head, row = out.splitlines()[:2]
        assert head.split() == ["NAME", "SERVICE", "VERSION", "ADDRESS", "ACKED", "CERT",
                                "EXPIRES", "CONFIG"]
        assert row.split()[:4] == ["reviews-1", "reviews.default", "v1", "127.0.0.1:15006"]
        assert "in 119m" in row or "in 2h" in row
        code, out, _ = run(capsys, "proxy-status", "-o", "json")
        assert json.loads(out)["proxies"][0]["acked_version"] == sc.client.version

        code, out, _ = run(capsys, "check")
        assert code == 0 and out.endswith("Status check results are √\n"), out
        assert "× " not in out

        code, out, err = run(capsys, "proxy-config", "routes", "reviews")
        assert code == 0, err
        assert out.splitlines()[0] == "config version: 7-abc"
        assert out.splitlines()[2].split() == ["HOST", "MATCH", "DESTINATIONS", "VIRTUAL",
                                               "SERVICE"]
        assert out.splitlines()[3].split() == ["reviews.default.svc.cluster.local", "/*",
                                               "reviews|v1", "default/reviews"]
        code, out, _ = run(capsys, "proxy-config", "ep", "reviews-1")
        assert out.splitlines()[1].split() == ["127.0.0.1:9080", "HEALTHY", "reviews|v1"]
        code, out, _ = run(capsys, "proxy-config", "c", "reviews")
        assert out.splitlines()[1].split() == ["reviews|v1", "v1", "9080", "ROUND_ROBIN", "1",
                                               "CLOSED"]
        code, out, _ = run(capsys, "proxy-config", "clusters", "reviews", "-o", "json")
        assert json.loads(out)["clusters"][0]["circuit_breaker"]["state"] == "CLOSED"
        code, out, _ = run(capsys, "proxy-config", "secret", "reviews")
        assert "spiffe://cluster.local/ns/default/sa/reviews" in out
        # every name the CLI prints (demo: service-version) works; a miss lists the sidecars
        for name in ("reviews-v1", "reviews-v1.default", "reviews.default"):
            code, out, err = run(capsys, "proxy-config", "routes", name)
            assert code == 0 and out.startswith("config version: 7-abc"), (name, err)
        code, out, _ = run(capsys, "proxy-status", "reviews-v1")
        assert out.splitlines()[1].startswith("reviews-1 ")
        code, out, err = run(capsys, "proxy-status", "nobody")
        assert (code, out) == (1, "")
        assert err == "error: no sidecar 'nobody' is registered; registered sidecars: reviews-1\n"
        code, out, err = run(capsys, "proxy-config", "routes", "nobody")
        assert code == 1
        assert err == "error: no sidecar 'nobody' is registered; registered sidecars: reviews-1\n"
        code, out, err = run(capsys, "proxy-config", "listeners", "reviews")
        assert code == 2 and "unknown config type" in err


def test_proxy_status_and_check_show_a_nack(cp, capsys, tmp_path):
    with ThreadedSidecar(cp, tmp_path, reject="spec.http[0].route[0]: unknown subset v9") as sc:
        assert sc.acked.wait(5)

        def nacked() -> bool:
            return "NACK" in run(capsys, "proxy-status")[1]

        wait_until(nacked)
        code, out, _ = run(capsys, "proxy-status")
        assert out.splitlines()[1].endswith("NACK: spec.http[0].route[0]: unknown subset v9")
        code, out, _ = run(capsys, "check")
        assert code == 3
        assert "× every sidecar acknowledged the current config" in out
        assert "reviews-1: NACK: spec.http[0].route[0]: unknown subset v9" in out
        assert "hint: see `meshlet proxy-status`" in out
        assert out.endswith("Status check results are ×\n")


def test_check_unreachable_and_bad_token(capsys, tmp_path):
    code, out, _ = run(capsys, "check", "--control-plane", "https://127.0.0.1:1")
    assert code == 3
    assert out.splitlines()[0] == "× control plane is reachable"
    assert "hint: start it with `meshlet control-plane" in out
    assert "certificate is trusted" not in out  # fatal: later checks skipped
    tok = write(tmp_path, "t", "nope")
    code, out, _ = run(capsys, "check", "--token-file", tok, "-o", "json")
    body = json.loads(out)
    assert code == 3 and body["success"] is False
    assert [c["result"] for c in body["checks"]] == ["ok", "ok", "fail"]


def test_check_flags_a_readable_token_file(cp, capsys, tmp_path):
    import os

    tok = write(tmp_path, "t", cp.token)
    os.chmod(tok, 0o644)
    code, out, _ = run(capsys, "check", "--token-file", tok)
    assert code == 3
    assert f"× admin token file is private\n    {tok} has mode 0644\n    hint: chmod 600" in out
    os.chmod(tok, 0o600)
    assert run(capsys, "check", "--token-file", tok)[0] == 0


def test_trust_domain_change_warns_until_restart(cp, capsys, tmp_path):
    f = write(tmp_path, "mesh.yaml", "apiVersion: meshlet.dev/v1alpha1\nkind: MeshConfig\n"
              "metadata: {name: mesh}\nspec: {trustDomain: example.org}\n")
    code, out, err = run(capsys, "apply", "-f", f)
    assert code == 0 and out == "meshconfig.meshlet.dev/mesh created\n"
    assert err == ("warning: MeshConfig default/mesh: spec.trustDomain 'example.org' takes effect "
                   "when the control plane restarts; until then certificates carry "
                   "'cluster.local'\n")
    assert run(capsys, "delete", "mc", "mesh")[0] == 0


def test_control_plane_port_in_use_is_one_line_exit_1(cp, tmp_path):
    import subprocess
    import sys

    from tests.integration.test_control_plane import LAUNCH, ROOT

    r = subprocess.run(
        [sys.executable, "-c", LAUNCH, "control-plane", "--data-dir", str(tmp_path / "d2"),
         "--listen", cp.addr, "--log-level", "error"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr == (f"error: cannot start the control plane on {cp.addr}: address already "
                        "in use (is another control plane running?); stop it or pick another "
                        "address with --listen HOST:PORT\n")


def test_control_plane_bad_listen_is_a_usage_error(capsys, tmp_path):
    code, out, err = run(capsys, "control-plane", "--data-dir", str(tmp_path), "--listen", "x")
    assert code == 2 and err == "error: --listen 'x': expected HOST:PORT\n"
