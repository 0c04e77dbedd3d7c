"""The API reference's one directive: ``.. pc-api-module:: pc_prior.x`` documents a module.

It writes the autodoc directives for the module's docstring and for every name in its
``__all__``, each object once: a name that a package above exports too (``pc_prior.HCLT`` is
``pc_prior.hclt.HCLT``) is documented under the package, its public name, and listed in the
module as a link there. Constants are documented from their ``#:`` comments where they are
assigned, also when the module only imports them. At the end of the build, a public module of
pc_prior that no directive documented is a warning (an error under ``-W``), so a new module
cannot be left out of the reference.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.inspect import object_description

logger = logging.getLogger(__name__)
PACKAGE = "pc_prior"
_MISSING = object()


def public_modules() -> list[str]:
    """pc_prior and every module below it that no ``_`` name part hides."""
    package = importlib.import_module(PACKAGE)
    return [PACKAGE] + sorted(
        m.name
        for m in pkgutil.walk_packages(package.__path__, PACKAGE + ".")
        if not any(part.startswith("_") for part in m.name.split(".")[1:])
    )


def exported(module: str) -> list[str]:
    """The module's ``__all__`` (empty without one)."""
    return list(getattr(importlib.import_module(module), "__all__", ()))


def public_home(module: str, name: str) -> str:
    """The outermost module above (or at) ``module`` whose ``__all__`` exports the same object."""
    obj = getattr(importlib.import_module(module), name)
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        outer = ".".join(parts[:i])
        if name in exported(outer) and getattr(importlib.import_module(outer), name) is obj:
            return outer
    return module


def attribute_doc(module: str, name: str) -> list[str] | None:
    """The ``#:`` comment (or following string) of ``name`` in the pc_prior module assigning it."""
    obj = getattr(importlib.import_module(module), name)
    candidates = [module] + [m for m in all_modules() if m != module]
    for candidate in candidates:
        mod = importlib.import_module(candidate)
        if getattr(mod, name, _MISSING) is not obj:
            continue
        docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        if ("", name) in docs:
            return list(docs["", name])
    return None


def all_modules() -> list[str]:
    """Every module of pc_prior, private ones too (where constants may be assigned)."""
    package = importlib.import_module(PACKAGE)
    return [PACKAGE] + [m.name for m in pkgutil.walk_packages(package.__path__, PACKAGE + ".")]


def _directive_for(module: str, name: str, obj: Any) -> list[str]:
    target = f"{module}.{name}"
    if inspect.isclass(obj):
        kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
        bases = ["   :show-inheritance:"] if obj.__bases__ != (object,) else []  # not "object"
        return [f".. {kind}:: {target}", "   :members:", *bases, ""]
    if callable(obj):
        return [f".. autofunction:: {target}", ""]
    if ("", name) in ModuleAnalyzer.for_module(module).find_attr_docs():
        return [f".. autodata:: {target}", ""]
    # Imported from the module that assigns it: autodoc would read the comments of this module
    # (none) and fall back to the docstring of the value's type, so it is written out here.
    doc = attribute_doc(module, name) or []
    return [
        f".. py:data:: {name}",
        f"   :module: {module}",
        f"   :value: {object_description(obj)}",
        "",
        *(f"   {line}" if line else "" for line in doc),
        "",
    ]


class ApiModule(SphinxDirective):
    """``.. pc-api-module:: MODULE``: the module's docstring and its ``__all__``."""

    required_arguments = 1

    def run(self) -> list[Any]:
        module = self.arguments[0]
        self.env.note_dependency(importlib.import_module(module).__file__ or "")
        documented = self.env.domaindata.setdefault("pc_api", {"modules": {}})["modules"]
        documented[module] = self.env.docname
        lines = [f".. automodule:: {module}", ""]
        elsewhere = []
        for name in exported(module):
            home = public_home(module, name)
            if home != module:
                elsewhere.append(f":py:obj:`{home}.{name}`")
                continue
            obj = getattr(importlib.import_module(module), name)
            lines += _directive_for(module, name, obj)
        if elsewhere:
            lines += [
                f"Also exported here, documented under their package: {', '.join(elsewhere)}.",
                "",
            ]
        return self.parse_text_to_nodes("\n".join(lines))


def _check_coverage(app: Sphinx, env: Any) -> None:
    documented = env.domaindata.get("pc_api", {"modules": {}})["modules"]
    for module in public_modules():
        if module not in documented:
            logger.warning(
                "pc_api: public module %s is not in the API reference "
                "(add '.. pc-api-module:: %s' to a page under docs/api)",
                module,
                module,
            )


def _purge(app: Sphinx, env: Any, docname: str) -> None:
    modules = env.domaindata.get("pc_api", {"modules": {}})["modules"]
    for module in [m for m, d in modules.items() if d == docname]:
        del modules[module]


def _merge(app: Sphinx, env: Any, docnames: Any, other: Any) -> None:
    env.domaindata.setdefault("pc_api", {"modules": {}})["modules"].update(
        other.domaindata.get("pc_api", {"modules": {}})["modules"]
    )


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("pc-api-module", ApiModule)
    app.connect("env-check-consistency", _check_coverage)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
