"""The ``meshlet`` command: parses argv and dispatches to one module per command.

Commands live in :mod:`control_plane.cli.commands`, one module each, discovered at start-up so a
new command is a new file. A command module defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. ``main(argv)`` returns the exit status, so
tests run the CLI in-process.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from control_plane.cli import commands as _commands


def _command_modules(only: str | None = None) -> list:
    mods = []
    for info in pkgutil.iter_modules(_commands.__path__):
        if info.name.startswith("_"):
            continue
        if only is not None and info.name != only.replace("-", "_"):
            continue
        mod = importlib.import_module(f"{_commands.__name__}.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            mods.append(mod)
    return sorted(mods, key=lambda m: m.NAME)


def _named_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` starts with, if it is one (``meshlet sidecar ...``): then only its
    module is imported. A long-running command (the sidecar) would otherwise carry every other
    command's imports and parser in its RSS for its whole life (~1 MB)."""
    if not argv or argv[0].startswith("-"):
        return None
    mods = _command_modules(argv[0])
    return argv[0] if len(mods) == 1 and argv[0] == mods[0].NAME else None


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="meshlet", description="meshlet: a lightweight service mesh (sidecar + control plane)"
    )
    parser.add_argument("--version", action="store_true",
                        help="print the version and the fast path in use (as `meshlet version`)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    table: dict[str, object] = {}
    for mod in _command_modules(only):
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        table[mod.NAME] = mod
    return parser, table


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, table = build_parser(_named_command(argv))
    args = parser.parse_args(argv)
    if args.version and not args.command:
        args.command = "version"
    if not args.command:
        parser.print_help()
        return 2
    command = table[args.command]
    del parser, table  # not kept alive for as long as the command runs
    try:
        return int(command.run(args) or 0)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    sys.exit(main())
