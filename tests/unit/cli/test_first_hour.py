"""What a newcomer types first, run in-process: ``--version``, help that shows the defaults, a
mistyped kind, and the CLI run where no control plane was ever started."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.cli.main import main

ROOT = Path(__file__).resolve().parents[3]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_dash_dash_version_is_meshlet_version(capsys):
    code, out, err = run(capsys, "version")
    assert (code, err) == (0, "") and out.startswith("meshlet ") and "fastpath: " in out
    assert run(capsys, "--version") == (0, out, "")


def test_sidecar_help_shows_the_default_ports(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["sidecar", "--help"])
    lines = capsys.readouterr().out.splitlines()
    for flag, port in (("--inbound", 15006), ("--outbound", 15001), ("--admin", 15000)):
        line = next(ln for ln in lines if ln.strip().startswith(f"{flag} PORT"))
        assert f"default {port}" in line, line


@pytest.mark.parametrize("argv", [["get", "foo"], ["delete", "foo", "bar"]])
def test_an_unknown_kind_lists_the_kinds(capsys, monkeypatch, tmp_path, argv):
    monkeypatch.setenv("MESHLET_DATA_DIR", str(tmp_path / "none"))
    code, out, err = run(capsys, *argv)
    from control_plane.store import KINDS

    kinds = ", ".join(f"{kind} ({names[-1]})" for kind, names in KINDS.items())
    assert kinds.startswith("VirtualService (vs), DestinationRule (dr), ServiceEntry (se), ")
    assert code == 1 and out == ""
    assert err.startswith(f"error: unknown kind 'foo'; the kinds are {kinds}")
    assert err.endswith(", or all\n") == (argv[0] == "get")


def test_no_control_plane_started_here_says_so(capsys, monkeypatch, tmp_path):
    for var in ("MESHLET_CONTROL_PLANE", "MESHLET_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MESHLET_DATA_DIR", raising=False)
    code, out, err = run(capsys, "apply", "-f", str(ROOT / "configs" / "demo"))
    assert code == 4 and out == ""
    assert err == (
        f"error: no control plane has been started with the data dir {home / '.meshlet'} here "
        "(it holds the admin token): start one with `meshlet control-plane`, or point at its "
        "data dir with --data-dir DIR or MESHLET_DATA_DIR (`meshlet demo` prints its own), or "
        "give the admin token with --token-file FILE\n"
    )
