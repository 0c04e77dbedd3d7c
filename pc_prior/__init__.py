"""pc-prior: probabilistic circuits as entropy models for learned image compression."""

from . import framing  # noqa: F401  (a public module: pc_prior.framing)
from .checkpoint import load, save
from .coding import decode, encode
from .continuous import DiscretizedLogisticTree, ScaleConditionedTree
from .errors import (
    BitstreamError,
    CheckpointError,
    InputError,
    ModelLoadError,
    NotFittedError,
    PCPriorError,
    UnsupportedModelError,
)
from .hclt import HCLT, GroupedHCLT, LatentTreeCircuit
from .structure import Tree, chow_liu_tree, pairwise_mutual_information
from .training import bits_per_dim, fit_adam, fit_em

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
]
