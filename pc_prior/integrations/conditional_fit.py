"""Fitting a ``PCConditional``: contexts, structure, alphabet radius and leaves from latents.

``fit`` learns a new model from a frozen codec's latents; ``adapt`` continues a fitted one on
other latents (a prior adapted to a domain). Settings come one way: a
``pc_prior.settings.ConditionalFit`` (the defaults in one place) and/or keywords that map one to
one onto its fields, all checked before any work (``check_settings``). Rows [N, C] have no
neighbours, so a context with rows is an ``InputError`` naming the fix (``context=None``).

The circuit is trained on what the coder sees: with a context, the shifted scale indexes and the
symbols less their integer means (``context.apply_contexts``).

This is one concern of ``PCConditional`` (``conditional``), as a mixin: the model, its stored form
and CompressAI's interface are ``conditional``'s, coding the base's (``base.PCEntropyModel``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_real
from ..continuous import LIKELIHOOD_BOUND, ScaleConditionedTree, gaussian_bin_mass
from ..errors import InputError
from ..progress import progress_bar
from ..settings import (
    CHOICES,
    CONDITIONAL_ADAPT_FIELDS,
    CONDITIONAL_CONTEXTS,
    ConditionalFit,
    as_kwargs,
    check_adapt_fields,
    deprecated_check_fit_args,
    pop_warm_start,
    settings_with,
)
from ..structure import chow_liu_tree, pairwise_mutual_information, star_tree
from .base import position_rows
from .context import CheckerboardContext, apply_contexts

__all__ = ["GRAD_CHUNK", "ConditionalFitting", "accumulate_gradient"]

LN2 = math.log(2.0)
GRAD_CHUNK = 128
"""Positions per backward pass in ``fit``: a mini-batch's gradient is summed over slices this size,
whose [rows, C, K] leaf intermediates stay in cache (1.5-2x faster per step on CPU than the whole
512-position batch at once; the same gradient up to float rounding)."""


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


Maps = list[tuple[Tensor, Tensor]]


class ConditionalFitting:
    """``PCConditional``'s fitting (mixin): ``check_settings``, ``fit`` and ``adapt``."""

    # provided by PCConditional and its bases
    pc: ScaleConditionedTree | None
    context: CheckerboardContext | None
    anchor_context: CheckerboardContext | None
    scale_bound: Tensor
    channels: int
    schedule: str | None
    _offset: Tensor
    _cdf_length: Tensor
    _require_fitted: Any
    _scale_table_or_default: Any
    _check_maps: Any
    _check_integers: Any
    update: Any

    @classmethod
    def check_settings(
        cls, settings: ConditionalFit | None = None, **fields: Any
    ) -> ConditionalFit:
        """The fit settings: ``settings`` (None: ``ConditionalFit()``, the defaults) with
        ``fields`` replaced, checked without any data (names, types, ranges) and numbers made
        int/float. The first bad one raises ``InputError`` naming it; ``fit``, ``adapt`` and
        ``fit_prior`` call this first, so nothing is collected or learned before."""
        s = settings_with(ConditionalFit, settings, fields, f"{cls.__name__}.fit")
        check_choice("context", s.context, CONDITIONAL_CONTEXTS)
        check_choice("structure", s.structure, CHOICES["structure"])
        check_choice("init", s.init, CHOICES["init"])
        return dataclasses.replace(
            s,
            num_latents=check_int("num_latents", s.num_latents, 1),
            max_items=check_int("max_items", s.max_items, 1, allow_none=True),
            steps=check_int("steps", s.steps, 0),
            batch_size=check_int("batch_size", s.batch_size, 1),
            lr=check_real("lr", s.lr, 0.0, low_open=True),
            holdout=check_real("holdout", s.holdout, 0.0, 1.0, high_open=True),
            tail=check_real("tail", s.tail, 0.0, 1.0, high_open=True),
            max_radius=check_int("max_radius (the radius is at least 4)", s.max_radius, 4),
            seed=check_int("seed", s.seed),
        )

    @classmethod
    def check_fit_args(cls, **kwargs: Any) -> dict[str, Any]:
        """Deprecated: ``check_settings`` (this returns its fields as a dict); goes in 0.4."""
        return deprecated_check_fit_args(cls.check_settings, kwargs)

    def fit(
        self,
        symbols: Tensor | Sequence[Tensor],
        indexes: Tensor | Sequence[Tensor],
        settings: ConditionalFit | None = None,
        *,
        progress: bool = True,
        **fields: Any,
    ) -> list[dict]:
        """Learn the context, structure, alphabet radius and leaves from the frozen codec's latents.

        ``symbols`` are ``round(y - means)`` and ``indexes`` ``build_indexes(scales)``: either rows
        [N, C] (one per latent position) or sequences of maps [B, C, H, W] (one per image, as
        ``collect_conditional_inputs(..., maps=True)`` gives). ``settings`` (a ``ConditionalFit``;
        None: the defaults) and ``fields`` (keywords that replace its fields) say how.
        ``context="checkerboard"`` (maps only) first fits a ``CheckerboardContext``: non-anchor
        positions are then coded after the anchors with shifted scale indexes and integer means,
        and the circuit is fit on what the coder sees. ``context="three-pass"`` (the default) also
        fits the diagonal-lattice context of the (odd, odd) anchors on the (even, even) ones (its
        history keys start with ``anchor_``); rows need ``context=None``. ``max_items`` random
        positions are used (None: all), ``holdout`` of them to report held-out bits. Adam for
        ``steps`` steps on mini-batches of ``batch_size`` positions (learning rate decayed
        linearly to 10%). The radius R covers the ``1 - tail`` quantile of ``|symbol|`` (at least
        4, at most ``max_radius``). ``init="data"`` starts from the binned standardized symbols
        (``ScaleConditionedTree.init_from_data``), ``"baseline"`` next to the Gaussian
        conditional (``init_params``). Ends with ``update()``. Returns the history (held-out bits
        per position of the baseline and the circuit, both after the context; the context's own
        training bits on its targets). ``warm_start=True``, the old switch to ``adapt``, still
        works with a ``FutureWarning``.
        """
        kept = pop_warm_start(fields, CONDITIONAL_ADAPT_FIELDS, "adapt(...)")
        if kept is not None:  # the deprecated switch to adapt
            self.check_settings(settings, **fields)
            return self.adapt(symbols, indexes, settings, progress=progress, **kept)
        s = self.check_settings(settings, **fields)
        table = self._scale_table_or_default()
        maps = self._latent_maps(symbols, indexes, table, s.context)
        ctx, actx, ctx_info = None, None, {}
        if maps is not None and s.context is not None:
            ctx = CheckerboardContext(maps[0][0].shape[1], table.cpu())
            ctx_info = ctx.fit(maps, table.cpu())
            if s.context == "three-pass":
                actx = CheckerboardContext(maps[0][0].shape[1], table.cpu(), lattice="diagonal")
                ctx_info |= {f"anchor_{k}": v for k, v in actx.fit(maps, table.cpu()).items()}
        u, idx = self._coded_rows(symbols, indexes, maps, ctx, actx)
        g = torch.Generator().manual_seed(s.seed)
        u, idx, train, hold = self._split(u, idx, s, g)
        c, dev = u.shape[1], u.device
        mag = u.abs().flatten().sort().values
        radius = int(mag[min(len(mag) - 1, math.ceil((1.0 - s.tail) * (len(mag) - 1)))]) + 1
        radius = max(4, min(s.max_radius, radius))
        sigma = table.to(dev)[idx].float()
        uf = u.float()
        if s.structure == "star" or c == 1:
            tree = star_tree((uf / sigma).double())
        else:  # Chow-Liu tree on standardized symbols binned into 8 classes
            z = torch.clamp(torch.round(uf.cpu() / sigma.cpu() * 2.0), -4, 3).long() + 4
            tree = chow_liu_tree(pairwise_mutual_information(z, 8, num_bins=8, seed=s.seed))
        pc = ScaleConditionedTree(tree, s.num_latents, len(table)).to(dev)
        if s.init == "data":
            pc.init_from_data(uf, sigma, seed=s.seed)
        else:
            pc.init_params(seed=s.seed)
        hist = self._train(pc, uf, idx, table, train, hold, as_kwargs(s), g, progress, ctx_info)
        self.pc = pc
        self.context = ctx.to(dev) if ctx is not None else None
        self.anchor_context = actx.to(dev) if actx is not None else None
        self._offset = torch.tensor([-radius], dtype=torch.int32, device=dev)
        self._cdf_length = torch.tensor([2 * radius + 1], dtype=torch.int32, device=dev)
        self.update()
        return hist

    def adapt(
        self,
        symbols: Tensor | Sequence[Tensor],
        indexes: Tensor | Sequence[Tensor],
        settings: ConditionalFit | None = None,
        *,
        progress: bool = True,
        **fields: Any,
    ) -> list[dict]:
        """Continue the fitted model on new latents (``pc-prior prior adapt``: adapt a prior to a
        domain): Adam from the current parameters.

        Only the training schedule is chosen (``settings.CONDITIONAL_ADAPT_FIELDS``; the rest of
        ``settings`` is not used): the contexts, structure, radius and K are the fitted model's,
        and a keyword for one of them raises ``InputError``. A model fitted with a context
        continues on latent maps only. ``NotFittedError`` if there is nothing to continue.
        """
        s = self.check_settings(settings, **fields)
        check_adapt_fields(fields, CONDITIONAL_ADAPT_FIELDS, "adapt")
        pc = self._require_fitted()
        table = self._scale_table_or_default()
        maps = self._latent_maps(symbols, indexes, table, self.schedule, adapting=True)
        ctx = actx = None
        if maps is not None and self.context is not None:
            at = maps[0][0].device
            ctx = self.context.to(at)
            actx = None if self.anchor_context is None else self.anchor_context.to(at)
        u, idx = self._coded_rows(symbols, indexes, maps, ctx, actx)
        if u.shape[1] != self.channels:
            raise InputError(
                f"symbols have {u.shape[1]} channels, the fitted model {self.channels}: adapt "
                "continues the same model"
            )
        g = torch.Generator().manual_seed(s.seed)
        u, idx, train, hold = self._split(u, idx, s, g)
        hist = self._train(pc, u.float(), idx, table, train, hold, as_kwargs(s), g, progress, {})
        self.update()
        return hist

    def _latent_maps(
        self,
        symbols: Tensor | Sequence[Tensor],
        indexes: Tensor | Sequence[Tensor],
        table: Tensor,
        context: str | None,
        adapting: bool = False,
    ) -> Maps | None:
        """The checked (symbols, indexes) maps per image, or None for rows (checked too: rows
        carry no neighbours, so a ``context`` is an ``InputError`` naming the fix)."""
        if isinstance(symbols, (list, tuple)) or isinstance(indexes, (list, tuple)):
            return self._check_maps(symbols, indexes, table)
        if context is not None:
            raise InputError(
                f"the {context} context needs latent maps [B, C, H, W] (a list per image), not "
                "rows: "
                + (
                    "the model was fitted with a context, continue it on maps"
                    if adapting
                    else "pass context=None to fit rows"
                )
            )
        self._check_integers(symbols, indexes, table)
        return None

    @staticmethod
    def _coded_rows(
        symbols: Tensor | Sequence[Tensor],
        indexes: Tensor | Sequence[Tensor],
        maps: Maps | None,
        ctx: CheckerboardContext | None,
        actx: CheckerboardContext | None,
    ) -> tuple[Tensor, Tensor]:
        """Rows [N, C] of what the coder sees (int64): with a context, the symbols less their
        means and the shifted indexes (``apply_contexts``); rows as given."""
        if maps is not None:
            if ctx is not None:
                coded = []
                for sy, sx in maps:
                    s_ctx, m = apply_contexts(ctx, actx, sy, sx)
                    coded.append((sy - m, s_ctx))
                maps = coded
            symbols = torch.cat([position_rows(sy) for sy, _ in maps])
            indexes = torch.cat([position_rows(sx) for _, sx in maps])
        assert isinstance(symbols, Tensor) and isinstance(indexes, Tensor)
        if symbols.dim() != 2 or tuple(indexes.shape) != tuple(symbols.shape):
            raise InputError(
                f"symbols and indexes must both have shape [N, C], got {tuple(symbols.shape)} "
                f"and {tuple(indexes.shape)}"
            )
        if len(symbols) == 0:
            raise InputError("no latent positions to fit on")
        return symbols.long(), indexes.long()

    def _split(
        self, u: Tensor, idx: Tensor, s: ConditionalFit, g: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """At most ``max_items`` random rows on the model's device, and the training and
        held-out positions among them (``holdout``; none under 20 rows)."""
        if s.max_items is not None and len(u) > s.max_items:
            keep = torch.randperm(len(u), generator=g)[: s.max_items]
            u, idx = u[keep], idx[keep]
        perm = torch.randperm(len(u), generator=g)
        n_hold = int(len(u) * s.holdout) if len(u) >= 20 else 0
        dev = self.scale_bound.device
        return u.to(dev), idx.to(dev), perm[n_hold:], perm[:n_hold]

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
