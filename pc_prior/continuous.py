"""Latent trees with discretized continuous leaves: the circuits of the CompressAI entropy models.

Both subclass ``pc_prior.hclt.LatentTreeCircuit`` (tree, root prior, transitions, upward pass)
and add only their leaves, behind the leaf protocol the coder and the files use:
``leaf_log_probs`` for the likelihood, float64 coder probabilities from ``pc_prior.portable``
(``coding_emissions`` for per-variable leaves, ``emission_probs`` for per-scale ones), and
``config()`` for what rebuilds them from a checkpoint.

- ``DiscretizedLogisticTree``: logistic leaves discretized on per-variable alphabets plus
  ESCAPE, so the rate has a gradient with respect to the latent (joint fine-tuning of
  ``PCEntropyBottleneck``). For coding, the leaves are discretized onto the channel's alphabet,
  all mass outside it on ESCAPE, giving ordinary emission tables like ``HCLT``'s.
- ``ScaleConditionedTree``: Gaussian leaves whose scale is the hyper-decoder's, per scale index
  (``PCConditional``); one emission table per (variable, scale index).

``normal_cdf`` and ``gaussian_bin_mass`` are the differentiable float versions used in training
and in held-out estimates; the coder never uses them (its tables come from ``pc_prior.portable``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import portable
from .hclt import HCLT, LatentTreeCircuit
from .structure import Tree

__all__ = [
    "LIKELIHOOD_BOUND",
    "DiscretizedLogisticTree",
    "ScaleConditionedTree",
    "gaussian_bin_mass",
    "gaussian_bits",
    "normal_cdf",
]

LIKELIHOOD_BOUND = 1e-9  #: floor of leaf likelihoods in training and estimates (never in coding)


def normal_cdf(x: Tensor) -> Tensor:
    """Φ(x), differentiable (training and estimates; the coder uses ``portable.normal_cdf``)."""
    return 0.5 * torch.erfc(-(2**-0.5) * x)


def gaussian_bin_mass(u: Tensor, sigma: Tensor) -> Tensor:
    """P(round(N(0, σ²)) = u): the Gaussian conditional's mass of integer u, in the lower tail."""
    v = u.abs()
    return normal_cdf((0.5 - v) / sigma) - normal_cdf((-0.5 - v) / sigma)


MIN_SCALE = 0.05


def _bin_mass(
    upper: Tensor, lower: Tensor, sigmoid: Callable[[Tensor], Tensor] = torch.sigmoid
) -> Tensor:
    """sigmoid(upper) - sigmoid(lower), computed in the tail where it is accurate."""
    sign = -torch.sign(upper + lower)
    return (sigmoid(sign * upper) - sigmoid(sign * lower)).abs()


def gaussian_bits(u: Tensor, sigma: Tensor) -> Tensor:
    """Code length in bits of integer u under the Gaussian conditional of scale σ (floored mass)."""
    return -torch.log2(gaussian_bin_mass(u, sigma).clamp_min(LIKELIHOOD_BOUND))


