"""Swapping a CompressAI model's entropy models for circuits, and fitting them on images."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from .._checks import check_choice, check_int
from ..errors import InputError, UnsupportedModelError
from ..images import FolderImages, check_image_batch
from ..progress import progress_bar
from ..settings import BottleneckFit, ImageFit
from .base import position_rows
from .codec_file import build_codec, load_codec, read_codec_file, save_codec
from .conditional import PCConditional
from .entropy_models import PCEntropyBottleneck

__all__ = [
    "build_codec",
    "collect_conditional_inputs",
    "collect_latents",
    "fit_prior",
    "load_codec",
    "read_codec_file",
    "save_codec",
    "swap_entropy_model",
]

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


class _Stop(Exception):
    """Raised by the bottleneck pre-hook to end a forward pass once its input is captured."""


def _passthrough(module: nn.Module):
    """Forward of a circuit-backed module that only quantizes (eval mode), for latent collection."""
    if isinstance(module, PCEntropyBottleneck):

        def forward(x: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
            med = module._medians().view(1, -1, 1, 1).to(x.dtype)
            return torch.round(x - med) + med, torch.ones_like(x)
    else:

        def forward(
            inputs: Tensor,
            scales: Tensor,
            means: Tensor | None = None,
            training: bool | None = None,
        ) -> tuple[Tensor, Tensor]:
            return module.quantize(inputs, "dequantize", means), torch.ones_like(inputs)

    return forward


def _rows(t: Tensor) -> Tensor:
    return position_rows(t.detach()).cpu()


@torch.no_grad()
def _collect(model: nn.Module, images: Iterable[Tensor], names: Sequence[str]) -> dict[str, object]:
    """One eval-mode forward per image, stopped once every named module has seen its input.

    Bottlenecks give their input maps [B, C, H, W], one per image; conditionals give lists of (symbols int32, scale
    indexes int16) maps [1, C, H, W], one per image, exactly what their coder would see. Circuit-backed modules only quantize
    meanwhile, so unfitted ones do not stop the pass.
    """
    got: dict[str, list] = {n: [] for n in names}
    seen: set[str] = set()
    handles, saved = [], []

    def make_hook(n: str, module: nn.Module):
        def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            if isinstance(module, GaussianConditional):
                y = args[0]
                scales = args[1] if len(args) > 1 else kwargs["scales"]
                means = args[2] if len(args) > 2 else kwargs.get("means")
                if tuple(scales.shape) != tuple(y.shape):
                    raise ValueError(
                        f"model.{n} got scales of shape {tuple(scales.shape)} for a latent of shape "
                        f"{tuple(y.shape)}: the image size must be a multiple of the codec's total "
                        "downsampling (64 for the zoo's hyperprior models)"
                    )
                sym = module.quantize(y, "symbols", means)
                got[n].append(
                    (
                        sym.detach().cpu().to(torch.int32),
                        module.build_indexes(scales).cpu().to(torch.int16),
                    )
                )
            else:
                if args[0].dim() != 4:
                    raise InputError(
                        f"model.{n} got a latent of shape {tuple(args[0].shape)}: expected [B, C, H, W] "
                        "(PC entropy models take 4-D image latents only)"
                    )
                got[n].append(args[0].detach().cpu())  # the latent map [B, C, H, W]
            seen.add(n)
            if len(seen) == len(names):
                raise _Stop

        return hook

    for n in names:
        module = model.get_submodule(n)
        if isinstance(module, PCConditional) and module.scale_table.numel() == 0:
            module._scale_table_or_default()
        elif isinstance(module, GaussianConditional) and module.scale_table.numel() == 0:
            raise RuntimeError(f"model.{n} has no scale table: call model.update() first")
        handles.append(module.register_forward_pre_hook(make_hook(n, module), with_kwargs=True))
    for _, module in model.named_modules():
        if isinstance(module, PC_MODULES):
            saved.append((module, module.__dict__.get("forward")))
            module.forward = _passthrough(module)
    was_training = model.training
    model.eval()
    try:
        for x in images:
            seen.clear()
            with contextlib.suppress(_Stop):
                model(x)
            if len(seen) != len(names):
                missing = sorted(set(names) - seen)
                raise RuntimeError(f"the model's forward did not reach {', '.join(missing)}")
    finally:
        for h in handles:
            h.remove()
        for module, fwd in saved:
            if fwd is None:
                del module.forward
            else:
                module.forward = fwd
        model.train(was_training)
    if not all(got.values()):
        raise ValueError("no images given to collect latents from")
    out: dict[str, object] = {}
    for n, parts in got.items():
        if isinstance(parts[0], tuple):
            out[n] = ([p[0] for p in parts], [p[1] for p in parts])
        else:
            out[n] = parts
    return out


def collect_latents(
    model: nn.Module, images: Iterable[Tensor], name: str = "entropy_bottleneck"
) -> Tensor:
    """The values entering ``model.<name>`` for each image, as rows [N positions, C].

    Runs the model's own ``forward`` in eval mode and stops it at the bottleneck (a pre-hook),
    so this works for any CompressAI model whatever transforms lead to the bottleneck.
    """
    return torch.cat([_rows(m) for m in _collect(model, images, [name])[name]])  # type: ignore[union-attr]


def collect_conditional_inputs(
    model: nn.Module,
    images: Iterable[Tensor],
    name: str = "gaussian_conditional",
    maps: bool = False,
) -> tuple[Tensor, Tensor] | tuple[list[Tensor], list[Tensor]]:
    """Symbols ``round(y - means)`` (int32) and scale indexes (int16) at ``model.<name>``.

    As rows [N, C] (positions x channels), or with ``maps=True`` as lists of per-image maps
    [1, C, H, W] (what ``PCConditional.fit`` needs for its checkerboard context).
    """
    sym, idx = _collect(model, images, [name])[name]  # type: ignore[misc]
    if maps:
        return sym, idx
    return torch.cat([_rows(s) for s in sym]), torch.cat([_rows(i) for i in idx])


def fit_prior(
    model: nn.Module,
    images: str | Path | Sequence[Tensor],
    *,
    name: str | Sequence[str] = "entropy_bottleneck",
    num_latents: int = BottleneckFit.num_latents,
    multiple: int = ImageFit.multiple,
    max_images: int | None = ImageFit.max_images,
    progress: bool = True,
    conditional: dict | None = None,
    warm_start: bool = False,
    **fit_kwargs,
) -> dict[str, list[dict]]:
    """Freeze ``model``, collect the latents at its entropy model(s) and fit the circuit(s).

    ``images`` is a folder (``FolderImages``: every image cropped to multiples of ``multiple``, so
    the circuit sees no padding; images with a side shorter than ``multiple`` are skipped with a
    warning, and a folder of only such images raises ``InputError``) or a sequence of [1, 3, H, W]
    tensors, used as given (neither cropped nor padded). ``name`` is one module name or several,
    e.g. ``("entropy_bottleneck", "gaussian_conditional")`` for a hyperprior codec; plain modules
    are swapped for circuit-backed ones first. All named modules' inputs are collected in one pass.
    Bottlenecks are fitted with ``num_latents`` and the remaining keyword arguments
    (``PCEntropyBottleneck.fit``: ``max_items``, ``epochs``, ``tail``, ...); conditionals with
    the ``conditional`` dict (``PCConditional.fit``: ``num_latents``, ``steps``, ``structure``,
    ``context`` (default ``"three-pass"``; ``"checkerboard"`` for two passes, ``None`` for one), ...).
    Defaults: ``pc_prior.settings`` (``BottleneckFit``, ``ConditionalFit``, ``ImageFit``), the same
    as ``pc-prior prior fit``'s. Returns a dict of fit histories keyed by module name, one entry per
    name (also for a single name: ``fit_prior(net, images)["entropy_bottleneck"]``).

    ``warm_start=True`` continues the already fitted PC entropy models on ``images`` instead of
    fitting new ones (adapting a prior to a domain: ``pc-prior prior fit --init``); their
    alphabets, structures, sizes and contexts are kept, so the settings that choose those are not
    used. The named modules must be fitted PC entropy models, else ``InputError``.

    Every argument (the fits' keyword arguments included) is checked before anything is swapped
    or collected; a bad one raises ``InputError``. The codec is frozen only while the circuits are
    fitted: afterwards every parameter's ``requires_grad`` is as it was (new parameters, such as
    the circuits', require grad), so a training script's optimizers see the whole model again.
    """
    names = (
        [name] if isinstance(name, str) else list(name) if isinstance(name, (list, tuple)) else None
    )
    if names is None or not all(isinstance(n, str) for n in names):
        raise InputError(f"name must be a module name or a sequence of them, got {name!r}")
    if not names:
        raise InputError("name must name at least one entropy model")
    if not isinstance(model, nn.Module):
        raise InputError(
            f"model must be a torch.nn.Module (a CompressAI codec), got {type(model).__name__}"
        )
    multiple = check_int("multiple", multiple, 1)
    max_images = check_int("max_images", max_images, 1, allow_none=True)
    if conditional is not None and not isinstance(conditional, dict):
        raise InputError(
            f"conditional must be a dict of PCConditional.fit arguments or None, got "
            f"{type(conditional).__name__}"
        )
    modules: dict[str, nn.Module] = {}
    for n in names:
        try:
            modules[n] = model.get_submodule(n)
        except AttributeError as e:
            raise InputError(f"model has no module {n!r} to fit a circuit into: {e}") from None
    check_choice("warm_start", warm_start, (False, True))
    if warm_start:
        for n, m in modules.items():
            if not isinstance(m, PC_MODULES) or m.pc is None:
                raise InputError(
                    f"warm_start continues fitted PC entropy models, but {n!r} is "
                    f"{'an unfitted ' if isinstance(m, PC_MODULES) else ''}{type(m).__name__}: "
                    "pass a codec that pc-prior prior fit (or fit_prior) produced"
                )
    bottleneck_kw = {
        "num_latents": num_latents,
        "progress": progress,
        "warm_start": warm_start,
        **fit_kwargs,
    }
    cond_kw = {"progress": progress, "warm_start": warm_start} | (conditional or {})
    if any(isinstance(m, EntropyBottleneck) for m in modules.values()):
        PCEntropyBottleneck.check_fit_args(**bottleneck_kw)
    elif fit_kwargs:
        raise InputError(
            f"keyword arguments {', '.join(sorted(fit_kwargs))} are PCEntropyBottleneck.fit's, but "
            f"no entropy bottleneck is named ({', '.join(names)}); pass PCConditional.fit's in "
            "conditional={...}"
        )
    if any(isinstance(m, GaussianConditional) for m in modules.values()):
        PCConditional.check_fit_args(**cond_kw)
    if isinstance(images, (str, Path)):  # read now (headers), so a bad folder stops before the swap
        images = FolderImages(Path(images), multiple, max_images)
    else:
        if isinstance(images, Tensor) or not isinstance(images, Iterable):
            raise InputError(
                "images must be a folder or a sequence of image tensors [B, 3, H, W], got "
                f"{type(images).__name__}"
                + (" (for a batch tensor pass [batch])" if isinstance(images, Tensor) else "")
            )
        images = list(images)
        if not images:
            raise InputError("images is empty: no images to collect latents from")
        for i, x in enumerate(images):
            check_image_batch(f"images[{i}]", x)
    ref = next(
        model.parameters(), torch.zeros(())
    )  # images go to the codec's device and dtype (a .double() codec too)
    dev, dt = ref.device, ref.dtype
    swapped: list[str] = []
    try:
        for n in names:
            if not isinstance(modules[n], PC_MODULES):
                swap_entropy_model(model, n)
                swapped.append(n)
    except Exception:  # leave the model as it was given
        for n in swapped:
            parent, attr = _parent_and_attr(model, n)
            setattr(parent, attr, modules[n])
        raise
    before = list(model.parameters())  # kept alive, so the ids below stay theirs
    flags = {id(p): p.requires_grad for p in before}
    for p in before:
        p.requires_grad_(False)
    try:
        if isinstance(images, FolderImages):
            seq: Iterable[Tensor] = (x.to(dev, dt) for x in images)
            total = len(images)
        else:
            seq, total = (x.to(dev, dt) for x in images), len(images)
        seq = progress_bar(seq, total=total, desc="latents", unit="img", disable=not progress)
        data = _collect(model, seq, names)
        hists: dict[str, list[dict]] = {}
        for n in names:
            module = model.get_submodule(n)
            for p in module.parameters():  # the circuit is what gets trained
                p.requires_grad_(True)
            with torch.enable_grad():
                if isinstance(module, PCConditional):
                    sym, idx = data[n]  # type: ignore[misc]
                    hists[n] = module.fit(sym, idx, **cond_kw)
                else:
                    hists[n] = module.fit(data[n], **bottleneck_kw)  # type: ignore[union-attr,arg-type]
    finally:  # the codec's own parameters as they were; new ones (the circuits') require grad
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), True))
    return hists
