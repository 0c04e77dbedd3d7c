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

Rate in ``forward``. The joint log-probability of a position's symbols under the coded model
(escapes, index-quantized scales and contexts included) is spread evenly over its channels, so
``-sum(log2 likelihoods)`` is the model's code length up to the tables' 22-bit quantization. In
training mode too: that value (the rate that trains is the rate that codes), with the gradient
of the same circuit on the continuous (lower-bounded) scales and the noisy values, so the rate
trains y, the scales and the means; the contexts come from the coded neighbours in both.
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
from .._checks import check_tensor
from ..coding import (
    MAX_SYMBOL,
    CodingTables,
    circuit_tables,
    escape_bits,
)
from ..continuous import ScaleConditionedTree
from ..errors import InputError, NotFittedError, PCPriorError
from ..settings import CONDITIONAL_CONTEXTS
from ..structure import Tree
from .base import (
    PassCondition,
    PCEntropyModel,
    loaded_tables,
    pass_rows,
    position_rows,
    straight_through,
)
from .conditional_fit import ConditionalFitting
from .context import CheckerboardContext, apply_contexts, pass_masks
from .entropy_models import check_latent

__all__ = [
    "CONTEXTS",
    "PCConditional",
]  # the circuit: pc_prior.continuous; fitting: conditional_fit

LN2 = math.log(2.0)
CONTEXTS = tuple(c for c in CONDITIONAL_CONTEXTS if c)  #: PCConditional.fit's spatial contexts


class PCConditional(ConditionalFitting, PCEntropyModel, GaussianConditional):
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
        return apply_contexts(self.context, self.anchor_context, symbols, indexes)

    def log_likelihood(self, symbols: Tensor, indexes: Tensor) -> Tensor:
        """Code-length model: log p (nats) of each position's integer symbols, [B, H, W].

        ``symbols`` / ``indexes`` are maps [B, C, H, W]. Uses the index-quantized scales the coder
        uses (after the checkerboard context, if any); escaped symbols count the circuit's ESCAPE
        probability plus their bypass code length.
        """
        self._require_fitted()
        self._check(symbols, indexes, what="symbol map")
        if self.context is not None:  # later passes: shifted indexes, symbols less their means
            indexes, m = self._apply_context(symbols.long(), indexes)
            symbols = symbols - m
        return self._coded_log_likelihood(symbols, indexes)

    def _coded_log_likelihood(self, symbols: Tensor, indexes: Tensor) -> Tensor:
        """``log_likelihood`` of what the coder codes: symbols less their means, and the indexes
        after the context (maps [B, C, H, W])."""
        pc = self._require_fitted()
        b, _c, h, w = symbols.shape
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
        if training:  # the coder's rate, trained through the circuit on the relaxed values
            sigma = self.lower_bound_scale(scales)
            s = self.build_indexes(scales.detach()).long()
            coded = torch.round(inputs.detach() - (means.detach() if means is not None else 0))
            coded = coded.long()  # the symbols the coder codes (shapes checked above)
            if self.context is None:
                exact = self._coded_log_likelihood(coded, s)
            else:  # the coder's context, from the coded neighbours
                s_ctx, m = self._apply_context(coded, s)
                exact = self._coded_log_likelihood(coded - m, s_ctx)
                table = self.scale_table.to(sigma.dtype)
                sigma = sigma * (table[s_ctx] / table[s])
                values, s = values - m.to(values.dtype), s_ctx
            relaxed = pc.log_prob(position_rows(values), position_rows(sigma), position_rows(s))
            logp = straight_through(exact, relaxed.view(b, h, w))
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
