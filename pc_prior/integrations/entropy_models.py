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
model's code length, which is all CompressAI's rate term uses. In training mode too, with
categorical leaves: the value is the code length of the rounded latents under the coder's
contexts (the rate that trains is the rate that codes), and its gradient is that of
``smooth_log_likelihood`` at the relaxed latent (``quantization="noise"``: y + u, CompressAI's
proxy; ``"ste"``: y), a density smooth in y that equals the pmf at integers, so the rate trains
``g_a``. Logistic leaves train on their own density at the relaxed latent.

Where things are. This module holds the model (symbols, alphabets, the circuit's likelihood and
the pass conditions the coder asks for) and CompressAI's interface; fitting is
``bottleneck_fit``'s, the stored form and loading ``bottleneck_state``'s, and the one
compress/decompress ``base.PCEntropyModel``'s.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck
from torch import Tensor

from .. import framing
from .._checks import (
    check_int,
)
from ..coding import (
    MAX_SYMBOL,
    CodingTables,
    circuit_tables,
    coding_tables,
    escape_bits,
)
from ..continuous import DiscretizedLogisticTree
from ..errors import InputError
from ..hclt import HCLT, GroupedHCLT
from ..settings import CHOICES
from .base import (
    PassCondition,
    PCEntropyModel,
    check_latent,
    pass_rows,
    position_rows,
    straight_through,
)
from .bottleneck_fit import BottleneckFitting
from .bottleneck_state import SCHEDULE_CODES, BottleneckState
from .context import (
    leaf_groups,
    pass_groups,
    pass_masks,
    state_ids,
)

__all__ = ["PCEntropyBottleneck"]

STRUCTURES = CHOICES["structure"]  # circuit structures over the channels (pc_prior.settings)
LN2 = math.log(2.0)


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


