"""Saving and loading lossless circuits: structure, parameters and coding tables, with a format version.

A checkpoint is read through ``pc_prior.files`` (zip CRCs, ``weights_only=True``, content digest),
then every field is checked against the others *before* the circuit is built: the tree, the
sizes against the stored tensors' shapes, the dtype against an allowlist, and the coding tables'
shapes and ranges (``CodingTables.validated``). Anything else is a ``CheckpointError`` naming the
file and the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .coding import MAX_LATENTS, MAX_SYMBOLS, CodingTables, coding_tables, set_coding_tables
from .errors import CheckpointError, InputError
from .files import check_format, read_file, write_file
from .hclt import HCLT
from .structure import Tree

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "load", "save"]

CHECKPOINT_VERSION = 2  # 2: content digest, tables validated on load (CHANGELOG.md)
_FORMAT = "pc-prior/hclt"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_VARIABLES = 2**20


def save(pc: HCLT, path: str | os.PathLike, **metadata: Any) -> None:
    """Write ``pc`` to ``path``: structure, parameters (CPU), coding tables, and ``metadata``."""
    if not isinstance(pc, HCLT):
        raise InputError(f"save expects an HCLT, got {type(pc).__name__}")
    dtype = str(pc.root_logits.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise InputError(f"save supports float32 and float64 circuits, this one is {dtype}")
    write_file(
        {
            "format": _FORMAT,
            "version": CHECKPOINT_VERSION,
            "parent": list(pc.tree.parent),
            "num_cats": pc.num_cats,
            "num_latents": pc.num_latents,
            "dtype": dtype,
            "params": {k: v.detach().cpu() for k, v in pc.state_dict().items()},
            "coding_tables": coding_tables(pc).state(),
            "metadata": metadata,
        },
        path,
    )


def _field(state: dict, key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in state:
        raise CheckpointError(f"{path} has no '{key}' field")
    v = state[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise CheckpointError(f"{path}: field '{key}' is a {type(v).__name__}")
    return v


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> HCLT:
    """Read a checkpoint written by ``save`` (any device) onto ``map_location``."""
    from .devices import resolve_device

    device = resolve_device(map_location)
    path = Path(path)
    state, digested = read_file(path)
    check_format(state, path, _FORMAT, CHECKPOINT_VERSION, digested, "pc-prior HCLT checkpoint")
    parent = _field(state, "parent", list, path)
    v = _field(state, "num_cats", int, path)
    k = _field(state, "num_latents", int, path)
    dtype_name = _field(state, "dtype", str, path)
    params = _field(state, "params", dict, path)
    d = len(parent)
    if not 1 <= d <= MAX_VARIABLES or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in parent
    ):
        raise CheckpointError(
            f"{path}: 'parent' must list 1..{MAX_VARIABLES} integer parents, got {d} entries"
        )
    if not 2 <= v <= MAX_SYMBOLS or not 1 <= k <= MAX_LATENTS:
        raise CheckpointError(
            f"{path}: num_cats {v} (allowed 2..{MAX_SYMBOLS}) or num_latents {k} "
            f"(allowed 1..{MAX_LATENTS}) out of range"
        )
    if dtype_name not in _DTYPES:
        raise CheckpointError(f"{path}: dtype {dtype_name!r} is not one of {', '.join(_DTYPES)}")
    dtype = _DTYPES[dtype_name]
    expected = {"root_logits": (k,), "transition_logits": (d, k, k), "emission_logits": (d, k, v)}
    if set(params) != set(expected):
        raise CheckpointError(
            f"{path}: params has keys {sorted(params)}, expected {sorted(expected)}"
        )
    for name, shape in expected.items():
        t = params[name]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
            raise CheckpointError(
                f"{path}: params.{name} is {getattr(t, 'dtype', type(t).__name__)} "
                f"{tuple(getattr(t, 'shape', ()))}, expected {dtype_name} {shape}"
            )
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: params.{name} has NaN or infinite values")
    try:
        tree = Tree(tuple(parent))
    except ValueError as e:
        raise CheckpointError(f"{path}: 'parent' is not a tree: {e}") from e
    tables = CodingTables.from_state(state.get("coding_tables"), where=f"{path}: coding_tables")
    pc = HCLT(tree, v, k, dtype=dtype)
    pc.load_state_dict(params)
    set_coding_tables(pc, tables)
    pc.to(device)
    metadata = state.get("metadata", {})
    pc.metadata = metadata if isinstance(metadata, dict) else {}
    return pc
