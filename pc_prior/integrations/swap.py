"""Swapping a CompressAI model's entropy models for PC ones: which models and modules can be served,
and the swap itself (``swap_entropy_model``), which keeps what the model's own module carries
(medians, scale table and bounds).

Its own module so that both the fitting API (``api``) and the codec files (``codec_file``, which
swap on load) use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import nn

from ..errors import InputError, UnsupportedModelError
from .conditional import PCConditional
from .entropy_models import PCEntropyBottleneck

__all__ = ["PC_MODULES", "check_model_support", "swap_entropy_model"]

#: The PC entropy model classes, for ``isinstance`` checks.
PC_MODULES = (PCEntropyBottleneck, PCConditional)


def _parent_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, attr = name.rpartition(".")
    return (model.get_submodule(head) if head else model), attr


# Which CompressAI models a PC entropy model can serve. A PC module codes through its own
# ``compress``/``decompress``, called once per latent map, on the maps ``forward`` gives it (what
# ``fit_prior`` collects). Models whose coding reads CompressAI's CDF tables instead, to run its
# C++ coder serially, would hand it empty tables (the interpreter segfaults): refused at swap time.
# Classes by name (absent ones are skipped), matched by the class that defines ``compress``,
# ``decompress`` or ``forward``, so subclasses that keep those methods are judged like their base.
# Served (one parallel call per map): FactorizedPrior(ReLU), ScaleHyperprior, MeanScaleHyperprior,
# their VBR versions, and SimpleVAECompressionModel's latent codecs (Cheng2020AnchorCheckerboard,
# Elic2022*) but for RasterScanLatentCodec; every known model's entropy bottleneck.
_SERIAL_CONDITIONAL = (
    "JointAutoregressiveHierarchicalPriors",
    "JointAutoregressiveHierarchicalPriorsVbr",
)
_PER_POSITION_CONDITIONAL = ("JointAutoregressiveHierarchicalPriorsVbr",)


def _compressai_models(names: Sequence[str]) -> tuple[type, ...]:
    import compressai.models

    return tuple(
        c for c in (getattr(compressai.models, n, None) for n in names) if isinstance(c, type)
    )


def _defined_by(cls: type, attr: str) -> type | None:
    return next((k for k in cls.__mro__ if attr in vars(k)), None)


def _unsupported_reason(model: nn.Module, name: str, old: nn.Module) -> str | None:
    """Why ``model.<name>`` (an entropy model ``old``) cannot become a PC entropy model; None if it can.

    Known CompressAI models are judged by the class defining their ``compress``/``decompress``/
    ``forward``; a module inside a ``RasterScanLatentCodec`` is refused. Other models (custom
    ones) are accepted: if their coding reads the CDF tables, the PC module raises
    ``UnsupportedModelError`` there instead of reaching CompressAI's C++ coder.
    """
    from compressai.latent_codecs import RasterScanLatentCodec

    parts = name.split(".")
    for i in range(1, len(parts)):
        head = ".".join(parts[:i])
        if isinstance(model.get_submodule(head), RasterScanLatentCodec):
            return (
                f"it sits in a RasterScanLatentCodec (model.{head}), whose compress()/decompress() code it "
                "serially, position by position in raster order, with CompressAI's own C++ coder from its CDF "
                "tables (quantized_cdf, cdf_length, offset), which a PC entropy model does not have"
            )
    if not isinstance(old, GaussianConditional):
        return (
            None  # every known model codes its bottleneck with one compress() call on forward's map
        )
    cls = type(model)
    if _defined_by(cls, "forward") in _compressai_models(_PER_POSITION_CONDITIONAL):
        owner = _defined_by(cls, "forward").__name__  # type: ignore[union-attr]
        return (
            f"its forward() ({owner}'s) calls the conditional once per 1x1 latent position (a raster scan), so "
            "no latent map reaches it to fit or code, and its compress()/decompress() code the conditional "
            "serially with CompressAI's own C++ coder from the CDF tables (quantized_cdf, cdf_length, "
            "offset), which a PC entropy model does not have"
        )
    serial = _compressai_models(_SERIAL_CONDITIONAL)
    for method in ("compress", "decompress"):
        owner = _defined_by(cls, method)
        if owner in serial:
            return (
                f"its {method}() ({owner.__name__}'s, the autoregressive context model) codes the conditional "  # type: ignore[union-attr]
                "serially, position by position in raster order, with CompressAI's own C++ coder from the "
                "conditional's CDF tables (quantized_cdf, cdf_length, offset), which a PC entropy model does "
                "not have"
            )
    return None


def check_model_support(model: nn.Module, name: str, module: nn.Module | None = None) -> None:
    """Raise ``UnsupportedModelError`` if ``model.<name>`` cannot be served by a PC entropy model."""
    if module is None:
        module = model.get_submodule(name)
    why = _unsupported_reason(model, name, module)
    if why is not None:
        raise UnsupportedModelError(
            f"{type(model).__name__} is not supported: a PC entropy model cannot replace model.{name} "
            f"({type(module).__name__}) because {why}. Keep CompressAI's entropy model there (swap only "
            "model.entropy_bottleneck), or use a model that codes its latents in parallel (FactorizedPrior, "
            "ScaleHyperprior, MeanScaleHyperprior, checkerboard/ELIC latent codecs)"
        )


def swap_entropy_model(
    model: nn.Module, name: str | Sequence[str] = "entropy_bottleneck", **kwargs
):
    """Replace entropy models of ``model`` by unfitted circuit-backed ones; returns the new module(s).

    ``name`` is a (dotted) module name or a sequence of them, e.g.
    ``("entropy_bottleneck", "gaussian_conditional")`` for a hyperprior codec. An
    ``EntropyBottleneck`` becomes a ``PCEntropyBottleneck`` keeping its channels, device and
    ``quantiles`` (hence its medians, so rounding, and thus the reconstruction, stay the same;
    ``kwargs`` go to it). A ``GaussianConditional`` becomes a ``PCConditional`` keeping its scale
    table and scale bound (so ``build_indexes`` and the symbols stay the same). A sequence of names
    returns a tuple of the new modules; every name is checked before any is swapped.

    Raises ``UnsupportedModelError`` (a ``TypeError``) for a module that is no plain
    ``EntropyBottleneck``/``GaussianConditional``, and for models that code it serially with
    CompressAI's C++ coder from CDF tables a circuit does not have: the conditionals of mbt2018
    (``JointAutoregressiveHierarchicalPriors``), ``Cheng2020Anchor``/``Cheng2020Attention``, the
    variable-rate mbt2018 (whose forward also calls it per 1x1 position) and any conditional
    inside a ``RasterScanLatentCodec``. Their entropy bottlenecks can be swapped.
    """
    if not isinstance(name, str):
        names = list(name)
        for n in names:
            _check_swappable(model, n)
        return tuple(swap_entropy_model(model, n, **kwargs) for n in names)
    old = _check_swappable(model, name)
    parent, attr = _parent_and_attr(model, name)
    if isinstance(old, EntropyBottleneck):
        new = PCEntropyBottleneck(old.channels, **kwargs).to(old.quantiles.device)
        with torch.no_grad():
            new.quantiles.copy_(old.quantiles.detach())
    else:  # a plain GaussianConditional (or a PCConditional): _check_swappable allows no other
        dev = old.scale_bound.device
        new = PCConditional(None, scale_bound=float(old.scale_bound), tail_mass=old.tail_mass).to(
            dev
        )
        new.lower_bound_scale = old.lower_bound_scale
        new.scale_table = old.scale_table.detach().clone()
    setattr(parent, attr, new)
    return new


def _check_swappable(model: nn.Module, name: str) -> nn.Module:
    """The module ``model.<name>`` if a PC entropy model can replace it, else ``UnsupportedModelError``."""
    if not isinstance(name, str):
        raise InputError(f"name must be a (dotted) module name, got {name!r}")
    parent, attr = _parent_and_attr(model, name)
    old = getattr(parent, attr, None)
    if isinstance(old, GaussianConditional) and type(old) not in (
        GaussianConditional,
        PCConditional,
    ):
        raise UnsupportedModelError(
            f"model.{name} is {type(old).__name__}, a GaussianConditional subclass with its own likelihood, which "
            "a PCConditional cannot replace: expected an EntropyBottleneck or a GaussianConditional to replace"
        )
    if not isinstance(old, (EntropyBottleneck, GaussianConditional)):
        raise UnsupportedModelError(
            f"model.{name} is {type(old).__name__}, expected an EntropyBottleneck or a "
            "GaussianConditional to replace"
        )
    check_model_support(model, name, old)
    return old
