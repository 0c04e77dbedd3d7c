"""Checkerboard contexts for ``PCConditional``: later positions of the latent see earlier ones.

The latent positions are split like a checkerboard (He et al., "Checkerboard Context Model for
Efficient Learned Image Compression", CVPR 2021): *anchors* (row + column even) are coded first
with the hyper-decoder's scales alone; every other position (*non-anchor*) has its four spatial
neighbours among the anchors, so once they are decoded it can use them. Decoding stays parallel:
two passes over the channels instead of one, each batched over all positions of all images.

The anchors form a checkerboard of their own, turned by 45 degrees: the ``"diagonal"`` lattice
splits them into the (even, even) quarter, coded first, and the (odd, odd) quarter, whose four
diagonal neighbours are in the first. ``PCConditional``'s ``"three-pass"`` context uses both: the
(even, even) quarter alone, then the (odd, odd) quarter given its diagonal neighbours, then the
non-anchor half given its four neighbours (``"cross"`` lattice, as with two passes).
``PCEntropyBottleneck``'s ``"four-pass"`` schedule also splits the non-anchors: those of even
rows given their four neighbours (``"cross-even-rows"``), then those of odd rows, whose eight
neighbours (row, column and diagonal) are all decoded by then (``"eight"``).

What a later position (a *target* of the lattice) uses, per channel c:

- its scale-table index ``s`` shifted by an integer ``Δ = shift[c, a, b]``, where ``a`` bins the
  neighbours' activity in channel c (mean of ``|u| / σ`` over the 4 neighbours) and ``b`` the
  activity over all channels (the same mean over every channel): busy neighbourhoods widen the
  distribution, flat ones narrow it, beyond what the hyperprior (at a quarter of the resolution)
  knows;
- an integer mean ``m = round(coef[c] · mean of the neighbours' symbols)``; the symbol coded is
  ``u - m``, so the reconstruction ``round(y)`` is unchanged (the frozen codec decodes the same
  image).

``PCEntropyBottleneck`` reads two contexts from a later pass's decoded lattice neighbours: per
channel, the magnitude bin and sign of the same channel's neighbours (``neighbour_bins``, its
leaf groups), and per position, the neighbours' most common latent state and how many share it
(``state_ids``, its state context).

Everything the decoder computes from decoded data is integer arithmetic on int64 (fixed-point
``1/σ`` per scale index, integer thresholds, floor divisions), so encoder and decoder agree bit
for bit on every device and thread count. ``fit`` chooses ``coef`` and ``shift`` by exhaustive
search over integer candidates, minimizing the discretized-Gaussian code length on training maps.

Invariants of a ``CheckerboardContext``'s buffers, which ``fit`` keeps and loading checks
(``CheckerboardContext.state_problem``) before anything is copied, so that a corrupted or forged
state dict fails ``load_state_dict`` naming the buffer (``load_codec``: ``CheckpointError``)
instead of indexing out of range in ``compress``:

- every buffer is an integer tensor; ``coef`` [C] with 1 <= C <= ``MAX_CHANNELS``, ``inv_scale``
  [S], ``channel_edges`` [E], ``total_edges`` [F] and ``shift`` [C, A, B] with A > E and B > F
  (a bin index is at most the number of edges; ``fit`` keeps A - 1 and B - 1 edges, fewer where
  the training maps have too few non-zero activities to place them);
- ``0 <= inv_scale <= MAX_INV_SCALE`` (σ >= 2**-16), edges non-decreasing in ``0 .. MAX_EDGE``,
  ``|coef| <= MAX_COEF`` and ``|shift| <= S - 1`` (a larger shift only reaches the ends of the
  scale table, where ``apply`` clamps it). With ``SYMBOL_CLIP`` these bounds keep every sum and
  product of ``apply`` below 2**63;
- inside an entropy model (keys ``<owner>.context.*`` and ``<owner>.anchor_context.*``, as
  ``PCConditional`` saves them) C is the circuit's channel count (``<owner>._pc_parent``), S the
  length of its ``<owner>.scale_table`` (the indexes ``apply`` reads and shifts are the table's),
  and an ``anchor_context`` comes only with a ``context`` (its passes decode with both). A child
  module sees only its own keys, so the owner checks these (``CheckerboardContext.check_owner_state``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import tensor_problem
from ..coding import lowest_argmax
from ..continuous import gaussian_bits
from ..errors import InputError
from .base import resize_buffers

__all__ = [
    "CONTEXT_BUFFERS",
    "LATTICES",
    "MAGNITUDE_EDGES",
    "MAX_CHANNELS",
    "MAX_COEF",
    "MAX_EDGE",
    "MAX_INV_SCALE",
    "SCHEDULES",
    "CheckerboardContext",
    "anchor_mask",
    "apply_contexts",
    "channel_edges",
    "lattice_masks",
    "leaf_groups",
    "neighbour_bins",
    "num_leaf_groups",
    "num_state_ids",
    "pass_groups",
    "pass_masks",
    "rounded_mean",
    "state_ids",
]

FRAC_BITS = 16  # fixed point of 1/σ and of the activity thresholds
COEF_BITS = 12  # fixed point of the mean coefficients
LUT_SIZE = 1024  # code lengths of |u - m| >= this are taken as this one's while fitting
SYMBOL_CLIP = 4096  # |u| used by the features is clipped here (keeps every sum far below 2**63)
#: The lattices ``lattice_masks`` knows: which positions a pass codes after which.
LATTICES = ("cross", "diagonal", "cross-even-rows", "eight")
#: ``inv_scale = round(2**16 / σ)`` for σ >= 2**-16: ``|u|·inv_scale <= 2**44``
MAX_INV_SCALE = 2**32
MAX_EDGE = SYMBOL_CLIP * MAX_INV_SCALE  #: no neighbour's activity (Q16) exceeds this: 2**44
MAX_COEF = SYMBOL_CLIP << COEF_BITS  #: ``|coef| <= 4096`` (Q12): means within ``SYMBOL_CLIP**2``
MAX_CHANNELS = 2**15  #: 8 neighbours x C channels x 2**44 activity stays below 2**63
#: The buffers of a ``CheckerboardContext`` (its fitted integer parameters), saved in state dicts.
CONTEXT_BUFFERS = ("inv_scale", "channel_edges", "total_edges", "coef", "shift")
_FIX = (
    "; the state dict is corrupted or was not written by pc-prior: re-save the model with "
    "save_codec where it was fitted"
)


def anchor_mask(h: int, w: int, device: torch.device | str = "cpu") -> Tensor:
    """[H, W] bool, True where row + column is even (coded first): the cross lattice's sources."""
    return lattice_masks(h, w, "cross", device)[0]


