"""The project metadata setuptools reads at every install: no deprecation banner (the license is
an SPDX expression with its file, PEP 639), and a build-system floor that understands it."""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_metadata_loads_without_a_deprecation_warning():
    from setuptools.config import pyprojecttoml
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # setuptools' banner is a SetuptoolsDeprecationWarning
        dist = pyprojecttoml.apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
    assert dist.metadata.license_files == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]


def test_build_requires_a_setuptools_that_reads_spdx_licenses():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    floor = next(re.fullmatch(r"setuptools>=(\d+).*", r) for r in requires
                 if r.startswith("setuptools"))
    assert floor is not None and int(floor[1]) >= 77  # PEP 639 license expressions: 77.0
