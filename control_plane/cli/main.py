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


def _command_modules() -> list:
    mods = []
    for info in pkgutil.iter_modules(_commands.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{_commands.__name__}.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            mods.append(mod)
    return sorted(mods, key=lambda m: m.NAME)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="meshlet", description="meshlet: a lightweight service mesh (sidecar + control plane)"
    )
    parser.add_argument("--version", action="store_true",
                        help="print the version and the fast path in use (as `meshlet version`)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    table: dict[str, object] = {}
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        table[mod.NAME] = mod
    return parser, table


def main(argv: Sequence[str] | None = None) -> int:
    parser, table = build_parser()
    args = parser.parse_args(argv)
    if args.version and not args.command:
        args.command = "version"
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(table[args.command].run(args) or 0)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    sys.exit(main())
