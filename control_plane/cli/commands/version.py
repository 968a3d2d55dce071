"""``meshlet version``: the version and which fast path is in use."""

from __future__ import annotations

import argparse

NAME = "version"
HELP = "print the version and the fast path in use (cython or python)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from proxy import __version__, _accel, fastpath_modules

    fastpath_modules.load_all()
    print(f"meshlet {__version__}")
    print(f"fastpath: {_accel.fastpath()}")
    for name, impl in sorted(_accel.IMPLEMENTATION.items()):
        print(f"  {name}: {impl}")
    return 0
