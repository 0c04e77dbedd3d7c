"""``PCEntropyBottleneck``: a drop-in for CompressAI's ``EntropyBottleneck`` backed by an HCLT.

What is modelled. A latent ``y`` [B, C, H, W] is rounded around per-channel medians (as
CompressAI does), giving integer symbols. The circuit models the *joint* of the C channels at one
spatial position (D = C variables); all positions of all images are i.i.d. items of that joint,
so coding is one loop over the C variables, batched over every position of every image.

Alphabets. Each channel has a contiguous alphabet ``lo_c .. lo_c + n_c - 1`` learned from data;
the circuit's categorical leaves have ``V = max(n_c) + 1`` symbols, the last being ESCAPE. A
symbol outside its channel's alphabet is coded as ESCAPE by the circuit, followed by an exact
Elias-gamma style bypass code of its value (side, bit length, raw bits), so nothing is clipped.

Determinism. Compression uses only the integer tables in registered buffers (``_pc_root``,
``_pc_trans``, ``_pc_emit``, ``_pc_parent``, plus ``_offset``/``_cdf_length`` for the alphabets),
written by ``update()`` like CompressAI's CDF tables, and ``pc_prior.coding``'s exact integer
conditionals; a saved and reloaded state dict therefore decodes bit-exactly on any device.

State context. With a spatial context, a later pass's positions can also get their own prior over
the root's latent states (``_state_roots``: integer weights per state-context id, saved as they
are coded with). The id comes from the most probable root states of the decoded neighbours, which
encoder and decoder both take from the coder's exact integer messages
(``IncrementalConditionals.root_states``) after each pass: the states carry what the neighbours
say about the position as a whole (busy or flat, which texture), where the leaf groups carry what
each channel's own neighbours say.

Rate in ``forward``. The joint log-probability of a position is spread evenly over its C
channels (likelihood_c = p(position)^(1/C)), so ``-sum(log2 likelihoods)`` is exactly the
model's code length, which is all CompressAI's rate term uses.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck
from torch import Tensor

from .. import framing
from .._checks import (
    check_choice,
    check_int,
    check_real,
    check_step_size,
    fit_keywords,
    tensor_problem,
)
from ..coding import (
    MAX_LATENTS,
    MAX_PARAM,
    MAX_SYMBOL,
    CodingTables,
    circuit_tables,
    coding_tables,
    escape_bits,
    quantize_probs,
)
from ..continuous import DiscretizedLogisticTree
from ..errors import CheckpointError, InputError, PCPriorError
from ..hclt import HCLT, GroupedHCLT
from ..settings import CHOICES, BottleneckFit
from ..structure import Tree, chow_liu_tree, pairwise_mutual_information, star_tree
from ..training import em_update, expected_counts, fit_em
from .base import (
    MAX_TABLE_ENTRIES,
    PassCondition,
    PCEntropyModel,
    check_latent,
    loaded_tables,
    pass_rows,
    position_rows,
)
from .context import (
    MAGNITUDE_EDGES,
    SCHEDULES,
    channel_edges,
    leaf_groups,
    num_leaf_groups,
    num_state_ids,
    pass_groups,
    pass_masks,
    state_ids,
)

__all__ = ["PCEntropyBottleneck"]

STRUCTURES = CHOICES["structure"]  # circuit structures over the channels (pc_prior.settings)
SCHEDULE_CODES = tuple(SCHEDULES)  # _pc_schedule's values: an index into the schedules' order
LN2 = math.log(2.0)
STATE_BACKOFF = 10.0  # pseudo-counts pulling each state-context prior towards the root prior
STATE_EM_ROUNDS = 30  # EM rounds of the state-context priors (the leaves stay fixed)


# Categorical leaves end a fit as what they code with and are stored as: log-probabilities on a
# grid of LEAF_STEP nats, one byte each (level l is log p = -l * LEAF_STEP), clamped at LEAF_FLOOR,
# where the coder's weights floor(p * 2**22) + 1 are at their minimum of 1 anyway; a channel's
# dead entries (the symbols its alphabet escapes, never coded) at the floor. Measured on
# bsds500/test (factorized q2): the grid changes the rate by under 0.01%; storing only the live
# entries' levels makes the default bottleneck's leaves about 30x smaller than float32.
LEAF_STEP = 1 / 16
LEAF_LEVELS = 256
LEAF_FLOOR = -(LEAF_LEVELS - 1) * LEAF_STEP
LEVELS_KEY = "pc.emission_levels"  # in codec files, in place of pc.emission_logits

# |leaf edge| bound: far above any neighbour activity (at most 8 * SYMBOL_CLIP), far below the
# int64 overflow of the activity sums it is compared with
MAX_LEAF_EDGE = 1 << 20


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


def _check_size(size: Any) -> tuple[int, int]:
    """A latent size (H, W): a sequence (tuple, list, ``torch.Size``) of two positive integers."""
    if not isinstance(size, (tuple, list, torch.Size)):
        raise InputError(
            f"size must be the latent's (H, W), a sequence of two positive integers, "
            f"got {type(size).__name__} {size!r}"
        )
    if len(size) != 2:
        raise InputError(
            f"size must be the latent's (H, W), two positive integers, got {len(size)} values {tuple(size)}"
        )
    return check_int("size[0] (H)", size[0], 1), check_int("size[1] (W)", size[1], 1)  # type: ignore[return-value]


class PCEntropyBottleneck(PCEntropyModel, EntropyBottleneck):
    """Entropy bottleneck whose prior is a hidden Chow-Liu tree over the channels at a position.

    Same interface as ``EntropyBottleneck`` (``forward``, ``compress``, ``decompress``,
    ``update``, ``loss``), so CompressAI models use it unchanged. Fit it with ``fit`` (or
    ``pc_prior.integrations.fit_prior``), then ``update()`` (``fit`` does) before coding.
    ``quantization`` selects the training-mode rounding: ``"noise"`` (uniform noise on the
    output, CompressAI's default) or ``"ste"`` (straight-through rounding).
    """

    FORMAT = framing.BOTTLENECK  # magic, version and header fields of this model's strings

    def __init__(
        self, channels: int, *args: Any, quantization: str = "noise", **kwargs: Any
    ) -> None:
        super().__init__(channels, *args, **kwargs)
        if quantization not in ("noise", "ste"):
            raise InputError(f'quantization must be "noise" or "ste", got {quantization!r}')
        self.quantization = quantization
        # The circuit replaces the factorized density; only ``quantiles`` (medians) is kept.
        del self.matrices, self.biases, self.factors
        self._init_tables(emit_dims=3)
        self.pc: HCLT | DiscretizedLogisticTree | None = None
        # the coding schedule (an index of SCHEDULE_CODES) and the leaf contexts' bin edges
        self.register_buffer("_pc_schedule", torch.zeros(1, dtype=torch.long))
        self.register_buffer("_leaf_edges", torch.zeros(0, dtype=torch.long))
        # the state context's root priors [R, K], integer weights as the coder's (empty: off)
        self.register_buffer("_state_roots", torch.zeros(0, 0, dtype=torch.int32))

    # -- state ----------------------------------------------------------------------------------
    @property
    def num_symbols(self) -> int:
        """V: the circuit's leaf alphabet size (largest channel alphabet + ESCAPE)."""
        pc = self._require_fitted()
        return pc.num_symbols if isinstance(pc, GroupedHCLT) else pc.num_cats

    @torch.no_grad()
    def _snap_leaves(self) -> None:
        """Put categorical leaves on the stored grid (``LEAF_STEP``), dead entries at the floor:
        the end of every fit, so the model that codes is the one a codec file holds."""
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

    @property
    def schedule(self) -> str | None:
        """The spatial context's coding schedule: None (one pass), ``"checkerboard"``,
        ``"three-pass"`` or ``"four-pass"`` (``BottleneckFit.context``)."""
        return SCHEDULE_CODES[int(self._pc_schedule[0])]

    @property
    def context(self) -> str | None:
        """Deprecated name of ``schedule`` (``PCConditional.context`` is a module); removed in 0.4."""
        warnings.warn(
            "PCEntropyBottleneck.context is renamed schedule (PCConditional.schedule is the same "
            "string); the old name goes in pc-prior 0.4",
            FutureWarning,
            stacklevel=2,
        )
        return self.schedule

    @property
    def state_context(self) -> str | None:
        """``"neighbours"`` when a later pass's latent-state prior depends on its decoded
        neighbours' states (``_state_roots``), else None."""
        return "neighbours" if self._state_roots.numel() else None

    def _groups(self, s: Tensor) -> Tensor:
        """Leaf groups [B, C, H, W] of symbol maps under the fitted schedule (all 0 without one)."""
        return leaf_groups(s, self.schedule, self._leaf_edges)

    def _medians(self) -> Tensor:
        return self.quantiles[:, 0, 1].detach()

    def _coded_state(self) -> tuple[Tensor, ...]:
        return (
            self._offset,
            self._cdf_length,
            self.quantiles,
            self._pc_schedule,
            self._leaf_edges,
            self._state_roots,
        )

    def _fingerprint_tensors(self) -> tuple[Tensor, ...]:
        return (
            self._offset.to(torch.int32),
            self._cdf_length.to(torch.int32),
            self._medians().float(),
            *((self._pc_schedule, self._leaf_edges) if self.schedule is not None else ()),
            *((self._state_roots,) if self.state_context is not None else ()),
        )

    def _compute_tables(self) -> CodingTables:
        pc = self._require_fitted()
        if not isinstance(pc, GroupedHCLT):
            return coding_tables(pc, refresh=True)
        return circuit_tables(pc, pc.group_coding_emissions)  # [D, G, K, V]: a table per group

    def _tables_entries(self) -> int:
        pc = self._require_fitted()
        return pc.num_vars * pc.num_latents * pc.num_cats

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

    # -- fitting --------------------------------------------------------------------------------
    def _check_latent(self, y: Any) -> None:
        """``InputError`` unless y is [B, channels, H, W]: the one shape check of every entry point."""
        check_latent(type(self).__name__, y, self.channels)

    def symbols(self, y: Tensor) -> Tensor:
        """Integer symbols round(y - median) [B, C, H, W] (int64), checked finite and in range."""
        self._check_latent(y)
        if not torch.isfinite(y).all():
            raise InputError("latent contains NaN or infinite values")
        s = torch.round(y.detach() - self._medians().view(1, -1, 1, 1))
        if s.numel() and not float(s.abs().max()) <= MAX_SYMBOL:  # NaN medians too
            raise InputError(f"latent symbols exceed the coder's range |s| <= {MAX_SYMBOL}")
        return s.long()

    def _indices(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Leaf indices (ESCAPE = V-1), alphabet-relative values and the escape mask; s [..., C]."""
        lo, n = self._offset.long(), self._cdf_length.long()
        rel = s - lo
        esc = (rel < 0) | (rel >= n)
        return torch.where(esc, torch.full_like(rel, self.num_symbols - 1), rel), rel, esc

    @classmethod
    def check_fit_args(cls, **kwargs: Any) -> dict[str, Any]:
        """Check keyword arguments of ``fit`` without any data: names, types and ranges.

        Returns every keyword argument of ``fit`` (defaults filled in, numbers as int/float);
        raises ``InputError`` naming the first bad one. ``fit`` and ``fit_prior`` call it first,
        so a bad argument fails before latents are collected or a structure is learned.
        """
        a = fit_keywords(cls, cls.fit, ("values",), kwargs)
        check_choice("leaves", a["leaves"], CHOICES["leaves"])
        check_choice("structure", a["structure"], STRUCTURES)
        check_choice("context", a["context"], CHOICES["context"])
        check_choice("context_bins", a["context_bins"], CHOICES["context_bins"])
        check_choice("group_fit", a["group_fit"], CHOICES["group_fit"])
        check_choice("state_context", a["state_context"], CHOICES["state_context"])
        a["num_latents"] = check_int("num_latents", a["num_latents"], 1)
        a["tail"] = check_real("tail", a["tail"], 0.0, 0.5, high_open=True)
        a["max_alphabet"] = check_int("max_alphabet", a["max_alphabet"], 1)
        a["max_items"] = check_int("max_items", a["max_items"], 1, allow_none=True)
        a["epochs"] = check_int("epochs", a["epochs"], 0)
        a["batch_size"] = check_int("batch_size", a["batch_size"], 1)
        a["full_batch_epochs"] = check_int("full_batch_epochs", a["full_batch_epochs"], 0)
        a["step_size"] = check_step_size(a["step_size"])
        a["pseudocount"] = check_real("pseudocount", a["pseudocount"], 0.0)
        a["group_backoff"] = check_real("group_backoff", a["group_backoff"], 0.0)
        a["group_epochs"] = check_int("group_epochs", a["group_epochs"], 0)
        a["state_epochs"] = check_int("state_epochs", a["state_epochs"], 0)
        a["finetune_steps"] = check_int("finetune_steps", a["finetune_steps"], 0)
        a["lr"] = check_real("lr", a["lr"], 0.0, low_open=True)
        a["seed"] = check_int("seed", a["seed"])
        check_choice("warm_start", a["warm_start"], (False, True))
        return a

    def fit(
        self,
        values: Tensor | Sequence[Tensor],
        num_latents: int = BottleneckFit.num_latents,
        *,
        context: str | None = BottleneckFit.context,
        context_bins: str = BottleneckFit.context_bins,
        tail: float = BottleneckFit.tail,
        max_alphabet: int = BottleneckFit.max_alphabet,
        max_items: int | None = BottleneckFit.max_items,
        epochs: int = BottleneckFit.epochs,
        batch_size: int = BottleneckFit.batch_size,
        full_batch_epochs: int = BottleneckFit.full_batch_epochs,
        step_size: float | tuple[float, float] = BottleneckFit.step_size,
        pseudocount: float = BottleneckFit.pseudocount,
        group_backoff: float = BottleneckFit.group_backoff,
        group_fit: str = BottleneckFit.group_fit,
        group_epochs: int = BottleneckFit.group_epochs,
        state_context: str | None = BottleneckFit.state_context,
        state_epochs: int = BottleneckFit.state_epochs,
        structure: str = BottleneckFit.structure,
        leaves: str = BottleneckFit.leaves,
        finetune_steps: int = BottleneckFit.finetune_steps,
        lr: float = BottleneckFit.lr,
        seed: int = BottleneckFit.seed,
        progress: bool = True,
        warm_start: bool = False,
    ) -> list[dict]:
        """Learn alphabets, structure and parameters from latent values: rows [N, C] (one per
        position) or latent maps [B, C, H, W] (a sequence, one per image; a context needs them).

        ``context`` (``"checkerboard"``, ``"three-pass"`` or ``"four-pass"``) codes the positions in passes
        (``pc_prior.integrations.context.pass_masks``); a leaf of a later pass is conditioned on
        its channel's decoded neighbours (``leaf_groups``: a ``GroupedHCLT``), each group backed
        off towards its leaf by ``group_backoff`` pseudo-counts. ``group_fit="states-first"``
        learns the latent states without context first (the one-pass circuit), then each
        group's leaves from one count pass of those states, then ``group_epochs`` full-batch
        EM epochs of the grouped circuit (backed off again). None: one pass. Rows [N, C]
        have no neighbours and logistic leaves no groups: those fits are always one pass.
        ``state_context="neighbours"`` (with a context) then fits, leaves fixed, a prior over the
        latent states per state-context id (``state_ids``: the decoded neighbours' most common
        state and its count), each backed off towards the root prior (``_fit_state_roots``).

        Alphabets cover the [tail, 1 - tail] quantiles of each channel's symbols (at most
        ``max_alphabet`` symbols); everything else is escaped. ``max_items`` random positions are
        used for structure learning and EM (None: all). ``structure``: ``"chow-liu"`` (learned
        tree) or ``"star"`` (every channel a child of the highest-variance one: a generalized
        mixture of K factorized models). ``leaves="logistic"`` then converts the categorical
        leaves to discretized logistics (``DiscretizedLogisticTree``) and refines the whole
        circuit by Adam on noisy values for ``finetune_steps`` steps; use it for joint
        fine-tuning with the codec. Ends with ``update(force=True)``. Bad arguments raise
        ``InputError`` before any work (``check_fit_args``). Defaults:
        ``pc_prior.settings.BottleneckFit``.

        ``warm_start=True`` continues the fitted circuit on new values instead (``pc-prior prior
        adapt``: adapt a prior to a domain): the alphabets, structure, K and leaf kind are kept,
        so ``num_latents``, ``structure``, ``leaves``, ``tail``, ``max_alphabet`` and
        ``group_fit`` are not used; EM (categorical leaves: on the grouped circuit as it is, states
        and groups together) or the Adam refinement (logistic leaves) starts from the current
        parameters. ``NotFittedError`` if there is nothing to continue.
        """
        a = self.check_fit_args(
            **{k: v for k, v in locals().items() if k not in ("self", "values", "__class__")}
        )
        max_items, tail = a["max_items"], a["tail"]
        dev = self.quantiles.device
        if warm_start:  # the fitted schedule and edges
            context = self.schedule if self.fitted else None
            edges: Tensor | None = self._leaf_edges
        else:
            edges = torch.tensor(MAGNITUDE_EDGES) if context_bins == "fixed" else None
        if warm_start and context is not None and isinstance(values, Tensor):
            raise InputError(
                f"this model codes in the {context!r} schedule: continue it on latent maps (a list "
                f"of [B, {self.channels}, H, W] tensors, as fit_prior collects), not rows"
            )
        if isinstance(values, Tensor) or leaves == "logistic":
            context = None  # rows have no neighbours; logistic leaves have no groups
        s, grp, edges = self._fit_symbols(values, context, edges)  # groups None without context
        g = torch.Generator().manual_seed(seed)
        if max_items is not None and len(s) > max_items:
            keep = torch.randperm(len(s), generator=g)[:max_items].to(dev)
            s, grp = s[keep], None if grp is None else grp[keep]
        if warm_start:
            pc = self._require_fitted()
            idx = self._indices(s)[0]
            if isinstance(pc, GroupedHCLT):
                idx = pc.joint_index(grp, idx)
            hist = self._train(pc, idx, values, a, g, progress, [])
            if self.state_context is not None:  # the priors follow the refitted states
                self._state_roots = self._fit_state_roots(values, a)
            self._snap_leaves()
            self.update(force=True)
            return hist
        srt = s.sort(0).values  # per-channel order statistics (torch.quantile caps input size)
        lo = srt[math.floor(tail * (len(s) - 1))]
        hi = srt[math.ceil((1.0 - tail) * (len(s) - 1))]
        width = hi - lo + 1
        over = width > max_alphabet  # keep the central max_alphabet symbols around the median 0
        lo = torch.where(over, torch.clamp(lo, min=-(max_alphabet // 2)), lo)
        lo = torch.where(over, torch.minimum(lo, hi - max_alphabet + 1), lo)
        n = torch.minimum(hi - lo + 1, torch.full_like(hi, max_alphabet))
        self._offset = lo.to(torch.int32)
        self._cdf_length = n.to(torch.int32)
        self._quantized_cdf = torch.zeros(self.channels, 0, dtype=torch.int32, device=dev)
        self._state_roots = torch.zeros(0, 0, dtype=torch.int32, device=dev)
        v = int(n.max()) + 1
        self.pc = None  # num_symbols comes from the new circuit below
        rel = s - lo
        esc = (rel < 0) | (rel >= n)
        idx = torch.where(esc, torch.full_like(rel, v - 1), rel)
        if structure == "star":
            tree = star_tree(idx)
        else:
            tree = chow_liu_tree(pairwise_mutual_information(idx.cpu(), v, seed=seed))
        self._pc_schedule = torch.tensor(
            [SCHEDULE_CODES.index(context)], dtype=torch.long, device=dev
        )
        num_groups = 1
        if grp is None:
            self._leaf_edges = torch.zeros(0, dtype=torch.long, device=dev)
        else:
            assert edges is not None
            self._leaf_edges = edges.to(dev)
            num_groups = num_leaf_groups(context, self._leaf_edges)
        if grp is None or group_fit == "states-first":  # the groups, if any, come after EM
            pc = HCLT(tree, v, num_latents)
        else:
            pc = GroupedHCLT(tree, v, num_groups, num_latents)
            idx = pc.joint_index(grp, idx)
        pc.init_params(idx.cpu(), seed=seed)
        pc = pc.to(dev)
        hist = self._train(pc, idx, values, a, g, progress, [])
        if grp is not None and not isinstance(pc, GroupedHCLT):  # states-first: now the groups
            pc = GroupedHCLT.from_hclt(pc, num_groups)
            idx = pc.joint_index(grp, idx)
            self._back_off_groups(pc, idx, a)
            if a["group_epochs"]:  # then states and groups together, backed off again
                grouped = a | {"epochs": 0, "full_batch_epochs": a["group_epochs"]}
                self._train(pc, idx, values, grouped, g, progress, hist)
        if leaves == "logistic":  # EM first, then smooth leaves refined by Adam
            pc = DiscretizedLogisticTree.from_hclt(pc, lo, n)
            self._train(pc, idx, values, a, g, progress, hist)
        self.pc = pc
        if state_context is not None and isinstance(pc, GroupedHCLT):
            self._state_roots = self._fit_state_roots(values, a)
        self._snap_leaves()
        self.update(force=True)
        return hist

    @torch.no_grad()
    def _fit_state_roots(self, values: Tensor | Sequence[Tensor], a: dict[str, Any]) -> Tensor:
        """The state context's priors [R, K] (integer weights) for latent maps ``values``.

        With the circuit fixed, each position's evidence per root state is known, so the priors
        are a mixture's weights: ``STATE_EM_ROUNDS`` EM rounds over all positions, each id's
        counts plus ``STATE_BACKOFF`` pseudo-counts of the root prior (a rare id codes as
        without the context). ``a["state_epochs"]`` full-batch EM epochs of the circuit under
        those priors (each position its own root prior; transitions and leaf groups, backed
        off again) come between, with new states, ids and priors after each. The ids come from
        states inferred in floating point; the coder infers them exactly
        (``IncrementalConditionals.root_states``), which can differ at a near tie: that costs
        a little rate, never correctness.
        """
        pc = self._require_fitted()
        assert isinstance(values, (list, tuple)) and self.schedule is not None
        maps = [self.symbols(y.to(self.quantiles.device)) for y in values]
        r, k = num_state_ids(self.schedule, pc.num_latents), pc.num_latents
        for epoch in range(a["state_epochs"] + 1):
            evidence, ids = [], []
            for sym in maps:
                m, _ = self._root_evidence(sym)
                evidence.append(m)
                ids.append(self._state_ids(m, sym.shape[0], *sym.shape[-2:]).reshape(-1))
            m, idx = torch.cat(evidence).double(), torch.cat(ids)
            root = pc.log_root().detach().double().exp()
            log_prior = root.log().expand(r, k)
            for _ in range(STATE_EM_ROUNDS):
                post = torch.softmax(log_prior[idx] + m, -1)
                counts = torch.zeros(r, k, dtype=torch.float64, device=m.device)
                prior = counts.index_add_(0, idx, post) + STATE_BACKOFF * root
                prior = prior / prior.sum(-1, keepdim=True)
                log_prior = prior.log()
            if epoch == a["state_epochs"]:
                break
            del m, evidence
            rows = torch.cat([self._leaf_indices(sym)[0] for sym in maps])
            dt = pc.root_logits.dtype
            with torch.enable_grad():  # the counts are gradients (``em_step_counts``)
                stats = expected_counts(pc, rows, log_root=log_prior[idx].to(dt))
            em_update(pc.transition_logits, stats[1], 1.0, a["pseudocount"])
            pc.back_off(stats[2], a["group_backoff"], a["pseudocount"])
        return quantize_probs(prior).to(torch.int32)

    def _leaf_indices(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``_indices`` of every position of symbol maps s [B, C, H, W] ([B*H*W, C] rows), each
        leaf index in its group's table for a grouped circuit (the circuit's symbols)."""
        pc = self._require_fitted()
        idx, rel, esc = self._indices(position_rows(s))
        if isinstance(pc, GroupedHCLT):  # each leaf read in its group's table
            idx = pc.joint_index(position_rows(self._groups(s)), idx)
        return idx, rel, esc

    def _root_evidence(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """Per position of symbol maps s [B, C, H, W]: log p(its symbols | root state) [B*H*W, K]
        in nats (each leaf in its group's table) and the escapes' bypass bits [B*H*W]."""
        pc = self._require_fitted()
        c = s.shape[1]
        idx, rel, esc = self._leaf_indices(s)
        leaf = pc.log_emissions().transpose(1, 2)[
            torch.arange(c, device=idx.device), idx
        ]  # [N, C, K]
        m = pc.upward(leaf, keep=True)[1][0][0]  # the root's inside values, before its prior
        bits = torch.where(esc, escape_bits(rel, self._cdf_length.long()), 0.0).sum(-1)
        return m, bits

    def _state_ids(self, m: Tensor, b: int, h: int, w: int) -> Tensor:
        """State-context ids [B, H, W] from root evidence m [B*H*W, K]: each position's most
        probable state under the root prior (floating point), then ``state_ids`` pass by pass."""
        pc = self._require_fitted()
        states = (m + pc.log_root().detach()).argmax(-1).view(b, h, w)
        ids = torch.zeros(b, h, w, dtype=torch.long, device=m.device)
        for mask, lattice in pass_masks(h, w, self.schedule, m.device):
            ids[:, mask] = state_ids(states, self.schedule, lattice, pc.num_latents)[:, mask]
        return ids

    def _fit_symbols(
        self, values: Tensor | Sequence[Tensor], context: str | None, edges: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Symbols [N, C] of every position of ``values`` (rows or maps) and, with a context,
        their leaf groups [N, C] (computed on each map, so neighbours stay within an image) and
        the bin edges used (``edges``; None: per channel from the maps, ``channel_edges``)."""
        c = self.channels
        if isinstance(values, Tensor):  # rows carry no neighbours: one pass, whatever context says
            if values.dim() != 2 or values.shape[1] != c:
                raise InputError(f"values must have shape [N, {c}], got {tuple(values.shape)}")
            if len(values) == 0:
                raise InputError("values is empty: no latent positions to fit on")
            dev = self.quantiles.device
            return self.symbols(values.to(dev).T[None, :, :, None])[0, :, :, 0].T, None, edges
        if not isinstance(values, (list, tuple)) or not values:
            raise InputError(
                f"values must be a torch.Tensor [N, {c}] or a non-empty list of latent maps "
                f"[B, {c}, H, W], got {type(values).__name__}"
            )
        for i, y in enumerate(values):
            if not isinstance(y, Tensor):
                raise InputError(
                    f"values[{i}] must be a latent map tensor [B, {c}, H, W], got {type(y).__name__}"
                )
        maps = [self.symbols(y.to(self.quantiles.device)) for y in values]  # checks the shapes
        s = torch.cat([position_rows(sym) for sym in maps])
        if len(s) == 0:
            raise InputError("values hold no latent positions to fit on")
        if context is None:
            return s, None, edges
        if edges is None:  # per-channel edges from these maps
            edges = channel_edges(maps).to(self.quantiles.device)
        groups = [position_rows(leaf_groups(sym, context, edges)) for sym in maps]
        return s, torch.cat(groups), edges

    def _train(
        self,
        pc: HCLT | DiscretizedLogisticTree,
        idx: Tensor,
        values: Tensor | Sequence[Tensor],
        a: dict[str, Any],
        g: torch.Generator,
        progress: bool,
        hist: list[dict],
    ) -> list[dict]:
        """Train ``pc`` from its current parameters with the fit settings ``a``: EM on leaf
        indices ``idx`` (categorical leaves) or Adam on noisy ``values`` (logistic leaves; rows,
        or maps turned into rows here). Appends its records to ``hist`` and returns it."""
        if isinstance(pc, HCLT):
            hist += fit_em(
                pc,
                idx,
                epochs=a["epochs"],
                batch_size=a["batch_size"],
                full_batch_epochs=a["full_batch_epochs"],
                step_size=a["step_size"],
                pseudocount=a["pseudocount"],
                leaf_smoothing=0.0,  # chosen for images' grey levels, not latent symbols
                seed=a["seed"],
                progress=progress,
            )
            if isinstance(pc, GroupedHCLT):
                self._back_off_groups(pc, idx, a)
        else:
            dev = self.quantiles.device
            if not isinstance(values, Tensor):
                values = torch.cat([position_rows(y.detach()) for y in values])
            u = values.to(dev) - self._medians()
            opt = torch.optim.Adam(pc.parameters(), lr=a["lr"])
            for _step in range(a["finetune_steps"]):
                rows = u[torch.randint(len(u), (a["batch_size"],), generator=g).to(dev)]
                rows = rows + (torch.rand(rows.shape, generator=g, dtype=rows.dtype) - 0.5).to(dev)
                loss = -pc.log_prob_values(rows).mean() / (self.channels * LN2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if a["finetune_steps"]:  # no steps: no fine-tuning record (and no loss to report)
                hist.append(
                    {
                        "epoch": len(hist) + 1,
                        "mode": "adam-logistic",
                        "train_bpd": float(loss.detach()),
                    }
                )
        return hist

    @staticmethod
    def _back_off_groups(pc: GroupedHCLT, idx: Tensor, a: dict[str, Any]) -> None:
        """Leaf groups from one full-batch count pass, sparse ones backed off to their leaf."""
        pc.back_off(expected_counts(pc, idx)[2], a["group_backoff"], a["pseudocount"])

    # -- CompressAI interface -------------------------------------------------------------------
    def update(self, force: bool = False, update_quantiles: bool = False) -> bool:
        """Write the circuit's integer coding tables into the buffers; False if present and not forced."""
        if self._pc_root.numel() > 0 and not force:
            return False
        self._set_tables(self._compute_tables())  # update() is where tables follow the parameters
        with torch.no_grad():  # quantiles describe the coded support, as in CompressAI
            m = self._medians()
            self.quantiles[:, 0, 0] = m + self._offset.to(m.dtype) - 0.5
            self.quantiles[:, 0, 2] = m + (self._offset + self._cdf_length).to(m.dtype) - 0.5
        return True

    def loss(self) -> Tensor:
        """Aux loss: L1 distance of the outer quantiles from the alphabet's edges (0 once in sync).

        The circuit needs no auxiliary training; the loss keeps ``quantiles`` (which CompressAI
        aux optimizers train) describing the directly coded support. Medians are left alone.
        """
        if self._offset.numel() == 0:
            return (
                (self.quantiles[:, 0, [0, 2]] - self.quantiles[:, 0, [0, 2]].detach()).abs().sum()
            )
        m = self._medians()
        target = torch.stack(
            [m + self._offset - 0.5, m + self._offset + self._cdf_length - 0.5], -1
        )
        return (self.quantiles[:, 0, [0, 2]] - target).abs().sum()

    def log_likelihood(self, s: Tensor) -> Tensor:
        """Code length model: log p of each position's symbols s [B, C, H, W] in nats, [B, H, W]."""
        pc = self._require_fitted()
        self._check_latent(s)
        b, _c, h, w = s.shape
        m, bits = self._root_evidence(s)
        if self.state_context is None:
            log_root = pc.log_root()
        else:  # each position's prior by its state-context id
            roots = self._state_roots.to(m.device, torch.float64)
            log_rows = (roots / roots.sum(-1, keepdim=True)).log().to(m.dtype)
            log_root = log_rows[self._state_ids(m.detach(), b, h, w).reshape(-1)]
        logp = torch.logsumexp(m + log_root, -1)
        return (logp - bits.to(logp.dtype) * LN2).view(b, h, w)

    def forward(self, x: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        """(x_hat, likelihoods [B, C, H, W]); the product over channels is p(position)."""
        if training is None:
            training = self.training
        self._check_latent(x)  # before the medians broadcast against a wrong shape
        med = self._medians().view(1, -1, 1, 1).to(x.dtype)
        rounded = torch.round(x - med) + med
        if not training:
            out = rounded
        elif self.quantization == "noise":
            out = x + torch.empty_like(x).uniform_(-0.5, 0.5)
        else:
            out = x + (rounded - x).detach()
        if training and isinstance(
            self.pc, DiscretizedLogisticTree
        ):  # smooth in x: the rate trains g_a
            b, c, h, w = out.shape
            u = (out - med).permute(0, 2, 3, 1).reshape(-1, c)
            logp = self.pc.log_prob_values(u).view(b, h, w)
        else:
            logp = self.log_likelihood(self.symbols(out))
        lik = torch.exp(logp / self.channels)[:, None].expand(-1, self.channels, -1, -1)
        return out, lik.to(x.dtype)

    def compress(self, x: Tensor) -> list[bytes]:
        """One bitstream per batch item for the latent x [B, C, H, W] (none for an empty batch)."""
        self._require_tables()  # NotFittedError before any check of x
        return self._encode_symbols(self.symbols(x))

    def _pass_roots(self, states: Tensor, mask: Tensor, lattice: str | None) -> Tensor | None:
        """The coder's root weights [B*n, K] of one pass's positions, by their state-context ids
        (from the exact states of earlier passes), or None without a state context."""
        if self.state_context is None:
            return None
        k = self._state_roots.shape[1]
        ids = state_ids(states, self.schedule, lattice, k)[:, mask].reshape(-1)
        return self._state_roots.to(ids.device)[ids].double()

    def _pass_condition(
        self, k: int, mask: Tensor, lattice: str | None, symbols: Tensor, states: Tensor, side: Any
    ) -> PassCondition:
        """A later pass's leaf groups (from its channel's decoded neighbours) and root weights
        (from the decoded neighbours' states); nothing without a context."""
        groups = None
        if self._pc_emit.dim() == 4:  # the groups of this pass read only earlier passes
            groups = pass_rows(pass_groups(symbols, self.schedule, lattice, self._leaf_edges), mask)
        return PassCondition(groups, self._pass_roots(states, mask, lattice))

    def _passes(self, h: int, w: int, device: torch.device) -> list[tuple[Tensor, str | None]]:
        return pass_masks(h, w, self.schedule, device)

    def _alphabet(self, channels: int) -> tuple[Tensor, np.ndarray]:
        return self._offset.long(), self._cdf_length.cpu().numpy().astype(np.int64)

    def decompress(self, strings: list[bytes], size: tuple[int, ...] | torch.Size) -> Tensor:
        """Decode ``compress``'s strings into the dequantized latent [B, C, H, W].

        The latent has the dtype of the module's medians (``quantiles``), as CompressAI's
        ``EntropyBottleneck.decompress`` returns, so a ``.half()`` or ``.double()`` codec gets its
        own dtype. ``size`` is the latent's (H, W): two positive integers (a ``torch.Size`` too).
        """
        if not isinstance(strings, (list, tuple)):
            raise InputError(f"strings must be a list of bytes, got {type(strings).__name__}")
        size = _check_size(size)
        self._require_tables()  # NotFittedError before the strings are read
        s = self._decode_symbols(strings, size, self.channels)
        b, c, (h, w) = len(s), self.channels, size
        med = self._medians()
        # Fresh standard-stride output: convolutions pick kernels by stride, and a channels-last
        # view (even of 1x1 latents) would make the synthesis differ from the forward pass.
        out = torch.empty(b, c, h, w, dtype=med.dtype, device=self._offset.device)
        out.copy_(s)
        return out.add_(med.to(out.device).view(1, -1, 1, 1))
