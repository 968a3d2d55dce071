"""Chooses between the Cython fast path and its pure-Python twin, once, at import time.

Every accelerated module has a facade that calls :func:`load`. The twin is used when
``MESHLET_NO_EXTENSIONS=1`` is set or the compiled module is missing; the choice is recorded in
:data:`IMPLEMENTATION` so that ``meshlet version``, ``/config_dump`` and the ``meshlet_build_info``
metric can show it (a degraded build must never be silent).
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

NO_EXTENSIONS = os.environ.get("MESHLET_NO_EXTENSIONS") == "1"
REQUIRE_EXTENSIONS = os.environ.get("MESHLET_REQUIRE_EXTENSIONS") == "1"

#: facade name -> "cython" or "python"
IMPLEMENTATION: dict[str, str] = {}

_log = logging.getLogger("meshlet.accel")


def load(package: str, base: str) -> ModuleType:
    """Import ``package._BASE_c`` if it is a compiled module, else ``package._BASE_py``.

    ``_BASE_c.py`` is a symlink to the twin (one source compiled twice), so an import that finds
    the ``.py`` rather than a shared object is not the fast path and falls back to the twin.
    """
    key = f"{package}.{base}"
    if not NO_EXTENSIONS:
        try:
            mod = importlib.import_module(f"{package}._{base}_c")
            if not (getattr(mod, "__file__", "") or "").endswith(".py"):
                IMPLEMENTATION[key] = "cython"
                return mod
        except ImportError:
            pass
        if REQUIRE_EXTENSIONS:
            raise ImportError(f"MESHLET_REQUIRE_EXTENSIONS=1 but {key} is not compiled")
        _log.warning("fast path %s is not compiled; using the pure-Python twin", key)
    IMPLEMENTATION[key] = "python"
    return importlib.import_module(f"{package}._{base}_py")


def load_twin(package: str, base: str) -> ModuleType:
    """The pure-Python twin, always (tests compare both)."""
    return importlib.import_module(f"{package}._{base}_py")


def load_compiled(package: str, base: str) -> ModuleType | None:
    """The compiled module, or None when it is not built (tests skip nothing: they report it)."""
    try:
        mod = importlib.import_module(f"{package}._{base}_c")
    except ImportError:
        return None
    if (getattr(mod, "__file__", "") or "").endswith(".py"):
        return None
    return mod


def fastpath() -> str:
    """``cython`` when every loaded fast-path module is compiled, else ``python``."""
    if not IMPLEMENTATION:
        return "python" if NO_EXTENSIONS else "cython"
    return "cython" if all(v == "cython" for v in IMPLEMENTATION.values()) else "python"
