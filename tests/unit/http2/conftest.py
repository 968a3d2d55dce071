"""Fixtures giving each HTTP/2 codec test both twins: the pure-Python one and the compiled one."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.unit.twins import load_build


def load(base: str, kind: str) -> ModuleType:
    return load_build("proxy.http2", base, twin=kind == "python")


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