def lattice_masks(
    h: int, w: int, lattice: str = "cross", device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """[H, W] bool masks (sources, targets) of a lattice: targets are coded after the sources.

    ``"cross"``: the anchors (row + column even), then the rest. ``"diagonal"``: the (even, even)
    quarter, then the (odd, odd) quarter (the two halves of the anchors). ``"cross-even-rows"``:
    the anchors, then the non-anchors of even rows (their four row and column neighbours are
    anchors). ``"eight"``: everything but the non-anchors of odd rows, then those, whose eight
    neighbours (row, column and diagonal) are all sources.
    """
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    anchors = (i + j) % 2 == 0
    if lattice == "cross":
        return anchors, ~anchors
    if lattice == "diagonal":
        return (i % 2 == 0) & (j % 2 == 0), (i % 2 == 1) & (j % 2 == 1)
    if lattice == "cross-even-rows":
        return anchors, ~anchors & (i % 2 == 0)
    if lattice == "eight":
        targets = ~anchors & (i % 2 == 1)
        return ~targets, targets
    raise ValueError(f"lattice must be one of {LATTICES}, got {lattice!r}")


SCHEDULES: dict[str | None, tuple[str, ...]] = {
    None: (),
    "checkerboard": ("cross",),
    "three-pass": ("diagonal", "cross"),
    "four-pass": ("diagonal", "cross-even-rows", "eight"),
}
"""The lattices of each coding schedule's later passes, in order (None: one pass, no context).
The first pass codes what no lattice targets: everything, the anchors, or the (even, even)
quarter. ``pass_masks`` turns a schedule into position masks; both entropy models use it.
The keys' order is saved (``PCEntropyBottleneck``'s ``_pc_schedule`` is an index into it):
append new schedules, never reorder."""

MAGNITUDE_EDGES = (1, 2, 3, 4, 6, 9, 14)
"""Bin edges of a channel's neighbour activity ``Σ|u|`` over its 4 decoded lattice neighbours
(``neighbour_bins``): 0 | 1 | 2 | 3 | 4-5 | 6-8 | 9-13 | 14+."""


def pass_masks(
    h: int, w: int, schedule: str | None, device: torch.device | str = "cpu"
) -> list[tuple[Tensor, str | None]]:
    """(positions [H, W] bool, lattice of their context) of each non-empty pass of a schedule.

    The first pass has no context (lattice None); a later pass's positions are its lattice's
    targets, whose neighbours on that lattice are all coded in earlier passes.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {tuple(SCHEDULES)}, got {schedule!r}")
    first = torch.ones(h, w, dtype=torch.bool, device=device)
    passes: list[tuple[Tensor, str | None]] = []
    for lattice in SCHEDULES[schedule]:
        targets = lattice_masks(h, w, lattice, device)[1]
        first &= ~targets
        passes.append((targets, lattice))
    return [(m, lat) for m, lat in [(first, None), *passes] if m.any()]


def _num_edges(edges: Tensor | tuple[int, ...]) -> int:
    return int(edges.shape[-1]) if isinstance(edges, Tensor) else len(edges)


def num_leaf_groups(schedule: str | None, edges: Tensor | tuple[int, ...] = MAGNITUDE_EDGES) -> int:
    """G, the leaf groups of a schedule: 1 for the first pass, ``2E + 1`` per lattice (E edges)."""
    return 1 + len(SCHEDULES[schedule]) * (2 * _num_edges(edges) + 1)


def channel_edges(symbols: list[Tensor], num_edges: int = len(MAGNITUDE_EDGES)) -> Tensor:
    """Per-channel bin edges [C, E] of the neighbour activity ``Σ|u|``: the quantiles
    ``1/(E+1) .. E/(E+1)`` of its non-zero values over the cross lattice of training symbol maps
    [B, C, H, W], rounded up, at least 1 and non-decreasing (a busy channel gets wider bins)."""
    c = symbols[0].shape[1]
    mags = [
        _neighbour_sum(s.long().clamp(-SYMBOL_CLIP, SYMBOL_CLIP).abs(), "cross")
        .transpose(0, 1)
        .reshape(c, -1)
        for s in symbols
    ]
    mag = torch.cat(mags, 1).double()
    levels = torch.arange(1, num_edges + 1, dtype=torch.float64) / (num_edges + 1)
    edges = torch.ones(c, num_edges, dtype=torch.long)
    for ch in range(c):  # per channel: its own non-zero activities (a few thousand values each)
        nz = mag[ch][mag[ch] > 0]
        if len(nz):
            nz = nz[:: max(1, len(nz) // 200_000)]
            edges[ch] = torch.ceil(torch.quantile(nz, levels)).long().clamp_min(1)
    return torch.cummax(edges, 1).values


def neighbour_bins(symbols: Tensor, lattice: str, edges: Tensor) -> Tensor:
    """Per-channel context ids [B, C, H, W] in ``0 .. 2·len(edges)`` from the lattice's sources.

    ``b`` bins ``Σ|u|`` over the 4 neighbours on the lattice (its sources only; zero outside
    the map) by ``edges``; the id is 0 when ``b = 0``, else ``2b - 1 + [Σu > 0]``: how busy the
    same channel is around the position, and which sign dominates. The ``"eight"`` lattice sums
    8 neighbours against twice the edges (the edges are for 4). Integer arithmetic only.
    """
    h, w = symbols.shape[-2:]
    sources = lattice_masks(h, w, lattice, symbols.device)[0]
    u = symbols.long().clamp(-SYMBOL_CLIP, SYMBOL_CLIP) * sources
    mag = _neighbour_sum(u.abs(), lattice)
    e = edges.to(u.device) * (2 if lattice == "eight" else 1)
    e = e if e.dim() == 1 else e[:, None, None, :]  # [E], or per channel [C, E]
    b = (mag[..., None] >= e).sum(-1)
    up = (_neighbour_sum(u, lattice) > 0).long()
    return torch.where(b == 0, torch.zeros_like(b), 2 * b - 1 + up)


def pass_groups(
    symbols: Tensor, schedule: str | None, lattice: str | None, edges: Tensor
) -> Tensor:
    """Leaf groups [B, C, H, W] of the pass whose context is on ``lattice`` (meaningful at its
    positions): 0 for the first pass (None); for the j-th later pass ``1 + j·(2E + 1)`` plus
    ``neighbour_bins`` on its lattice, which reads only positions coded in earlier passes."""
    if lattice is None:
        return torch.zeros(symbols.shape, dtype=torch.long, device=symbols.device)
    j = SCHEDULES[schedule].index(lattice)
    return 1 + j * (2 * _num_edges(edges) + 1) + neighbour_bins(symbols, lattice, edges)


def leaf_groups(symbols: Tensor, schedule: str | None, edges: Tensor) -> Tensor:
    """Leaf group [B, C, H, W] of every position under a schedule (``GroupedHCLT``'s groups):
    each pass's ``pass_groups`` at its positions. The decoder computes the same groups pass by
    pass from what it has decoded."""
    h, w = symbols.shape[-2:]
    groups = torch.zeros(symbols.shape, dtype=torch.long, device=symbols.device)
    for mask, lattice in pass_masks(h, w, schedule, symbols.device):
        if lattice is not None:
            groups = torch.where(mask, pass_groups(symbols, schedule, lattice, edges), groups)
    return groups


STATE_COUNTS = 4
"""How many of a position's decoded lattice neighbours share the most common latent state is
binned as 1, 2, 3 or 4+ (``state_ids``); the eight-neighbour lattice saturates at 4 too."""


def num_state_ids(schedule: str | None, num_states: int) -> int:
    """R, the state-context ids of a schedule (``state_ids``): per pass ``1 + 4K`` (K states)."""
    return (1 + len(SCHEDULES[schedule])) * (1 + STATE_COUNTS * num_states)


def state_ids(states: Tensor, schedule: str | None, lattice: str | None, num_states: int) -> Tensor:
    """State-context ids [B, H, W] of the pass whose context is on ``lattice``, from the latent
    states [B, H, W] (``0 .. K-1``) of the positions coded in earlier passes.

    The id names the pass and the most common state among the position's decoded lattice
    neighbours (ties: the lowest state) with how many of them share it (``STATE_COUNTS`` bins),
    or none at all (the map's border, and the first pass): ``p·(1 + 4K) + 1 + 4·state + count - 1``.
    It reads only the lattice's sources, so the decoder computes the same ids pass by pass; the
    states of other positions may hold anything. Integer arithmetic only (counts of one-hots).
    """
    b, h, w = states.shape
    per_pass = 1 + STATE_COUNTS * num_states
    if lattice is None:
        return torch.zeros(b, h, w, dtype=torch.long, device=states.device)
    j = 1 + SCHEDULES[schedule].index(lattice)
    sources = lattice_masks(h, w, lattice, states.device)[0]
    onehot = F.one_hot(states.long().clamp(0, num_states - 1), num_states).permute(0, 3, 1, 2)
    counts = _neighbour_sum(onehot * sources, lattice)  # [B, K, H, W]
    mode = lowest_argmax(counts, 1)  # ties to the lowest state, whatever the device
    top = counts.gather(1, mode[:, None]).squeeze(1)
    ids = 1 + STATE_COUNTS * mode + top.clamp(1, STATE_COUNTS) - 1
    return j * per_pass + torch.where(top > 0, ids, torch.zeros_like(ids))


def _neighbour_sum(x: Tensor, lattice: str = "cross") -> Tensor:
    """Sum of the lattice neighbours (zero outside the map) of [B, C, H, W]: the 4 diagonal ones
    (``"diagonal"``), all 8 (``"eight"``), else the 4 row and column neighbours."""
    p = F.pad(x, (1, 1, 1, 1))
    diagonal = p[..., :-2, :-2] + p[..., 2:, 2:] + p[..., 2:, :-2] + p[..., :-2, 2:]
    if lattice == "diagonal":
        return diagonal
    cross = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    return cross + diagonal if lattice == "eight" else cross


def rounded_mean(coef: Tensor, usum: Tensor, count: Tensor) -> Tensor:
    """``round(coef · usum / count)`` exactly in int64, half up: ``coef`` in Q12 (``COEF_BITS``)."""
    den = count.clamp_min(1) << COEF_BITS
    return torch.div(2 * coef * usum + den, 2 * den, rounding_mode="floor")


_SHAPES = {
    "inv_scale": "[S]",
    "channel_edges": "[E]",
    "total_edges": "[F]",
    "coef": "[C]",
    "shift": "[C, A, B]",
}


def _buffer_problem(key: str, t: Any) -> str | None:
    """Why ``t`` (the state-dict entry ``key``, a context buffer by its last component) is not an
    integer tensor (``pc_prior._checks.tensor_problem``) of that buffer's rank (``_SHAPES``), or
    None."""
    shape = _SHAPES[key.rpartition(".")[2]]
    problem = tensor_problem(key, t, "integer", shape)
    if problem is not None:
        return problem
    if t.dim() != shape.count(",") + 1:
        return f"{key} must have shape {shape}, got {tuple(t.shape)}"
    return None


class CheckerboardContext(nn.Module):
    """Integer scale-index shifts and means for a lattice's target positions, from decoded sources.

    ``lattice`` is ``"cross"`` (sources: the anchors; targets: the non-anchors) or ``"diagonal"``
    (sources: the (even, even) quarter; targets: the (odd, odd) quarter). Buffers (saved with the
    model): ``inv_scale`` [S] (1/σ per index, Q16), ``channel_edges`` [A-1] and ``total_edges``
    [B-1] (activity bin edges, Q16; fewer where ``fit`` finds too few activities), ``coef`` [C]
    (Q12), ``shift`` [C, A, B] (int); loading checks them (``state_problem``, the module
    docstring's invariants). ``__call__``/``apply`` maps
    (source symbols, indexes) to the targets' (indexes, means); see the module docstring. The
    lattice is not a buffer: its owner knows it.
    """

    def __init__(
        self,
        channels: int,
        scale_table: Tensor,
        channel_bins: int = 8,
        total_bins: int = 8,
        lattice: str = "cross",
    ) -> None:
        super().__init__()
        if channels < 1 or channel_bins < 1 or total_bins < 1:
            raise ValueError("channels and bin counts must be positive")
        if channels > MAX_CHANNELS:
            raise InputError(
                f"a CheckerboardContext serves at most {MAX_CHANNELS} channels (its integer "
                f"activity sums stay below 2**63), got {channels}"
            )
        if lattice not in LATTICES:
            raise ValueError(f"lattice must be one of {LATTICES}, got {lattice!r}")
        if (
            not isinstance(scale_table, Tensor)
            or scale_table.dim() != 1
            or len(scale_table) == 0
            or not torch.isfinite(scale_table).all()
            or float(scale_table.min()) < 2.0**FRAC_BITS / MAX_INV_SCALE
        ):
            raise InputError(
                "scale_table must be a non-empty 1-D tensor of finite scales >= "
                f"{2.0**FRAC_BITS / MAX_INV_SCALE:g} (1/σ is Q{FRAC_BITS} fixed point, at most "
                f"{MAX_INV_SCALE}): use CompressAI's get_scale_table() or one like it"
            )
        self.lattice = lattice
        self.register_buffer("inv_scale", torch.round(2.0**FRAC_BITS / scale_table.double()).long())
        self.register_buffer("channel_edges", torch.zeros(channel_bins - 1, dtype=torch.long))
        self.register_buffer("total_edges", torch.zeros(total_bins - 1, dtype=torch.long))
        self.register_buffer("coef", torch.zeros(channels, dtype=torch.long))
        self.register_buffer(
            "shift", torch.zeros(channels, channel_bins, total_bins, dtype=torch.long)
        )

    @staticmethod
    def check_owner_state(state_dict: dict[str, Any], prefix: str, error_msgs: list[str]) -> bool:
        """Check the contexts in an entropy model's state dict against the model; True (and the
        problems appended to ``error_msgs``, each naming the buffer) if the load must stop.

        ``PCConditional`` saves its contexts as ``prefix + "context."`` (cross lattice) and
        ``prefix + "anchor_context."`` (diagonal lattice) beside its tree ``prefix + "_pc_parent"``
        and ``prefix + "scale_table"``, and builds a context from the ``coef`` and ``inv_scale``
        it finds, so these are checked before it does: a context has all its buffers, one
        ``coef`` per channel of the tree, one ``inv_scale`` per scale-table index (``apply`` reads
        ``inv_scale`` at the coded indexes and clamps shifted ones to its length, and the coding
        tables are as long as the scale table), and an ``anchor_context`` comes with a
        ``context`` (the last pass decodes with both). Each context checks the rest of its
        buffers when it loads (``state_problem``): a child module sees only its own keys.
        """
        parent, table = (
            state_dict.get(prefix + "_pc_parent"),
            state_dict.get(prefix + "scale_table"),
        )
        channels = parent.numel() if isinstance(parent, Tensor) else 0  # 0: no circuit to match
        scales = table.numel() if isinstance(table, Tensor) else 0
        problems = []
        for attr in ("context", "anchor_context"):
            at = f"{prefix}{attr}."
            present = [n for n in CONTEXT_BUFFERS if at + n in state_dict]
            if not present:
                continue
            if len(present) < len(CONTEXT_BUFFERS):
                missing = [at + n for n in CONTEXT_BUFFERS if n not in present]
                problems.append(f"{prefix}{attr} lacks {', '.join(missing)}")
                continue
            coef, inv = state_dict[at + "coef"], state_dict[at + "inv_scale"]
            problem = _buffer_problem(at + "coef", coef) or _buffer_problem(at + "inv_scale", inv)
            if problem is None and not 1 <= len(coef) <= MAX_CHANNELS:
                problem = f"{at}coef has {len(coef)} entries, expected 1..{MAX_CHANNELS}"
            if problem is None and len(inv) == 0:
                problem = f"{at}inv_scale is empty, expected one entry per scale-table index"
            if problem is None and channels and len(coef) != channels:
                problem = (
                    f"{at}coef has {len(coef)} entries, the circuit ({prefix}_pc_parent) has "
                    f"{channels} channels: expected one per channel"
                )
            if problem is None and scales and len(inv) != scales:
                problem = (
                    f"{at}inv_scale has {len(inv)} entries, the scale table ({prefix}scale_table) "
                    f"{scales}: expected one per scale index"
                )
            if problem is not None:
                problems.append(problem)
        if (
            prefix + "anchor_context.coef" in state_dict
            and prefix + "context.coef" not in state_dict
        ):
            problems.append(
                f"{prefix}anchor_context comes without {prefix}context: the diagonal-lattice "
                "context is decoded only together with the cross-lattice one (three passes)"
            )
        error_msgs.extend(p + _FIX for p in problems)
        return bool(problems)

    @property
    def channels(self) -> int:
        """The number of channels the context is built for (one mean coefficient each)."""
        return self.coef.numel()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """Check the buffers (``state_problem``), then resize this module's to their shapes and
        copy them; a problem goes to ``error_msgs`` and nothing is copied, so ``load_state_dict``
        fails naming the buffer."""
        problem = self.state_problem(state_dict, prefix)
        if problem is not None:
            error_msgs.append(f"{problem}{_FIX}")
            return
        resize_buffers(self, state_dict, prefix, CONTEXT_BUFFERS)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def state_problem(self, state_dict: dict[str, Any], prefix: str = "") -> str | None:
        """What is wrong with the context buffers ``state_dict[prefix + name]`` (this module's own
        buffers stand in for absent ones), or None: each buffer's dtype, rank and range and
        ``shift``'s shape against ``coef`` and the edges (the module docstring's invariants). The
        message names the buffer (with ``prefix``). The owner checks the rest
        (``check_owner_state``): a child module sees only its own keys."""
        bufs = {n: state_dict.get(prefix + n, getattr(self, n)) for n in CONTEXT_BUFFERS}
        for name, t in bufs.items():
            problem = _buffer_problem(prefix + name, t)
            if problem is not None:
                return problem
        c, s = len(bufs["coef"]), len(bufs["inv_scale"])
        if not 1 <= c <= MAX_CHANNELS:
            return f"{prefix}coef has {c} entries, expected one per channel (1..{MAX_CHANNELS})"
        if s == 0:
            return f"{prefix}inv_scale is empty, expected one entry per scale-table index"
        shape, a, b = (
            tuple(bufs["shift"].shape),
            len(bufs["channel_edges"]),
            len(bufs["total_edges"]),
        )
        if shape[0] != c or shape[1] <= a or shape[2] <= b:
            return (
                f"{prefix}shift has shape {shape}, but {prefix}coef ({c} entries), "
                f"{prefix}channel_edges ({a}) and {prefix}total_edges ({b}) need [{c}, >= {a + 1}, "
                f">= {b + 1}]: one row per channel, a column for every bin of each"
            )
        ranges = {
            "inv_scale": (0, MAX_INV_SCALE),
            "channel_edges": (0, MAX_EDGE),
            "total_edges": (0, MAX_EDGE),
            "coef": (-MAX_COEF, MAX_COEF),
            "shift": (1 - s, s - 1),
        }
        for name, (lo, hi) in ranges.items():
            t = bufs[name]
            if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
                return (
                    f"{prefix}{name} has entries outside {lo}..{hi} (min {int(t.min())}, max "
                    f"{int(t.max())})"
                )
        for name in ("channel_edges", "total_edges"):
            if bool((bufs[name].diff() < 0).any()):
                return f"{prefix}{name} must be non-decreasing, got {bufs[name].tolist()}"
        return None

    # -- features (integer) ---------------------------------------------------------------------
    def neighbour_sums(self, symbols: Tensor, indexes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Integer sums over each position's source neighbours: activity ``Σ|u|/σ`` (Q16) and ``Σu``
        per channel [B, C, H, W], and the neighbour count [H, W]."""
        h, w = symbols.shape[-2:]
        dev = symbols.device
        sources, _ = lattice_masks(h, w, self.lattice, dev)
        u = symbols.long().clamp(-SYMBOL_CLIP, SYMBOL_CLIP) * sources
        act = u.abs() * self.inv_scale.to(dev)[indexes.long()] * sources
        count = _neighbour_sum(sources[None, None].long(), self.lattice)[0, 0]
        return _neighbour_sum(act, self.lattice), _neighbour_sum(u, self.lattice), count

    def bins(self, a_same: Tensor, a_all: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
        """Bin indexes of integer neighbour activities (per channel, over all channels) given the
        neighbour counts (broadcastable); an activity exactly on an edge goes to the upper bin."""
        cnt = count.clamp_min(1)
        ce, te = self.channel_edges.to(a_same.device), self.total_edges.to(a_same.device)
        a = (a_same[..., None] >= ce * cnt[..., None]).sum(-1)
        b = (a_all[..., None] >= te * (cnt[..., None] * self.channels)).sum(-1)
        return a, b

    def features(self, symbols: Tensor, indexes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Bins a, b, neighbour symbol sums and neighbour counts at every position.

        ``symbols`` / ``indexes`` [B, C, H, W] integer maps; only their anchor entries are read.
        Returns ``a`` [B, C, H, W], ``b`` [B, 1, H, W], ``usum`` [B, C, H, W], ``count`` [H, W]
        (int64; meaningful at the target positions).
        """
        a_same, usum, count = self.neighbour_sums(symbols, indexes)
        a, b = self.bins(a_same, a_same.sum(1, keepdim=True), count)
        return a, b, usum, count

    def apply(self, symbols: Tensor, indexes: Tensor) -> tuple[Tensor, Tensor]:
        """Indexes and integer means of every position given the sources: [B, C, H, W] each.

        Off the targets the indexes are returned unchanged and the means are 0; at the targets the
        index is ``clamp(s + shift[c, a, b])`` and the mean ``round(coef[c] · usum / count)``.
        """
        if (
            symbols.shape != indexes.shape
            or symbols.dim() != 4
            or symbols.shape[1] != self.channels
        ):
            raise ValueError(
                f"expected symbols and indexes of shape [B, {self.channels}, H, W], got "
                f"{tuple(symbols.shape)} and {tuple(indexes.shape)}"
            )
        dev = symbols.device
        h, w = symbols.shape[-2:]
        a, b, usum, count = self.features(symbols, indexes)
        chan = torch.arange(self.channels, device=dev)[None, :, None, None]
        delta = self.shift.to(dev)[chan, a, b.expand_as(a)]
        _, targets = lattice_masks(h, w, self.lattice, dev)
        s = indexes.long()
        s_new = torch.where(targets, (s + delta).clamp(0, len(self.inv_scale) - 1), s)
        means = rounded_mean(self.coef.to(dev)[None, :, None, None], usum, count) * targets
        return s_new, means

    forward = apply

    # -- fitting --------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(
        self,
        maps: list[tuple[Tensor, Tensor]],
        scale_table: Tensor,
        *,
        max_shift: int = 12,
        coef_grid: Tensor | None = None,
        shrink: float = 200.0,
        rounds: int = 2,
    ) -> dict:
        """Choose bin edges, ``coef`` and ``shift`` on training maps [(symbols, indexes)] ([B, C, H, W]).

        Edges: quantiles of the non-zero activities (channel: the zero bin plus quantiles; total:
        quantiles). ``coef`` per channel from ``coef_grid`` (default -2..2 in steps of 1/16; at
        most ``MAX_COEF / 2**COEF_BITS`` in magnitude) and ``shift`` per (channel, bin, bin) from
        ``-max_shift..max_shift`` (at most the scale table's length - 1: a larger shift reaches
        the same clamped index), alternating ``rounds`` times, each the exact minimizer of the
        Gaussian code length given the other. A cell's choice is shrunk towards its channel's
        (``shrink`` pseudo-elements) so sparse cells stay sensible. Returns the training bits of
        the targets before and after.
        """
        table = scale_table.double()
        if len(table) != len(self.inv_scale):
            raise ValueError(
                f"scale table has {len(table)} entries, the context {len(self.inv_scale)}"
            )
        if coef_grid is not None and (
            not isinstance(coef_grid, Tensor)
            or coef_grid.dim() != 1
            or len(coef_grid) == 0
            or not torch.isfinite(coef_grid.double()).all()
            or float(coef_grid.double().abs().max()) > MAX_COEF / 2**COEF_BITS
        ):
            raise InputError(
                "coef_grid must be a non-empty 1-D tensor of finite coefficients in "
                f"-{MAX_COEF // 2**COEF_BITS}..{MAX_COEF // 2**COEF_BITS}"
            )
        na, nb = self.shift.shape[1:]
        rows: dict[str, list[Tensor]] = {
            k: [] for k in ("u", "s", "a_same", "a_all", "usum", "cnt", "ch")
        }
        for sym, idx in maps:
            sym, idx = sym.long().cpu(), idx.long().cpu()
            if sym.dim() != 4 or sym.shape != idx.shape or sym.shape[1] != self.channels:
                raise ValueError(
                    f"training maps must be [B, {self.channels}, H, W] pairs, got {tuple(sym.shape)}"
                )
            a_same, usum, count = self.neighbour_sums(sym, idx)  # the integer sums features() bins
            sel = lattice_masks(*sym.shape[-2:], self.lattice)[1] & (count > 0)
            per = lambda t, sel=sel: t.permute(0, 2, 3, 1)[:, sel].reshape(-1)  # noqa: E731  [B*n*C]
            rows["u"].append(per(sym))
            rows["s"].append(per(idx))
            rows["a_same"].append(per(a_same))
            rows["a_all"].append(per(a_same.sum(1, keepdim=True).expand_as(a_same)))
            rows["usum"].append(per(usum))
            rows["cnt"].append(per(count.expand_as(sym)))
            rows["ch"].append(per(torch.arange(self.channels)[None, :, None, None].expand_as(sym)))
        d = {k: torch.cat(v) for k, v in rows.items()}
        if len(d["u"]) == 0:
            raise ValueError(
                f"no target positions of the {self.lattice} lattice in the training maps"
            )
        cnt = d["cnt"]
        g = torch.Generator().manual_seed(0)
        act_ch = d["a_same"].double() / (cnt * 2.0**FRAC_BITS)  # mean |u|/σ of the neighbours
        act_all = d["a_all"].double() / (cnt * self.channels * 2.0**FRAC_BITS)
        nz = act_ch[act_ch > 0]
        nz = nz[torch.randperm(len(nz), generator=g)[:1_000_000]]
        ch_edges = (
            torch.quantile(nz, torch.linspace(0, 1, na, dtype=torch.float64)[1:-1])
            if len(nz)
            else nz
        )
        ch_edges = torch.cat([torch.tensor([1.0 / 2**FRAC_BITS], dtype=torch.float64), ch_edges])[
            : na - 1
        ]
        tot = act_all[torch.randperm(len(act_all), generator=g)[:1_000_000]]
        tot_edges = torch.quantile(tot, torch.linspace(0, 1, nb + 1, dtype=torch.float64)[1:-1])
        self.channel_edges = torch.ceil(ch_edges * 2.0**FRAC_BITS).long().to(self.coef.device)
        self.total_edges = torch.ceil(tot_edges * 2.0**FRAC_BITS).long().to(self.coef.device)
        a, b = self.bins(d["a_same"], d["a_all"], cnt)
        # identical elements cost the same: fit on the distinct (channel, bins, index, u, usum, count)
        # with their multiplicities (u and usum clipped to what decides the fit)
        u_c = d["u"].clamp(-LUT_SIZE + 1, LUT_SIZE - 1)
        us_c = d["usum"].clamp(-4 * LUT_SIZE, 4 * LUT_SIZE)
        key = d["ch"]
        for v, n in (
            (a, na),
            (b, nb),
            (d["s"], len(table)),
            (u_c + LUT_SIZE, 2 * LUT_SIZE),
            (us_c + 4 * LUT_SIZE, 8 * LUT_SIZE + 1),
            (cnt, 5),
        ):
            key = key * n + v
        del d, a, b, u_c, us_c, act_ch, act_all
        key, weight = torch.unique(key, return_counts=True)
        fields = []
        for n in (5, 8 * LUT_SIZE + 1, 2 * LUT_SIZE, len(table), nb, na):
            fields.append(key % n)
            key = torch.div(key, n, rounding_mode="floor")
        cnt, usum, u, s, b, a = fields
        usum, u, ch = usum - 4 * LUT_SIZE, u - LUT_SIZE, key
        weight = weight.double()
        cell = (ch * na + a) * nb + b
        n_cells = self.channels * na * nb
        grid = (
            coef_grid if coef_grid is not None else torch.arange(-32, 33, dtype=torch.float64) / 16
        )
        grid = grid.double()[
            grid.double().abs().argsort(stable=True)
        ]  # ties go to the smallest |coef|
        coef_q = torch.round(grid * 2**COEF_BITS).long()
        shift = torch.zeros(n_cells, dtype=torch.long)
        coef = torch.zeros(self.channels, dtype=torch.long)
        lut = gaussian_bits(
            torch.arange(LUT_SIZE, dtype=torch.float64)[None], table[:, None]
        )  # [S, V]

        def means(cq: Tensor) -> Tensor:
            return rounded_mean(cq, usum, cnt)

        def total_bits(m: Tensor, sh: Tensor) -> Tensor:
            return (
                weight
                * lut[(s + sh).clamp(0, len(table) - 1), (u - m).abs().clamp(max=LUT_SIZE - 1)]
            )

        base = float(total_bits(torch.zeros_like(s), torch.zeros_like(s)).sum())
        for _ in range(rounds):
            sh_el = shift[cell]
            best = torch.full((self.channels,), math.inf, dtype=torch.float64)
            for cq in coef_q:
                bits = torch.zeros(self.channels, dtype=torch.float64).index_add_(
                    0, ch, total_bits(means(cq), sh_el)
                )
                better = bits < best
                best = torch.where(better, bits, best)
                coef = torch.where(better, cq, coef)
            m = means(coef[ch])
            reach = min(max_shift, len(table) - 1)  # beyond: the same clamped index
            cands = torch.arange(-reach, reach + 1)
            cost = torch.zeros(n_cells, len(cands), dtype=torch.float64)
            for k, dlt in enumerate(cands):
                cost[:, k].index_add_(0, cell, total_bits(m, dlt.expand_as(s)))
            n_el = torch.zeros(n_cells, dtype=torch.float64).index_add_(0, cell, weight)
            by_ch = cost.view(self.channels, na * nb, -1).sum(1)
            n_ch = n_el.view(self.channels, -1).sum(1).clamp_min(1)
            prior = (by_ch / n_ch[:, None]).repeat_interleave(na * nb, 0)
            shift = cands[(cost + shrink * prior).argmin(-1)]
        self.coef = coef.to(self.coef.device)
        self.shift = shift.view(self.channels, na, nb).to(self.coef.device)
        after = float(total_bits(means(coef[ch]), shift[cell]).sum())
        return {
            "context_base_bits": base,
            "context_bits": after,
            "target_elements": int(weight.sum()),
        }


def apply_contexts(
    ctx: CheckerboardContext,
    anchor_ctx: CheckerboardContext | None,
    symbols: Tensor,
    indexes: Tensor,
) -> tuple[Tensor, Tensor]:
    """Indexes and means [B, C, H, W] under a ``PCConditional``'s contexts: the cross-lattice
    one and, if any, the diagonal one (whose targets are anchors, which the cross context leaves
    alone). Each position's values read only positions coded before it."""
    s, m = ctx(symbols, indexes)
    if anchor_ctx is not None:
        s_d, m_d = anchor_ctx(symbols, indexes)
        targets = lattice_masks(*symbols.shape[-2:], "diagonal", symbols.device)[1]
        s, m = torch.where(targets, s_d, s), torch.where(targets, m_d, m)
    return s, m
