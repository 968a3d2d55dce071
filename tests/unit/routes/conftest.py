"""Every route-matcher test runs against both builds: the pure-Python twin and the compiled
module (the same layout as tests/unit/http1)."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.unit.twins import load_build


def load(which: str) -> ModuleType:
    return load_build("proxy.routes", "match", twin=which == "twin")


@pytest.fixture(params=["twin", "compiled"], scope="module")
def m(request):
    """The matcher module under test."""
    return load(request.param)


@pytest.fixture(scope="module")
def both():
    """(twin, compiled) for differential tests."""
    return load("twin"), load("compiled")
