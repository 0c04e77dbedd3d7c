"""Discretized logistic leaves: a latent tree whose rate has a gradient with respect to the latent.

Each (channel, latent state) has a logistic location and scale. A value u (the latent minus its
median, noisy or rounded) has leaf likelihood F(u + 1/2) - F(u - 1/2), a smooth function of u,
so the rate term trains the analysis transform (joint fine-tuning). For coding, the same leaves
are discretized onto the channel's alphabet, with all mass outside it on ESCAPE, giving ordinary
emission tables: ``log_emissions()`` has the shape and meaning of ``HCLT.log_emissions()``, so
``pc_prior.coding.coding_tables`` quantizes this circuit unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import portable
from ..hclt import HCLT, LatentTreeCircuit
from ..structure import Tree

__all__ = ["DiscretizedLogisticTree"]

MIN_SCALE = 0.05
LIKELIHOOD_BOUND = 1e-9


def _bin_mass(upper: Tensor, lower: Tensor) -> Tensor:
    """sigmoid(upper) - sigmoid(lower), computed in the tail where it is accurate."""
    sign = -torch.sign(upper + lower)
    return (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()


class DiscretizedLogisticTree(LatentTreeCircuit):
    """Latent tree with discretized logistic leaves on alphabets ``lo_d .. lo_d + n_d - 1`` + ESCAPE."""

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

    def log_emissions(self) -> Tensor:
        """The leaves discretized on each alphabet, ESCAPE = all mass outside: log [D, K, V], rows sum to 1."""
        v = self.num_cats
        scale = self._scale()[..., None]
        j = torch.arange(v - 1, device=self.loc.device, dtype=self.loc.dtype)
        centers = (
            self.alphabet_lo[:, None, None].to(j.dtype) + j - self.loc[..., None]
        )  # [D, K, V-1]
        inside = _bin_mass((centers + 0.5) / scale, (centers - 0.5) / scale)
        inside = inside * (j < self.alphabet_n[:, None, None])
        escape = (1.0 - inside.sum(-1, keepdim=True)).clamp_min(0.0)
        p = torch.cat([inside, escape], -1).clamp_min(LIKELIHOOD_BOUND)
        return (p / p.sum(-1, keepdim=True)).log()

    @torch.no_grad()
    def coding_emissions(self) -> Tensor:
        """``log_emissions().exp()`` in float64 by ``pc_prior.portable``: the coder's leaf pmfs,
        the same bits on every device."""
        v = self.num_cats
        scale = portable.exp(self.log_scale).clamp_min(MIN_SCALE)[..., None]
        j = torch.arange(v - 1, device=self.loc.device, dtype=torch.float64)
        centers = (
            self.alphabet_lo[:, None, None].double() + j - self.loc.detach().double()[..., None]
        )
        upper, lower = (centers + 0.5) / scale, (centers - 0.5) / scale
        sign = -torch.sign(upper + lower)
        inside = (portable.sigmoid(sign * upper) - portable.sigmoid(sign * lower)).abs()
        inside = inside * (j < self.alphabet_n[:, None, None])
        escape = (1.0 - portable.fixed_order_sum(inside)[..., None]).clamp_min(0.0)
        p = torch.cat([inside, escape], -1).clamp_min(LIKELIHOOD_BOUND)
        return p / portable.fixed_order_sum(p)[..., None]

    def extra_repr(self) -> str:
        return f"num_vars={self.num_vars}, num_cats={self.num_cats}, num_latents={self.num_latents}, leaves=logistic"
