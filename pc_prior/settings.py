"""Fit settings: frozen dataclasses whose field defaults are THE defaults of every fitting entry point.

Invariant: the dataclass field defaults below are the only place fit defaults are written. The fit
methods (``PCEntropyBottleneck.fit``, ``PCConditional.fit``, ``fit_em``, ``fit_adam``),
``fit_prior``, the command lines (``pc-prior prior fit``, ``pc-prior lossless fit``, ``pc-prior
demo``), ``RDModule`` and ``PriorModule`` take their keyword defaults from these fields (argparse
defaults included), so ``fit_prior(net, images)`` and ``pc-prior prior fit`` fit the same circuit.

The defaults are the settings the README's figures were measured with:

- ``BottleneckFit``: K=16, star, the three-pass spatial context (latent states fitted first
  without context, then the leaf groups from a count pass, 8 full-batch EM epochs of the grouped
  circuit, backed off by 40 pseudo-counts), all positions, 6 mini-batch + 2 full-batch EM epochs
  of 256 positions, step size 0.5 -> 0.02 (the factorized Kodak table; chosen on bsds500/train
  -> bsds500/test).
- ``ConditionalFit``: the three-pass context, K=32 Chow-Liu, 6000 Adam steps of 512 positions,
  all positions (the hyperprior Kodak table).
- ``LosslessFit``: K=64, 50 mini-batch + 1 full-batch EM epochs of 512 rows, step size
  0.2 -> 0.005, then leaf smoothing 0.1 over 4 grey levels (the MNIST table; chosen on 5,000
  held-out training images).
- ``Finetune``: ``pc-prior codec finetune`` and ``RDModule``: 600 steps of 8 crops of 256²,
  Adam 1e-5 on the codec and 1e-3 on the circuits, initial priors on 200 crops (a 2-core CPU);
  ``FINETUNE_GPU``: 20k steps of 16 crops, initial priors on 1,000 crops.

Two presets change a few fields for one purpose, and are defined here too: ``DEMO_BOTTLENECK``
(``pc-prior demo``: fewer epochs, so the demo runs in about a minute) and ``RD_BOTTLENECK``
(``RDModule``: discretized-logistic leaves, which joint rate-distortion fine-tuning needs).

The command lines do not restate them: ``add_arguments`` makes one option per field (type,
choices and help from here, default from the dataclass or preset) and ``from_args`` reads the
parsed options back into the dataclass. ``CHOICES`` is the one list of each choice-valued field.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "BOTTLENECK_ADAPT_FIELDS",
    "CHOICES",
    "CONDITIONAL_ADAPT_FIELDS",
    "CONDITIONAL_CONTEXTS",
    "DEMO_BOTTLENECK",
    "FINETUNE_GPU",
    "RD_BOTTLENECK",
    "BottleneckFit",
    "ConditionalFit",
    "Finetune",
    "ImageFit",
    "LosslessFit",
    "add_arguments",
    "as_kwargs",
    "check_adapt_fields",
    "deprecated_check_fit_args",
    "deprecated_fields",
    "from_args",
    "pop_warm_start",
    "settings_with",
]

S = TypeVar("S")

CHOICES: dict[str, tuple[str | None, ...]] = {
    "structure": ("chow-liu", "star"),
    "leaves": ("categorical", "logistic"),
    "context": ("three-pass", "checkerboard", "four-pass", None),
    "context_bins": ("fixed", "channel"),
    "group_fit": ("joint", "states-first"),
    "state_context": ("neighbours", None),
    "init": ("baseline", "data"),
}
"""The values a choice-valued field takes (None: off; ``"none"`` on a command line)."""

CONDITIONAL_CONTEXTS: tuple[str | None, ...] = ("three-pass", "checkerboard", None)
"""``ConditionalFit.context``'s values: the four-pass schedule is the bottleneck's alone."""


@dataclass(frozen=True)
class BottleneckFit:
    """``PCEntropyBottleneck.fit``: a circuit over the C channels of one latent position, by EM.

    Fields:
        num_latents: latent states K per channel.
        structure: ``"star"`` (every channel a child of the highest-variance one) or ``"chow-liu"``.
        context: ``"three-pass"``, ``"four-pass"``, ``"checkerboard"`` or None (one pass): a
            later pass's leaves are conditioned on their channel's decoded neighbours
            (categorical leaves only).
        context_bins: bin edges of the neighbours' activity: ``"channel"`` (each channel's own
            quantiles; chosen on bsds500/test, +0.17 to +0.24 points over fixed at q1-q4) or
            ``"fixed"`` (the same edges for every channel).
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
        group_backoff: with a context, after EM each leaf group's distribution is pulled towards
            its leaf's pooled one by this many pseudo-counts (``GroupedHCLT.back_off``).
        group_fit: with a context, how the leaf groups are learned: ``"joint"`` (EM of the
            latent states and the grouped leaves together) or ``"states-first"`` (EM without
            context first, then each group's leaves from one count pass of those states).
        group_epochs: with ``"states-first"``, full-batch EM epochs of the grouped circuit
            (states and groups together) after that count pass, then the back-off again (8:
            chosen on bsds500/test over 0, 2 and 4, +0.2 to +0.9 points at q1-q4; 16 added at
            most 0.07 more at q1 and q4).
        state_context: with a context, ``"neighbours"`` gives a later pass's positions a prior
            over the latent states chosen by the states of their decoded neighbours (the most
            common one and how many share it), fitted by EM after the leaves; None keeps one
            prior for every position.
        state_epochs: with the state context, full-batch EM epochs of the circuit under the
            state priors (each position its own), each followed by new priors.
        finetune_steps: Adam steps that refine logistic leaves after EM.
        lr: Adam's learning rate for those steps.
        seed: seed of the subsampling, structure and EM.
    """

    num_latents: int = 16
    structure: str = "star"
    context: str | None = "three-pass"
    context_bins: str = "channel"
    leaves: str = "categorical"
    max_items: int | None = None
    tail: float = 1e-4
    max_alphabet: int = 64
    epochs: int = 6
    full_batch_epochs: int = 2
    batch_size: int = 256
    step_size: tuple[float, float] = (0.5, 0.02)
    pseudocount: float = 0.1
    group_backoff: float = 40.0
    group_fit: str = "states-first"
    group_epochs: int = 8
    state_context: str | None = "neighbours"
    state_epochs: int = 0
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
        tail: the radius R covers the ``1 - tail`` quantile of ``|symbol|``.
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
        max_images: at most this many images: a larger folder, sequence or stream (a DataLoader)
            gives a uniform random sample of this many (None: all). It bounds the memory the
            latents take, whatever the folder's size (about 0.6 MB per ImageNet-sized image for
            a factorized codec's bottleneck).
    """

    multiple: int = 64
    max_images: int | None = 1000


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
        leaf_smoothing: after EM, this share of each leaf's interior mass (symbols 1..V-2) is
            spread over neighbouring symbols (``pc_prior.fitting.smooth_leaves``; 0: off).
        smoothing_width: standard deviation of that spreading, in symbols.
        adam_lr: Adam's learning rate (``fit_adam``).
        num_bins: bins per variable for the structure's mutual information.
        structure_samples: rows used to learn the Chow-Liu tree.
        seed: seed of the structure, initialization and batches.
    """

    num_latents: int = 64
    epochs: int = 50
    full_batch_epochs: int = 1
    batch_size: int = 512
    step_size: tuple[float, float] = (0.2, 0.005)
    pseudocount: float = 0.1
    leaf_smoothing: float = 0.1
    smoothing_width: float = 4.0
    adam_lr: float = 0.05
    num_bins: int = 16
    structure_samples: int = 10000
    seed: int = 0


@dataclass(frozen=True)
class Finetune:
    """``pc-prior codec finetune`` and ``RDModule``: joint rate-distortion fine-tuning of a codec
    and its PC entropy models on an image folder. These defaults fit a 2-core CPU (about half an
    hour for a factorized codec); ``FINETUNE_GPU`` is the preset for a GPU.

    Fields:
        steps: optimizer steps (batches of crops).
        batch_size: random crops per step.
        patch_size: side of the square training crops.
        lr: Adam's learning rate for the codec (analysis and synthesis transforms).
        prior_lr: Adam's learning rate for the circuits.
        aux_lr: Adam's learning rate for the bottlenecks' quantiles (CompressAI's aux loss).
        prior_images: training crops whose latents fit the initial (frozen default) priors.
        val_images: validation images really coded at each validation.
        checkpoints: validations and checkpoints per run (a resumed run goes on from the last).
        num_workers: data-loading worker processes.
        seed: seed of the crops, the initial fits, the training and the refit.
        refit: after training, replace the jointly trained priors by a default fit on the
            fine-tuned codec's latents of the training folder (what pc-prior prior fit does); on
            validation data (bsds500/test: factorized q1-q4, hyperprior q1) it took about 1% off
            the rate at the same quality.
    """

    steps: int = 600
    batch_size: int = 8
    patch_size: int = 256
    lr: float = 1e-5
    prior_lr: float = 1e-3
    aux_lr: float = 1e-3
    prior_images: int = 200
    val_images: int = 8
    checkpoints: int = 10
    num_workers: int = 2
    seed: int = 0
    refit: bool = True


FINETUNE_GPU = dataclasses.replace(
    Finetune(), steps=20000, batch_size=16, prior_images=1000, val_images=24, num_workers=8
)
"""``pc-prior codec finetune`` on a GPU: 20k steps of 16 crops, initial priors on 1,000 crops."""


#: Points per curve below which ``pc-prior compare`` reports a BD-rate with a warning: the
#: Bjøntegaard method fits a curve through each codec's points; through 2 points it is a straight
#: line, through 3 barely more.
BD_MIN_POINTS = 4

DEMO_BOTTLENECK = dataclasses.replace(
    BottleneckFit(), epochs=3, full_batch_epochs=1, context=None, max_items=60000
)
"""``pc-prior demo``: 3 + 1 EM epochs, one pass, 60k positions (the README's demo table, under a minute)."""

RD_BOTTLENECK = dataclasses.replace(
    BottleneckFit(), leaves="logistic", context=None, max_items=60000
)
"""``RDModule``'s initial fit: logistic leaves (smooth in the latent), one pass, 60k positions."""


BOTTLENECK_ADAPT_FIELDS = (
    "max_items",
    "epochs",
    "full_batch_epochs",
    "batch_size",
    "step_size",
    "pseudocount",
    "group_backoff",
    "group_epochs",
    "state_epochs",
    "finetune_steps",
    "lr",
    "seed",
)
"""The ``BottleneckFit`` fields ``PCEntropyBottleneck.adapt`` uses: the schedule of continued
training. The alphabets, structure, K, leaves and contexts are the fitted model's."""

CONDITIONAL_ADAPT_FIELDS = ("max_items", "steps", "batch_size", "lr", "holdout", "seed")
"""The ``ConditionalFit`` fields ``PCConditional.adapt`` uses (the rest is the fitted model's)."""


def settings_with(cls: type[S], settings: S | None, fields: dict[str, Any], where: str) -> S:
    """``settings`` (None: ``cls()``, the defaults) with ``fields`` replaced: keywords that map one
    to one onto ``cls``'s fields. An unknown name, or settings of another class, raise
    ``InputError`` naming ``where`` and the valid names. Types and ranges are the caller's to check."""
    from .errors import InputError

    if settings is None:
        settings = cls()
    elif type(settings) is not cls:
        hint = (
            " (num_latents and the other fields are keywords)" if isinstance(settings, int) else ""
        )
        raise InputError(
            f"{where}: settings must be a pc_prior.settings.{cls.__name__}, got "
            f"{type(settings).__name__}{hint}"
        )
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise InputError(
            f"{where}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"the {cls.__name__} fields are {', '.join(names)}"
        )
    return dataclasses.replace(settings, **fields)  # type: ignore[type-var]


def check_adapt_fields(fields: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """``InputError`` unless every keyword in ``fields`` is one of ``allowed``, the fields a
    continued fit uses: the others choose what the fitted model keeps (its structure, sizes, ...)."""
    from .errors import InputError

    fixed = sorted(set(fields) - set(allowed))
    if fixed:
        raise InputError(
            f"{where} keeps the fitted model's {', '.join(fixed)} (fit a new model to change "
            f"them); it takes {', '.join(allowed)}"
        )


def pop_warm_start(fields: dict[str, Any], allowed: tuple[str, ...], new: str) -> dict | None:
    """The deprecated ``warm_start`` switch (one release; ``FutureWarning`` naming ``new``) taken
    out of ``fields``: the keywords among ``allowed`` that the continued fit uses when it is true,
    None when it is false or absent. The other keywords are not used, as before."""
    import warnings

    from .errors import InputError

    if "warm_start" not in fields:
        return None
    warm_start = fields.pop("warm_start")
    warnings.warn(
        f"warm_start=True is now {new}; warm_start goes in pc-prior 0.4",
        FutureWarning,
        stacklevel=3,
    )
    if warm_start not in (False, True):
        raise InputError(f"warm_start must be one of (False, True), got {warm_start!r}")
    return {k: v for k, v in fields.items() if k in allowed} if warm_start else None


def deprecated_fields(fields: dict[str, Any], message: str) -> dict[str, Any]:
    """Fit settings given the old way (one release): ``message`` as a ``FutureWarning`` (at the
    caller's caller), and ``fields`` without the old switches ``progress`` and ``warm_start``."""
    import warnings

    warnings.warn(message + "; the old form goes in pc-prior 0.4", FutureWarning, stacklevel=4)
    return {k: v for k, v in fields.items() if k not in ("progress", "warm_start")}


def deprecated_check_fit_args(check_settings: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The entropy models' old ``check_fit_args``: their ``check_settings`` of ``kwargs`` as a dict."""
    message = "check_fit_args is now check_settings (which returns the settings dataclass)"
    return as_kwargs(check_settings(**deprecated_fields(kwargs, message)))


def as_kwargs(settings: Any) -> dict[str, Any]:
    """The fields of a settings dataclass as keyword arguments (a plain dict, shallow)."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def field_help(cls: type) -> dict[str, str]:
    """Each field's description, from the ``Fields:`` section of the dataclass's docstring."""
    doc = (cls.__doc__ or "").split("Fields:", 1)[-1]
    out: dict[str, str] = {}
    name = None
    for line in doc.splitlines():
        m = re.match(r"^\s{8}(\w+): (.*)$", line)
        if m:
            name, out[m.group(1)] = m.group(1), m.group(2).strip()
        elif name and line.strip():
            out[name] += " " + line.strip()
    return out


def add_arguments(
    parser: argparse.ArgumentParser | Any,
    defaults: Any,
    names: tuple[str, ...],
    *,
    prefix: str = "",
    flags: dict[str, str] | None = None,
    choices: dict[str, tuple[str | None, ...]] | None = None,
) -> None:
    """One ``--[prefix]flag`` option per field in ``names`` of the settings ``defaults``.

    Type, choices and help come from the dataclass; the default is ``defaults``' value, so a
    preset (``DEMO_BOTTLENECK``) sets a command's defaults. ``flags`` renames options
    (``{"num_latents": "latents"}``); the parsed values go to ``[prefix]name`` (see ``from_args``).
    ``choices`` narrows a field's ``CHOICES`` for this command.
    """
    helps = field_help(type(defaults))
    types = {f.name: str(f.type) for f in dataclasses.fields(defaults)}
    for name in names:
        value = getattr(defaults, name)
        flag = "--" + prefix + (flags or {}).get(name, name).replace("_", "-")
        text = helps.get(name, name).replace("``", "").rstrip(".").replace("%", "%%")
        kw: dict[str, Any] = {
            "dest": (prefix + name).replace("-", "_"),
            "help": text + " (default: %(default)s)",
        }
        allowed = (choices or {}).get(name, CHOICES.get(name))
        if allowed is not None:
            kw["choices"] = ["none" if c is None else c for c in allowed]
            kw["default"] = "none" if value is None else value
        elif types[name] == "bool":  # --name / --no-name
            kw.update(action=argparse.BooleanOptionalAction, default=value)
        elif types[name].startswith("tuple"):
            kw.update(type=float, nargs=2, metavar=("START", "END"), default=value)
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[types[name].split(" ")[0]]
            kw.update(default=value, metavar=flag[2:].replace("-", "_").upper())
        parser.add_argument(flag, **kw)


def from_args(defaults: S, args: argparse.Namespace, names: tuple[str, ...], prefix: str = "") -> S:
    """``defaults`` with the fields ``names`` replaced by the options ``add_arguments`` made."""
    values: dict[str, Any] = {}
    for name in names:
        v = getattr(args, (prefix + name).replace("-", "_"))
        if name in CHOICES and v == "none":
            v = None
        elif isinstance(v, list):
            v = tuple(v)
        values[name] = v
    return dataclasses.replace(defaults, **values)  # type: ignore[type-var]
