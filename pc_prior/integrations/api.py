"""Fitting a CompressAI model's PC entropy models on images: collecting the latents at its entropy
models (``collect_latents``, ``collect_conditional_inputs``) and ``fit_prior``, which swaps the
modules first (``pc_prior.integrations.swap``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from .._checks import check_int
from ..errors import InputError
from ..images import FolderImages, check_image_batch
from ..progress import progress_bar
from ..settings import (
    BOTTLENECK_ADAPT_FIELDS,
    CONDITIONAL_ADAPT_FIELDS,
    BottleneckFit,
    ConditionalFit,
    ImageFit,
    check_adapt_fields,
    deprecated_fields,
    pop_warm_start,
)
from .base import position_rows
from .codec_file import read_codec_file, save_codec
from .conditional import PCConditional
from .entropy_models import PCEntropyBottleneck
from .swap import PC_MODULES, _parent_and_attr, swap_entropy_model

__all__ = [
    "adapt_prior",
    "collect_conditional_inputs",
    "collect_latents",
    "fit_prior",
    "fit_prior_file",
]


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
def _collect(
    model: nn.Module,
    images: Iterable[Tensor],
    names: Sequence[str],
    keep: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, object]:
    """One eval-mode forward per image batch, stopped once every named module has seen its input.

    Bottlenecks give their input maps [B, C, H, W], one per forward; conditionals give lists of (symbols int32, scale
    indexes int16) maps [B, C, H, W], one per forward, exactly what their coder would see. Circuit-backed modules only
    quantize meanwhile, so unfitted ones do not stop the pass.

    With ``keep``, the batches are a stream of unknown length: each image's maps ([1, C, H, W])
    are kept in a uniform random sample of at most ``keep`` images (reservoir sampling, drawn
    with ``generator``; the same images for every module), so memory is bounded whatever the
    stream's length.
    """
    got: dict[str, list] = {n: [] for n in names}
    current: dict[str, object] = {}
    seen: set[str] = set()
    count = 0  # images streamed so far (``keep``)
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
                current[n] = (
                    sym.detach().cpu().to(torch.int32),
                    module.build_indexes(scales).cpu().to(torch.int16),
                )
            else:
                if args[0].dim() != 4:
                    raise InputError(
                        f"model.{n} got a latent of shape {tuple(args[0].shape)}: expected [B, C, H, W] "
                        "(PC entropy models take 4-D image latents only)"
                    )
                current[n] = args[0].detach().cpu()  # the latent map [B, C, H, W]
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
            if keep is None:
                for n in names:
                    got[n].append(current[n])
                continue
            for i in range(len(x)):  # reservoir sampling of images (Vitter's algorithm R)
                slot = (
                    count
                    if count < keep
                    else int(torch.randint(count + 1, (), generator=generator))
                )
                count += 1
                if slot >= keep:
                    continue
                for n in names:
                    part = current[n]
                    one = (
                        (part[0][i : i + 1], part[1][i : i + 1])
                        if isinstance(part, tuple)
                        else part[i : i + 1]  # type: ignore[index]
                    )
                    if slot == len(got[n]):
                        got[n].append(one)
                    else:
                        got[n][slot] = one
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
        raise InputError("images is empty: no images to collect latents from")
    out: dict[str, object] = {}
    for n, parts in got.items():
        if isinstance(parts[0], tuple):
            out[n] = ([p[0] for p in parts], [p[1] for p in parts])
        else:
            out[n] = parts
    return out


class _CheckedBatches(Iterable[Tensor]):
    """A stream of image batches (a DataLoader's, or any iterable's), each checked as it comes; a
    ``(images, labels)`` batch (torchvision datasets) gives its images."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Tensor]:
        for i, x in enumerate(self.batches):
            if isinstance(x, (tuple, list)) and x:
                x = x[0]
            check_image_batch(f"images batch {i}", x)
            yield x


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
    bottleneck: BottleneckFit | None = None,
    conditional: ConditionalFit | None = None,
    multiple: int = ImageFit.multiple,
    max_images: int | None = ImageFit.max_images,
    progress: bool = True,
    **fields: Any,
) -> dict[str, list[dict]]:
    """Freeze ``model``, collect the latents at its entropy model(s) and fit the circuit(s).

    ``images`` is a folder (``FolderImages``: every image cropped to multiples of ``multiple``, so
    the circuit sees no padding; images with a side shorter than ``multiple`` are skipped with a
    warning, and a folder of only such images raises ``InputError``), a sequence of [1, 3, H, W]
    tensors, used as given (neither cropped nor padded), or any other iterable of image batches
    [B, 3, H, W] (a ``DataLoader``; ``(images, labels)`` batches give their images), streamed
    once. At most ``max_images`` images are used, a uniform random sample of a larger folder,
    sequence or stream (a reservoir, for a stream), drawn with the bottleneck settings' ``seed``:
    the latents' memory is bounded by ``max_images``, not by the folder's size (ImageNet's).
    ``multiple`` and ``max_images`` are ``ImageFit``'s fields. ``name`` is one module name or several, e.g.
    ``("entropy_bottleneck", "gaussian_conditional")`` for a hyperprior codec; plain modules are
    swapped for circuit-backed ones first. All named modules' inputs are collected in one pass.

    Settings come one way: bottlenecks are fitted with ``bottleneck`` (a ``BottleneckFit``; None:
    the defaults) and ``fields``, keywords that replace its fields one to one (``num_latents=8,
    epochs=2``); conditionals with ``conditional`` (a ``ConditionalFit``; None: the defaults).
    The defaults are ``pc_prior.settings``', the same as ``pc-prior prior fit``'s. Returns a dict
    of fit histories keyed by module name, one entry per name (also for a single name:
    ``fit_prior(net, images)["entropy_bottleneck"]``). ``adapt_prior`` continues fitted ones.

    Every setting is checked before anything is swapped or collected; a bad one raises
    ``InputError``. The codec is frozen only while the circuits are fitted: afterwards every
    parameter's ``requires_grad`` is as it was (new parameters, such as the circuits', require
    grad), so a training script's optimizers see the whole model again. Deprecated for one
    release (``FutureWarning``): ``conditional`` as a dict of fields, and ``warm_start=True``
    (now ``adapt_prior``).
    """
    kept = pop_warm_start(fields, BOTTLENECK_ADAPT_FIELDS, "adapt_prior(...)")
    if kept is not None:  # the deprecated switch to adapt_prior
        PCEntropyBottleneck.check_settings(bottleneck, **fields)
        return adapt_prior(
            model,
            images,
            name=name,
            bottleneck=bottleneck,
            conditional=_conditional_settings(conditional, adapting=True),
            multiple=multiple,
            max_images=max_images,
            progress=progress,
            **kept,
        )
    return _fit_modules(
        model,
        images,
        name,
        PCEntropyBottleneck.check_settings(bottleneck, **fields),
        _conditional_settings(conditional),
        multiple,
        max_images,
        progress,
        adapting=False,
        bottleneck_fields=bool(fields),
    )


