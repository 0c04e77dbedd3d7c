"""Hidden Chow-Liu Trees: a latent variable with K states per observed variable, arranged on a tree.

As a probabilistic circuit, every latent state is a sum node over the states of its children's
latents (weights: the transition matrix), and every observed variable is a leaf distribution per
state. Evaluation is compiled by tree level: all of a level's messages are computed together, one
batched matrix product per level, in log space with per-row rescaling so float32 does not
underflow. The same code runs on CPU and CUDA.

``LatentTreeCircuit`` holds the tree, root prior and transitions and works on leaf
log-likelihoods of shape [N, D, K]; subclasses choose the leaf distributions (``HCLT``:
categoricals over 0..V-1; the CompressAI integrations: discretized continuous leaves).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import portable
from ._checks import check_int, check_tensor
from .errors import InputError
from .structure import Tree, chow_liu_tree, pairwise_mutual_information

__all__ = ["HCLT", "GroupedHCLT", "LatentTreeCircuit", "check_symbols"]


def _logmatmulexp(a: Tensor, w: Tensor) -> Tensor:
    """``log(exp(a) @ w)`` batched: a [B, N, K] log values, w [B, K, M] non-negative weights."""
    # The shift m cancels exactly, so it carries no gradient: detaching it spares autograd the
    # max's backward (a mask over all of ``a``) without changing any gradient.
    m = a.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return torch.log(torch.bmm((a - m).exp(), w)) + m


def check_symbols(x: Tensor, num_vars: int, num_cats: int, name: str = "x") -> Tensor:
    """Validate integer data [N, D] with symbols in 0..num_cats-1; return it as int64 (else ``InputError``)."""
    check_tensor(name, x, "integer", f"[N, {num_vars}]")
    if x.dim() != 2 or x.shape[1] != num_vars:
        raise InputError(f"{name} must have shape [N, {num_vars}], got {tuple(x.shape)}")
    if x.numel():
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= num_cats:
            raise InputError(
                f"{name} has symbols out of range: min {lo}, max {hi}, allowed 0..{num_cats - 1}"
            )
    return x.long()


def check_circuit_dtype(dtype: Any) -> torch.dtype:
    """``dtype`` if a circuit's parameters can have it (a float dtype they can be trained in)."""
    if dtype not in (torch.float32, torch.float64):
        raise InputError(
            f"dtype must be torch.float32 or torch.float64 (the parameters are trained logits), "
            f"got {dtype!r}"
        )
    return dtype


