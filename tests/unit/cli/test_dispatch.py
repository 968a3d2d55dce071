"""`meshlet <command>` builds the parser of that command only (a long-running sidecar must not
carry the other commands' imports and parsers); without a command, every command is listed."""

from __future__ import annotations

import pytest

from control_plane.cli.main import _command_modules, _named_command, build_parser, main


def test_a_named_command_gets_a_parser_of_its_own():
    parser, table = build_parser(_named_command(["sidecar", "--service", "orders"]))
    assert list(table) == ["sidecar"]
    args = parser.parse_args(["sidecar", "--service", "orders", "--app-port", "8080",
                              "--config", "x.yaml"])  # fmt: skip
    assert args.command == "sidecar" and args.service == "orders"


def test_every_command_is_found_by_its_name():
    # a command whose module name differs (control-plane -> control_plane) is found too
    for mod in _command_modules():
        assert _named_command([mod.NAME, "--help"]) == mod.NAME


@pytest.mark.parametrize("argv", [[], ["--version"], ["nosuch"], ["-h"]])
def test_no_command_named_means_the_full_parser(argv):
    assert _named_command(argv) is None


def test_an_unknown_command_lists_them_all(capsys):
    with pytest.raises(SystemExit):
        main(["nosuch"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuch'" in err
    for mod in _command_modules():
        assert f"'{mod.NAME}'" in err