def adapt_prior(
    model: nn.Module,
    images: str | Path | Sequence[Tensor],
    *,
    name: str | Sequence[str] | None = None,
    bottleneck: BottleneckFit | None = None,
    conditional: ConditionalFit | None = None,
    multiple: int = ImageFit.multiple,
    max_images: int | None = ImageFit.max_images,
    progress: bool = True,
    **fields: Any,
) -> dict[str, list[dict]]:
    """Continue the fitted PC entropy models of ``model`` on ``images`` (adapting a prior to a
    domain: ``pc-prior prior adapt``), each from its current parameters.

    ``name``: the modules to continue (None: every PC entropy model of ``model``); each must be
    fitted, else ``InputError``. Only the training schedule is chosen: ``bottleneck`` and
    ``fields`` (``settings.BOTTLENECK_ADAPT_FIELDS``) for bottlenecks, ``conditional``
    (``settings.CONDITIONAL_ADAPT_FIELDS``) for conditionals; alphabets, structures, sizes,
    leaves and contexts are kept (``PCEntropyBottleneck.adapt``, ``PCConditional.adapt``).
    Images, freezing and the returned histories are as in ``fit_prior``.
    """
    if name is None:  # every PC entropy model of the codec
        if not isinstance(model, nn.Module):
            raise InputError(
                f"model must be a torch.nn.Module (a CompressAI codec), got {type(model).__name__}"
            )
        name = [n for n, m in model.named_modules() if isinstance(m, PC_MODULES)]
        if not name:
            raise InputError(
                "the model holds no PC entropy model to continue: fit one first (fit_prior)"
            )
    settings = PCEntropyBottleneck.check_settings(bottleneck, **fields)
    check_adapt_fields(fields, BOTTLENECK_ADAPT_FIELDS, "adapt_prior")
    return _fit_modules(
        model,
        images,
        name,
        settings,
        _conditional_settings(conditional),
        multiple,
        max_images,
        progress,
        adapting=True,
        bottleneck_fields=bool(fields),
    )


