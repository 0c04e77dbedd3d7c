"""Every public name has its own docstring: the API reference (docs/api, built by Sphinx's autodoc
from these docstrings) documents each name in each public module's ``__all__``.

Classes and functions need a docstring of their own (not one inherited, nor the signature a
dataclass writes); constants need a ``#:`` comment above them or on their line, or a string right
after them, which is what autodoc reads. Public methods defined on a public class need one too.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
from functools import cache
from pathlib import Path

import pc_prior


def _public_modules() -> list[str]:
    return ["pc_prior"] + [
        m.name
        for m in pkgutil.walk_packages(pc_prior.__path__, "pc_prior.")
        if not any(part.startswith("_") for part in m.name.split(".")[1:])
    ]


MODULES = _public_modules()


def _own_doc(obj: object) -> str:
    """The docstring written for ``obj`` itself."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        if dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):
            return ""  # the signature that @dataclass writes where there is no docstring
        return doc.strip()
    return (getattr(obj, "__doc__", None) or "").strip()


@cache
def _module_tree(module: str) -> tuple[ast.Module, list[str]]:
    path = Path(importlib.import_module(module).__file__ or "")
    source = path.read_text(encoding="utf-8")
    return ast.parse(source), source.splitlines()


def _constant_documented(module: str, name: str, seen: frozenset[str] = frozenset()) -> bool:
    """Whether ``module`` assigns ``name`` with a ``#:`` comment (above or on the line) or a string
    after it, following ``from .x import name`` to where it is assigned."""
    if module in seen:
        return False
    tree, lines = _module_tree(module)
    body = tree.body
    for i, node in enumerate(body):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if not any(isinstance(t, ast.Name) and t.id == name for t in targets):
                continue
            first = node.lineno - 1
            if first > 0 and lines[first - 1].lstrip().startswith("#:"):
                return True
            if "#:" in lines[node.end_lineno - 1 if node.end_lineno else first]:
                return True
            nxt = body[i + 1] if i + 1 < len(body) else None
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                return isinstance(nxt.value.value, str)
            return False
        if isinstance(node, ast.ImportFrom) and any(
            (a.asname or a.name) == name for a in node.names
        ):
            package = module if hasattr(importlib.import_module(module), "__path__") else None
            base = package or module.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = f"{base}.{node.module}" if node.level else node.module
            if source is None or not source.startswith("pc_prior"):
                return False
            return _constant_documented(source, name, seen | {module})
    return False


def _public_names() -> list[tuple[str, str]]:
    return [
        (module, name)
        for module in MODULES
        for name in getattr(importlib.import_module(module), "__all__", ())
    ]


def test_every_public_module_has_a_docstring():
    missing = [m for m in MODULES if not (importlib.import_module(m).__doc__ or "").strip()]
    assert not missing, f"modules without a docstring: {missing}"


def _undocumented_name(module: str, name: str) -> bool:
    obj = getattr(importlib.import_module(module), name)
    if callable(obj):  # classes, functions, cached functions
        return not _own_doc(obj)
    return not _constant_documented(module, name)  # a constant: autodoc reads ``#:`` comments


def test_every_public_name_has_its_own_docstring():
    names = _public_names()
    assert len(names) > 100  # the walk found the modules
    missing = [f"{m}.{n}" for m, n in names if _undocumented_name(m, n)]
    assert not missing, (
        "without a docstring of their own (a constant: a '#:' comment above its assignment): "
        f"{missing}"
    )


def _public_methods() -> list[tuple[str, object]]:
    """(qualified name, function) of each public method, property and static or class method
    defined on a public class, each class once, in the module that defines it."""
    found = []
    for module, name in _public_names():
        cls = getattr(importlib.import_module(module), name)
        if not inspect.isclass(cls) or cls.__module__ != module:
            continue
        for attr, value in vars(cls).items():
            if isinstance(value, staticmethod | classmethod):
                value = value.__func__
            if isinstance(value, property):
                value = value.fget
            if not attr.startswith("_") and inspect.isfunction(value):
                found.append((f"{module}.{name}.{attr}", value))
    return found


def test_every_public_method_has_its_own_docstring():
    methods = _public_methods()
    assert methods
    missing = [qualname for qualname, function in methods if not _own_doc(function)]
    assert not missing, f"public methods without a docstring of their own: {missing}"
