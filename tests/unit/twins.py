"""Loading one build of a fast-path module for the unit tests: the pure-Python twin, or the
compiled module (which must be there unless ``MESHLET_NO_EXTENSIONS=1`` says it is not
expected). The conftests of ``http1``, ``http2`` and ``routes`` parametrize their fixtures over
both builds with it; ``resilience/test_attempts.py``, ``server/test_pool_limits.py`` and
``server/test_request_path.py`` swap the names they test for each build in a module-scoped
fixture (module-scoped, so hypothesis sees no function-scoped fixture)."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from proxy import _accel

NO_EXTENSIONS = os.environ.get("MESHLET_NO_EXTENSIONS") == "1"


def load_build(package: str, base: str, twin: bool) -> ModuleType:
    """``package``'s ``_<base>_py`` (``twin``) or ``_<base>_c`` module."""
    if twin:
        return _accel.load_twin(package, base)
    mod = _accel.load_compiled(package, base)
    if mod is None:
        if NO_EXTENSIONS:
            pytest.skip("MESHLET_NO_EXTENSIONS=1: the compiled build is not expected")
        pytest.fail(
            f"{package}._{base}_c is not compiled (run `python setup.py build_ext --inplace`);"
            " set MESHLET_NO_EXTENSIONS=1 to test the twin alone"
        )
    return mod


def load_linked_build(package: str, base: str, twin: bool) -> ModuleType:
    """As :func:`load_build`, for the compiled request-path modules that ``cimport`` each
    other's extension types (the channel, the exchange, the attempt machine): under
    ``MESHLET_NO_EXTENSIONS=1`` their facades hand out the twins' classes, which the compiled
    module refuses (``Cannot convert BodyChannel to proxy.server._channel_c.BodyChannel``),
    so there the compiled build is skipped rather than run in a mix the sidecar never makes."""
    if not twin and NO_EXTENSIONS:
        pytest.skip("MESHLET_NO_EXTENSIONS=1: the facades pick the twins; compiled build not run")
    return load_build(package, base, twin)
