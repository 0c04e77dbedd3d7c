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


def _public_modules() -> list[str]:
    import pkgutil

    return ["pc_prior"] + [
        m.name
        for m in pkgutil.walk_packages(pc_prior.__path__, "pc_prior.")
        if not any(part.startswith("_") for part in m.name.split(".")[1:])
    ]


def test_every_public_name_is_exported_once_by_its_owner():
    """A module's ``__all__`` lists what it defines; a package's, what its own modules define.
    So each public object has one public name (the package's, where it has one), and nothing is
    re-exported from a module of another package (``train.load_codec`` was
    ``integrations.load_codec`` under a second name)."""
    import importlib
    import inspect

    for name in _public_modules():
        mod = importlib.import_module(name)
        is_package = hasattr(mod, "__path__")
        for attr in getattr(mod, "__all__", ()):
            obj = getattr(mod, attr)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):  # constants, modules
                continue
            where, home = f"{name}.{attr}", obj.__module__
            if is_package:  # its own modules' names only
                assert home.startswith(name + "."), (
                    f"{where} is defined in {home}, not below {name}"
                )
            else:
                assert home == name, f"{where} is re-exported from {home}"