#: what a codec file says about itself that ``fit_prior_file`` keeps (its weights, format and PC
#: modules are written anew; a ``prior fit`` history is replaced)
_KEPT_FIELDS = ("net_kwargs", "lmbda", "metric", "steps", "start")


def fit_prior_file(
    model: str | Path,
    images: str | Path,
    output: str | Path,
    *,
    name: str | Sequence[str] | None = None,
    adapt: bool = False,
    bottleneck: BottleneckFit | None = None,
    conditional: ConditionalFit | None = None,
    multiple: int = ImageFit.multiple,
    max_images: int | None = ImageFit.max_images,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, list[dict]]:
    """``pc-prior prior fit|adapt`` as a function: read the codec file ``model``, fit its PC
    entropy models on the image folder ``images`` (``fit_prior``; ``adapt``: continue the fitted
    ones, ``adapt_prior``) and write the codec file ``output``; returns the fit histories.

    ``name``: the modules to fit (None: the file's PC entropy models, or its bottleneck when it has
    none; with ``adapt``, always the fitted ones). What the file says of its codec (λ, metric,
    steps trained, start, constructor arguments) is kept. ``pc-prior codec finetune`` refits its
    output with this, so its priors are exactly ``prior fit``'s on the fine-tuned codec.
    """
    from ..devices import resolve_device

    dev = resolve_device(device)  # before anything is loaded
    net, ck = read_codec_file(model)
    net.to(dev).eval()
    fitted = tuple(n for n, m in net.named_modules() if isinstance(m, PC_MODULES))
    if adapt and not fitted:
        raise InputError(
            f"{model} holds no PC entropy model to continue: fit one first "
            f"(pc-prior prior fit {model} --data DIR -o OUT)"
        )
    if adapt or name is None:
        name = fitted if adapt or fitted else ("entropy_bottleneck",)
    step = adapt_prior if adapt else fit_prior
    hist = step(
        net,
        images,
        name=name,
        bottleneck=bottleneck,
        conditional=conditional,
        multiple=multiple,
        max_images=max_images,
        progress=progress,
    )
    kept = {k: ck[k] for k in _KEPT_FIELDS if ck.get(k) is not None}
    save_codec(net, output, ck["arch"], ck["quality"], fit_history=hist, **kept)
    return hist


def _conditional_settings(conditional: Any, adapting: bool = False) -> ConditionalFit:
    """``fit_prior``'s ``conditional`` as checked ``ConditionalFit`` settings; a dict of fields
    (the old form) with a ``FutureWarning``."""
    if isinstance(conditional, dict):
        message = "fit_prior(conditional={...}) is now conditional=ConditionalFit(...)"
        fields = deprecated_fields(conditional, message)
        if adapting:
            fields = {k: v for k, v in fields.items() if k in CONDITIONAL_ADAPT_FIELDS}
        return PCConditional.check_settings(**fields)
    return PCConditional.check_settings(conditional)


