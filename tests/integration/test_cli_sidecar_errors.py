"""``meshlet sidecar`` refused at start: one line naming the cause and the fix, non-zero exit,
never a traceback. Real processes: a control plane, and the sidecar command itself."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.cli.main import main
from tests.integration.test_control_plane import LAUNCH, ROOT, ControlPlaneProcess
from tests.support import env

STANDALONE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inventory}
spec:
  hosts: [inventory]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"""


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    p = ControlPlaneProcess(tmp_path_factory.mktemp("join") / "cp").start()
    yield p
    p.stop()


def sidecar(tmp: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    args = ["sidecar", "--app-port", "9", "--outbound", "0", "--inbound", "0", "--admin", "0",
            "--inbound-bind", "127.0.0.1", "--state-dir", str(tmp / "state"), *argv]
    return subprocess.run([sys.executable, "-c", LAUNCH, *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=60)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if " WARNING " not in ln]
    assert len(lines) == 1, r.stderr
    return lines[0]


def token_for(cp: ControlPlaneProcess, tmp: Path, service: str, capsys) -> str:
    capsys.readouterr()
    code = main(["token", "create", "--service", service, "--data-dir", str(cp.data_dir),
                 "--control-plane", cp.url])
    assert code == 0
    return capsys.readouterr().out.strip()


def write(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)


@pytest.mark.slow
def test_join_token_errors_are_one_line_with_the_fix(cp, tmp_path, capsys):
    good = token_for(cp, tmp_path, "inventory", capsys)
    prefix, tid, secret, pin = good.split(".")

    cases = {
        "malformed": ("not a token", 2, "does not hold a join token (expected "
                      "meshlet1.<id>.<secret>.<ca-pin>, as `meshlet token create` prints); "
                      "create one with `meshlet token create --service inventory > FILE`"),
        "unknown": (".".join([prefix, "0123456789abcdef", secret, pin]), 1,
                    f"cannot join: the control plane at {cp.url} refused the join token "
                    "(unknown join token): create a new one there with "
                    "`meshlet token create --service inventory`"),
        "pin": (".".join([prefix, tid, secret, "0" * 64]), 1,
                "cannot join: the join token's CA pin matches no root of the control plane at "
                f"{cp.url}: the token was made by another control plane"),
    }
    for name, (text, status, message) in cases.items():
        tok = write(tmp_path, f"{name}.token", text)
        r = sidecar(tmp_path / name, "--service", "inventory", "--control-plane", cp.url,
                    "--token-file", tok)
        assert r.returncode == status, (name, r.stderr)
        assert one_line(r).startswith("meshlet sidecar: "), name
        assert message in one_line(r), (name, r.stderr)

    tok = write(tmp_path, "inventory.token", good)
    r = sidecar(tmp_path / "other", "--service", "orders", "--control-plane", cp.url,
                "--token-file", tok)
    assert r.returncode == 1
    assert one_line(r).startswith(
        "meshlet sidecar: cannot join: the join token belongs to service 'inventory' (namespace "
        "'default'), not 'orders': create one with `meshlet token create --service orders "
        "--namespace default`, or run this sidecar as --service inventory"), r.stderr

    r = sidecar(tmp_path / "missing", "--service", "inventory", "--control-plane", cp.url,
                "--token-file", str(tmp_path / "nope.token"))
    assert r.returncode == 2
    assert f"--token-file {tmp_path / 'nope.token'}: cannot read it (No such file or " \
           "directory)" in one_line(r)


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--outbound", "--inbound", "--admin"])
def test_port_in_use_names_the_port_and_its_flag(tmp_path, flag):
    cfg = write(tmp_path, "mesh.yaml", STANDALONE)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = sidecar(tmp_path, "--service", "orders", "--config", cfg, flag, str(port))
    assert r.returncode == 1
    assert one_line(r) == (
        f"meshlet sidecar: cannot listen on the {flag[2:]} port 127.0.0.1:{port}: address "
        f"already in use (another sidecar or program holds it); pick a free one with {flag} PORT"
    )
