"""Saving and loading circuits: structure, parameters and coding tables, with a format version."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .coding import CodingTables, coding_tables, set_coding_tables
from .errors import CheckpointError
from .hclt import HCLT
from .structure import Tree

__all__ = ["save", "load", "CHECKPOINT_VERSION", "CheckpointError"]

CHECKPOINT_VERSION = 1
_FORMAT = "pc-prior/hclt"


def save(pc: HCLT, path: str | os.PathLike, **metadata) -> None:
    """Write ``pc`` to ``path``: structure, parameters (CPU), coding tables, and ``metadata``."""
    if not isinstance(pc, HCLT):
        raise TypeError(f"save expects an HCLT, got {type(pc).__name__}")
    state = {
        "format": _FORMAT,
        "version": CHECKPOINT_VERSION,
        "parent": list(pc.tree.parent),
        "num_cats": pc.num_cats,
        "num_latents": pc.num_latents,
        "dtype": str(pc.root_logits.dtype).removeprefix("torch."),
        "params": {k: v.detach().cpu() for k, v in pc.state_dict().items()},
        "coding_tables": coding_tables(pc).state(),
        "metadata": metadata,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> HCLT:
    """Read a checkpoint written by ``save`` (any device) onto ``map_location``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for non-checkpoint files
        raise CheckpointError(f"{path} is not a readable pc-prior checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a pc-prior HCLT checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state.get('version')}; this pc-prior reads version {CHECKPOINT_VERSION}"
        )
    pc = HCLT(Tree(tuple(state["parent"])), state["num_cats"], state["num_latents"],
              dtype=getattr(torch, state["dtype"]))
    pc.load_state_dict(state["params"])
    pc.to(map_location)
    tables = CodingTables.from_state(state["coding_tables"]).to(map_location)
    set_coding_tables(pc, tables)
    pc.metadata = state.get("metadata", {})
    return pc