class DiscretizedLogisticTree(LatentTreeCircuit):
    """Latent tree with discretized logistic leaves on alphabets ``lo_d .. lo_d + n_d - 1`` + ESCAPE."""

    alphabet_lo: Tensor  # buffers registered in __init__
    alphabet_n: Tensor

    def __init__(
        self, tree: Tree, num_cats: int, num_latents: int, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(tree, num_latents, dtype)
        if num_cats < 2:
            raise ValueError(f"num_cats must be >= 2, got {num_cats}")
        d, k = tree.num_vars, num_latents
        self.num_cats = int(num_cats)
        self.loc = nn.Parameter(torch.zeros(d, k, dtype=dtype))
        self.log_scale = nn.Parameter(torch.zeros(d, k, dtype=dtype))
        self.register_buffer("alphabet_lo", torch.zeros(d, dtype=torch.long))
        self.register_buffer("alphabet_n", torch.ones(d, dtype=torch.long))

    @classmethod
    @torch.no_grad()
    def from_hclt(cls, pc: HCLT, lo: Tensor, n: Tensor) -> DiscretizedLogisticTree:
        """Same tree, root and transitions; each state's leaf matches its categorical's mean and spread."""
        new = cls(pc.tree, pc.num_cats, pc.num_latents, dtype=pc.root_logits.dtype).to(
            pc.root_logits.device
        )
        new.root_logits.copy_(pc.root_logits)
        new.transition_logits.copy_(pc.transition_logits)
        new.alphabet_lo.copy_(lo)
        new.alphabet_n.copy_(n)
        p = pc.log_emissions().exp()[..., :-1]  # drop ESCAPE
        j = torch.arange(pc.num_cats - 1, device=p.device, dtype=p.dtype)
        p = p * (j < n[:, None, None])
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
        mean = (p * j).sum(-1)
        var = (p * (j - mean[..., None]) ** 2).sum(-1)
        new.loc.copy_(mean + lo[:, None].to(p.dtype))
        new.log_scale.copy_((var.sqrt() * math.sqrt(3) / math.pi).clamp_min(0.2).log())
        return new

    def _scale(self) -> Tensor:
        return self.log_scale.exp().clamp_min(MIN_SCALE)

    def leaf_log_probs_values(self, u: Tensor) -> Tensor:
        """log(F(u + 1/2) - F(u - 1/2)) per state for real values u [N, D]: [N, D, K], differentiable in u."""
        scale = self._scale()
        c = u[..., None] - self.loc
        mass = _bin_mass((c + 0.5) / scale, (c - 0.5) / scale)
        return mass.clamp_min(LIKELIHOOD_BOUND).log()

    def log_prob_values(self, u: Tensor) -> Tensor:
        """log p of real-valued rows u [N, D] under the continuous leaves (training rate), [N]."""
        return self.upward(self.leaf_log_probs_values(u))[0]

    def _alphabet_pmf(
        self,
        loc: Tensor,
        scale: Tensor,
        sigmoid: Callable[[Tensor], Tensor],
        row_sum: Callable[[Tensor], Tensor],
    ) -> Tensor:
        """The leaves (``loc`` [D, K], ``scale`` [D, K, 1]) discretized on each alphabet, ESCAPE =
        all mass outside: pmf [D, K, V] in ``loc``'s dtype, with the given sigmoid and row sum."""
        j = torch.arange(self.num_cats - 1, device=loc.device, dtype=loc.dtype)
        centers = self.alphabet_lo[:, None, None].to(j.dtype) + j - loc[..., None]  # [D, K, V-1]
        inside = _bin_mass((centers + 0.5) / scale, (centers - 0.5) / scale, sigmoid)
        inside = inside * (j < self.alphabet_n[:, None, None])
        escape = (1.0 - row_sum(inside)[..., None]).clamp_min(0.0)
        p = torch.cat([inside, escape], -1).clamp_min(LIKELIHOOD_BOUND)
        return p / row_sum(p)[..., None]

    def log_emissions(self) -> Tensor:
        """The leaves discretized on each alphabet, ESCAPE = all mass outside: log [D, K, V], rows sum to 1."""
        return self._alphabet_pmf(
            self.loc, self._scale()[..., None], torch.sigmoid, lambda t: t.sum(-1)
        ).log()

    @torch.no_grad()
    def coding_emissions(self) -> Tensor:
        """``log_emissions().exp()`` in float64 by ``pc_prior.portable``: the coder's leaf pmfs,
        the same bits on every device."""
        scale = portable.exp(self.log_scale).clamp_min(MIN_SCALE)[..., None]
        loc = self.loc.detach().double()
        return self._alphabet_pmf(loc, scale, portable.sigmoid, portable.fixed_order_sum)

    def config(self) -> dict[str, int]:
        """The sizes that rebuild this circuit with its tree: V and K
        (``LatentTreeCircuit.config``)."""
        return {"num_cats": self.num_cats, "num_latents": self.num_latents}

    def extra_repr(self) -> str:
        """Sizes and leaf kind, for ``repr``."""
        return f"num_vars={self.num_vars}, num_cats={self.num_cats}, num_latents={self.num_latents}, leaves=logistic"


class _GaussianLeafLogMass(torch.autograd.Function):
    """``ScaleConditionedTree``'s leaf log-masses [N, D, K] with a hand-written backward.

    Leaf (d, k) at a value u of scale σ and scale index s: X ~ N(σ·loc[d,k], scale²) with
    ``log scale = log_scale[d,k] + offset[d,s] + (1 + power[d,k])·log σ``, and the result is
    ``log max(P(u - 1/2 < X < u + 1/2), LIKELIHOOD_BOUND)``, evaluated in the lower tail (it is
    symmetric in u - mean). These [N, D, K] tensors are the bulk of ``PCConditional.fit``'s
    work; autograd's chain takes about 55 passes over them per step, this about 35, and the
    parameters' gradients are reduced over N by matrix products instead of broadcast copies.
    The values equal the plain formula up to rounding (tested against it, gradients too).
    """

    @staticmethod
    def forward(
        ctx: Any,
        u: Tensor,
        sigma: Tensor,
        s: Tensor,
        loc: Tensor,
        log_scale: Tensor,
        power: Tensor,
        offset: Tensor,
    ) -> Tensor:
        d = torch.arange(u.shape[-1], device=u.device)
        log_sig = sigma.log()
        log_sc = torch.addcmul(log_scale + offset[d, s][..., None], log_sig[..., None], 1.0 + power)
        inv = log_sc.neg_().exp_()  # 1 / scale
        dev = u[..., None] - sigma[..., None] * loc  # value less the leaf's mean
        a = (0.5 - dev.abs()).mul_(inv)  # upper bin edge in scale units, lower tail
        b = a - inv  # lower bin edge
        mass = torch.special.ndtr(a) - torch.special.ndtr(b)
        ctx.save_for_backward(u, sigma, s, loc, power, offset, log_sig, a, b, inv, dev, mass)
        return mass.clamp_min(LIKELIHOOD_BOUND).log_()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        u, sigma, s, loc, power, offset, log_sig, a, b, inv, dev, mass = ctx.saved_tensors
        # d log mass: through the clamp only where the mass is above the bound
        gm = torch.where(mass > LIKELIHOOD_BOUND, grad / mass, 0.0).mul_((2.0 * math.pi) ** -0.5)
        phi_a = (a * a).mul_(-0.5).exp_()  # φ·sqrt(2π), the constant is in gm
        phi_b = (b * b).mul_(-0.5).exp_()
        g_log_sc = (b * phi_b).sub_(a * phi_a).mul_(gm)  # d/d log scale: ∂a/∂log scale = -a
        g_dev = (phi_b - phi_a).mul_(inv).mul_(gm)  # d/d |u - mean|
        g_dev = torch.where(dev < 0, -g_dev, g_dev)  # d/d (u - mean); at 0 it is 0 itself
        n_need = ctx.needs_input_grad
        g_u = g_dev.sum(-1) if n_need[0] else None
        g_sigma = None
        if n_need[1]:  # mean σ·loc and scale σ^(1 + power)
            g_sigma = torch.einsum("ndk,dk->nd", g_log_sc, 1.0 + power) / sigma - torch.einsum(
                "ndk,dk->nd", g_dev, loc
            )
        g_loc = -torch.einsum("ndk,nd->dk", g_dev, sigma) if n_need[3] else None
        g_log_scale = g_log_sc.sum(0) if n_need[4] else None
        g_power = torch.einsum("ndk,nd->dk", g_log_sc, log_sig) if n_need[5] else None
        g_offset = None
        if n_need[6]:
            d = torch.arange(u.shape[-1], device=u.device).expand_as(s)
            g_offset = torch.zeros_like(offset).index_put_(
                (d, s), g_log_sc.sum(-1), accumulate=True
            )
        return g_u, g_sigma, None, g_loc, g_log_scale, g_power, g_offset


class ScaleConditionedTree(LatentTreeCircuit):
    """Latent tree over D channels whose leaves are discretized Gaussians scaled by side information.

    ``leaf_log_probs(u, sigma, s)``: u [N, D] values (integers, or noisy in training), sigma [N, D]
    positive scales, s [N, D] their scale-table indexes; leaf (d, k) is
    N(σ·loc[d,k], (exp(log_scale[d,k] + scale_offset[d,s])·σ^(1+scale_power[d,k]))²) integrated over
    [u - 1/2, u + 1/2]. ``scale_offset`` [D, S] recalibrates each channel's scale per index.
    """

    def __init__(
        self, tree: Tree, num_latents: int, num_scales: int = 64, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(tree, num_latents, dtype)
        d, k = tree.num_vars, self.num_latents
        self.loc = nn.Parameter(torch.zeros(d, k, dtype=dtype))
        self.log_scale = nn.Parameter(torch.zeros(d, k, dtype=dtype))
        self.scale_power = nn.Parameter(torch.zeros(d, k, dtype=dtype))
        self.scale_offset = nn.Parameter(torch.zeros(d, num_scales, dtype=dtype))

    @torch.no_grad()
    def init_params(self, spread: float = 0.6, coupling: float = 2.0, seed: int = 0) -> None:
        """Start next to the Gaussian conditional: state k scales it by exp(spread·(k/(K-1) - 1/2)).

        Transitions favour equal states (logit ``coupling`` on the diagonal), so the initial model
        is a position-level mixture of scale multipliers, the dependence most worth capturing.
        """
        g = torch.Generator().manual_seed(seed)
        d, k = self.num_vars, self.num_latents
        dt = self.root_logits.dtype
        steps = (
            torch.linspace(-0.5, 0.5, k, dtype=torch.float64)
            if k > 1
            else torch.zeros(1, dtype=torch.float64)
        )
        self.loc.zero_()
        self.scale_power.zero_()
        self.scale_offset.zero_()
        self.log_scale.copy_((spread * steps).expand(d, k).to(dt))
        self.root_logits.zero_()
        noise = 0.1 * torch.randn(d, k, k, generator=g, dtype=torch.float64)
        self.transition_logits.copy_((coupling * torch.eye(k, dtype=torch.float64) + noise).to(dt))

    @torch.no_grad()
    def init_from_data(
        self, u: Tensor, sigma: Tensor, pseudocount: float = 1.0, seed: int = 0
    ) -> None:
        """Hard-assignment start: state k of channel d = bin k of its standardized value u/σ.

        Bins are equally spaced over [-2.5, 2.5] in units of σ (the outer ones open-ended);
        leaves sit at the bin centres, the root and transitions are the smoothed empirical
        frequencies of the bins along the tree's edges. The tree then starts out as the
        Chow-Liu-style model of the quantized standardized latents, and training refines it.
        """
        self.init_params(seed=seed)
        d, k = self.num_vars, self.num_latents
        if k < 2:
            return
        dt = self.loc.dtype
        edges = torch.linspace(-2.5, 2.5, k - 1, dtype=torch.float64)
        width = float(edges[1] - edges[0]) if k > 2 else 2.5
        centres = torch.cat(
            [edges[:1] - width / 2, (edges[1:] + edges[:-1]) / 2, edges[-1:] + width / 2]
        )
        z = (u.double() / sigma.double()).cpu()
        b = torch.bucketize(z, edges)  # [N, D] in 0..K-1
        self.loc.copy_(centres.expand(d, k).to(dt))
        self.log_scale.fill_(math.log(max(width, 0.3) / 2))
        parent = np.asarray(self.tree.parent)
        root = int(np.flatnonzero(parent < 0)[0])
        cnt = torch.bincount(b[:, root], minlength=k).double() + pseudocount
        self.root_logits.copy_(cnt.log().to(dt))
        trans = torch.full((d, k, k), pseudocount, dtype=torch.float64)
        for i in range(d):
            if parent[i] >= 0:
                trans[i].view(-1).index_add_(
                    0, b[:, parent[i]] * k + b[:, i], torch.ones(len(b), dtype=torch.float64)
                )
        self.transition_logits.copy_((trans / trans.sum(-1, keepdim=True)).log().to(dt))

    def _loc_scale(self, sigma: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        sig = sigma[..., None].to(self.loc.dtype)
        off = self.scale_offset[torch.arange(self.num_vars, device=s.device), s.long()]  # [N, D]
        scale = torch.exp(
            self.log_scale + off[..., None] + torch.log(sig) * (1.0 + self.scale_power)
        )
        return sig * self.loc, scale

    def leaf_log_probs(self, u: Tensor, sigma: Tensor, s: Tensor) -> Tensor:
        """Leaf log-likelihoods [N, D, K] of values u [N, D] at scales sigma [N, D] of indexes s [N, D]."""
        dt = self.loc.dtype
        return _GaussianLeafLogMass.apply(
            u.to(dt),
            sigma.to(dt),
            s.long(),
            self.loc,
            self.log_scale,
            self.scale_power,
            self.scale_offset,
        )

    def escape_log_probs(self, radius: int, sigma: Tensor, s: Tensor) -> Tensor:
        """``log P(|u| > radius)`` per leaf, [N, D, K]."""
        mu, scale = self._loc_scale(sigma, s)
        mass = normal_cdf((-radius - 0.5 - mu) / scale) + normal_cdf((-radius - 0.5 + mu) / scale)
        return torch.log(mass.clamp_min(LIKELIHOOD_BOUND))

    def log_prob(self, u: Tensor, sigma: Tensor, s: Tensor) -> Tensor:
        """log p of values u [N, D] at scales sigma [N, D] of indexes s [N, D], in nats, [N]."""
        return self.upward(self.leaf_log_probs(u, sigma, s))[0]

    @torch.no_grad()
    def emission_probs(self, radius: int, scale_table: Tensor, chunk: int = 1) -> Tensor:
        """Leaf pmfs [D, S, K, V] over -radius..radius then ESCAPE, float64, one table per scale.

        Built with ``pc_prior.portable`` (CDF at the 2R+2 bin edges, differenced), so the result
        is the same bits on every device and thread count: a reloaded codec rebuilds the coder's
        tables exactly. ``chunk`` channels at a time keep the work in cache.
        """
        d, n_s = self.num_vars, len(scale_table)
        if n_s != self.scale_offset.shape[1]:
            raise ValueError(
                f"the circuit has scale offsets for {self.scale_offset.shape[1]} scales, the table has {n_s}"
            )
        dev = self.loc.device
        s = scale_table.detach().to(dev, torch.float64)
        log_s = portable.log(s)[None, :, None]  # [1, S, 1]
        edges = torch.arange(-radius, radius + 2, dtype=torch.float64, device=dev) - 0.5
        out = torch.empty(d, n_s, self.num_latents, 2 * radius + 2, dtype=torch.float64, device=dev)
        for lo in range(0, d, chunk):
            hi = min(d, lo + chunk)
            loc, log_scale, power = (
                p.detach()[lo:hi].double()[:, None, :]
                for p in (self.loc, self.log_scale, self.scale_power)
            )
            off = self.scale_offset.detach()[lo:hi].double()[:, :, None]  # [c, S, 1]
            mu = s[None, :, None] * loc  # [c, S, K]
            scale = portable.exp(log_scale + off + log_s * (1.0 + power))
            cdf = portable.normal_cdf((edges - mu[..., None]) / scale[..., None])  # [c, S, K, 2R+2]
            out[lo:hi, ..., :-1] = cdf[..., 1:] - cdf[..., :-1]
            out[lo:hi, ..., -1] = cdf[..., 0] + portable.normal_cdf((mu - (radius + 0.5)) / scale)
        return out.clamp_min(0.0)

    def config(self) -> dict[str, int]:
        """The sizes that rebuild this circuit with its tree: K and the number of scales
        (``LatentTreeCircuit.config``)."""
        return {"num_latents": self.num_latents, "num_scales": int(self.scale_offset.shape[1])}

    def extra_repr(self) -> str:
        """Sizes and tree height, for ``repr``."""
        return (
            f"num_vars={self.num_vars}, num_latents={self.num_latents}, height={self.tree.height}"
        )
