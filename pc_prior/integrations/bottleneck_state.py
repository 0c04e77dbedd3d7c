"""The stored form of a ``PCEntropyBottleneck``: compact leaves, buffer checks and loading.

Invariants, and their reasons:

- Categorical leaves end every fit on the stored grid (``snap_leaves``), so the model that codes
  is the one a codec file holds; ``pack_state`` then stores each live leaf entry as one byte
  (``LEVELS_KEY``) and ``unpack_state`` restores exactly those logits.
- Every field of a state dict is checked (dtype, shape, range) before anything is resized or
  allocated (``_buffer_problem``, ``_load_from_state_dict``); a bad one is a load error naming
  it, never a crash or a model that codes with other tables. Files of pc-prior before spatial
  contexts load as one-pass models (``_with_buffer_defaults``).

This is one concern of ``PCEntropyBottleneck`` (``entropy_models``), as a mixin: fitting is
``bottleneck_fit``'s, coding the base's (``base.PCEntropyModel``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._checks import tensor_problem
from ..coding import MAX_LATENTS, MAX_PARAM, MAX_SYMBOL
from ..continuous import DiscretizedLogisticTree
from ..errors import CheckpointError, PCPriorError
from ..hclt import HCLT, GroupedHCLT
from ..structure import Tree
from .base import MAX_TABLE_ENTRIES, loaded_tables
from .context import SCHEDULES, num_leaf_groups, num_state_ids

__all__ = [
    "LEAF_FLOOR",
    "LEAF_LEVELS",
    "LEAF_STEP",
    "LEVELS_KEY",
    "MAX_LEAF_EDGE",
    "SCHEDULE_CODES",
    "BottleneckState",
]

SCHEDULE_CODES = tuple(SCHEDULES)
"""``_pc_schedule``'s values: an index into this order of the schedules (None: one pass)."""

# Categorical leaves end a fit as what they code with and are stored as: log-probabilities on a
# grid of LEAF_STEP nats, one byte each (level l is log p = -l * LEAF_STEP), clamped at LEAF_FLOOR,
# where the coder's weights floor(p * 2**22) + 1 are at their minimum of 1 anyway; a channel's
# dead entries (the symbols its alphabet escapes, never coded) at the floor. Measured on
# bsds500/test (factorized q2): the grid changes the rate by under 0.01%; storing only the live
# entries' levels makes the default bottleneck's leaves about 30x smaller than float32.
LEAF_STEP = 1 / 16
"""The stored leaves' grid, in nats: level l is log p = -l * LEAF_STEP."""
LEAF_LEVELS = 256
"""Levels of the grid: one byte per live leaf entry."""
LEAF_FLOOR = -(LEAF_LEVELS - 1) * LEAF_STEP
"""The lowest stored log-probability (dead entries sit here)."""
LEVELS_KEY = "pc.emission_levels"
"""The state-dict key of the packed leaf levels in codec files, in place of pc.emission_logits."""

MAX_LEAF_EDGE = 1 << 20
"""The bound on a leaf edge's magnitude: far above any neighbour activity (at most
8 * SYMBOL_CLIP), far below the int64 overflow of the activity sums it is compared with."""


def _dead_leaves(n: Tensor, v: int, dims: int) -> Tensor:
    """[C, 1, (1,) V] mask of the leaf entries no symbol of a channel maps to: those at or past
    its alphabet size ``n`` [C] but for the escape, V - 1 (``PCEntropyBottleneck._indices``)."""
    pos = torch.arange(v, device=n.device)
    dead = (pos >= n.long()[:, None]) & (pos < v - 1)
    return dead.view(len(n), *([1] * (dims - 2)), v)


