"""Fitting a ``PCEntropyBottleneck``: alphabets, structure and parameters from latent values.

``fit`` learns a new circuit; ``adapt`` continues a fitted one on other latents (a prior adapted to
a domain). Settings come one way: a ``pc_prior.settings.BottleneckFit`` (the defaults in one
place) and/or keywords that map one to one onto its fields; everything is checked before any work
(``check_settings``), and a combination that the model could not honour (a context on rows, which
have no neighbours; a context with logistic leaves, which have no leaf groups) is an
``InputError`` naming the fix, never silently dropped.

A fit ends with the leaves on the stored grid (``snap_leaves``) and ``update(force=True)``, so
the model that coded in the fit's last step is the one a codec file stores.

This is one concern of ``PCEntropyBottleneck`` (``entropy_models``), as a mixin: the stored form
is ``bottleneck_state``'s, coding the base's (``base.PCEntropyModel``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_real, check_step_size
from ..coding import quantize_probs
from ..continuous import DiscretizedLogisticTree
from ..errors import InputError
from ..fitting import em_update, expected_counts, fit_em
from ..hclt import HCLT, GroupedHCLT
from ..settings import (
    BOTTLENECK_ADAPT_FIELDS,
    CHOICES,
    BottleneckFit,
    as_kwargs,
    check_adapt_fields,
    deprecated_check_fit_args,
    pop_warm_start,
    settings_with,
)
from ..structure import chow_liu_tree, pairwise_mutual_information, star_tree
from .base import position_rows
from .bottleneck_state import SCHEDULE_CODES
from .context import (
    MAGNITUDE_EDGES,
    channel_edges,
    leaf_groups,
    num_leaf_groups,
    num_state_ids,
)

__all__ = ["BottleneckFitting"]

LN2 = math.log(2.0)
STATE_BACKOFF = 10.0  # pseudo-counts pulling each state-context prior towards the root prior
STATE_EM_ROUNDS = 30  # EM rounds of the state-context priors (the leaves stay fixed)


class BottleneckFitting:
    """``PCEntropyBottleneck``'s fitting (mixin): ``check_settings``, ``fit`` and ``adapt``."""

    # provided by PCEntropyBottleneck and its bases
    pc: HCLT | DiscretizedLogisticTree | None
    channels: int
    quantiles: Tensor
    schedule: str | None
    state_context: str | None
    _offset: Tensor
    _cdf_length: Tensor
    _quantized_cdf: Tensor
    _pc_schedule: Tensor
    _leaf_edges: Tensor
    _state_roots: Tensor
    _require_fitted: Any
    symbols: Any
    _indices: Any
    _medians: Any
    _leaf_indices: Any
    _root_evidence: Any
    _state_ids: Any
    snap_leaves: Any
    update: Any

    @classmethod
    def check_settings(cls, settings: BottleneckFit | None = None, **fields: Any) -> BottleneckFit:
        """The fit settings: ``settings`` (None: ``BottleneckFit()``, the defaults) with ``fields``
        replaced, checked without any data (names, types, ranges, combinations) and numbers made
        int/float. The first bad one raises ``InputError`` naming it; ``fit``, ``adapt`` and
        ``fit_prior`` call this first, so nothing is collected or learned before."""
        s = settings_with(BottleneckFit, settings, fields, f"{cls.__name__}.fit")
        for name in (
            "leaves",
            "structure",
            "context",
            "context_bins",
            "group_fit",
            "state_context",
        ):
            check_choice(name, getattr(s, name), CHOICES[name])
        s = dataclasses.replace(
            s,
            num_latents=check_int("num_latents", s.num_latents, 1),
            tail=check_real("tail", s.tail, 0.0, 0.5, high_open=True),
            max_alphabet=check_int("max_alphabet", s.max_alphabet, 1),
            max_items=check_int("max_items", s.max_items, 1, allow_none=True),
            epochs=check_int("epochs", s.epochs, 0),
            batch_size=check_int("batch_size", s.batch_size, 1),
            full_batch_epochs=check_int("full_batch_epochs", s.full_batch_epochs, 0),
            step_size=check_step_size(s.step_size),
            pseudocount=check_real("pseudocount", s.pseudocount, 0.0),
            group_backoff=check_real("group_backoff", s.group_backoff, 0.0),
            group_epochs=check_int("group_epochs", s.group_epochs, 0),
            state_epochs=check_int("state_epochs", s.state_epochs, 0),
            finetune_steps=check_int("finetune_steps", s.finetune_steps, 0),
            lr=check_real("lr", s.lr, 0.0, low_open=True),
            seed=check_int("seed", s.seed),
        )
        if s.leaves == "logistic" and s.context is not None:
            raise InputError(
                f"leaves='logistic' has no leaf groups for the {s.context!r} context (logistic "
                "leaves code in one pass): pass context=None with it (--context none)"
            )
        return s

    @classmethod
    def check_fit_args(cls, **kwargs: Any) -> dict[str, Any]:
        """Deprecated: ``check_settings`` (this returns its fields as a dict); goes in 0.4."""
        return deprecated_check_fit_args(cls.check_settings, kwargs)

    def fit(
        self,
        values: Tensor | Sequence[Tensor],
        settings: BottleneckFit | None = None,
        *,
        progress: bool = True,
        **fields: Any,
    ) -> list[dict]:
        """Learn alphabets, structure and parameters from latent values: rows [N, C] (one per
        position) or latent maps [B, C, H, W] (a sequence, one per image; a context needs them).

        ``settings`` (a ``BottleneckFit``; None: the defaults) and ``fields`` (keywords that
        replace its fields, e.g. ``num_latents=8, context=None``) say how; ``BottleneckFit``
        documents each. ``context`` (``"checkerboard"``, ``"three-pass"`` or ``"four-pass"``) codes the positions in passes
        (``pc_prior.integrations.context.pass_masks``); a leaf of a later pass is conditioned on
        its channel's decoded neighbours (``leaf_groups``: a ``GroupedHCLT``), each group backed
        off towards its leaf by ``group_backoff`` pseudo-counts. ``group_fit="states-first"``
        learns the latent states without context first (the one-pass circuit), then each
        group's leaves from one count pass of those states, then ``group_epochs`` full-batch
        EM epochs of the grouped circuit (backed off again). None: one pass, which rows [N, C]
        (no neighbours) and logistic leaves (no groups) need: with a context they are an
        ``InputError``. ``state_context="neighbours"`` (with a context) then fits, leaves fixed,
        a prior over the latent states per state-context id (``state_ids``: the decoded
        neighbours' most common state and its count), each backed off towards the root prior.

        Alphabets cover the [tail, 1 - tail] quantiles of each channel's symbols (at most
        ``max_alphabet`` symbols); everything else is escaped. ``max_items`` random positions are
        used for structure learning and EM (None: all). ``structure``: ``"chow-liu"`` (learned
        tree) or ``"star"`` (every channel a child of the highest-variance one: a generalized
        mixture of K factorized models). ``leaves="logistic"`` then converts the categorical
        leaves to discretized logistics (``DiscretizedLogisticTree``) and refines the whole
        circuit by Adam on noisy values for ``finetune_steps`` steps. Ends with
        ``update(force=True)``. Returns the history (one record per epoch or refinement).
        ``warm_start=True``, the old switch to ``adapt``, still works with a ``FutureWarning``.
        """
        kept = pop_warm_start(fields, BOTTLENECK_ADAPT_FIELDS, "adapt(...)")
        if kept is not None:  # the deprecated switch to adapt
            self.check_settings(settings, **fields)
            return self.adapt(values, settings, progress=progress, **kept)
        s = self.check_settings(settings, **fields)
        a, context = as_kwargs(s), s.context
        edges = torch.tensor(MAGNITUDE_EDGES) if s.context_bins == "fixed" else None
        sym, grp, edges = self._fit_symbols(values, context, edges)  # groups None without context
        if isinstance(values, Tensor) and context is not None:
            raise InputError(
                f"rows [N, C] have no neighbours for the {context!r} context: fit latent maps (a "
                f"list of [B, {self.channels}, H, W] tensors, as fit_prior collects), or pass "
                "context=None for one pass"
            )
        g = torch.Generator().manual_seed(s.seed)
        sym, grp = self._subsample(sym, grp, s.max_items, g)
        dev = self.quantiles.device
        srt = sym.sort(0).values  # per-channel order statistics (torch.quantile caps input size)
        lo = srt[math.floor(s.tail * (len(sym) - 1))]
        hi = srt[math.ceil((1.0 - s.tail) * (len(sym) - 1))]
        width = hi - lo + 1
        over = width > s.max_alphabet  # keep the central max_alphabet symbols around the median 0
        lo = torch.where(over, torch.clamp(lo, min=-(s.max_alphabet // 2)), lo)
        lo = torch.where(over, torch.minimum(lo, hi - s.max_alphabet + 1), lo)
        n = torch.minimum(hi - lo + 1, torch.full_like(hi, s.max_alphabet))
        self._offset = lo.to(torch.int32)
        self._cdf_length = n.to(torch.int32)
        self._quantized_cdf = torch.zeros(self.channels, 0, dtype=torch.int32, device=dev)
        self._state_roots = torch.zeros(0, 0, dtype=torch.int32, device=dev)
        v = int(n.max()) + 1
        self.pc = None  # num_symbols comes from the new circuit below
        rel = sym - lo
        esc = (rel < 0) | (rel >= n)
        idx = torch.where(esc, torch.full_like(rel, v - 1), rel)
        if s.structure == "star":
            tree = star_tree(idx)
        else:
            tree = chow_liu_tree(pairwise_mutual_information(idx.cpu(), v, seed=s.seed))
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
        if grp is None or s.group_fit == "states-first":  # the groups, if any, come after EM
            pc: HCLT | DiscretizedLogisticTree = HCLT(tree, v, s.num_latents)
        else:
            pc = GroupedHCLT(tree, v, num_groups, s.num_latents)
            idx = pc.joint_index(grp, idx)
        pc.init_params(idx.cpu(), seed=s.seed)
        pc = pc.to(dev)
        hist = self._train(pc, idx, values, a, g, progress, [])
        if grp is not None and not isinstance(pc, GroupedHCLT):  # states-first: now the groups
            assert isinstance(pc, HCLT)
            pc = GroupedHCLT.from_hclt(pc, num_groups)
            idx = pc.joint_index(grp, idx)
            self._back_off_groups(pc, idx, a)
            if s.group_epochs:  # then states and groups together, backed off again
                grouped = a | {"epochs": 0, "full_batch_epochs": s.group_epochs}
                self._train(pc, idx, values, grouped, g, progress, hist)
        if s.leaves == "logistic":  # EM first, then smooth leaves refined by Adam
            assert isinstance(pc, HCLT)
            pc = DiscretizedLogisticTree.from_hclt(pc, lo, n)
            self._train(pc, idx, values, a, g, progress, hist)
        self.pc = pc
        if s.state_context is not None and isinstance(pc, GroupedHCLT):
            self._state_roots = self._fit_state_roots(values, a)
        self.snap_leaves()
        self.update(force=True)
        return hist

    def adapt(
        self,
        values: Tensor | Sequence[Tensor],
        settings: BottleneckFit | None = None,
        *,
        progress: bool = True,
        **fields: Any,
    ) -> list[dict]:
        """Continue the fitted circuit on new latent values (``pc-prior prior adapt``: adapt a
        prior to a domain), from its current parameters.

        Only the training schedule is chosen (``settings.BOTTLENECK_ADAPT_FIELDS``: epochs, step
        size, ...; the rest of ``settings`` is not used): the alphabets, structure, K, leaves,
        schedule and bin edges are the fitted model's, and a keyword for one of them raises
        ``InputError``. Categorical leaves continue by EM (on the grouped circuit as it is,
        states and groups together), logistic leaves by the Adam refinement; the state context's
        priors follow the refitted states. A model fitted with a context continues on latent
        maps only. ``NotFittedError`` if there is nothing to continue.
        """
        s = self.check_settings(settings, **fields)
        check_adapt_fields(fields, BOTTLENECK_ADAPT_FIELDS, "adapt")
        a = as_kwargs(s)
        pc = self._require_fitted()
        context = self.schedule
        if isinstance(values, Tensor) and context is not None:
            raise InputError(
                f"this model codes in the {context!r} schedule: continue it on latent maps (a list "
                f"of [B, {self.channels}, H, W] tensors, as fit_prior collects), not rows"
            )
        sym, grp, _ = self._fit_symbols(values, context, self._leaf_edges)
        g = torch.Generator().manual_seed(s.seed)
        sym, grp = self._subsample(sym, grp, s.max_items, g)
        idx = self._indices(sym)[0]
        if isinstance(pc, GroupedHCLT):
            idx = pc.joint_index(grp, idx)
        hist = self._train(pc, idx, values, a, g, progress, [])
        if self.state_context is not None:  # the priors follow the refitted states
            self._state_roots = self._fit_state_roots(values, a)
        self.snap_leaves()
        self.update(force=True)
        return hist

    @staticmethod
    def _subsample(
        sym: Tensor, grp: Tensor | None, max_items: int | None, g: torch.Generator
    ) -> tuple[Tensor, Tensor | None]:
        """At most ``max_items`` random rows of the symbols (and their groups), drawn with ``g``."""
        if max_items is None or len(sym) <= max_items:
            return sym, grp
        keep = torch.randperm(len(sym), generator=g)[:max_items].to(sym.device)
        return sym[keep], None if grp is None else grp[keep]

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