class PCEntropyBottleneck(BottleneckState, BottleneckFitting, PCEntropyModel, EntropyBottleneck):
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

    def untrained_parameters(self) -> list[torch.nn.Parameter]:
        """With a state context, the circuit's root prior: every position codes under its
        state id's prior (``_state_roots``) instead."""
        return [self.pc.root_logits] if self.pc is not None and self.state_context else []

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

    # -- the model ------------------------------------------------------------------------------
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
        idx, rel, esc = self._leaf_indices(s)
        m = pc.upward(self._leaf_log_probs(idx), keep=True)[1][0][0]  # before the root's prior
        bits = torch.where(esc, escape_bits(rel, self._cdf_length.long()), 0.0).sum(-1)
        return m, bits

    def _leaf_log_probs(self, idx: Tensor) -> Tensor:
        """log p(leaf index | latent state) [N, C, K] of the circuit's leaf indices idx [N, C]."""
        pc = self._require_fitted()
        return pc.log_emissions().transpose(1, 2)[
            torch.arange(idx.shape[1], device=idx.device), idx
        ]

    def _state_ids(self, m: Tensor, b: int, h: int, w: int) -> Tensor:
        """State-context ids [B, H, W] from root evidence m [B*H*W, K]: each position's most
        probable state under the root prior (floating point), then ``state_ids`` pass by pass."""
        pc = self._require_fitted()
        states = (m + pc.log_root().detach()).argmax(-1).view(b, h, w)
        ids = torch.zeros(b, h, w, dtype=torch.long, device=m.device)
        for mask, lattice in pass_masks(h, w, self.schedule, m.device):
            ids[:, mask] = state_ids(states, self.schedule, lattice, pc.num_latents)[:, mask]
        return ids

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

    def _log_roots(self, m: Tensor, b: int, h: int, w: int) -> Tensor:
        """Each position's log prior over the root states: the root prior, or with a state context
        its id's prior, the ids from the root evidence m [B*H*W, K] of the coded symbols."""
        pc = self._require_fitted()
        if self.state_context is None:
            return pc.log_root()
        roots = self._state_roots.to(m.device, torch.float64)
        log_rows = (roots / roots.sum(-1, keepdim=True)).log().to(m.dtype)
        return log_rows[self._state_ids(m.detach(), b, h, w).reshape(-1)]

    def log_likelihood(self, s: Tensor) -> Tensor:
        """Code length model: log p of each position's symbols s [B, C, H, W] in nats, [B, H, W]."""
        self._check_latent(s)
        return self._coded_log_likelihood(s)[0]

    def _coded_log_likelihood(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """``log_likelihood`` of symbol maps s, and the positions' log root priors it used (the
        relaxation in ``forward`` shares them: with a state context, their ids)."""
        b, _c, h, w = s.shape
        m, bits = self._root_evidence(s)
        log_root = self._log_roots(m, b, h, w)
        logp = torch.logsumexp(m + log_root, -1)
        return (logp - bits.to(logp.dtype) * LN2).view(b, h, w), log_root

    def _symbol_log_probs(self, s: Tensor, groups: Tensor | None) -> Tensor:
        """log p(symbol | latent state) [N, C, K] of symbol rows s [N, C], each leaf in its
        group's table (groups [N, C]; None without), an escaped symbol's with its bypass code."""
        pc = self._require_fitted()
        idx, rel, esc = self._indices(s)
        if groups is not None:
            idx = pc.joint_index(groups, idx)
        leaf = self._leaf_log_probs(idx)
        bits = torch.where(esc, escape_bits(rel, self._cdf_length.long()), 0.0)
        return leaf - (bits * LN2).to(leaf.dtype)[..., None]

    def smooth_log_likelihood(self, u: Tensor, s: Tensor) -> Tensor:
        """The training-mode log-density (nats) [B, H, W] of continuous symbols u = y - median
        [B, C, H, W] under categorical leaves: each leaf's pmf is linearly interpolated between
        floor(u) and floor(u) + 1, which is the density of a piecewise-linear CDF F through the
        pmf (P(u) = F(u + 1/2) - F(u - 1/2)). It is smooth in u, integrates to one, and equals
        ``log_likelihood`` at integer u. The contexts (leaf groups, state-context ids) come from
        the integer symbols s [B, C, H, W], as the coder's do."""
        pc = self._require_fitted()
        self._check_latent(u)
        if self.state_context is None:
            log_root = pc.log_root()
        else:  # the state-context ids, from the coded symbols
            with torch.no_grad():
                log_root = self._coded_log_likelihood(s)[1]
        return self._smooth_log_likelihood(u, s, log_root)

    def _smooth_log_likelihood(self, u: Tensor, s: Tensor, log_root: Tensor) -> Tensor:
        """``smooth_log_likelihood`` under the positions' log root priors ``log_root``."""
        pc = self._require_fitted()
        b, _c, h, w = u.shape
        rows = position_rows(u)
        lo = torch.floor(rows.detach())
        frac = (rows - lo)[..., None]  # [N, C, 1] in [0, 1): where u lies, and the gradient
        groups = position_rows(self._groups(s)) if isinstance(pc, GroupedHCLT) else None
        l0 = self._symbol_log_probs(lo.long(), groups)
        l1 = self._symbol_log_probs(lo.long() + 1, groups)
        top = torch.maximum(l0, l1).detach()
        leaf = top + torch.log((1 - frac) * torch.exp(l0 - top) + frac * torch.exp(l1 - top))
        m = pc.upward(leaf, keep=True)[1][0][0]
        return torch.logsumexp(m + log_root, -1).view(b, h, w)

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
        if not training:
            logp = self.log_likelihood(self.symbols(out))
        elif isinstance(self.pc, DiscretizedLogisticTree):  # smooth in x: the rate trains g_a
            b, c, h, w = out.shape
            u = (out - med).permute(0, 2, 3, 1).reshape(-1, c)
            logp = self.pc.log_prob_values(u).view(b, h, w)
        else:  # the coder's rate, trained through its smooth density at the relaxed latent
            s = self.symbols(x)
            relaxed = x if self.quantization == "ste" else out
            exact, log_root = self._coded_log_likelihood(s)  # the coder's priors, shared
            logp = straight_through(exact, self._smooth_log_likelihood(relaxed - med, s, log_root))
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
