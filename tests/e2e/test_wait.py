"""``meshlet wait`` against a real sidecar: blocks until /healthz/ready is 200, fails on timeout."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

from tests.support import PY, ROOT, env, free_port, start_app, start_sidecar

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inventory}
spec:
  hosts: [inventory]
  ports: [{number: 8080, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 1}}]
"""


def wait_cmd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "control_plane.cli", "wait", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        cwd=str(ROOT),
    )


def _refuse_one_poll(port: int, timeout: float = 30.0) -> None:
    """Listen on ``port`` until the waiter's first poll arrives, then reset it: proof that the
    waiter is polling and has been told "not ready", without sleeping for it. The reset (linger
    0) leaves no TIME_WAIT on the port, so the sidecar can take it next."""
    with socket.socket() as lsn:
        lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsn.bind(("127.0.0.1", port))
        lsn.listen(1)
        lsn.settimeout(timeout)
        conn, _ = lsn.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


def test_wait_blocks_until_the_sidecar_is_ready_then_fails_once_it_drains(tmp_path: Path) -> None:
    port = free_port()
    waiter = subprocess.Popen(
        [
            PY,
            "-m",
            "control_plane.cli",
            "wait",
            "--admin",
            str(port),
            "--timeout",
            "40",
            "--interval",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=str(ROOT),
    )
    app, app_port = start_app(tmp_path, "orders")
    sc = None
    try:
        _refuse_one_poll(port)  # the waiter is waiting, on nothing, before the sidecar starts
        assert waiter.poll() is None
        sc = start_sidecar(tmp_path, "orders", app_port, CONFIG, "--admin", str(port))
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        assert "sidecar ready" in out
        assert sc.admin == port
        assert wait_cmd("--admin", f"http://127.0.0.1:{port}", "--timeout", "5").returncode == 0

        # draining: /healthz/ready is 503, so `meshlet wait` times out and says why
        sc.proc.signal(15)
        r = wait_cmd("--admin", f"127.0.0.1:{port}", "--timeout", "1")
        assert r.returncode == 1
        assert "not ready after 1s" in r.stderr
        assert "HTTP 503: NOT READY: draining" in r.stderr or "no answer" in r.stderr
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate(timeout=5)
        if sc is not None:
            sc.stop()
        app.stop()


def test_wait_times_out_when_nothing_answers() -> None:
    start = time.monotonic()
    r = wait_cmd("--admin", str(free_port()), "--timeout", "0.5")
    assert r.returncode == 1
    assert time.monotonic() - start < 10
    assert "meshlet wait: the sidecar at http://127.0.0.1:" in r.stderr
    assert "/healthz/ready is not ready after 0.5s; last: no answer" in r.stderr


def test_wait_refuses_bad_arguments() -> None:
    assert wait_cmd("--timeout", "-1").returncode == 2
