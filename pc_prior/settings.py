"""Fit settings: frozen dataclasses whose field defaults are THE defaults of every fitting entry point.

Invariant: the dataclass field defaults below are the only place fit defaults are written. The fit
methods (``PCEntropyBottleneck.fit``, ``PCConditional.fit``, ``fit_em``, ``fit_adam``),
``fit_prior``, the command lines (``pc-prior prior fit``, ``pc-prior lossless fit``, ``pc-prior
demo``), ``RDModule`` and ``PriorModule`` take their keyword defaults from these fields (argparse
defaults included), so ``fit_prior(net, images)`` and ``pc-prior prior fit`` fit the same circuit.

The defaults are the settings the README's figures were measured with:

- ``BottleneckFit``: K=16, star, 60k positions, 6 mini-batch + 2 full-batch EM epochs of 256
  positions, step size 0.5 -> 0.02 (the factorized Kodak table, 15-17%, and the hyperprior's z).
- ``ConditionalFit``: the three-pass context, K=32 Chow-Liu, 6000 Adam steps of 512 positions,
  all positions (the hyperprior Kodak table).
- ``LosslessFit``: K=32, 8 mini-batch + 1 full-batch EM epochs of 512 rows, step size
  0.2 -> 0.02 (the MNIST table, 1.2315 bpd coded).

Two presets change a few fields for one purpose, and are defined here too: ``DEMO_BOTTLENECK``
(``pc-prior demo``: fewer epochs, so the demo runs in about a minute) and ``RD_BOTTLENECK``
(``RDModule``: discretized-logistic leaves, which joint rate-distortion fine-tuning needs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEMO_BOTTLENECK",
    "RD_BOTTLENECK",
    "BottleneckFit",
    "ConditionalFit",
    "ImageFit",
    "LosslessFit",
    "as_kwargs",
]


@dataclass(frozen=True)
class BottleneckFit:
    """``PCEntropyBottleneck.fit``: a circuit over the C channels of one latent position, by EM.

    Fields:
        num_latents: latent states K per channel.
        structure: ``"star"`` (every channel a child of the highest-variance one) or ``"chow-liu"``.
        leaves: ``"categorical"`` (best on a frozen codec) or ``"logistic"`` (smooth, for joint
            fine-tuning).
        max_items: random latent positions used (None: all).
        tail: alphabets cover the [tail, 1 - tail] quantiles of each channel (the rest is escaped).
        max_alphabet: at most this many symbols per channel.
        epochs: mini-batch EM epochs.
        full_batch_epochs: full-batch EM epochs after them.
        batch_size: positions per mini-batch.
        step_size: EM step size, (start, end) annealed linearly over the mini-batch updates (the
            fits also take one number, a constant step size).
        pseudocount: EM smoothing (Dirichlet pseudo-counts per distribution).
        finetune_steps: Adam steps that refine logistic leaves after EM.
        lr: Adam's learning rate for those steps.
        seed: seed of the subsampling, structure and EM.
    """

    num_latents: int = 16
    structure: str = "star"
    leaves: str = "categorical"
    max_items: int | None = 60000
    tail: float = 1e-4
    max_alphabet: int = 64
    epochs: int = 6
    full_batch_epochs: int = 2
    batch_size: int = 256
    step_size: tuple[float, float] = (0.5, 0.02)
    pseudocount: float = 0.1
    finetune_steps: int = 300
    lr: float = 0.01
    seed: int = 0


@dataclass(frozen=True)
class ConditionalFit:
    """``PCConditional.fit``: a scale-conditioned circuit over the M channels, by Adam.

    Fields:
        num_latents: latent states K per channel.
        context: ``"three-pass"``, ``"checkerboard"`` or None (one pass). A context needs latent
            maps (``fit_prior`` collects them); rows [N, C] need ``context=None``.
        structure: ``"chow-liu"`` or ``"star"``.
        max_items: random positions used (None: all).
        steps: Adam steps.
        batch_size: positions per step.
        lr: Adam's learning rate (decayed linearly to 10%).
        holdout: share of the positions kept out to report held-out bits.
        tail: the radius R covers the ``1 - tail`` quantile of |symbol|.
        max_radius: at most this radius (at least 4).
        init: ``"baseline"`` (next to the Gaussian conditional) or ``"data"``.
        seed: seed of the subsampling, context, structure and Adam.
    """

    num_latents: int = 32
    context: str | None = "three-pass"
    structure: str = "chow-liu"
    max_items: int | None = None
    steps: int = 6000
    batch_size: int = 512
    lr: float = 0.03
    holdout: float = 0.1
    tail: float = 1e-5
    max_radius: int = 64
    init: str = "baseline"
    seed: int = 0


@dataclass(frozen=True)
class ImageFit:
    """``fit_prior``'s images: what the latents are collected from.

    Fields:
        multiple: images read from a folder are cropped to multiples of this, so the circuit sees
            no padding (64: whole hyperprior z positions; factorized codecs need 16).
        max_images: read at most this many images of a folder (None: all).
    """

    multiple: int = 64
    max_images: int | None = None


@dataclass(frozen=True)
class LosslessFit:
    """``fit_em``, ``fit_adam``, ``pc-prior lossless fit`` and ``PriorModule``: an HCLT on discrete data.

    Fields:
        num_latents: latent states K per variable.
        epochs: mini-batch epochs (EM or Adam).
        full_batch_epochs: full-batch EM epochs after them.
        batch_size: rows per mini-batch.
        step_size: EM step size, (start, end) annealed linearly over the mini-batch updates
            (``PriorModule``: ``lr`` and ``lr_end``).
        pseudocount: EM smoothing (Dirichlet pseudo-counts per distribution).
        adam_lr: Adam's learning rate (``fit_adam``).
        num_bins: bins per variable for the structure's mutual information.
        structure_samples: rows used to learn the Chow-Liu tree.
        seed: seed of the structure, initialization and batches.
    """

    num_latents: int = 32
    epochs: int = 8
    full_batch_epochs: int = 1
    batch_size: int = 512
    step_size: tuple[float, float] = (0.2, 0.02)
    pseudocount: float = 0.1
    adam_lr: float = 0.05
    num_bins: int = 16
    structure_samples: int = 10000
    seed: int = 0


DEMO_BOTTLENECK = dataclasses.replace(BottleneckFit(), epochs=3, full_batch_epochs=1)
"""``pc-prior demo``: 3 + 1 EM epochs (the README's demo table, fit in under a minute)."""

RD_BOTTLENECK = dataclasses.replace(BottleneckFit(), leaves="logistic")
"""``RDModule``'s initial fit: logistic leaves, so the rate is smooth in the latent."""


def as_kwargs(settings: Any) -> dict[str, Any]:
    """The fields of a settings dataclass as keyword arguments (a plain dict, shallow)."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
