"""The control plane as a real process over HTTPS: store persistence, apply validation, the config
stream (push, ACK/NACK, cache, reconnect, grace period, identity checks)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from certs import keys, tls
from certs.authority import CertificateAuthority
from certs.csr import build_csr
from certs.spiffe import SpiffeId
from proxy.discovery import DiscoveryClient
from tests.support import sockets_connected_to

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = "import sys; from control_plane.cli.main import main; sys.exit(main(sys.argv[1:]))"

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: {subset}}}
"""
DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""
BAD_VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: -5
"""


class ControlPlaneProcess:
    """``meshlet control-plane`` in a subprocess; learns its port from ``listen.addr``."""

    def __init__(self, data_dir: Path, listen: str = "127.0.0.1:0", grace: str = "30s",
                 extra: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.listen = listen
        self.grace = grace
        self.proc: subprocess.Popen | None = None
        self.addr = ""

    def start(self) -> ControlPlaneProcess:
        addr_file = self.data_dir / "listen.addr"
        addr_file.unlink(missing_ok=True)
        self.log = open(self.data_dir.parent / f"{self.data_dir.name}-cp.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "control-plane", "--data-dir", str(self.data_dir),
             "--listen", self.listen, "--grace-period", self.grace, "--log-level", "debug",
             *self.extra],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not addr_file.exists():
            assert self.proc.poll() is None, "control plane exited: " + self.read_log()
            assert time.monotonic() < deadline, "control plane did not start"
            time.sleep(0.05)
        self.addr = addr_file.read_text().strip()
        self.listen = self.addr  # a restart comes back on the same port
        return self

    def read_log(self) -> str:
        return (self.data_dir.parent / f"{self.data_dir.name}-cp.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.log.close()

    @property
    def url(self) -> str:
        return f"https://{self.addr}"

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def ca_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.data_dir / "ca" / "trust-bundle.pem"))

    def workload_context(self, service: str, namespace: str = "default",
                         ttl: int = 3600) -> ssl.SSLContext:
        """A client context with a certificate for ``service`` signed by this CA (what a sidecar
        holds after /v1/certify)."""
        ca = CertificateAuthority.load(self.data_dir)
        key = keys.generate_private_key()
        sid = SpiffeId.for_workload(ca.trust_domain, namespace, service)
        chain = ca.sign(build_csr(key, sid), sid, ttl)
        return tls.client_context(chain, keys.private_key_to_pem(key), ca.bundle_pem(),
                                  alpn=tls.HTTP11_ALPN)

    async def call(self, method: str, path: str, **kw) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {kw.pop('token', self.token)}",
                   **kw.pop("headers", {})}
        async with aiohttp.ClientSession() as s, s.request(
            method, self.url + path, headers=headers, ssl=self.ca_context(), **kw
        ) as r:
            return r.status, await r.json(content_type=None)


@pytest.fixture
def cp(tmp_path):
    p = ControlPlaneProcess(tmp_path / "cp").start()
    yield p
    p.stop()


async def wait_for(pred, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def registration(service: str = "reviews", node: str = "reviews-1", version: str = "v1") -> dict:
    return {"node": node, "service": service, "namespace": "default", "version": version,
            "labels": {"app": service}, "address": "127.0.0.1:15006",
            "admin_address": "127.0.0.1:1", "cert_expiry": time.time() + 3600}


# -- files and the store ------------------------------------------------------------------


async def test_first_start_creates_private_files(cp):
    for name in ("admin.token", "store.db", "ca/signer-key.pem"):
        assert stat.S_IMODE(os.stat(cp.data_dir / name).st_mode) == 0o600, name
    async with aiohttp.ClientSession() as s, s.get(cp.url + "/healthz", ssl=cp.ca_context()) as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"


async def test_operator_api_requires_the_admin_token(cp):
    status, body = await cp.call("GET", "/v1/resources/vs", token="wrong")
    assert status == 401 and "admin token" in body["error"]


async def test_store_survives_restart_and_revision_is_monotonic(cp):
    status, body = await cp.call("POST", "/v1/resources", json={"files": [
        {"source": "reviews.yaml", "text": VS.format(subset="v1") + "---\n" + DR}]})
    assert status == 200, body
    assert [r["action"] for r in body["results"]] == ["created", "created"]
    rev1 = body["revision"]
    status, body = await cp.call("POST", "/v1/resources", json={"files": [
        {"source": "reviews.yaml", "text": VS.format(subset="v2")}]})
    assert body["results"][0]["action"] == "configured" and body["revision"] > rev1
    rev2 = body["revision"]
    cp.stop()
    cp.start()
    status, body = await cp.call("GET", "/v1/resources/virtualservices?name=reviews")
    assert status == 200 and body["revision"] == rev2
    [vs] = body["items"]
    assert vs["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v2"
    status, body = await cp.call("GET", "/v1/resources/dr")
    assert [i["metadata"]["name"] for i in body["items"]] == ["reviews"]
    status, body = await cp.call("DELETE", "/v1/resources/dr/default/reviews")
    assert status == 200 and body["revision"] == rev2 + 1


async def test_apply_with_one_invalid_document_applies_nothing(cp):
    text = VS.format(subset="v1") + "---\n" + BAD_VS
    status, body = await cp.call("POST", "/v1/resources", json={"files": [
        {"source": "configs/reviews.yaml", "text": text}]})
    assert status == 400
    assert "nothing was applied" in body["error"]
    [err] = body["errors"]
    assert err.startswith("configs/reviews.yaml: document 2 (VirtualService default/broken)")
    assert "spec.http[0].route[0].weight" in err
    status, body = await cp.call("GET", "/v1/resources")
    assert body["items"] == [] and body["revision"] == 0


# -- the config stream --------------------------------------------------------------------


class Sidecar:
    """A DiscoveryClient with an apply callback that records, and can be told to reject."""

    def __init__(self, cp: ControlPlaneProcess, tmp: Path, service: str = "reviews",
                 node: str = "reviews-1", cert_service: str | None = None,
                 ssl_factory=None) -> None:
        self.applied: list[dict] = []
        self.events: list[dict] = []
        self.reject: str | None = None
        ctx = cp.workload_context(cert_service or service)
        self.client = DiscoveryClient(
            cp.url, ssl_factory or (lambda: ctx), registration(service, node), self.apply,
            str(tmp / f"{node}.cache.json"), self.events.append,
            backoff_base=0.05, backoff_cap=0.2,
        )

    def apply(self, snap: dict) -> None:
        if self.reject:
            raise ValueError(self.reject)
        self.applied.append(snap)


def proxy(body: dict, node: str) -> dict | None:
    return next((p for p in body["proxies"] if p["node_id"] == node), None)


async def test_snapshot_pushed_within_a_second_and_ack_recorded(cp, tmp_path):
    sc = Sidecar(cp, tmp_path)
    sc.client.start()
    try:
        await wait_for(lambda: sc.applied, what="first snapshot")
        first = sc.applied[-1]
        assert first["registry"][0]["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/reviews"
        t0 = time.monotonic()
        status, _ = await cp.call("POST", "/v1/resources", json={"files": [
            {"source": "r.yaml", "text": VS.format(subset="v1")}]})
        assert status == 200
        await wait_for(lambda: len(sc.applied) >= 2, timeout=1.0, what="pushed snapshot")
        assert time.monotonic() - t0 < 1.0
        snap = sc.applied[-1]
        assert [r["kind"] for r in snap["resources"]] == ["VirtualService"]

        async def acked():
            _, body = await cp.call("GET", "/v1/proxies")
            p = proxy(body, "reviews-1")
            return p and p["acked_version"] == snap["version"] == body["snapshot_version"]

        await wait_for(acked, what="ACK in proxy status")
        # The cache holds the last good snapshot, private to the sidecar.
        cache = Path(sc.client.cache_path)
        assert json.loads(cache.read_text())["version"] == snap["version"]
        assert stat.S_IMODE(cache.stat().st_mode) == 0o600
        # An apply that changes nothing pushes nothing: the next push the sidecar sees (pushes
        # are ordered on its one stream) is the change applied after it.
        n = len(sc.applied)
        _, body = await cp.call("POST", "/v1/resources", json={"files": [
            {"source": "r.yaml", "text": VS.format(subset="v1")}]})
        assert [r["action"] for r in body["results"]] == ["unchanged"]
        await cp.call("POST", "/v1/resources", json={"files": [
            {"source": "r.yaml", "text": VS.format(subset="v2")}]})
        await wait_for(lambda: len(sc.applied) > n, what="the push of the change")
        assert len(sc.applied) == n + 1
        pushed = sc.applied[n]["resources"][0]["spec"]["http"][0]["route"][0]["destination"]
        assert pushed["subset"] == "v2"
    finally:
        await sc.client.stop()
    # stop() returns with the stream's socket closed (TLS close included), not closing
    assert sockets_connected_to(cp.port) == []


async def test_nack_keeps_previous_version_and_shows_reason(cp, tmp_path):
    sc = Sidecar(cp, tmp_path)
    sc.client.start()
    try:
        await wait_for(lambda: sc.applied, what="first snapshot")
        good = sc.applied[-1]["version"]
        await wait_for(lambda: sc.client.version == good)
        sc.reject = "spec.http[0]: unknown subset v9"
        await cp.call("POST", "/v1/resources", json={"files": [
            {"source": "r.yaml", "text": VS.format(subset="v9")}]})

        async def nacked():
            _, body = await cp.call("GET", "/v1/proxies")
            p = proxy(body, "reviews-1")
            return p if p and p["nack_error"] else None

        p = await wait_for(nacked, what="NACK in proxy status")
        assert p["nack_error"] == "spec.http[0]: unknown subset v9"
        assert p["acked_version"] == good and p["nack_version"] != good
        assert sc.client.version == good
        assert json.loads(Path(sc.client.cache_path).read_text())["version"] == good
        assert any(e["event"] == "nacked" for e in sc.events)
    finally:
        await sc.client.stop()


async def test_control_plane_down_client_keeps_cache_and_reconnects(cp, tmp_path):
    sc = Sidecar(cp, tmp_path)
    sc.client.start()
    try:
        await wait_for(lambda: sc.applied, what="first snapshot")
        await cp.call("POST", "/v1/resources", json={"files": [
            {"source": "r.yaml", "text": VS.format(subset="v1")}]})
        await wait_for(lambda: len(sc.applied) >= 2 and sc.client.version
                       == sc.applied[-1]["version"])
        version = sc.client.version
        cp.stop(signal.SIGKILL)
        await wait_for(lambda: not sc.client.connected, what="disconnect noticed")
        # A restarted sidecar with the control plane down starts from its cache.
        fresh = DiscoveryClient(cp.url, lambda: None, registration(), lambda s: None,
                                sc.client.cache_path)
        cached = fresh.load_cache()
        assert cached is not None and cached["version"] == version
        assert cached["resources"][0]["metadata"]["name"] == "reviews"
        cp.start()
        await wait_for(lambda: sc.client.connected, timeout=10, what="reconnect")

        async def acked_again():
            _, body = await cp.call("GET", "/v1/proxies")
            p = proxy(body, "reviews-1")
            return p and p["acked_version"] == body["snapshot_version"]

        await wait_for(acked_again, timeout=10, what="ACK after reconnect")
    finally:
        await sc.client.stop()


async def test_dropped_stream_removed_after_grace_drain_removed_at_once(tmp_path):
    cp = ControlPlaneProcess(tmp_path / "cp", grace="500ms").start()
    try:
        a = Sidecar(cp, tmp_path, node="reviews-a")
        b = Sidecar(cp, tmp_path, node="reviews-b")
        a.client.start()
        b.client.start()
        await wait_for(lambda: a.applied and b.applied)

        async def nodes():
            _, body = await cp.call("GET", "/v1/proxies")
            return {p["node_id"]: p for p in body["proxies"]}

        assert set(await nodes()) == {"reviews-a", "reviews-b"}
        await a.client.stop()  # drains: deregisters first
        assert await wait_for(lambda: _missing(nodes, "reviews-a"), timeout=0.5)
        # b's stream drops without a goodbye: kept for the grace period, then removed.
        b.client._stopping = True
        b.client._task.cancel()
        t0 = time.monotonic()
        got = await wait_for(nodes, what="b listed")
        assert "reviews-b" in got
        await wait_for(lambda: _missing(nodes, "reviews-b"), timeout=5, what="b expired")
        assert time.monotonic() - t0 >= 0.3
    finally:
        await a.client.stop()
        await b.client.stop()  # reaps the cancelled session, which closes its socket
        cp.stop()


async def _missing(nodes, node: str) -> bool:
    return node not in await nodes()


async def test_registration_must_match_the_certificate(cp, tmp_path):
    sc = Sidecar(cp, tmp_path, service="reviews", cert_service="ratings")
    sc.client.start()
    try:
        await wait_for(lambda: "does not match" in sc.client.last_error, what="refusal")
        _, body = await cp.call("GET", "/v1/proxies")
        assert body["proxies"] == []
        assert sc.applied == []
    finally:
        await sc.client.stop()
    assert sockets_connected_to(cp.port) == []  # the refused streams' sockets too


async def test_stream_without_client_certificate_is_refused(cp, tmp_path):
    sc = Sidecar(cp, tmp_path, ssl_factory=cp.ca_context)
    sc.client.start()
    try:
        await wait_for(lambda: "client certificate" in sc.client.last_error, what="refusal")
        assert sc.applied == []
    finally:
        await sc.client.stop()


async def test_client_refuses_a_server_that_is_not_the_control_plane(cp, tmp_path):
    """A workload with a certificate from the same CA cannot pose as the control plane."""
    from aiohttp import web

    ca = CertificateAuthority.load(cp.data_dir)
    key = keys.generate_private_key()
    sid = SpiffeId.for_workload(ca.trust_domain, "default", "evil")
    chain = ca.sign_serving(key.public_key(), ["127.0.0.1"], 3600, sid)
    server_ctx = tls.server_context(chain, keys.private_key_to_pem(key), ca.bundle_pem(),
                                    require_client_cert=False, alpn=tls.HTTP11_ALPN)

    async def stream(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "snapshot", "version": "1-x", "nonce": "1",
                            "snapshot": {"version": "1-x", "resources": []}})
        await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    ctx = cp.workload_context("reviews")
    applied = []
    client = DiscoveryClient(f"https://127.0.0.1:{port}", lambda: ctx, registration(),
                             applied.append, str(tmp_path / "c.json"),
                             backoff_base=0.05, backoff_cap=0.1)
    client.start()
    try:
        await wait_for(lambda: "not the meshlet control plane" in client.last_error)
        assert "spiffe://cluster.local/ns/default/sa/evil" in client.last_error
        assert applied == []
    finally:
        await client.stop()
        await runner.cleanup()


@pytest.mark.slow
async def test_apply_to_last_ack_with_twenty_sidecars(cp, tmp_path):
    """Measures apply -> last ACK with 20 sidecars (reported in docs/operator-api.md)."""
    cars = [Sidecar(cp, tmp_path, node=f"reviews-{i}") for i in range(20)]
    acked_at: dict[str, float] = {}
    for sc in cars:
        node = sc.client.registration["node"]
        sc.client._on_status = (lambda n: lambda ev: ev["event"] == "acked"
                                and acked_at.__setitem__(n, time.time()))(node)
        sc.client.start()
    try:
        async def all_synced():
            _, body = await cp.call("GET", "/v1/proxies")
            ps = body["proxies"]
            return len(ps) == 20 and all(p["acked_version"] == body["snapshot_version"]
                                         for p in ps)

        await wait_for(all_synced, timeout=20, what="20 sidecars synced")
        samples, posted = [], []
        for subset in ("v1", "v2", "v1", "v2", "v1"):
            acked_at.clear()
            t0 = time.time()
            status, _ = await cp.call("POST", "/v1/resources", json={"files": [
                {"source": "r.yaml", "text": VS.format(subset=subset)}]})
            assert status == 200
            posted.append(time.time() - t0)
            await wait_for(lambda: len(acked_at) == 20, timeout=5, what="20 ACKs")
            samples.append(max(acked_at.values()) - t0)
        samples.sort()
        print(f"\napply -> last of 20 ACKs: median {samples[2] * 1000:.1f} ms, "
              f"max {samples[-1] * 1000:.1f} ms (the apply request itself: median "
              f"{sorted(posted)[2] * 1000:.1f} ms)")
        assert samples[-1] < 1.0
    finally:
        await asyncio.gather(*(sc.client.stop() for sc in cars))


async def test_join_with_a_token_then_stream_with_the_issued_certificate(cp, tmp_path):
    """The whole join: a token from the operator API, a certificate from /v1/certify (the
    sidecar's IdentityManager), then the config stream authenticated by that certificate."""
    from proxy.identity.manager import IdentityManager

    status, body = await cp.call("POST", "/v1/tokens", json={"service": "orders", "ttl": "5m"})
    assert status == 200, body
    im = IdentityManager(cp.url, body["token"], "orders", "default", tmp_path / "id")
    await im.start()
    try:
        assert im.ready
        reg = registration("orders", "orders-1")
        reg["cert_expiry"] = im.not_after
        applied: list[dict] = []
        client = DiscoveryClient(cp.url, im.client_context, reg, applied.append,
                                 str(tmp_path / "orders.cache.json"))
        client.start()
        try:
            await wait_for(lambda: applied, what="snapshot over the issued certificate")

            async def listed():
                _, b = await cp.call("GET", "/v1/proxies")
                p = proxy(b, "orders-1")
                return p if p and p["acked_version"] else None

            p = await wait_for(listed)
            assert abs(p["cert_expiry"] - im.not_after) < 1
        finally:
            await client.stop()
    finally:
        await im.close()


# -- error paths of the API and the stream ------------------------------------------------


async def test_apply_error_paths(cp):
    status, body = await cp.call("POST", "/v1/resources", json={"nope": 1})
    assert status == 400 and body["error"] == "no resources to apply"
    status, body = await cp.call("POST", "/v1/resources", json={"documents": "x"})
    assert status == 400 and "expected JSON" in body["error"]
    status, body = await cp.call("POST", "/v1/resources", json={"files": [
        {"source": "a.yaml", "text": DR}, {"source": "b.yaml", "text": DR}]})
    assert status == 400
    assert body["errors"] == ["b.yaml#1: DestinationRule default/reviews is also defined in "
                              "a.yaml#1"]
    status, body = await cp.call("POST", "/v1/resources?source=raw.yaml", data=BAD_VS,
                                 headers={"Content-Type": "application/yaml"})
    assert status == 400 and body["errors"][0].startswith("raw.yaml: document 1")
    status, body = await cp.call("DELETE", "/v1/resources/vs/default/nope")
    assert status == 404 and "not found" in body["error"]
    status, body = await cp.call("GET", "/v1/resources/gadgets")
    assert status == 404 and "VirtualService" in body["kinds"]
    status, body = await cp.call("POST", "/v1/tokens", json={"service": "a", "ttl": "-1s"})
    assert status == 400


async def _raw_stream(cp, service: str = "reviews"):
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(cp.url + "/v1/stream", ssl=cp.workload_context(service))
    return session, ws


async def _close_raw_stream(cp, session, ws) -> None:
    """aiohttp ends a WebSocket's connection with a TLS close that nothing awaits (the session
    does not know it any more): wait for the socket, or a loop closed first leaks it."""
    await ws.close()
    await session.close()
    await wait_for(lambda: not sockets_connected_to(cp.port), what="the stream's socket closed")


async def test_stale_nonce_is_ignored(cp):
    session, ws = await _raw_stream(cp)
    try:
        await ws.send_json({"type": "register", **registration()})
        first = await ws.receive_json(timeout=5)
        await cp.call("POST", "/v1/resources", json={"files": [
            {"source": "r.yaml", "text": VS.format(subset="v1")}]})
        # the first snapshot is not ACKed, so the push holds the newer one for ack_wait (5 s,
        # control_plane/push.py flow control) and then sends it
        second = await ws.receive_json(timeout=15)
        assert second["nonce"] != first["nonce"]
        # An ACK of the new version carrying the old nonce is stale.
        await ws.send_json({"type": "ack", "version": second["version"], "nonce": first["nonce"]})
        await ws.send_json({"type": "status", "cert_expiry": 123.0})  # a marker, processed after
        p = await wait_for(_proxy_with(cp, lambda p: p["cert_expiry"] == 123.0))
        assert p["acked_version"] == ""
        await ws.send_json({"type": "ack", "version": second["version"],
                            "nonce": second["nonce"]})
        await wait_for(_proxy_with(cp, lambda p: p["acked_version"] == second["version"]))
    finally:
        await _close_raw_stream(cp, session, ws)


def _proxy_with(cp, pred):
    async def check():
        _, body = await cp.call("GET", "/v1/proxies")
        p = proxy(body, "reviews-1")
        return p if p and pred(p) else None

    return check


async def test_first_message_must_be_a_registration(cp):
    session, ws = await _raw_stream(cp)
    try:
        await ws.send_json({"type": "ack", "version": "x", "nonce": "1"})
        msg = await ws.receive_json(timeout=5)
        assert msg == {"type": "error", "error": "the first message must be a registration"}
        closing = await ws.receive(timeout=5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    finally:
        await _close_raw_stream(cp, session, ws)


async def test_proxy_config_error_paths(cp, tmp_path):
    a = Sidecar(cp, tmp_path, node="reviews-a")
    b = Sidecar(cp, tmp_path, node="reviews-b")
    a.client.start()
    b.client.start()
    try:
        await wait_for(lambda: a.applied and b.applied)
        status, body = await cp.call("GET", "/v1/proxies/reviews/routes")
        assert status == 409 and body["nodes"] == ["reviews-a", "reviews-b"]
        status, body = await cp.call("GET", "/v1/proxies/reviews-a/routes")
        assert status == 502 and "unreachable" in body["error"]  # admin_address 127.0.0.1:1
        status, body = await cp.call("GET", "/v1/proxies/reviews-a/listeners")
        assert status == 404
    finally:
        await a.client.stop()
        await b.client.stop()
