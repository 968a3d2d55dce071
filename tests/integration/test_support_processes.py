"""tests/support's process starters when the process does not come up: it is stopped and its
output files are closed before the error reaches the test. Nobody else holds the process, so
its files were left open until garbage collection, which reports them as leaked
(ResourceWarning, an error in this suite) in whichever later test it happens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import start_app, start_sidecar

REFUSED = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [ext]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext}
spec:
  host: ext
  trafficPolicy: {tls: {mode: SIMPLE, caCertificates: /nonexistent/ca.pem}}
"""


def _open_files_under(d: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed since listed
        if target.startswith(str(d)):
            found.append(target)
    return found


def test_a_sidecar_that_refuses_its_config_leaves_no_file_open(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="tls.caCertificates '/nonexistent/ca.pem'"):
        start_sidecar(tmp_path, "orders", 1, REFUSED)
    assert _open_files_under(tmp_path) == []


def test_an_app_that_exits_at_start_leaves_no_file_open(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="--no-such-flag"):
        start_app(tmp_path, "inventory", "v1", "", "--no-such-flag")
    assert _open_files_under(tmp_path) == []
