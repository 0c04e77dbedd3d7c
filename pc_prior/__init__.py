"""pc-prior: probabilistic circuits as entropy models for learned image compression."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from .errors import (
    BitstreamError,
    CheckpointError,
    InputError,
    ModelLoadError,
    NotFittedError,
    PCPriorError,
    UnsupportedModelError,
)

# Every other public name is imported when first used (PEP 562), so ``import pc_prior`` (and
# ``pc-prior --help``, which imports the errors) loads neither torch nor numpy.
_LAZY = {
    "load": "checkpoint",
    "save": "checkpoint",
    "decode": "coding",
    "encode": "coding",
    "DiscretizedLogisticTree": "continuous",
    "ScaleConditionedTree": "continuous",
    "HCLT": "hclt",
    "GroupedHCLT": "hclt",
    "LatentTreeCircuit": "hclt",
    "Tree": "structure",
    "chow_liu_tree": "structure",
    "pairwise_mutual_information": "structure",
    "star_tree": "structure",
    "bits_per_dim": "fitting",
    "fit_adam": "fitting",
    "fit_em": "fitting",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .checkpoint import load, save
    from .coding import decode, encode
    from .continuous import DiscretizedLogisticTree, ScaleConditionedTree
    from .fitting import bits_per_dim, fit_adam, fit_em
    from .hclt import HCLT, GroupedHCLT, LatentTreeCircuit
    from .structure import Tree, chow_liu_tree, pairwise_mutual_information, star_tree


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


#: The package version, written only here: pyproject.toml reads it (tool.setuptools.dynamic).
__version__ = "0.1.0"

__all__ = [
    "HCLT",
    "BitstreamError",
    "CheckpointError",
    "DiscretizedLogisticTree",
    "GroupedHCLT",
    "InputError",
    "LatentTreeCircuit",
    "ModelLoadError",
    "NotFittedError",
    "PCPriorError",
    "ScaleConditionedTree",
    "Tree",
    "UnsupportedModelError",
    "__version__",
    "bits_per_dim",
    "chow_liu_tree",
    "decode",
    "encode",
    "fit_adam",
    "fit_em",
    "load",
    "pairwise_mutual_information",
    "save",
    "star_tree",
]
