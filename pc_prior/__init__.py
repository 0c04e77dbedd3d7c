"""pc-prior: probabilistic circuits as entropy models for learned image compression."""

from . import framing
from .checkpoint import load, save
from .coding import decode, encode
from .errors import (BitstreamError, CheckpointError, InputError, ModelLoadError, NotFittedError, PCPriorError,
                     UnsupportedModelError)
from .hclt import HCLT, LatentTreeCircuit
from .structure import Tree, chow_liu_tree, pairwise_mutual_information
from .training import bits_per_dim, fit_adam, fit_em

__version__ = "0.1.0"

__all__ = [
    "framing", "HCLT", "LatentTreeCircuit", "Tree", "chow_liu_tree", "pairwise_mutual_information",
    "fit_em", "fit_adam", "bits_per_dim", "encode", "decode", "save", "load",
    "PCPriorError", "BitstreamError", "CheckpointError", "InputError", "NotFittedError",
    "UnsupportedModelError", "ModelLoadError", "__version__",
]
