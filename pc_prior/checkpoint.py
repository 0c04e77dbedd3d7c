"""Saving and loading circuits: kind, structure, sizes, parameters and coding tables, with a format version.

A checkpoint is read through ``pc_prior.files`` (zip CRCs, ``weights_only=True``, content digest),
then every field is checked against the others *before* the circuit is built: the tree, the
sizes against the stored tensors' shapes, the dtype against an allowlist, and the coding tables'
shapes and ranges (``CodingTables.validated``). Anything else is a ``CheckpointError`` naming the
file and the field.

Every circuit of the package (``HCLT``, ``GroupedHCLT``, ``DiscretizedLogisticTree``,
``ScaleConditionedTree``) is saved the same way: its class name, ``config()`` (the sizes its
constructor takes), the tree, the dtype and its state dict. Each config size is checked against
its plausible range (``_CONFIG_RANGES``; a ``GroupedHCLT``'s joint alphabet ``num_groups *
num_symbols`` too, against the coder's ``MAX_SYMBOLS``), then the expected state is taken from the
same class built on the ``meta`` device (no memory), so a forged size fails before anything is
allocated, and the circuit is built only once every stored tensor has the expected shape and
dtype (its memory is then that of the file's own tensors).

Circuits with per-variable leaves (``HCLT`` and its subclass ``GroupedHCLT``,
``DiscretizedLogisticTree``: ``_PER_VARIABLE``) also carry the coding tables ``pc_prior.encode``
codes with, checked (``CodingTables.validated``) and then against the circuit's sizes. For a
``GroupedHCLT`` these are the tables of its joint symbols ``g * num_symbols + v`` [D, K, G·V]:
what ``encode``/``decode`` use; ``PCEntropyBottleneck`` codes with per-group tables it rebuilds
from the same parameters (``group_coding_emissions``), so they are not saved here.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch

from .coding import MAX_LATENTS, MAX_SYMBOLS, CodingTables, coding_tables, set_coding_tables
from .continuous import DiscretizedLogisticTree, ScaleConditionedTree
from .errors import CheckpointError, InputError
from .files import check_format, read_file, write_file
from .framing import CHECKPOINT_FILE
from .hclt import HCLT, GroupedHCLT, LatentTreeCircuit
from .structure import Tree

__all__ = [
    "CHECKPOINT_VERSION",
    "CIRCUITS",
    "load",
    "save",
]

#: The circuit checkpoint version that ``save`` writes (``pc_prior.framing.FILE_FORMATS`` tables
#: every format and version).
CHECKPOINT_VERSION = CHECKPOINT_FILE.version
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_VARIABLES = 2**20
#: The circuit classes a checkpoint may hold, by the class name it records: ``save`` accepts
#: only these, and ``load`` builds nothing else.
CIRCUITS: dict[str, type[LatentTreeCircuit]] = {
    c.__name__: c for c in (HCLT, GroupedHCLT, DiscretizedLogisticTree, ScaleConditionedTree)
}
_CONFIG_RANGES = {
    "num_cats": (2, MAX_SYMBOLS),
    "num_latents": (1, MAX_LATENTS),
    "num_scales": (1, 4096),
    "num_symbols": (2, MAX_SYMBOLS),  # GroupedHCLT: per group; times num_groups <= MAX_SYMBOLS
    "num_groups": (1, MAX_SYMBOLS // 2),
}
_PER_VARIABLE = (HCLT, DiscretizedLogisticTree)  # circuits whose coding tables are saved


def save(pc: LatentTreeCircuit, path: str | os.PathLike, **metadata: Any) -> None:
    """Write ``pc`` to ``path``: kind, config, structure, parameters (CPU), coding tables (for
    circuits with per-variable leaves) and ``metadata``."""
    name = type(pc).__name__
    if CIRCUITS.get(name) is not type(pc):
        raise InputError(f"save expects one of {', '.join(CIRCUITS)}, got {name}")
    dtype = str(pc.root_logits.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise InputError(f"save supports float32 and float64 circuits, this one is {dtype}")
    per_variable = isinstance(pc, _PER_VARIABLE)  # the others' tables: their entropy model's
    write_file(
        {
            "format": CHECKPOINT_FILE.key,
            "version": CHECKPOINT_VERSION,
            "circuit": name,
            "config": pc.config(),
            "parent": list(pc.tree.parent),
            "dtype": dtype,
            "params": {k: v.detach().cpu() for k, v in pc.state_dict().items()},
            "coding_tables": coding_tables(pc).state() if per_variable else None,
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


def _kind_and_config(state: dict, path: Path) -> tuple[type[LatentTreeCircuit], dict[str, int]]:
    if state.get("version") == 2:  # HCLT only, sizes as fields
        config = {k: _field(state, k, int, path) for k in ("num_cats", "num_latents")}
        return HCLT, config
    name = _field(state, "circuit", str, path)
    if name not in CIRCUITS:
        raise CheckpointError(
            f"{path}: circuit {name!r} is not one this pc-prior builds ({', '.join(CIRCUITS)})"
        )
    cls = CIRCUITS[name]
    config = _field(state, "config", dict, path)
    want = [
        p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "tree", "dtype")
    ]
    if sorted(config) != sorted(want):
        raise CheckpointError(
            f"{path}: config has keys {sorted(config)}, {name} takes {sorted(want)}"
        )
    for key, value in config.items():
        lo, hi = _CONFIG_RANGES[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise CheckpointError(
                f"{path}: config {key} = {value!r} is not an integer in {lo}..{hi}"
            )
    if "num_groups" in config and config["num_groups"] * config["num_symbols"] > MAX_SYMBOLS:
        raise CheckpointError(
            f"{path}: config num_groups * num_symbols = {config['num_groups']} * "
            f"{config['num_symbols']} is more joint symbols than the coder's {MAX_SYMBOLS}"
        )
    return cls, config


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LatentTreeCircuit:
    """Read a checkpoint written by ``save`` (any device, any circuit) onto ``map_location``."""
    from .devices import resolve_device

    device = resolve_device(map_location)
    path = Path(path)
    state, digested = read_file(path)
    check_format(state, path, CHECKPOINT_FILE, digested)
    cls, config = _kind_and_config(state, path)
    parent = _field(state, "parent", list, path)
    dtype_name = _field(state, "dtype", str, path)
    params = _field(state, "params", dict, path)
    d = len(parent)
    if not 1 <= d <= MAX_VARIABLES or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in parent
    ):
        raise CheckpointError(
            f"{path}: 'parent' must list 1..{MAX_VARIABLES} integer parents, got {d} entries"
        )
    if dtype_name not in _DTYPES:
        raise CheckpointError(f"{path}: dtype {dtype_name!r} is not one of {', '.join(_DTYPES)}")
    dtype = _DTYPES[dtype_name]
    try:
        tree = Tree(tuple(parent))
    except ValueError as e:
        raise CheckpointError(f"{path}: 'parent' is not a tree: {e}") from e
    with torch.device("meta"):  # the expected state, without allocating it
        expected = cls(tree, **config, dtype=dtype).state_dict()
    if set(params) != set(expected):
        raise CheckpointError(
            f"{path}: params has keys {sorted(params)}, expected {sorted(expected)}"
        )
    for name, want in expected.items():
        t = params[name]
        if (
            not isinstance(t, torch.Tensor)
            or tuple(t.shape) != tuple(want.shape)
            or t.dtype != want.dtype
        ):
            raise CheckpointError(
                f"{path}: params.{name} is {getattr(t, 'dtype', type(t).__name__)} "
                f"{tuple(getattr(t, 'shape', ()))}, expected {want.dtype} {tuple(want.shape)}"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: params.{name} has NaN or infinite values")
    per_variable = issubclass(cls, _PER_VARIABLE)
    tables = (
        CodingTables.from_state(state.get("coding_tables"), where=f"{path}: coding_tables")
        if per_variable
        else None
    )
    pc = cls(tree, **config, dtype=dtype)
    pc.load_state_dict(params)
    if tables is not None:
        try:
            set_coding_tables(pc, tables)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: coding_tables: {e}") from e
    pc.to(device)
    metadata = state.get("metadata", {})
    pc.metadata = metadata if isinstance(metadata, dict) else {}  # type: ignore[assignment]
    return pc
