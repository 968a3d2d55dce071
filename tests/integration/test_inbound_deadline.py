"""The caller's deadline as an inbound admission step, through a real sidecar in front of the
sample app: a caller whose deadline has already passed (``x-envoy-expected-rq-timeout-ms: 0``,
``grpc-timeout: 0m``) is answered by the sidecar, 504 UT over HTTP and DEADLINE_EXCEEDED over
gRPC, and the app never sees the request; a caller with time left is served, and a deadline
shorter than the app's answer still ends the request with 504 UT."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from tests.support import start_app, start_sidecar, stopped_at_end

pytestmark = pytest.mark.slow

CONFIG = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: PERMISSIVE}}
"""


@pytest.fixture(scope="module")
def inbound(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("inbound-deadline")
    with stopped_at_end() as started:
        app, app_port = start_app(work, "inventory")
        started.append(app)
        sidecar = start_sidecar(work, "inventory", app_port, CONFIG)
        started.append(sidecar)
        yield {"app_port": app_port, "port": sidecar.inbound}


def _app_requests(app_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/stats", timeout=5) as r:
        return json.loads(r.read())["requests"]


def _curl(port: int, path: str, *args: str) -> tuple[int, dict[str, str]]:
    """A real HTTP client: (status, response headers, lowercased) from ``curl -D -``."""
    r = subprocess.run(
        ["curl", "-s", "-m", "10", "-o", "/dev/null", "-D", "-", *args,
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    status = int(lines[0].split()[1])
    headers = {}
    for ln in lines[1:]:
        name, _, value = ln.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def test_an_http_caller_whose_deadline_has_passed_gets_504_ut(inbound):
    before = _app_requests(inbound["app_port"])
    status, headers = _curl(inbound["port"], "/echo", "-H", "x-envoy-expected-rq-timeout-ms: 0")
    assert status == 504
    assert headers["x-meshlet-response-flags"] == "UT"
    # with time left the same request is served
    status, _ = _curl(inbound["port"], "/echo", "-H", "x-envoy-expected-rq-timeout-ms: 5000")
    assert status == 200
    # exactly one request reached the app: the expired one was answered by the sidecar
    assert _app_requests(inbound["app_port"]) == before + 1


def test_a_deadline_shorter_than_the_answer_ends_the_request(inbound):
    status, headers = _curl(
        inbound["port"], "/delay?ms=2000", "-H", "x-envoy-expected-rq-timeout-ms: 200"
    )
    assert (status, headers["x-meshlet-response-flags"]) == (504, "UT")


def test_a_grpc_caller_whose_deadline_has_passed_gets_deadline_exceeded(inbound):
    before = _app_requests(inbound["app_port"])
    status, headers = _curl(
        inbound["port"], "/helloworld.Greeter/SayHello", "--http2-prior-knowledge",
        "-X", "POST", "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-H", "grpc-timeout: 0m", "--data-binary", "",
    )  # fmt: skip
    # a trailers-only gRPC answer: HTTP 200, the status in the one HEADERS frame
    assert status == 200
    assert headers["grpc-status"] == "4"  # DEADLINE_EXCEEDED
    assert headers["x-meshlet-response-flags"] == "UT"
    assert _app_requests(inbound["app_port"]) == before
    # grpc-timeout on a request that is not gRPC is no deadline (as the attempt machine)
    status, _ = _curl(inbound["port"], "/echo", "-H", "grpc-timeout: 0m")
    assert status == 200
