"""``PCConditional``: a drop-in for CompressAI's ``GaussianConditional`` backed by a latent tree.

What is modelled. The hyperprior's conditional codes symbols ``u = round(y - means)`` given a
scale index ``s = build_indexes(scales)`` per element (the same integer index CompressAI's own
coder uses). ``GaussianConditional`` treats the M channels at a position as independent given
their scales. Here the M channels at one position are the variables of a latent tree (Chow-Liu
structure over standardized symbols, or a star), K states per channel, shared over positions:
leaf (c, k) given scale index s is a discretized Gaussian with mean ``σ_s·m[c,k]`` and scale
``exp(a[c,k] + o[c,s])·σ_s^(1+b[c,k])`` (``σ_s = scale_table[s]``). K=1 with m=a=b=o=0 *is* the
GaussianConditional; with K>1 the latent states capture what the hyper-decoder misses: shared
over- or under-dispersion of the channels at a position, sign and magnitude co-occurrence, and
per-channel miscalibration of the predicted scales.

Spatial context (optional, ``fit(..., context=...)``): with ``"checkerboard"`` a
``CheckerboardContext`` (``pc_prior.integrations.context``) codes the anchor half of the positions
first and gives every other position an integer scale-index shift and integer mean from its decoded
neighbours; the circuit then sees the shifted indexes and ``u - mean``. ``"three-pass"``
(the default, ``pc_prior.settings.ConditionalFit``) also splits the anchors: the (even, even) quarter first, then the (odd,
odd) quarter with a context from its four diagonal neighbours (a second ``CheckerboardContext`` on
the diagonal lattice, ``anchor_context``), then the non-anchors as before. Integer arithmetic only,
so it is as deterministic as the coder.

Coding. All positions of all images are coded in parallel (no raster order): one loop over the
M channels in the tree's preorder (once for all positions, or once per pass of the context),
batched over every position, with the exact integer messages
of ``pc_prior.coding.IncrementalConditionals`` and per-item emission tables (table ``s`` of
channel c for an element with scale index s). ``update()`` writes the integer tables into
registered buffers: ``_pc_emit`` [M, S, K, V] over the symbols ``-R..R`` plus ESCAPE; a symbol
outside ``-R..R`` is coded as ESCAPE followed by the bottleneck's exact bypass code, so nothing
is ever clipped. Strings carry the integrations' compact header (magic, version, model
fingerprint, latent size, CRC32; ``pc_prior.integrations.bitstream``).

Rate in ``forward``. Eval mode: the joint log-probability of a position's symbols under the
coded model (escapes included) is spread evenly over its channels, so ``-sum(log2 likelihoods)``
is the model's code length up to the tables' 22-bit quantization. Training mode: the same circuit
on the continuous (lower-bounded) scales and noisy values, differentiable in y, scales and means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from compressai.entropy_models import GaussianConditional
from compressai.models.base import get_scale_table
from torch import Tensor

from .. import framing
from .._checks import check_choice, check_int, check_real, check_tensor, fit_keywords
from ..coding import (
    MAX_SYMBOL,
    CodingTables,
    circuit_tables,
    escape_bits,
)
from ..continuous import LIKELIHOOD_BOUND, ScaleConditionedTree, gaussian_bin_mass
from ..errors import InputError, NotFittedError, PCPriorError
from ..progress import progress_bar
from ..settings import CHOICES, CONDITIONAL_CONTEXTS, ConditionalFit
from ..structure import Tree, chow_liu_tree, pairwise_mutual_information, star_tree
from .base import PassCondition, PCEntropyModel, loaded_tables, pass_rows, position_rows
from .context import CheckerboardContext, lattice_masks, pass_masks
from .entropy_models import STRUCTURES, check_latent

__all__ = [
    "CONTEXTS",
    "PCConditional",
    "accumulate_gradient",
]  # the circuit lives in pc_prior.continuous

LN2 = math.log(2.0)
GRAD_CHUNK = 128
"""Positions per backward pass in ``fit``: a mini-batch's gradient is summed over slices this size,
whose [rows, C, K] leaf intermediates stay in cache (1.5-2x faster per step on CPU than the whole
512-position batch at once; the same gradient up to float rounding)."""
CONTEXTS = tuple(c for c in CONDITIONAL_CONTEXTS if c)  #: PCConditional.fit's spatial contexts


def accumulate_gradient(
    pc: ScaleConditionedTree, u: Tensor, sigma: Tensor, s: Tensor, chunk: int = GRAD_CHUNK
) -> Tensor:
    """Add the gradient of the mean bits per position of rows ``u`` [N, C] (scales ``sigma``,
    indexes ``s``) to ``pc``'s ``.grad``, ``chunk`` rows at a time; returns the mean bits (detached).

    Slicing changes nothing but float rounding: the loss is a sum over rows, so the slices'
    gradients add up to the whole batch's.
    """
    total = torch.zeros((), device=u.device)
    for part in torch.arange(len(u), device=u.device).split(chunk):
        bits = -pc.log_prob(u[part], sigma[part], s[part]).sum() / (len(u) * LN2)
        bits.backward()
        total = total + bits.detach()
    return total


def _contextualize(
    ctx: CheckerboardContext,
    anchor_ctx: CheckerboardContext | None,
    symbols: Tensor,
    indexes: Tensor,
) -> tuple[Tensor, Tensor]:
    """Indexes and means under the cross-lattice context and, if any, the diagonal one (whose
    targets are anchors, which the cross context leaves alone)."""
    s, m = ctx(symbols, indexes)
    if anchor_ctx is not None:
        s_d, m_d = anchor_ctx(symbols, indexes)
        targets = lattice_masks(*symbols.shape[-2:], "diagonal", symbols.device)[1]
        s, m = torch.where(targets, s_d, s), torch.where(targets, m_d, m)
    return s, m


class PCConditional(PCEntropyModel, GaussianConditional):
    """Gaussian conditional whose channels at a position are joined by a latent tree.

    Same interface as ``GaussianConditional`` (``forward``, ``build_indexes``, ``compress``,
    ``decompress``, ``update_scale_table``), so ``ScaleHyperprior``/``MeanScaleHyperprior`` use
    it unchanged. Fit with ``fit`` (or ``pc_prior.integrations.fit_prior``); ``fit`` ends with
    ``update()``. Strings are one ``bytes`` per batch item, as CompressAI's.
    """

    FORMAT = framing.CONDITIONAL  # magic, version and header fields of this model's strings

    def __init__(self, scale_table: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(scale_table, *args, **kwargs)
        self._init_tables(emit_dims=4)
        self.pc: ScaleConditionedTree | None = None
        self.context: CheckerboardContext | None = None  # cross lattice: non-anchors given anchors
        self.anchor_context: CheckerboardContext | None = (
            None  # diagonal lattice, only with context
        )

    # -- state ----------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        """M, the channels the fitted circuit models (``NotFittedError`` before a fit)."""
        return self._require_fitted().num_vars

    @property
    def radius(self) -> int:
        """R: symbols -R..R are coded by the circuit, the rest escape to the bypass code."""
        if self._offset.numel() == 0:
            raise NotFittedError(
                "PCConditional has no coding tables: call update() (or model.update()) first"
            )
        return -int(self._offset[0])

    @property
    def schedule(self) -> str | None:
        """The coding schedule of the spatial context: None (one pass), ``"checkerboard"`` or
        ``"three-pass"`` (``ConditionalFit.context``; ``context`` and ``anchor_context`` are
        the fitted context modules)."""
        if self.context is None:
            return None
        return "checkerboard" if self.anchor_context is None else "three-pass"

    def _context_buffers(self) -> list[Tensor]:
        return [
            b for m in (self.context, self.anchor_context) if m is not None for b in m.buffers()
        ]

    def _coded_state(self) -> tuple[Tensor, ...]:
        return (self._offset, self.scale_table, *self._context_buffers())

    def _fingerprint_tensors(self) -> tuple[Tensor, ...]:
        return (self._offset.to(torch.int32), self.scale_table.float(), *self._context_buffers())

    def _passes(self, h: int, w: int, device: torch.device) -> list[tuple[Tensor, str | None]]:
        return pass_masks(h, w, self.schedule, device)

    def _alphabet(self, channels: int) -> tuple[Tensor, np.ndarray]:
        r = self.radius
        return (
            torch.full((channels,), -r, dtype=torch.long, device=self._offset.device),
            np.full(channels, 2 * r + 1, dtype=np.int64),
        )

    def _pass_condition(
        self, k: int, mask: Tensor, lattice: str | None, symbols: Tensor, states: Tensor, side: Any
    ) -> PassCondition:
        """Each item's scale index; in a later pass shifted, with an integer mean, by the context
        of the positions decoded before it."""
        if k == 0:
            return PassCondition(groups=pass_rows(side, mask))
        indexes, means = self._apply_context(symbols, side)
        return PassCondition(groups=pass_rows(indexes, mask), means=pass_rows(means, mask))

    def _compute_tables(self) -> CodingTables:
        """The circuit's integer tables for the current radius and scale table (``pc_prior.portable``
        math, so a reloaded model rebuilds them bit for bit)."""
        pc = self._require_fitted()
        if self._offset.numel() == 0:
            raise NotFittedError("PCConditional has no alphabet radius: fit it first")
        table = self._scale_table_or_default()
        return circuit_tables(pc, lambda: pc.emission_probs(self.radius, table))

    def _tables_entries(self) -> int:
        pc = self._require_fitted()
        return pc.num_vars * len(self.scale_table) * pc.num_latents * (2 * self.radius + 2)

    def _scale_table_or_default(self) -> Tensor:
        if self.scale_table.numel() == 0:
            self.scale_table = get_scale_table().to(self.scale_table.device)
        return self.scale_table

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """Check the radius, scale table (and any stored tables), resize the buffers, build the
        circuit and contexts; once the parameters are loaded, take the stored tables or rebuild and
        verify them (``PCEntropyModel``)."""
        stored = loaded_tables(state_dict, prefix, error_msgs)
        loc = state_dict.get(prefix + "pc.loc")
        if stored is not None or loc is not None:
            off, table = state_dict.get(prefix + "_offset"), state_dict.get(prefix + "scale_table")
            if (
                off is None
                or table is None
                or tuple(off.shape) != (1,)
                or off.dtype.is_floating_point
                or not -MAX_SYMBOL <= int(off[0]) <= -1
                or table.dim() != 1
                or not torch.isfinite(table).all()
                or float(table.min()) < 1e-30
            ):
                error_msgs.append(
                    f"{prefix}: a fitted PCConditional needs _offset = [-R] (1 <= R <= {MAX_SYMBOL}) "
                    "and a finite, positive 1-D scale_table"
                )
                return
            shape = tuple(stored.emit.shape) if stored is not None else None
            if shape is not None and (
                len(shape) != 4 or shape[-1] != 2 - 2 * int(off[0]) or shape[1] != len(table)
            ):
                error_msgs.append(
                    f"{prefix}: coding tables of shape {shape} do not match the radius (_offset) and "
                    "the positive scale_table: expected [M, len(scale_table), K, 2R+2] with _offset = [-R]"
                )
                return
        elif any(m.startswith(prefix) for m in error_msgs):
            return
        if CheckerboardContext.check_owner_state(state_dict, prefix, error_msgs):
            return
        self._resize_for(
            state_dict, prefix, ("_offset", "_cdf_length", "_quantized_cdf", "scale_table")
        )
        for attr, lattice in (("context", "cross"), ("anchor_context", "diagonal")):
            key = f"{prefix}{attr}."
            if key + "coef" in state_dict:
                if getattr(self, attr) is None:
                    n_s = state_dict[key + "inv_scale"].shape[0]
                    setattr(
                        self,
                        attr,
                        CheckerboardContext(
                            state_dict[key + "coef"].shape[0], torch.ones(n_s), lattice=lattice
                        ).to(self.scale_bound.device),
                    )
            elif prefix + "pc.loc" in state_dict:
                setattr(self, attr, None)
        if loc is not None:
            parent = state_dict.get(prefix + "_pc_parent")
            offsets = state_dict.get(prefix + "pc.scale_offset")
            try:
                if parent is None or loc.dim() != 2 or len(parent) != loc.shape[0]:
                    raise ValueError(f"_pc_parent does not match the circuit's {len(loc)} channels")
                if offsets is None or offsets.dim() != 2:
                    raise ValueError("pc.scale_offset must be [channels, scales]")
                tree = Tree(tuple(int(p) for p in parent))
            except (ValueError, TypeError, PCPriorError) as e:
                error_msgs.append(f"{prefix}: the circuit is not valid: {e}")
                return
            self.pc = ScaleConditionedTree(
                tree, loc.shape[1], offsets.shape[1], dtype=loc.dtype
            ).to(self.scale_bound.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._finish_loading(state_dict, prefix, stored, missing_keys, unexpected_keys, error_msgs)

    # -- symbols --------------------------------------------------------------------------------
    def _check(
        self,
        inputs: Tensor,
        indexes: Tensor | None = None,
        *,
        scales: Tensor | None = None,
        means: Tensor | None = None,
        what: str = "latent",
    ) -> None:
        """The one shape check of every entry point; ``InputError`` (never a broadcast) unless
        ``inputs`` is [B, channels, H, W], ``indexes`` (integers of the scale table) and ``scales``
        have its shape, and ``means`` has it or 1 along a dimension (as CompressAI allows)."""
        owner = type(self).__name__
        check_latent(owner, inputs, self.channels, what)
        shape = tuple(inputs.shape)
        for name, t, kind in (("indexes", indexes, "integer"), ("scales", scales, "real")):
            if t is None:
                continue
            check_tensor(f"{owner}: {name}", t, kind)  # type: ignore[arg-type]
            if tuple(t.shape) != shape:
                raise InputError(
                    f"{owner}: {name} have shape {tuple(t.shape)}, the {what} {shape}: expected "
                    "the same shape"
                )
        if means is not None:
            check_tensor(f"{owner}: means", means, "real")
            if means.dim() != 4 or any(m not in (1, s) for m, s in zip(means.shape, shape)):
                raise InputError(
                    f"{owner}: means have shape {tuple(means.shape)}, the {what} {shape}: expected "
                    "the same shape (or 1 along a dimension)"
                )
        if (
            indexes is not None
            and indexes.numel()
            and (int(indexes.min()) < 0 or int(indexes.max()) >= len(self.scale_table))
        ):
            raise InputError(f"{owner}: indexes must lie in 0..{len(self.scale_table) - 1}")

    def _symbols(self, inputs: Tensor, means: Tensor | None) -> Tensor:
        if not torch.isfinite(inputs).all() or (
            means is not None and not torch.isfinite(means).all()
        ):
            raise InputError("latent contains NaN or infinite values")
        s = inputs.detach().clone()  # quantize(..., "symbols") without its int32 cast, which wraps
        if means is not None:
            s -= means.detach()
        s = torch.round(s)
        if s.numel() and float(s.abs().max()) > MAX_SYMBOL:
            raise InputError(f"latent symbols exceed the coder's range |s| <= {MAX_SYMBOL}")
        return s.long()

    @staticmethod
    def _check_maps(
        symbols: Sequence[Tensor], indexes: Sequence[Tensor], table: Tensor | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        if (
            not isinstance(symbols, (list, tuple))
            or not isinstance(indexes, (list, tuple))
            or len(symbols) != len(indexes)
        ):
            raise InputError(
                "give symbols and indexes both as rows [N, C] or both as lists of maps of equal length"
            )
        if not symbols:
            raise InputError("no latent maps to fit on")
        out = []
        for sy, sx in zip(symbols, indexes):
            PCConditional._check_integers(sy, sx, table)
            if (
                sy.dim() != 4
                or tuple(sy.shape) != tuple(sx.shape)
                or sy.shape[1] != symbols[0].shape[1]
            ):
                raise InputError(
                    f"latent maps must be pairs of equal shape [B, C, H, W], got {tuple(sy.shape)} "
                    f"and {tuple(sx.shape)}"
                )
            out.append((sy.long().cpu(), sx.long().cpu()))
        return out

    @staticmethod
    def _check_integers(symbols: Any, indexes: Any, table: Tensor | None) -> None:
        """``fit``'s symbols and indexes: integer tensors, indexes within the scale table (else ``InputError``)."""
        for name, t, what in (
            ("symbols", symbols, "round(y - means)"),
            ("indexes", indexes, "from build_indexes"),
        ):
            if not isinstance(t, Tensor):
                raise InputError(
                    f"{name} must be a torch.Tensor (rows [N, C]) or a list of maps [B, C, H, W], "
                    f"got {type(t).__name__}"
                )
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise InputError(f"{name} must be integers ({what}), got {t.dtype}")
        if (
            table is not None
            and indexes.numel()
            and (int(indexes.min()) < 0 or int(indexes.max()) >= len(table))
        ):
            raise InputError(
                f"indexes must lie in 0..{len(table) - 1} (the scale table's {len(table)} entries), "
                f"got {int(indexes.min())}..{int(indexes.max())}"
            )

    def _apply_context(self, symbols: Tensor, indexes: Tensor) -> tuple[Tensor, Tensor]:
        """Coded indexes and integer means [B, C, H, W] of every position from the symbols of the
        positions coded before it (``context`` and ``anchor_context`` read only those)."""
        return _contextualize(self.context, self.anchor_context, symbols, indexes)

    def log_likelihood(self, symbols: Tensor, indexes: Tensor) -> Tensor:
        """Code-length model: log p (nats) of each position's integer symbols, [B, H, W].

        ``symbols`` / ``indexes`` are maps [B, C, H, W]. Uses the index-quantized scales the coder
        uses (after the checkerboard context, if any); escaped symbols count the circuit's ESCAPE
        probability plus their bypass code length.
        """
        pc = self._require_fitted()
        self._check(symbols, indexes, what="symbol map")
        b, _c, h, w = symbols.shape
        if (
            self.context is not None
        ):  # later passes: shifted indexes, symbols less their integer means
            indexes, m = self._apply_context(symbols.long(), indexes)
            symbols = symbols - m
        u, s = position_rows(symbols), position_rows(indexes).long()
        sigma = self._scale_table_or_default()[s]
        r = self.radius if self._offset.numel() else None
        leaf = pc.leaf_log_probs(u, sigma, s)
        bits = torch.zeros(len(u), dtype=torch.float64, device=u.device)
        if r is not None:
            esc = u.abs() > r
            if esc.any():
                leaf = torch.where(esc[..., None], pc.escape_log_probs(r, sigma, s), leaf)
                bits = torch.where(esc, escape_bits(u + r, torch.full_like(u, 2 * r + 1)), 0.0).sum(
                    -1
                )
        logp = pc.upward(leaf)[0]
        return (logp - bits.to(logp.dtype) * LN2).view(b, h, w)

    # -- fitting --------------------------------------------------------------------------------
    @classmethod
    def check_fit_args(cls, **kwargs: Any) -> dict[str, Any]:
        """Check keyword arguments of ``fit`` without any data: names, types and ranges.

        Returns every keyword argument of ``fit`` (defaults filled in, numbers as int/float);
        raises ``InputError`` naming the first bad one. ``fit`` and ``fit_prior`` call it first,
        so a bad argument fails before latents are collected or a context is fitted.
        """
        a = fit_keywords(cls, cls.fit, ("symbols", "indexes"), kwargs)
        check_choice("context", a["context"], CONDITIONAL_CONTEXTS)
        check_choice("structure", a["structure"], STRUCTURES)
        check_choice("init", a["init"], CHOICES["init"])
        a["num_latents"] = check_int("num_latents", a["num_latents"], 1)
        a["max_items"] = check_int("max_items", a["max_items"], 1, allow_none=True)
        a["steps"] = check_int("steps", a["steps"], 0)
        a["batch_size"] = check_int("batch_size", a["batch_size"], 1)
        a["lr"] = check_real("lr", a["lr"], 0.0, low_open=True)
        a["holdout"] = check_real("holdout", a["holdout"], 0.0, 1.0, high_open=True)
        a["tail"] = check_real("tail", a["tail"], 0.0, 1.0, high_open=True)
        a["max_radius"] = check_int("max_radius (the radius is at least 4)", a["max_radius"], 4)
        a["seed"] = check_int("seed", a["seed"])
        check_choice("warm_start", a["warm_start"], (False, True))
        return a

    def fit(
        self,
        symbols: Tensor | Sequence[Tensor],
        indexes: Tensor | Sequence[Tensor],
        num_latents: int = ConditionalFit.num_latents,
        *,
        context: str | None = ConditionalFit.context,
        structure: str = ConditionalFit.structure,
        max_items: int | None = ConditionalFit.max_items,
        steps: int = ConditionalFit.steps,
        batch_size: int = ConditionalFit.batch_size,
        lr: float = ConditionalFit.lr,
        holdout: float = ConditionalFit.holdout,
        tail: float = ConditionalFit.tail,
        max_radius: int = ConditionalFit.max_radius,
        init: str = ConditionalFit.init,
        seed: int = ConditionalFit.seed,
        progress: bool = True,
        warm_start: bool = False,
    ) -> list[dict]:
        """Learn the context, structure, alphabet radius and leaves from the frozen codec's latents.

        ``symbols`` are ``round(y - means)`` and ``indexes`` ``build_indexes(scales)``: either rows
        [N, C] (one per latent position) or sequences of maps [B, C, H, W] (one per image, as
        ``collect_conditional_inputs(..., maps=True)`` gives). ``context="checkerboard"`` (maps
        only) first fits a ``CheckerboardContext``: non-anchor positions are then coded after the
        anchors with shifted scale indexes and integer means, and the circuit is fit on what the
        coder sees. ``context="three-pass"`` also fits the diagonal-lattice context of the (odd,
        odd) anchors on the (even, even) ones (its history keys start with ``anchor_``). ``max_items`` random positions are used (None: all),
        ``holdout`` of them to report held-out bits. Adam for ``steps`` steps on mini-batches of
        ``batch_size`` positions (learning rate decayed linearly to 10%). The radius R covers the
        ``1 - tail`` quantile of ``|symbol|`` (at least 4, at most ``max_radius``). ``init="data"`` starts
        from the binned standardized symbols (``ScaleConditionedTree.init_from_data``),
        ``"baseline"`` next to the Gaussian conditional (``init_params``). Ends with ``update()``.
        Returns the history (held-out bits per position of the baseline and the circuit, both
        after the context; the context's own training bits on its targets). Bad arguments raise
        ``InputError`` before any work (``check_fit_args``). Defaults: ``pc_prior.settings.ConditionalFit``
        (the three-pass context, so rows [N, C] need ``context=None``).

        ``warm_start=True`` continues the fitted model on new latents instead (``pc-prior prior adapt``: adapt a prior to a domain): the contexts, structure, radius and K are kept
        (``num_latents``, ``context``, ``structure``, ``tail``, ``max_radius`` and ``init`` are not
        used) and Adam starts from the current parameters. ``NotFittedError`` if there is nothing
        to continue.
        """
        a = self.check_fit_args(
            **{
                k: v
                for k, v in locals().items()
                if k not in ("self", "symbols", "indexes", "__class__")
            }
        )
        num_latents, max_items = a["num_latents"], a["max_items"]
        holdout, tail, max_radius = a["holdout"], a["tail"], a["max_radius"]
        table = self._scale_table_or_default()
        ctx, actx, ctx_info = None, None, {}
        pc0 = self._require_fitted() if warm_start else None
        if pc0 is not None:  # the fitted contexts, whichever context is asked for
            context = None if self.context is None else "fitted"
        if isinstance(symbols, (list, tuple)) or isinstance(indexes, (list, tuple)):
            maps = self._check_maps(symbols, indexes, table)
            if pc0 is not None and context is not None:
                at = maps[0][0].device
                ctx = self.context.to(at)  # type: ignore[union-attr]
                actx = None if self.anchor_context is None else self.anchor_context.to(at)
            elif context is not None:
                ctx = CheckerboardContext(maps[0][0].shape[1], table.cpu())
                ctx_info = ctx.fit(maps, table.cpu())
                if context == "three-pass":
                    actx = CheckerboardContext(maps[0][0].shape[1], table.cpu(), lattice="diagonal")
                    ctx_info |= {f"anchor_{k}": v for k, v in actx.fit(maps, table.cpu()).items()}
            if ctx is not None:
                coded = []
                for (
                    sy,
                    sx,
                ) in maps:  # what the coder sees: shifted indexes, symbols less their means
                    s_ctx, m = _contextualize(ctx, actx, sy, sx)
                    coded.append((sy - m, s_ctx))
                maps = coded
            symbols = torch.cat([position_rows(sy) for sy, _ in maps])
            indexes = torch.cat([position_rows(sx) for _, sx in maps])
        elif context is not None:
            raise InputError(
                f"the {context} context needs latent maps [B, C, H, W] (a list per image), not "
                "rows: pass context=None to fit rows"
                + (" (the model was fitted with a context)" if pc0 is not None else "")
            )
        else:
            self._check_integers(symbols, indexes, table)
        if symbols.dim() != 2 or tuple(indexes.shape) != tuple(symbols.shape):
            raise InputError(
                f"symbols and indexes must both have shape [N, C], got {tuple(symbols.shape)} "
                f"and {tuple(indexes.shape)}"
            )
        if len(symbols) == 0:
            raise InputError("no latent positions to fit on")
        dev = self.scale_bound.device
        g = torch.Generator().manual_seed(seed)
        u, s = symbols.long(), indexes.long()
        if max_items is not None and len(u) > max_items:
            keep = torch.randperm(len(u), generator=g)[:max_items]
            u, s = u[keep], s[keep]
        perm = torch.randperm(len(u), generator=g)
        n_hold = int(len(u) * holdout) if len(u) >= 20 else 0
        hold, train = perm[:n_hold], perm[n_hold:]
        c = u.shape[1]
        s, u = s.to(dev), u.to(dev)
        if pc0 is not None:
            if c != self.channels:
                raise InputError(
                    f"symbols have {c} channels, the fitted model {self.channels}: warm_start "
                    "continues the same model"
                )
            hist = self._train(pc0, u.float(), s, table, train, hold, a, g, progress, {})
            self.update()
            return hist
        mag = u.abs().flatten().sort().values
        radius = int(mag[min(len(mag) - 1, math.ceil((1.0 - tail) * (len(mag) - 1)))]) + 1
        radius = max(4, min(max_radius, radius))
        sigma = table.to(dev)[s].float()
        u = u.float()
        if structure == "star" or c == 1:
            z = (u / sigma).double()
            tree = star_tree(z)
        else:  # Chow-Liu tree on standardized symbols binned into 8 classes
            z = torch.clamp(torch.round(u.cpu() / sigma.cpu() * 2.0), -4, 3).long() + 4
            tree = chow_liu_tree(pairwise_mutual_information(z, 8, num_bins=8, seed=seed))
        pc = ScaleConditionedTree(tree, num_latents, len(table)).to(dev)
        if init == "data":
            pc.init_from_data(u, sigma, seed=seed)
        else:
            pc.init_params(seed=seed)
        hist = self._train(pc, u, s, table, train, hold, a, g, progress, ctx_info)
        self.pc = pc
        self.context = ctx.to(dev) if ctx is not None else None
        self.anchor_context = actx.to(dev) if actx is not None else None
        self._offset = torch.tensor([-radius], dtype=torch.int32, device=dev)
        self._cdf_length = torch.tensor([2 * radius + 1], dtype=torch.int32, device=dev)
        self.update()
        return hist

    def _train(
        self,
        pc: ScaleConditionedTree,
        u: Tensor,
        s: Tensor,
        table: Tensor,
        train: Tensor,
        hold: Tensor,
        a: dict[str, Any],
        g: torch.Generator,
        progress: bool,
        ctx_info: dict[str, Any],
    ) -> list[dict]:
        """Adam on ``pc`` from its current parameters, on symbols ``u`` (float) with scale indexes
        ``s`` at the positions ``train``; held-out bits on ``hold`` before and after."""
        dev = u.device
        steps, batch_size = a["steps"], a["batch_size"]
        sigma = table.to(dev)[s].float()

        def held_out_bits() -> dict:
            if len(hold) == 0:
                return {}
            with torch.no_grad():
                ut, st, it = u[hold.to(dev)], sigma[hold.to(dev)], s[hold.to(dev)]
                mass = gaussian_bin_mass(ut, st)
                base = -torch.log(mass.clamp_min(LIKELIHOOD_BOUND)).sum(-1).mean() / LN2
                circ = (
                    -torch.cat(
                        [
                            pc.log_prob(ut[i : i + 4096], st[i : i + 4096], it[i : i + 4096])
                            for i in range(0, len(ut), 4096)
                        ]
                    ).mean()
                    / LN2
                )
            return {"holdout_base_bits": float(base), "holdout_pc_bits": float(circ)}

        hist: list[dict] = [{"step": 0, **held_out_bits(), **ctx_info}]
        opt = torch.optim.Adam(pc.parameters(), lr=a["lr"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - 0.9 * t / max(1, steps))
        bar = progress_bar(range(steps), desc="PCConditional", unit="step", disable=not progress)
        train_dev = train.to(dev)
        loss = torch.zeros(())
        for step in bar:
            rows = train_dev[
                torch.randint(len(train), (min(batch_size, len(train)),), generator=g).to(dev)
            ]
            opt.zero_grad(set_to_none=True)
            loss = accumulate_gradient(pc, u[rows], sigma[rows], s[rows])
            opt.step()
            sched.step()
            if step % 50 == 0:
                bar.set_postfix(bits=f"{float(loss.detach()):.2f}", refresh=False)
        hist.append({"step": steps, "train_bits": float(loss.detach()), **held_out_bits()})
        return hist

    # -- CompressAI interface -------------------------------------------------------------------
    def update(self) -> None:  # type: ignore[override]
        """Write the circuit's integer coding tables (for the current scale table) into the buffers."""
        self._set_tables(self._compute_tables())
        r = self.radius
        dev = self.scale_bound.device
        self._cdf_length = torch.tensor([2 * r + 1], dtype=torch.int32, device=dev)
        self._quantized_cdf = torch.zeros(0, 0, dtype=torch.int32, device=dev)

    def update_scale_table(self, scale_table: Any, force: bool = False) -> bool:
        """CompressionModel.update() entry point: rebuild the tables if absent or forced."""
        if self._pc_root.numel() > 0 and not force:
            return False
        self.scale_table = self._prepare_scale_table(scale_table).to(self.scale_bound.device)
        self.update()
        return True

    def forward(
        self,
        inputs: Tensor,
        scales: Tensor,
        means: Tensor | None = None,
        training: bool | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(y_hat, likelihoods [B, C, H, W]); the product over channels is p(position's symbols)."""
        if training is None:
            training = self.training
        pc = self._require_fitted()
        self._check(inputs, scales=scales, means=means)  # before anything broadcasts
        outputs = self.quantize(inputs, "noise" if training else "dequantize", means)
        b, c, h, w = inputs.shape
        values = outputs - means if means is not None else outputs
        if training:
            sigma = self.lower_bound_scale(scales)
            s = self.build_indexes(scales.detach()).long()
            if self.context is not None:  # context from the rounded anchors, as the coder sees them
                s_ctx, m = self._apply_context(torch.round(values.detach()).long(), s)
                table = self.scale_table.to(sigma.dtype)
                sigma = sigma * (table[s_ctx] / table[s])
                values, s = values - m.to(values.dtype), s_ctx
            logp = pc.log_prob(position_rows(values), position_rows(sigma), position_rows(s)).view(
                b, h, w
            )
        else:
            logp = self.log_likelihood(
                torch.round(values.detach()).long(), self.build_indexes(scales)
            )
        lik = torch.exp(logp / c)[:, None].expand(-1, c, -1, -1)
        return outputs, lik.to(inputs.dtype)

    def compress(self, inputs: Tensor, indexes: Tensor, means: Tensor | None = None) -> list[bytes]:
        """One string per batch item for the latent [B, C, H, W] given scale ``indexes`` (and
        means); none for an empty batch."""
        self._require_tables()  # NotFittedError before any check of the inputs
        self._check(inputs, indexes, means=means)
        u = self._symbols(inputs, means).to(self._offset.device)
        return self._encode_symbols(u, indexes.long().to(self._offset.device))

    def decompress(
        self,
        strings: list[bytes],
        indexes: Tensor,
        dtype: torch.dtype = torch.float,
        means: Tensor | None = None,
    ) -> Tensor:
        """Decode ``compress``'s strings given the same ``indexes`` (and means) into y_hat [B, C, H, W]."""
        if not isinstance(strings, (list, tuple)):
            raise InputError(f"strings must be a list of bytes, got {type(strings).__name__}")
        self._require_tables()  # NotFittedError before the strings are read
        self._check(indexes, indexes, means=means, what="scale index map")
        b, c, h, w = indexes.shape
        if len(strings) != b:
            raise InputError(f"{len(strings)} strings for a batch of {b} index maps")
        u = self._decode_symbols(strings, (h, w), c, indexes.long().to(self._offset.device))
        # standard strides, as forward's
        sym = torch.empty(b, c, h, w, dtype=torch.float32, device=indexes.device)
        sym.copy_(u)
        return self.dequantize(sym, means, dtype)
