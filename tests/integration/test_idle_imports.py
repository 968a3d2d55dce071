"""Idle RSS (issue 18): what a sidecar at rest does not load.

A sidecar's idle RSS is mostly the modules it imported (see loadtests/README.md, "Idle RSS").
These tests start real sidecars (a static ``--config`` one, and one joined to a real control
plane) through ``modules_probe.py``, serve a request and a ``/metrics`` scrape, stop them, and
assert that the stacks idle does not need were never imported; and that the same stacks load
when the feature is used (a YAML config file here, an OTLP endpoint here with its span exported;
HBONE tunnels in test_tcp_mesh.py, a misspelt field's hint in the API unit tests).
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest

from tests import support
from tests.support import PY, READY, Proc, Sidecar
from tests.unit.telemetry.test_spans import Receiver, wait_for

PROBE = str(Path(__file__).with_name("modules_probe.py"))

# never loaded by a sidecar at rest, whatever its config source
NOT_AT_REST = (
    "opentelemetry",  # the OTel SDK and exporter: only with an OTLP endpoint configured
    "proxy.http2.connection",  # HTTP/2 codec: first h2 connection or HBONE tunnel
    "proxy.tcp.tunnel",  # HBONE tunnels (need a mesh identity)
    "proxy.server.h2.server",  # h2c / h2 downstream connections
    "difflib",  # "did you mean" hints for a misspelt config field
    "control_plane.cli.commands.demo",  # `meshlet sidecar` imports only its own command
    "control_plane.cli.commands.top",
)
# a plaintext static sidecar has no identity: no certificate parsing at all
NOT_STATIC = ("cryptography", "cryptography.x509", "proxy.identity.manager", "certs.csr")
# a joined sidecar gets its config as JSON
NOT_JOINED = ("yaml", "certs.authority")  # the CA's own code: a fresh join reads no saved state


def _probe_sidecar(workdir: Path, name: str, service: str, app_port: int,
                   *source: str, environ: dict[str, str] | None = None) -> tuple[Sidecar, Path]:
    out = workdir / f"{name}.modules"
    cmd = [PY, PROBE, "sidecar", "--service", service, "--app-port", str(app_port), *source,
           "--outbound", "0", "--inbound", "0", "--admin", "0", "--inbound-bind", "127.0.0.1",
           "--no-access-log", "--drain-timeout", "1"]  # fmt: skip
    proc = Proc(f"sidecar-{name}", cmd, workdir,
                support.env(MESHLET_MODULES_OUT=str(out), **(environ or {})))  # fmt: skip
    try:
        m = proc.wait_for(READY, timeout=60)
    except BaseException:
        proc.stop()
        raise
    return Sidecar(proc, int(m.group(1)), int(m.group(2)), int(m.group(3))), out


def _exercise_and_stop(sc: Sidecar, host: str, out: Path) -> set[str]:
    """One request through the outbound port and a metrics scrape, as a sidecar at rest sees;
    then a clean stop (the probe writes the modules at exit)."""
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{sc.outbound}/hello",
                                     headers={"Host": host})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        status, body = sc.admin_get("/metrics")
        assert status == 200 and b"meshlet" in body.lower()
    finally:
        code = sc.stop()
    assert code == 0, sc.proc.stderr()[-3000:]
    return set(out.read_text().split())


@pytest.mark.slow
def test_static_sidecar_at_rest_loads_no_h2_no_tls_stack(tmp_path):
    with support.stopped_at_end() as started:
        app, port = support.start_app(tmp_path, "orders")
        started.append(app)
        cfg = tmp_path / "orders.yaml"
        cfg.write_text(support.static_service_entry("orders", port))
        sc, out = _probe_sidecar(tmp_path, "static", "frontend", port, "--config", str(cfg))
        started.append(sc)
        mods = _exercise_and_stop(sc, "orders", out)
    assert "yaml" in mods  # the config file was read (the probe saw what the sidecar loaded)
    loaded = [m for m in (*NOT_AT_REST, *NOT_STATIC) if m in mods]
    assert not loaded, f"a static sidecar at rest imported {loaded}"


@pytest.mark.slow
def test_joined_sidecar_at_rest_loads_no_yaml_no_h2(tmp_path):
    with support.stopped_at_end() as started:
        cp = support.start_control_plane(tmp_path)
        started.append(cp)
        app, port = support.start_app(tmp_path, "orders")
        started.append(app)
        sc, out = _probe_sidecar(
            tmp_path, "joined", "orders", port, "--control-plane", cp.url,
            "--token-file", str(cp.token("orders", tmp_path)), "--state-dir",
            str(tmp_path / "state"),
        )  # fmt: skip
        started.append(sc)
        # the sidecar's own service through its outbound port: discovery has pushed it
        support.wait_until(lambda: _answers(sc, "orders"), 30, what="orders routed by discovery")
        mods = _exercise_and_stop(sc, "orders", out)
    assert "proxy.identity.manager" in mods and "proxy.discovery" in mods  # really joined
    loaded = [m for m in (*NOT_AT_REST, *NOT_JOINED) if m in mods]
    assert not loaded, f"a joined sidecar at rest imported {loaded}"


def _answers(sc: Sidecar, host: str) -> bool:
    req = urllib.request.Request(f"http://127.0.0.1:{sc.outbound}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.slow
async def test_tracing_export_configured_loads_the_sdk_and_exports(tmp_path):
    """The other side of "opentelemetry" above: with an OTLP endpoint the SDK is loaded at
    start and the request's span arrives, as before."""
    receiver = Receiver()
    await receiver.start()
    try:
        with support.stopped_at_end() as started:
            app, port = support.start_app(tmp_path, "orders")
            started.append(app)
            cfg = tmp_path / "orders.yaml"
            cfg.write_text(support.static_service_entry("orders", port))
            otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
                    "OTEL_TRACES_SAMPLER": "always_on", "OTEL_BSP_SCHEDULE_DELAY": "100"}
            sc, out = await asyncio.to_thread(
                _probe_sidecar, tmp_path, "traced", "frontend", port, "--config", str(cfg),
                environ=otel,
            )  # fmt: skip
            started.append(sc)
            status, _, _ = await support.outbound_request(sc, "orders", "/traced")
            assert status == 200
            await wait_for(lambda: receiver.spans(), timeout=30)
            code = await asyncio.to_thread(sc.stop)
            assert code == 0, sc.proc.stderr()[-3000:]
            mods = set(out.read_text().split())
    finally:
        await receiver.stop()
    assert "opentelemetry.sdk.trace" in mods
