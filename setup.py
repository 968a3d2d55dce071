"""Build the Cython fast path; fall back loudly to the pure-Python twins.

Metadata lives in pyproject.toml. This file only decides which extension modules to build:

* every ``_NAME_c.pxd`` that has a sibling ``_NAME_py.py`` is one source compiled twice (the
  aiohttp reader_py/reader_c pattern): ``_NAME_c.py`` is a symlink to ``_NAME_py.py`` and the
  augmenting ``.pxd`` gives Cython the C types;
* every ``.pyx`` file is compiled as is.

``MESHLET_NO_EXTENSIONS=1`` skips the build; ``MESHLET_REQUIRE_EXTENSIONS=1`` makes a failed build
fatal. Without a compiler the build prints a banner and installs the pure-Python twins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
PACKAGES = ("proxy", "control_plane", "certs")
NO_EXTENSIONS = (
    os.environ.get("MESHLET_NO_EXTENSIONS") == "1" or sys.implementation.name != "cpython"
)
REQUIRE_EXTENSIONS = os.environ.get("MESHLET_REQUIRE_EXTENSIONS") == "1"


class BuildFailed(Exception):
    pass


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure degrades to the twin
            raise BuildFailed(str(exc)) from exc

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            raise BuildFailed(str(exc)) from exc


def find_extensions() -> list[Extension]:
    sources: list[tuple[str, str]] = []
    for pkg in PACKAGES:
        for pxd in sorted((HERE / pkg).rglob("_*_c.pxd")):
            twin = pxd.with_name(pxd.name[: -len("_c.pxd")] + "_py.py")
            link = pxd.with_suffix(".py")
            if twin.exists() and link.exists():
                sources.append(
                    (
                        ".".join(link.relative_to(HERE).with_suffix("").parts),
                        str(link.relative_to(HERE)),
                    )
                )
        for pyx in sorted((HERE / pkg).rglob("*.pyx")):
            sources.append(
                (".".join(pyx.relative_to(HERE).with_suffix("").parts), str(pyx.relative_to(HERE)))
            )
    if not sources:
        return []
    from Cython.Build import cythonize

    exts = [Extension(name, [src], extra_compile_args=["-O3"]) for name, src in sources]
    return cythonize(
        exts,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
        quiet=True,
    )


def banner(message: str) -> None:
    line = "*" * 75
    print(f"\n{line}\n{message}\n{line}\n", file=sys.stderr)


def run_setup(with_extensions: bool) -> None:
    kwargs = {}
    if with_extensions:
        kwargs = {"ext_modules": find_extensions(), "cmdclass": {"build_ext": OptionalBuildExt}}
    setup(**kwargs)


if NO_EXTENSIONS:
    banner("MESHLET_NO_EXTENSIONS=1: installing the pure-Python fast-path twins only.")
    run_setup(False)
else:
    try:
        run_setup(True)
    except BuildFailed as exc:
        if REQUIRE_EXTENSIONS:
            raise
        banner(
            "WARNING: the Cython fast path could not be compiled (%s).\n"
            "meshlet is installed with its pure-Python twins: it works, but slower.\n"
            "`meshlet version` reports `fastpath: python`." % exc
        )
        run_setup(False)