def _with_buffer_defaults(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``state_dict`` with the context buffers of files of pc-prior before spatial contexts
    filled in (one pass, no edges, no state context): a new dict."""
    return {
        prefix + "_pc_schedule": torch.zeros(1, dtype=torch.long),
        prefix + "_leaf_edges": torch.zeros(0, dtype=torch.long),
        prefix + "_state_roots": torch.zeros(0, 0, dtype=torch.int32),
        **state_dict,
    }


def _buffer_problem(state_dict: dict[str, Any], prefix: str) -> str | None:
    """What is wrong with the bottleneck's own buffers in ``state_dict`` (dtype, and the ranges
    that need no circuit: the schedule index, leaf edges, finite medians, alphabets within the
    coder's range), naming the buffer; None if nothing. Checked before anything is resized."""
    kinds = {
        "_pc_schedule": "integer",
        "_leaf_edges": "integer",
        "_state_roots": "integer",
        "_offset": "integer",
        "_cdf_length": "integer",
        "quantiles": "float",
    }
    for name, kind in kinds.items():
        if prefix + name in state_dict:
            problem = tensor_problem(prefix + name, state_dict[prefix + name], kind)  # type: ignore[arg-type]
            if problem is not None:
                return problem
    sched = state_dict[prefix + "_pc_schedule"]
    if tuple(sched.shape) != (1,) or not 0 <= int(sched[0]) < len(SCHEDULE_CODES):
        return (
            f"{prefix}_pc_schedule must be one schedule index in 0..{len(SCHEDULE_CODES) - 1}, "
            f"got {sched.tolist() if sched.numel() < 8 else tuple(sched.shape)}"
        )
    edges = state_dict[prefix + "_leaf_edges"]
    if edges.numel() and (int(edges.min()) < 1 or int(edges.max()) > MAX_LEAF_EDGE):
        return f"{prefix}_leaf_edges must lie in 1..{MAX_LEAF_EDGE}"
    q = state_dict.get(prefix + "quantiles")
    if q is not None and q.numel() and not float(q.abs().max()) <= MAX_SYMBOL:  # NaN too
        return f"{prefix}quantiles (the medians) must be finite, |q| <= {MAX_SYMBOL}"
    off, n = state_dict.get(prefix + "_offset"), state_dict.get(prefix + "_cdf_length")
    if (
        off is not None
        and n is not None
        and off.shape == n.shape
        and off.numel()
        and int((off.long().abs() + n.long().abs()).max()) > MAX_SYMBOL
    ):
        return f"{prefix}_offset and _cdf_length reach beyond the coder's range |s| <= {MAX_SYMBOL}"
    return None


class BottleneckState:
    """``PCEntropyBottleneck``'s stored form (mixin): snapped and packed leaves, checked loading."""

    # provided by PCEntropyBottleneck and its bases
    pc: HCLT | DiscretizedLogisticTree | None
    channels: int
    quantiles: Tensor
    _cdf_length: Tensor
    _resize_for: Any
    _finish_loading: Any

    @torch.no_grad()
    def snap_leaves(self) -> None:
        """Put categorical leaves on the stored grid (``LEAF_STEP``), dead entries at the floor:
        the end of every fit, so the model that codes is the one a codec file holds, and after
        gradient training (``RDModule`` exports), so the file stays compact. Follow it with
        ``update(force=True)``; logistic leaves are left as they are."""
        pc = self.pc
        if not isinstance(pc, HCLT):  # logistic leaves are stored as their parameters
            return
        logits = pc.emission_logits
        lp = torch.log_softmax(logits.double(), -1)
        level = torch.clamp(torch.round(-lp / LEAF_STEP), 0, LEAF_LEVELS - 1)
        level = level.masked_fill(
            _dead_leaves(self._cdf_length, logits.shape[-1], logits.dim()), LEAF_LEVELS - 1
        )
        logits.copy_((-level * LEAF_STEP).to(logits.dtype))

    @classmethod
    def pack_state(cls, state: dict[str, Tensor], prefix: str) -> None:
        """Store snapped leaves compactly in a state dict, in place: ``pc.emission_logits`` on the
        grid becomes ``LEVELS_KEY``, a uint8 vector of the live entries' levels (C order). Leaves
        off the grid (trained after the fit) stay as they are."""
        logits, n = state.get(prefix + "pc.emission_logits"), state.get(prefix + "_cdf_length")
        if logits is None or n is None or logits.dim() not in (3, 4):
            return
        level = -logits.double() / LEAF_STEP
        dead = _dead_leaves(n, logits.shape[-1], logits.dim()).expand_as(logits)
        if (
            not torch.equal(level, level.round())
            or float(level.min()) < 0
            or float(level.max()) > LEAF_LEVELS - 1
            or not bool((level[dead] == LEAF_LEVELS - 1).all())
        ):
            return
        del state[prefix + "pc.emission_logits"]
        state[prefix + LEVELS_KEY] = level[~dead].to(torch.uint8)

    @classmethod
    def unpack_state(cls, state: dict[str, Tensor], prefix: str) -> None:
        """Undo ``pack_state`` in place (loading does, so a codec file's state dict loads as it
        is), every field checked before anything is allocated; ``CheckpointError`` naming it."""
        levels = state.get(prefix + LEVELS_KEY)
        if levels is None:
            return
        where = f"{prefix}{LEVELS_KEY}"
        full = _with_buffer_defaults(state, prefix)
        n, trans = full.get(prefix + "_cdf_length"), full.get(prefix + "pc.transition_logits")
        sched, edges = full[prefix + "_pc_schedule"], full[prefix + "_leaf_edges"]
        problem = _buffer_problem(full, prefix)
        if problem is None and (
            levels.dtype != torch.uint8
            or levels.dim() != 1
            or prefix + "pc.emission_logits" in state
            or n is None
            or n.dim() != 1
            or not len(n)
            or int(n.min()) < 1
            or trans is None
            or trans.dim() != 3
            or trans.shape[0] != len(n)
            or not 1 <= trans.shape[1] <= MAX_LATENTS
        ):
            problem = (
                f"{where} must be the uint8 leaf levels of a circuit with its alphabets "
                "(_cdf_length) and transitions, in place of pc.emission_logits"
            )
        if problem is not None:
            raise CheckpointError(problem)
        c, k, v = len(n), trans.shape[1], int(n.max()) + 1
        schedule = SCHEDULE_CODES[int(sched[0])]
        grouped = schedule is not None and edges.numel() > 0
        shape = (c, k, num_leaf_groups(schedule, edges), v) if grouped else (c, k, v)
        if math.prod(shape) > MAX_TABLE_ENTRIES:
            raise CheckpointError(
                f"{where}: leaves of shape {shape} are more than the plausible {MAX_TABLE_ENTRIES} "
                "entries (corrupted alphabet or context?)"
            )
        dead = _dead_leaves(n, v, len(shape)).expand(shape)
        if int((~dead).sum()) != len(levels):
            raise CheckpointError(
                f"{where} holds {len(levels)} levels, the circuit's live leaf entries number "
                f"{int((~dead).sum())} (truncated, or another model's leaves?)"
            )
        level = torch.full(shape, float(LEAF_LEVELS - 1), dtype=torch.float64)
        level[~dead] = levels.double()
        del state[prefix + LEVELS_KEY]
        state[prefix + "pc.emission_logits"] = (-level * LEAF_STEP).to(trans.dtype)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """Check the alphabets (and any stored tables), resize the buffers and build the circuit;
        once its parameters are loaded, take the stored tables or rebuild and verify them."""
        if prefix + LEVELS_KEY in state_dict:  # a codec file's compact leaves (pack_state)
            try:  # in place: torch hands each module its own copy, and the circuit's keys to
                self.unpack_state(state_dict, prefix)  # the circuit from it after this call
            except CheckpointError as e:
                error_msgs.append(str(e))
                return
        state_dict = _with_buffer_defaults(state_dict, prefix)
        problem = _buffer_problem(state_dict, prefix)
        if problem is not None:
            error_msgs.append(problem)
            return
        stored = loaded_tables(state_dict, prefix, error_msgs)
        trans = state_dict.get(prefix + "pc.transition_logits")
        logits = state_dict.get(prefix + "pc.emission_logits")
        off, n = state_dict.get(prefix + "_offset"), state_dict.get(prefix + "_cdf_length")
        d = self.channels
        if stored is not None or trans is not None:
            if (
                off is None
                or n is None
                or tuple(off.shape) != (d,)
                or tuple(n.shape) != (d,)
                or off.dtype.is_floating_point
                or n.dtype.is_floating_point
                or (stored is not None and stored.emit.shape[0] != d)
            ):
                error_msgs.append(
                    f"{prefix}: the circuit is over {d} channels, the alphabets (_offset, "
                    f"_cdf_length) must be integer vectors of {d}"
                )
                return
            if stored is not None:
                v = stored.emit.shape[-1]
            elif logits is not None and logits.dim() in (3, 4):
                v = logits.shape[-1]
            else:
                v = int(n.max()) + 1
            sched, edges = state_dict[prefix + "_pc_schedule"], state_dict[prefix + "_leaf_edges"]
            groups = None
            if stored is not None and stored.emit.dim() == 4:
                groups = stored.emit.shape[1]
            elif logits is not None and logits.dim() == 4:
                groups = logits.shape[2]
            if (
                tuple(sched.shape) != (1,)
                or sched.dtype.is_floating_point
                or not 0 <= int(sched[0]) < len(SCHEDULE_CODES)
                or edges.dim() not in (1, 2)
                or (edges.dim() == 2 and edges.shape[0] != d)
                or edges.dtype.is_floating_point
                or edges.shape[-1] > 64
                or (
                    edges.numel() and (int(edges.min()) < 1 or bool((edges.diff(dim=-1) < 0).any()))
                )
                or (groups is not None)
                != (SCHEDULE_CODES[int(sched[0])] is not None and edges.numel() > 0)
                or (
                    groups is not None
                    and groups != num_leaf_groups(SCHEDULE_CODES[int(sched[0])], edges)
                )
            ):
                error_msgs.append(
                    f"{prefix}: the spatial context (_pc_schedule, _leaf_edges) does not match "
                    f"the circuit's leaf groups: expected a schedule index in 0..{len(SCHEDULE_CODES) - 1}, "
                    "non-decreasing positive edges ([E] or per channel [C, E]), and one leaf group "
                    "per context id"
                )
                return
            roots, schedule = state_dict[prefix + "_state_roots"], SCHEDULE_CODES[int(sched[0])]
            if roots.numel() and (
                trans is None
                or trans.dim() != 3
                or not trans.is_floating_point()
                or groups is None
                or roots.dtype.is_floating_point
                or tuple(roots.shape) != (num_state_ids(schedule, trans.shape[1]), trans.shape[1])
                or int(roots.min()) < 1
                or int(roots.max()) > MAX_PARAM
            ):
                error_msgs.append(
                    f"{prefix}_state_roots (the state context's priors) must be integer weights "
                    f"in 1..{MAX_PARAM}, one row of K per state-context id of the {schedule!r} "
                    f"schedule, got {tuple(roots.shape)} {roots.dtype}"
                )
                return
            if int(n.min()) < 1 or int(n.max()) > v - 1 or int(off.abs().max()) > MAX_SYMBOL:
                error_msgs.append(
                    f"{prefix}_cdf_length must lie in 1..{v - 1} and |_offset| <= {MAX_SYMBOL}"
                )
                return
        elif any(m.startswith(prefix) for m in error_msgs):
            return
        self._resize_for(
            state_dict,
            prefix,
            ("_offset", "_cdf_length", "_quantized_cdf", "_leaf_edges", "_state_roots"),
        )
        if trans is not None:
            parent = state_dict.get(prefix + "_pc_parent")
            try:
                if parent is None or trans.dim() != 3 or len(parent) != d or trans.shape[0] != d:
                    raise ValueError(f"_pc_parent and the transitions must be over {d} channels")
                tree = Tree(tuple(int(p) for p in parent))
            except (ValueError, TypeError, PCPriorError) as e:
                error_msgs.append(f"{prefix}: the circuit's tree is not valid: {e}")
                return
            k, dt = trans.shape[1], trans.dtype
            if logits is not None and logits.dim() == 4:
                pc: HCLT | DiscretizedLogisticTree = GroupedHCLT(tree, v, logits.shape[2], k, dt)
            elif logits is not None:
                pc = HCLT(tree, v, k, dtype=dt)
            else:
                pc = DiscretizedLogisticTree(tree, v, k, dtype=dt)
            self.pc = pc.to(self.quantiles.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._finish_loading(state_dict, prefix, stored, missing_keys, unexpected_keys, error_msgs)
