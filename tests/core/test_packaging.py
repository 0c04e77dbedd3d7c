"""Packaging: one version source, and a dependency range that the tested environment satisfies."""

import importlib
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


def _import_graph() -> dict[str, set[str]]:
    """Which pc_prior modules each pc_prior module imports, read from the source (``ast``): at
    module level and inside functions alike (a deferred import is still a cycle), but not under
    ``if TYPE_CHECKING:``. ``from .pkg import name`` counts as importing ``pkg.name`` where that
    is a module, else ``pkg``; a package's implicit import by its submodules does not count."""
    import ast

    root = ROOT / "pc_prior"
    files = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def type_checking(node: ast.If) -> bool:
        test = node.test
        return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )

    def nodes(tree: ast.AST):
        for child in ast.iter_child_nodes(tree):
            for node in (
                child.orelse if isinstance(child, ast.If) and type_checking(child) else [child]
            ):
                yield node
                yield from nodes(node)

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = graph.setdefault(name, set())
        for node in nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + [node.module or ""]) if node.level else node.module or ""
                target = target.rstrip(".")
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in files:
                        found.add(sub)
                    elif target in files:
                        found.add(target)
    return graph


def test_no_module_imports_itself_through_others():
    """No import cycle among pc_prior's modules, deferred (function-level) imports included: a
    cycle made lazy still couples two modules both ways (issue 32)."""
    graph = _import_graph()
    assert "pc_prior.integrations.codec_file" in graph  # the walk found the modules
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep) :] + [name, dep]))
            elif dep not in state:
                walk(dep, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_renamed_modules_still_serve_their_names_with_a_warning():
    """``pc_prior.training`` and ``pc_prior.train.data`` (renamed in 0.3) for one release."""
    from pc_prior import fitting
    from pc_prior.train import datamodules

    for old, new, name in (
        ("pc_prior.training", fitting, "fit_em"),
        ("pc_prior.train.data", datamodules, "ImageFolderDataModule"),
    ):
        module = importlib.import_module(old)
        with pytest.warns(FutureWarning, match=f"{old} is renamed {new.__name__}"):
            assert getattr(module, name) is getattr(new, name)
        with pytest.raises(AttributeError):
            module.no_such_name  # noqa: B018
