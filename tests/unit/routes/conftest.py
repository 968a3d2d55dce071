"""Every route-matcher test runs against both builds: the pure-Python twin and the compiled
module (the same layout as tests/unit/http1)."""

from __future__ import annotations

import os

import pytest

from proxy import _accel

NO_EXTENSIONS = os.environ.get("MESHLET_NO_EXTENSIONS") == "1"


def load(which: str):
    if which == "twin":
        return _accel.load_twin("proxy.routes", "match")
    mod = _accel.load_compiled("proxy.routes", "match")
    if mod is None:
        if NO_EXTENSIONS:
            pytest.skip("MESHLET_NO_EXTENSIONS=1: the compiled build is not expected")
        pytest.fail(
            "proxy.routes._match_c is not compiled (run `python setup.py build_ext --inplace`);"
            " set MESHLET_NO_EXTENSIONS=1 to test the twin alone"
        )
    return mod


@pytest.fixture(params=["twin", "compiled"], scope="module")
def m(request):
    """The matcher module under test."""
    return load(request.param)


@pytest.fixture(scope="module")
def both():
    """(twin, compiled) for differential tests."""
    return load("twin"), load("compiled")
