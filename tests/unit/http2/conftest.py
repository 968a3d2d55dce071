"""Fixtures giving each HTTP/2 codec test both twins: the pure-Python one and the compiled one."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from proxy import _accel


def load(base: str, kind: str) -> ModuleType:
    if kind == "python":
        return _accel.load_twin("proxy.http2", base)
    mod = _accel.load_compiled("proxy.http2", base)
    if mod is None:
        if os.environ.get("MESHLET_NO_EXTENSIONS") == "1":
            pytest.skip("MESHLET_NO_EXTENSIONS=1: the compiled codec is not expected")
        pytest.fail(
            f"proxy.http2._{base}_c is not compiled; run `python setup.py build_ext --inplace`"
        )
    return mod


@pytest.fixture(scope="module", params=["python", "cython"])
def hp(request: pytest.FixtureRequest) -> ModuleType:
    """The HPACK codec."""
    return load("hpack", request.param)


@pytest.fixture(scope="module", params=["python", "cython"])
def fr(request: pytest.FixtureRequest) -> ModuleType:
    """The frame codec."""
    return load("frames", request.param)


@pytest.fixture(scope="module", params=["python", "cython"])
def va(request: pytest.FixtureRequest) -> ModuleType:
    """Header block validation."""
    return load("validate", request.param)
