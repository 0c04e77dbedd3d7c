"""Deprecated name of ``pc_prior.train.datamodules`` (renamed so that ``pc_prior.data``, the
dataset loaders, and the Lightning data modules no longer share a name); goes in pc-prior 0.4."""

from __future__ import annotations

import warnings
from typing import Any

from . import datamodules as _datamodules

__all__: list[str] = []


def __getattr__(name: str) -> Any:
    """``datamodules``' ``name``, with a ``FutureWarning`` naming the new module."""
    value = getattr(_datamodules, name)
    warnings.warn(
        f"pc_prior.train.data is renamed pc_prior.train.datamodules; import {name} from there "
        "(the old name goes in pc-prior 0.4)",
        FutureWarning,
        stacklevel=2,
    )
    return value
