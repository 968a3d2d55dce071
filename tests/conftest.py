"""Shared fixtures: a tmp work dir per test and the fast-path selection."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(params=["cython", "python"])
def fastpath_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment for a sidecar process running the compiled fast path or its twin."""
    from tests.support import env

    if request.param == "python":
        return env(MESHLET_NO_EXTENSIONS="1")
    if os.environ.get("MESHLET_NO_EXTENSIONS") == "1":
        pytest.fail("the cython parametrization needs the extensions (unset MESHLET_NO_EXTENSIONS)")
    return env(MESHLET_REQUIRE_EXTENSIONS="1")
