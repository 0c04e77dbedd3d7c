"""Sphinx configuration: MyST pages, the API reference from docstrings (autodoc), no network.

Build (as .ci/run does; warnings are errors):

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))  # pc_api: the API reference's directive

import pc_prior  # noqa: E402  (installed: pip install -e ".[docs]")

# Importing the modules must not print library deprecations into the build log.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

project = "pc-prior"
author = "pc-prior contributors"
copyright = "pc-prior contributors, Apache-2.0"
version = release = pc_prior.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "pc_api",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# MyST: GitHub-style heading anchors, so the pages' own links (#a-heading) resolve as on GitHub.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# autodoc: the project's docstrings are prose with ``literals``; napoleon reads the few
# Google-style "Args:" sections. Only what the project writes is shown: members without a
# docstring of their own are left out, and none is inherited from torch, CompressAI or Lightning.
autodoc_default_options = {"member-order": "bysource"}
autodoc_inherit_docstrings = False
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autoclass_content = "both"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# The settings dataclasses describe their fields under "Fields:" (pc_prior.settings reads the
# options' help from there): a parameter list, as the fields are the constructor's.
napoleon_custom_sections = [("Fields", "params_style")]

# No network at build time: no intersphinx, nothing fetched.
html_theme = "furo"
html_title = f"pc-prior {release}"
html_static_path: list[str] = []
html_show_sourcelink = False


def _napoleon_except_constants(app, what, name, obj, options, lines):
    """Napoleon for everything but constants, whose ``#:`` comments are prose: napoleon reads an
    attribute's first "text: more" as "type: description"."""
    from sphinx.ext.napoleon import _process_docstring

    if what not in ("data", "attribute"):
        _process_docstring(app, what, name, obj, options, lines)


def setup(app):
    from sphinx.ext.napoleon import _process_docstring

    for listener in list(app.events.listeners["autodoc-process-docstring"]):
        if listener.handler is _process_docstring:
            app.disconnect(listener.id)
    app.connect("autodoc-process-docstring", _napoleon_except_constants)
