"""Packaging: one version source, and a dependency range that the tested environment satisfies."""

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import pc_prior

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_written_once_and_read_by_packaging():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, _, name = attr.rpartition(".")
    assert (module, name) == ("pc_prior", "__version__")
    Version(pc_prior.__version__)  # a valid PEP 440 version
    source = (ROOT / "pc_prior" / "__init__.py").read_text()
    # setuptools reads the attribute statically: it must stay a plain string literal.
    assert re.search(r'^__version__ = "[^"]+"$', source, re.M)


def test_installed_metadata_matches_the_source():
    try:
        installed = metadata.version("pc-prior")
    except metadata.PackageNotFoundError:
        pytest.skip("pc-prior is not installed (pip install -e .)")
    assert installed == pc_prior.__version__


@pytest.mark.parametrize("spec", PYPROJECT["project"]["dependencies"])
def test_tested_environment_satisfies_the_stated_range(spec):
    req = Requirement(spec)
    assert req.specifier, f"{req.name}: state the tested lower bound"
    installed = metadata.version(req.name)
    assert req.specifier.contains(installed, prereleases=True), (req.name, installed)


def test_ci_pins_are_the_stated_lower_bounds():
    ci = (ROOT / ".ci" / "run").read_text()
    pins = dict(re.findall(r'"(torch|torchvision)==([^"]+)"', ci))
    assert set(pins) == {"torch", "torchvision"}
    bounds = {
        Requirement(s).name: s for s in PYPROJECT["project"]["dependencies"] if "torch" in s[:11]
    }
    for name, version in pins.items():
        assert Requirement(bounds[name]).specifier == f">={version}"