class LatentTreeCircuit(nn.Module):
    """Root prior and transition matrices of a latent tree, evaluated by level.

    Parameters are unnormalized logits (so Adam can train them directly); every query uses their
    log-softmax. ``transition_logits[i]`` is indexed [parent state, child state]; the root's row
    is unused.
    """

    # Buffers registered in __init__, declared so type checkers know them as tensors.
    parent: Tensor
    level_order: Tensor

    def __init__(self, tree: Tree, num_latents: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        num_latents = check_int("num_latents", num_latents, 1)
        check_circuit_dtype(dtype)
        if not isinstance(tree, Tree):
            raise InputError(f"tree must be a pc_prior.Tree, got {type(tree).__name__}")
        self.tree = tree
        self.num_latents = int(num_latents)
        d, k = tree.num_vars, self.num_latents
        self.root_logits = nn.Parameter(torch.zeros(k, dtype=dtype))
        self.transition_logits = nn.Parameter(torch.zeros(d, k, k, dtype=dtype))
        parent = torch.as_tensor(np.asarray(tree.parent), dtype=torch.long)
        self.register_buffer("parent", parent, persistent=False)
        # Integer coding tables (pc_prior.coding.coding_tables): empty until first used. Integer
        # buffers, so .to() / .double() / .half() carry them bit for bit.
        for name in ("_tables_root", "_tables_trans", "_tables_emit"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.int32), persistent=False)
        levels = tree.levels()
        for lvl, idx in enumerate(levels):
            self.register_buffer(
                f"_level{lvl}", torch.as_tensor(idx, dtype=torch.long), persistent=False
            )
            if lvl:
                pos = {int(n): j for j, n in enumerate(levels[lvl - 1])}
                local = [pos[int(tree.parent[n])] for n in idx]
                self.register_buffer(
                    f"_plocal{lvl}", torch.as_tensor(local, dtype=torch.long), persistent=False
                )
        self.num_levels = len(levels)
        self.level_sizes = [len(idx) for idx in levels]
        self.register_buffer(
            "level_order",
            torch.as_tensor(np.concatenate(levels), dtype=torch.long),
            persistent=False,
        )

    # -- structure ---------------------------------------------------------------------------
    @property
    def num_vars(self) -> int:
        """D, the number of observed variables (the tree's nodes)."""
        return self.tree.num_vars

    def _level(self, lvl: int) -> Tensor:
        return getattr(self, f"_level{lvl}")

    def _parent_local(self, lvl: int) -> Tensor:
        return getattr(self, f"_plocal{lvl}")

    # -- parameters --------------------------------------------------------------------------
    def log_root(self) -> Tensor:
        """Log prior of the root's K states [K] (log-softmax of the logits)."""
        return torch.log_softmax(self.root_logits, -1)

    def log_transitions(self) -> Tensor:
        """Log transitions [D, K, K], indexed [parent state, child state] (the root's row is
        unused)."""
        return torch.log_softmax(self.transition_logits, -1)

    @torch.no_grad()
    def coding_root_trans(self) -> tuple[Tensor, Tensor]:
        """Root prior [K] and transitions [D, K, K] for the coder, float64, by ``pc_prior.portable``
        (the same bits on every device, so tables rebuilt from saved parameters match exactly)."""
        return portable.softmax(self.root_logits), portable.softmax(self.transition_logits)

    def coding_emissions(self) -> Tensor:
        """Leaf pmfs [D, K, V] for the coder, float64, by ``pc_prior.portable``: the leaf protocol
        every circuit with per-variable leaves implements (``pc_prior.coding.coding_tables``)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-variable emission tables")

    def config(self) -> dict[str, int]:
        """The sizes that, with the tree and dtype, rebuild this circuit: ``type(self)(tree,
        **config(), dtype=...)`` (``pc_prior.checkpoint`` saves and loads every circuit this way)."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its config")

    def check_finite(self) -> None:
        """Raise ``InputError`` naming the first parameter that holds NaN or infinite values.

        Such a circuit has no probabilities to code with (its tables would not normalize); call
        this before quantizing the circuit into coding tables.
        """
        for name, p in self.named_parameters():
            bad = ~torch.isfinite(p.detach())
            if bad.any():
                n_nan = int(torch.isnan(p.detach()).sum())
                raise InputError(
                    f"the circuit's parameter {name} holds {int(bad.sum())} non-finite values "
                    f"({n_nan} NaN, {int(bad.sum()) - n_nan} infinite) of {p.numel()}: it has no "
                    "probabilities to code with; refit it or load finite parameters"
                )

    # -- passes ------------------------------------------------------------------------------
    # The passes work node-major: a level's values are [n_level, N, K], so every level's messages
    # are one batched matrix product over its nodes with no transposes or copies, and the
    # children's messages are summed into their parents with one index_add over whole [N, K] slabs.
    def to_levels(self, leaf: Tensor) -> Tensor:
        """Leaf log-likelihoods [N, D, K] in variable order -> node-major [D, N, K] in level order."""
        return leaf.index_select(1, self.level_order).transpose(0, 1)

    def from_levels(self, values: Tensor) -> Tensor:
        """Node-major values [D, N, K] in level order -> [N, D, K] in variable order."""
        out = values.new_empty(values.shape[1], self.num_vars, values.shape[2])
        out[:, self.level_order] = values.transpose(0, 1)
        return out

    def inside(
        self,
        leaves: Tensor,
        log_root: Tensor | None = None,
        log_trans: Tensor | None = None,
        keep: bool = False,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Inside pass on node-major leaf log-likelihoods ``leaves`` [D, N, K] in level order.

        Returns log p [N] and, with ``keep``, per level the inside values m (leaf plus children's
        messages) and the messages lambda sent to the parent level (both [n_level, N, K]).
        """
        log_root = self.log_root() if log_root is None else log_root
        log_trans = self.log_transitions() if log_trans is None else log_trans
        sizes = self.level_sizes
        by_level = leaves.split(sizes, 0)
        trans = log_trans.exp().index_select(0, self.level_order).split(sizes, 0)
        n = leaves.shape[1]
        insides: list[Tensor] = [None] * self.num_levels  # type: ignore[list-item]
        lams: list[Tensor] = [None] * self.num_levels  # type: ignore[list-item]
        child_sum = None
        for lvl in range(self.num_levels - 1, -1, -1):
            m = by_level[lvl]
            if child_sum is not None:
                m = m + child_sum
            if keep:
                insides[lvl] = m
            if lvl == 0:
                return torch.logsumexp(m[0] + log_root, -1), insides, lams
            # lambda(z_parent) = log sum_z T[z_parent, z] exp(m(z))
            lam = _logmatmulexp(m, trans[lvl].transpose(1, 2))
            if keep:
                lams[lvl] = lam
            child_sum = lam.new_zeros(sizes[lvl - 1], n, self.num_latents).index_add(
                0, self._parent_local(lvl), lam
            )
        raise AssertionError("unreachable")

    def upward(
        self,
        leaf: Tensor,
        log_root: Tensor | None = None,
        log_trans: Tensor | None = None,
        keep: bool = False,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """:meth:`inside` on leaf log-likelihoods ``leaf`` [N, D, K] in variable order."""
        return self.inside(self.to_levels(leaf), log_root, log_trans, keep)

    def downward(self, insides: list[Tensor], lams: list[Tensor]) -> Tensor:
        """Outside pass: log p(evidence outside the subtree of i, z_i), node-major [D, N, K] in level order."""
        log_root, trans = self.log_root(), self.log_transitions().exp()
        n = insides[0].shape[1]
        prev_out = log_root.expand(1, n, -1)
        outs = [prev_out]
        for lvl in range(1, self.num_levels):
            idx, pl = self._level(lvl), self._parent_local(lvl)
            # the parent's everything, per child
            full = (prev_out + insides[lvl - 1]).index_select(0, pl)
            excl = full - lams[lvl]  # remove this child's own message
            prev_out = _logmatmulexp(excl, trans.index_select(0, idx))
            outs.append(prev_out)
        return torch.cat(outs, 0)

    def posterior_context(self, leaf: Tensor) -> Tensor:
        """log p(X_i's latent z_i, evidence on all variables but X_i), for every i: [N, D, K].

        Combine with a leaf distribution over X_i's values to get p(X_i | everything else).
        """
        leaves = self.to_levels(leaf)
        _, insides, lams = self.inside(leaves, keep=True)
        out = self.downward(insides, lams)
        return self.from_levels(out + torch.cat(insides, 0) - leaves)

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sample of all latent states, [n, D]."""
        dev = self.root_logits.device
        z = torch.empty(n, self.num_vars, dtype=torch.long, device=dev)
        root = self._level(0)
        z[:, root] = torch.multinomial(self.log_root().exp().expand(n, -1), 1, generator=generator)
        trans = self.log_transitions().exp()
        for lvl in range(1, self.num_levels):
            idx = self._level(lvl)
            par = self.parent[idx]
            rows = trans[idx[None, :], z[:, par]]  # [n, m, K]
            flat = torch.multinomial(rows.reshape(-1, self.num_latents), 1, generator=generator)
            z[:, idx] = flat.view(n, len(idx))
        return z


class HCLT(LatentTreeCircuit):
    """Hidden Chow-Liu Tree with categorical leaves over the symbols 0..num_cats-1."""

    #: What ``checkpoint.save`` stored beside the circuit; set by ``checkpoint.load``.
    metadata: dict[str, Any]

    def __init__(
        self, tree: Tree, num_cats: int, num_latents: int, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(tree, num_latents, dtype)
        num_cats = check_int("num_cats", num_cats, 2)
        self.num_cats = int(num_cats)
        self.emission_logits = nn.Parameter(
            torch.zeros(tree.num_vars, num_latents, num_cats, dtype=dtype)
        )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_data(
        cls,
        x: Tensor,
        num_cats: int,
        num_latents: int,
        *,
        num_bins: int = 16,
        max_samples: int = 20000,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> HCLT:
        """Learn the Chow-Liu tree of ``x`` [N, D] and initialize parameters around the data."""
        if not isinstance(x, Tensor) or x.dim() != 2:
            what = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise InputError(f"x must be a tensor of shape [N, D], got {what}")
        num_cats = check_int("num_cats", num_cats, 2)
        check_circuit_dtype(dtype)
        x = check_symbols(x, x.shape[1], num_cats)
        if x.shape[0] == 0:
            raise InputError("x has no rows to learn a structure from")
        if x.shape[1] == 0:
            raise InputError("x has no variables (shape [N, 0]): a circuit needs at least one")
        mi = pairwise_mutual_information(
            x, num_cats, num_bins=num_bins, max_samples=max_samples, seed=seed
        )
        pc = cls(chow_liu_tree(mi), num_cats, num_latents, dtype=dtype)
        pc.init_params(x, seed=seed)
        return pc

    @torch.no_grad()
    def init_params(self, x: Tensor | None = None, seed: int = 0, noise: float = 0.5) -> None:
        """Random parameters; emissions start near each variable's smoothed histogram in ``x``."""
        g = torch.Generator().manual_seed(seed)
        d, k, v = self.num_vars, self.num_latents, self.num_cats
        dt = self.root_logits.dtype

        def dirichlet_like(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=g, dtype=torch.float64) * noise + 1.0

        self.root_logits.copy_(dirichlet_like(k).log().to(dt))
        self.transition_logits.copy_(dirichlet_like(d, k, k).log().to(dt))
        if x is None:
            hist = torch.full((d, v), 1.0 / v, dtype=torch.float64)
        else:
            x = check_symbols(x, d, v).cpu()
            hist = torch.zeros(d, v, dtype=torch.float64)
            hist.scatter_add_(1, x.T, torch.ones(x.T.shape, dtype=torch.float64))
            hist = (hist + 1.0) / (hist.sum(1, keepdim=True) + v)
        # Each state: a random-exponent tilt of the histogram, so states differ from the start.
        mix = torch.rand(d, k, v, generator=g, dtype=torch.float64)
        init = (hist.log()[:, None, :] + noise * 4 * mix).to(dt)
        self.emission_logits.copy_(init.view_as(self.emission_logits))

    # -- leaves ------------------------------------------------------------------------------
    def log_emissions(self) -> Tensor:
        """Leaf log-pmfs [D, K, V] (log-softmax of the emission logits)."""
        return torch.log_softmax(self.emission_logits, -1)

    @torch.no_grad()
    def coding_emissions(self) -> Tensor:
        """The coder's leaf pmfs [D, K, V], float64, by ``pc_prior.portable`` (the same bits on
        every device)."""
        return portable.softmax(self.emission_logits)

    def config(self) -> dict[str, int]:
        """The sizes that rebuild this circuit with its tree: V and K
        (``LatentTreeCircuit.config``)."""
        return {"num_cats": self.num_cats, "num_latents": self.num_latents}

    def leaf_log_probs(
        self, x: Tensor, missing: Tensor | None = None, log_emit: Tensor | None = None
    ) -> Tensor:
        """Per-state leaf log-likelihoods [N, D, K]; a missing variable contributes log 1 = 0."""
        log_emit = self.log_emissions() if log_emit is None else log_emit
        d = self.num_vars
        # [D, V, K] indexed by (variable, its value) -> [N, D, K]
        leaf = log_emit.transpose(1, 2)[torch.arange(d, device=x.device), x]
        if missing is not None:
            leaf = leaf.masked_fill(missing[..., None], 0.0)
        return leaf

    def level_leaf_log_probs(
        self, x: Tensor, missing: Tensor | None = None, log_emit: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Leaf log-likelihoods node-major [D, N, K] in level order (:meth:`inside`'s input),
        and the row of each (variable, value) pair in ``log_emit`` flattened to [D·V, K] level
        order: one row gather, whose gradient is one ``index_add`` (:func:`emission_counts`)."""
        log_emit = self.log_emissions() if log_emit is None else log_emit
        d, v, k = self.num_vars, self.num_cats, self.num_latents
        table = log_emit.index_select(0, self.level_order).transpose(1, 2).reshape(d * v, k)
        var = torch.arange(d, device=x.device)[:, None]  # row of (variable, value): var·V + value
        rows = (var * v + x.T[self.level_order]).reshape(-1)
        leaves = table.index_select(0, rows).view(d, x.shape[0], k)
        if missing is not None:
            leaves = leaves.masked_fill(missing.T[self.level_order][..., None], 0.0)
        return leaves, rows

    def emission_counts(self, rows: Tensor, flow: Tensor) -> Tensor:
        """Expected emission counts [D, K, V] from the flow (gradient) ``flow`` [D, N, K] of the
        leaves :meth:`level_leaf_log_probs` gathered at ``rows``."""
        d, v, k = self.num_vars, self.num_cats, self.num_latents
        by_row = flow.new_zeros(d * v, k).index_add_(0, rows, flow.reshape(-1, k))
        counts = flow.new_empty(d, k, v)
        counts[self.level_order] = by_row.view(d, v, k).transpose(1, 2)
        return counts

    def _prep(self, x: Tensor, missing: Tensor | None) -> tuple[Tensor, Tensor | None]:
        x = check_symbols(x, self.num_vars, self.num_cats).to(self.root_logits.device)
        if missing is not None:
            if not isinstance(missing, Tensor) or missing.dtype != torch.bool:
                raise TypeError("missing must be a bool tensor of shape [N, D] or [D]")
            if missing.shape not in (x.shape, x.shape[1:]):
                raise ValueError(
                    f"missing must have shape {tuple(x.shape)} or [{x.shape[1]}], got {tuple(missing.shape)}"
                )
            missing = missing.to(x.device).expand_as(x)
            x = x.masked_fill(missing, 0)
        return x, missing

    # -- queries -----------------------------------------------------------------------------
    def log_prob(self, x: Tensor, missing: Tensor | None = None) -> Tensor:
        """log p(x) in nats, [N]; with a ``missing`` mask, the marginal of the observed values."""
        x, missing = self._prep(x, missing)
        return self.inside(self.level_leaf_log_probs(x, missing)[0])[0]

    def forward(self, x: Tensor, missing: Tensor | None = None) -> Tensor:
        """``log_prob(x, missing)``: log p(x) in nats, [N]."""
        return self.log_prob(x, missing)

    def conditionals(self, x: Tensor, missing: Tensor | None = None, chunk: int = 256) -> Tensor:
        """log p(X_i = v | observed values of every other variable), for all i and v: [N, D, V].

        Values of ``x`` at the variable itself are ignored; ``missing`` marks further variables
        to marginalize out. One inside and one outside pass serve all D variables.
        """
        x, missing = self._prep(x, missing)
        log_emit = self.log_emissions()
        outs = []
        for s in range(0, len(x), chunk):
            ms = None if missing is None else missing[s : s + chunk]
            ctx = self.posterior_context(
                self.leaf_log_probs(x[s : s + chunk], ms, log_emit)
            )  # [n, D, K]
            joint = _logmatmulexp(ctx.transpose(0, 1), log_emit.exp()).transpose(0, 1)  # [n, D, V]
            outs.append(joint - torch.logsumexp(joint, -1, keepdim=True))
        return (
            torch.cat(outs)
            if outs
            else x.new_empty(0, self.num_vars, self.num_cats, dtype=log_emit.dtype)
        )

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent samples, LongTensor [n, D]."""
        z = self.sample_latents(n, generator)
        emit = self.log_emissions().exp()
        probs = emit[torch.arange(self.num_vars, device=z.device)[None, :], z]  # [n, D, V]
        return torch.multinomial(probs.reshape(-1, self.num_cats), 1, generator=generator).view(
            n, self.num_vars
        )

    def extra_repr(self) -> str:
        """Sizes and tree height, for ``repr``."""
        return (
            f"num_vars={self.num_vars}, num_cats={self.num_cats}, num_latents={self.num_latents}, "
            f"height={self.tree.height}"
        )


class GroupedHCLT(HCLT):
    """An HCLT whose leaf (i, k) has one categorical over ``num_symbols`` symbols per *group* g.

    The group is side information each item carries per variable (a spatial context id, read
    from already decoded neighbours), so p(x_i = v | z_i = k, g) = emission[i, k, g, v]. Items
    are given as joint indices ``g * num_symbols + v`` (``num_cats = num_groups * num_symbols``):
    every HCLT pass, EM count and coding table works on them unchanged, and the distributions
    stay normalized per group (``log_emissions`` and the EM counts are per block of V).
    ``group_coding_emissions`` gives the coder's per-group tables [D, G, K, V].
    """

    def __init__(
        self,
        tree: Tree,
        num_symbols: int,
        num_groups: int,
        num_latents: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        num_symbols = check_int("num_symbols", num_symbols, 2)
        num_groups = check_int("num_groups", num_groups, 1)
        super().__init__(tree, num_groups * num_symbols, num_latents, dtype)
        self.num_symbols, self.num_groups = int(num_symbols), int(num_groups)
        self.emission_logits = nn.Parameter(
            torch.zeros(tree.num_vars, num_latents, num_groups, num_symbols, dtype=dtype)
        )

    @classmethod
    @torch.no_grad()
    def from_hclt(cls, pc: HCLT, num_groups: int) -> GroupedHCLT:
        """The same circuit with every leaf copied into ``num_groups`` groups: it gives every item
        the probability ``pc`` gives its symbols, whatever its groups (a start for ``back_off``)."""
        if type(pc) is not HCLT:
            raise InputError(f"from_hclt lifts a plain HCLT, got {type(pc).__name__}")
        out = cls(pc.tree, pc.num_cats, num_groups, pc.num_latents, pc.root_logits.dtype)
        out = out.to(pc.root_logits.device)
        out.root_logits.copy_(pc.root_logits)
        out.transition_logits.copy_(pc.transition_logits)
        out.emission_logits.copy_(pc.emission_logits[:, :, None, :].expand_as(out.emission_logits))
        return out

    def joint_index(self, groups: Tensor, symbols: Tensor) -> Tensor:
        """The HCLT symbol of (group, symbol) pairs: ``group * num_symbols + symbol``."""
        return groups.long() * self.num_symbols + symbols.long()

    def log_emissions(self) -> Tensor:
        """Leaf log-pmfs [D, K, G·V] of the joint (group, symbol) indices, normalized per group."""
        d, k = self.num_vars, self.num_latents
        return torch.log_softmax(self.emission_logits, -1).reshape(d, k, self.num_cats)

    @torch.no_grad()
    def coding_emissions(self) -> Tensor:
        """The coder's leaf pmfs [D, K, G·V], float64 (``pc_prior.portable``); each group's V
        entries sum to 1."""
        d, k = self.num_vars, self.num_latents
        return portable.softmax(self.emission_logits).reshape(d, k, self.num_cats)

    @torch.no_grad()
    def group_coding_emissions(self) -> Tensor:
        """The coder's leaf pmfs per group [D, G, K, V], float64 (``pc_prior.portable``)."""
        return portable.softmax(self.emission_logits).permute(0, 2, 1, 3).contiguous()

    def emission_counts(self, rows: Tensor, flow: Tensor) -> Tensor:
        """Expected emission counts [D, K, G, V] (EM normalizes each group's row on its own)."""
        return super().emission_counts(rows, flow).view_as(self.emission_logits)

    @torch.no_grad()
    def back_off(self, counts: Tensor, strength: float, pseudocount: float = 0.1) -> None:
        """Set the leaves from emission counts [D, K, G, V], each group's pulled towards its leaf's
        pooled distribution (all groups' counts together) by ``strength`` pseudo-counts.

        ``p(v | k, g) = (n[k, g, v] + strength · pool[k, v] + pseudocount / V) / total``: a group
        seen rarely codes like the leaf without context, a frequent one by its own counts (a
        hierarchical Dirichlet prior). Why: G groups split a leaf's data G ways.
        """
        n = counts.detach().double()
        pool = n.sum(2, keepdim=True)
        pool = pool / pool.sum(-1, keepdim=True).clamp_min(torch.finfo(n.dtype).tiny)
        p = n + strength * pool + pseudocount / n.shape[-1]
        p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(n.dtype).tiny)
        dt = self.emission_logits.dtype
        self.emission_logits.copy_(p.clamp_min(torch.finfo(dt).tiny).log().to(dt))

    def config(self) -> dict[str, int]:
        """The sizes that rebuild this circuit with its tree: symbols, groups and K
        (``LatentTreeCircuit.config``)."""
        return {
            "num_symbols": self.num_symbols,
            "num_groups": self.num_groups,
            "num_latents": self.num_latents,
        }
