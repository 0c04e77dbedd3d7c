"""Deprecated name of ``pc_prior.fitting`` (renamed so that ``fitting``, EM and Adam for HCLTs,
and ``train``, the Lightning modules, no longer read alike); this alias goes in pc-prior 0.4."""

from __future__ import annotations

import warnings
from typing import Any

from . import fitting as _fitting

__all__: list[str] = []


def __getattr__(name: str) -> Any:
    """``fitting``'s ``name``, with a ``FutureWarning`` naming the new module."""
    value = getattr(_fitting, name)
    warnings.warn(
        f"pc_prior.training is renamed pc_prior.fitting; import {name} from there "
        "(the old name goes in pc-prior 0.4)",
        FutureWarning,
        stacklevel=2,
    )
    return value
