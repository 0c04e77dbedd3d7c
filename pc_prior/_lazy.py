"""Public names that load when first used (PEP 562), for packages whose import must stay light.

``import pc_prior`` and ``pc-prior --help`` import no torch: the packages that re-export heavy
modules' names (``pc_prior``, ``pc_prior.eval``) map each name to its module here and import that
module on first access only.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, homes: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` for names ``homes`` maps to their submodule
    (``{"HCLT": "hclt"}``): the submodule is imported on the name's first access and the value
    kept in the package, so later accesses are plain attribute reads."""
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        if name in homes:
            value = getattr(importlib.import_module(f".{homes[name]}", package), name)
            setattr(module, name, value)  # once
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(homes))

    return __getattr__, __dir__


def renamed_module(old: str, new: str) -> Callable[[str], Any]:
    """The ``__getattr__`` of a module kept under its old name ``old`` for one release: each name
    is read from the module ``new`` with a ``FutureWarning`` naming it."""

    def __getattr__(name: str) -> Any:
        value = getattr(importlib.import_module(new), name)
        warnings.warn(
            f"{old} is renamed {new}; import {name} from there (the old name goes in pc-prior 0.4)",
            FutureWarning,
            stacklevel=2,
        )
        return value

    return __getattr__