def _fit_modules(
    model: nn.Module,
    images: str | Path | Sequence[Tensor],
    name: str | Sequence[str],
    bottleneck: BottleneckFit,
    conditional: ConditionalFit,
    multiple: int,
    max_images: int | None,
    progress: bool,
    *,
    adapting: bool,
    bottleneck_fields: bool,
) -> dict[str, list[dict]]:
    """``fit_prior`` and ``adapt_prior``: check, swap, collect once, fit or continue each module."""
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
    modules: dict[str, nn.Module] = {}
    for n in names:
        try:
            modules[n] = model.get_submodule(n)
        except AttributeError as e:
            raise InputError(f"model has no module {n!r} to fit a circuit into: {e}") from None
    if adapting:
        for n, m in modules.items():
            if not isinstance(m, PC_MODULES) or m.pc is None:
                raise InputError(
                    f"adapt_prior continues fitted PC entropy models, but {n!r} is "
                    f"{'an unfitted ' if isinstance(m, PC_MODULES) else ''}{type(m).__name__}: "
                    "pass a codec that pc-prior prior fit (or fit_prior) produced"
                )
    if bottleneck_fields and not any(isinstance(m, EntropyBottleneck) for m in modules.values()):
        raise InputError(
            f"bottleneck settings were given, but no entropy bottleneck is named "
            f"({', '.join(names)}); pass a conditional's in conditional=ConditionalFit(...)"
        )
    seed = bottleneck.seed  # the images' sample, as the positions' (``max_items``)
    keep: int | None = None  # a stream's reservoir of images
    if isinstance(images, (str, Path)):  # read now (headers), so a bad folder stops before the swap
        images = FolderImages(Path(images), multiple, max_images, seed=seed)
    elif isinstance(images, (list, tuple)):
        if not images:
            raise InputError("images is empty: no images to collect latents from")
        for i, x in enumerate(images):
            check_image_batch(f"images[{i}]", x)
        if max_images is not None and len(images) > max_images:  # a uniform sample, in order
            g = torch.Generator().manual_seed(seed)
            pick = sorted(torch.randperm(len(images), generator=g)[:max_images].tolist())
            images = [images[i] for i in pick]
    elif isinstance(images, Tensor) or not isinstance(images, Iterable):
        raise InputError(
            "images must be a folder, a sequence of image tensors [B, 3, H, W] or an iterable of "
            f"such batches (a DataLoader), got {type(images).__name__}"
            + (" (for a batch tensor pass [batch])" if isinstance(images, Tensor) else "")
        )
    else:  # a DataLoader or any iterable of batches: streamed once, a sample of images kept
        images = _CheckedBatches(images)
        keep = max_images
    ref = next(
        model.parameters(), torch.zeros(())
    )  # images go to the codec's device and dtype (a .double() codec too)
    dev, dt = ref.device, ref.dtype
    swapped: list[str] = []

    def unswap() -> None:  # leave the model as it was given
        for n in swapped:
            parent, attr = _parent_and_attr(model, n)
            setattr(parent, attr, modules[n])

    try:
        for n in names:
            if not isinstance(modules[n], PC_MODULES):
                swap_entropy_model(model, n)
                swapped.append(n)
    except Exception:
        unswap()
        raise
    before = list(model.parameters())  # kept alive, so the ids below stay theirs
    flags = {id(p): p.requires_grad for p in before}
    for p in before:
        p.requires_grad_(False)
    try:
        stream = images.batches if isinstance(images, _CheckedBatches) else images
        total = len(stream) if isinstance(stream, Sized) else None
        seq: Iterable[Tensor] = (x.to(dev, dt) for x in images)
        unit = "batch" if keep is not None else "img"
        seq = progress_bar(seq, total=total, desc="latents", unit=unit, disable=not progress)
        try:  # a stream's bad or missing images show only now
            data = _collect(model, seq, names, keep, torch.Generator().manual_seed(seed))
        except Exception:
            unswap()
            raise
        hists: dict[str, list[dict]] = {}
        for n in names:
            module = model.get_submodule(n)
            for p in module.parameters():  # the circuit is what gets trained
                p.requires_grad_(True)
            with torch.enable_grad():
                if isinstance(module, PCConditional):
                    sym, idx = data[n]  # type: ignore[misc]
                    step = module.adapt if adapting else module.fit
                    hists[n] = step(sym, idx, conditional, progress=progress)
                else:
                    assert isinstance(module, PCEntropyBottleneck)
                    step = module.adapt if adapting else module.fit
                    hists[n] = step(data[n], bottleneck, progress=progress)  # type: ignore[arg-type]
    finally:  # the codec's own parameters as they were; new ones (the circuits') require grad
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), True))
    return hists
