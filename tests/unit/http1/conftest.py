"""Every http1 test runs against both builds: the pure-Python twin and the compiled module."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.unit.twins import NO_EXTENSIONS, load_build

__all__ = ["NO_EXTENSIONS", "load"]


def load(which: str) -> ModuleType:
    return load_build("proxy.http1", "parser", twin=which == "twin")


@pytest.fixture(params=["twin", "compiled"], scope="module")
def p(request):
    """The parser module under test."""
    return load(request.param)


@pytest.fixture(scope="module")
def both():
    """(twin, compiled) for differential tests."""
    return load("twin"), load("compiled")
