"""Swapping a CompressAI model's entropy models for circuits, and fitting them on images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn
from tqdm.auto import tqdm

from .conditional import PCConditional
from .entropy_models import PCEntropyBottleneck

__all__ = [
    "swap_entropy_model", "collect_latents", "collect_conditional_inputs", "fit_prior", "load_image",
    "pad_to_multiple", "crop_to_multiple", "list_images", "build_codec", "read_codec_file", "load_codec", "save_codec",
]

PC_MODULES = (PCEntropyBottleneck, PCConditional)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")


def _parent_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, attr = name.rpartition(".")
    return (model.get_submodule(head) if head else model), attr


def swap_entropy_model(model: nn.Module, name: str | Sequence[str] = "entropy_bottleneck", **kwargs):
    """Replace entropy models of ``model`` by unfitted circuit-backed ones; returns the new module(s).

    ``name`` is a (dotted) module name or a sequence of them, e.g.
    ``("entropy_bottleneck", "gaussian_conditional")`` for a hyperprior codec. An
    ``EntropyBottleneck`` becomes a ``PCEntropyBottleneck`` keeping its channels, device and
    ``quantiles`` (hence its medians, so rounding, and thus the reconstruction, stay the same;
    ``kwargs`` go to it). A ``GaussianConditional`` becomes a ``PCConditional`` keeping its scale
    table and scale bound (so ``build_indexes`` and the symbols stay the same). A sequence of names
    returns a tuple of the new modules.
    """
    if not isinstance(name, str):
        return tuple(swap_entropy_model(model, n, **kwargs) for n in name)
    parent, attr = _parent_and_attr(model, name)
    old = getattr(parent, attr, None)
    if isinstance(old, EntropyBottleneck):
        new = PCEntropyBottleneck(old.channels, **kwargs).to(old.quantiles.device)
        with torch.no_grad():
            new.quantiles.copy_(old.quantiles.detach())
    elif isinstance(old, GaussianConditional) and type(old) in (GaussianConditional, PCConditional):
        dev = old.scale_bound.device
        new = PCConditional(None, scale_bound=float(old.scale_bound), tail_mass=old.tail_mass).to(dev)
        new.lower_bound_scale = old.lower_bound_scale
        new.scale_table = old.scale_table.detach().clone()
    else:
        raise TypeError(f"model.{name} is {type(old).__name__}, expected an EntropyBottleneck or a "
                        "GaussianConditional to replace")
    setattr(parent, attr, new)
    return new


class _Stop(Exception):
    """Raised by the bottleneck pre-hook to end a forward pass once its input is captured."""


def _passthrough(module: nn.Module):
    """Forward of a circuit-backed module that only quantizes (eval mode), for latent collection."""
    if isinstance(module, PCEntropyBottleneck):
        def forward(x: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
            med = module._medians().view(1, -1, 1, 1).to(x.dtype)
            return torch.round(x - med) + med, torch.ones_like(x)
    else:
        def forward(inputs: Tensor, scales: Tensor, means: Tensor | None = None,
                    training: bool | None = None) -> tuple[Tensor, Tensor]:
            return module.quantize(inputs, "dequantize", means), torch.ones_like(inputs)
    return forward


def _rows(t: Tensor) -> Tensor:
    return t.detach().permute(0, 2, 3, 1).reshape(-1, t.shape[1]).cpu()


@torch.no_grad()
def _collect(model: nn.Module, images: Iterable[Tensor], names: Sequence[str]) -> dict[str, object]:
    """One eval-mode forward per image, stopped once every named module has seen its input.

    Bottlenecks give their input rows [N, C]; conditionals give lists of (symbols int32, scale
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
                    raise ValueError(f"model.{n} got scales of shape {tuple(scales.shape)} for a latent of shape "
                                     f"{tuple(y.shape)}: the image size must be a multiple of the codec's total "
                                     "downsampling (64 for the zoo's hyperprior models)")
                sym = module.quantize(y, "symbols", means)
                got[n].append((sym.detach().cpu().to(torch.int32), module.build_indexes(scales).cpu().to(torch.int16)))
            else:
                got[n].append(_rows(args[0]))
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
            try:
                model(x)
            except _Stop:
                pass
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
            out[n] = torch.cat(parts)
    return out


def collect_latents(model: nn.Module, images: Iterable[Tensor], name: str = "entropy_bottleneck") -> Tensor:
    """The values entering ``model.<name>`` for each image, as rows [N positions, C].

    Runs the model's own ``forward`` in eval mode and stops it at the bottleneck (a pre-hook),
    so this works for any CompressAI model whatever transforms lead to the bottleneck.
    """
    return _collect(model, images, [name])[name]  # type: ignore[return-value]


def collect_conditional_inputs(model: nn.Module, images: Iterable[Tensor], name: str = "gaussian_conditional",
                               maps: bool = False) -> tuple[Tensor, Tensor] | tuple[list[Tensor], list[Tensor]]:
    """Symbols ``round(y - means)`` (int32) and scale indexes (int16) at ``model.<name>``.

    As rows [N, C] (positions x channels), or with ``maps=True`` as lists of per-image maps
    [1, C, H, W] (what ``PCConditional.fit`` needs for its checkerboard context).
    """
    sym, idx = _collect(model, images, [name])[name]  # type: ignore[misc]
    if maps:
        return sym, idx
    return torch.cat([_rows(s) for s in sym]), torch.cat([_rows(i) for i in idx])


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` or its subfolders, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files


def load_image(path: str | Path) -> Tensor:
    """RGB image as float [1, 3, H, W] in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


def crop_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Crop [B, C, H, W] at the bottom and right to multiples of ``multiple`` (no padding content)."""
    h, w = x.shape[-2:]
    if h < multiple or w < multiple:
        return pad_to_multiple(x, multiple)
    return x[..., : h - h % multiple, : w - w % multiple]


def pad_to_multiple(x: Tensor, multiple: int = 64) -> Tensor:
    """Zero-pad [B, C, H, W] on the right and bottom to multiples of ``multiple`` (as CompressAI's eval)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return torch.nn.functional.pad(x, (0, pw, 0, ph)) if ph or pw else x


def fit_prior(
    model: nn.Module,
    images: str | Path | Sequence[Tensor],
    *,
    name: str | Sequence[str] = "entropy_bottleneck",
    num_latents: int = 16,
    multiple: int = 64,
    max_images: int | None = None,
    progress: bool = True,
    conditional: dict | None = None,
    **fit_kwargs,
) -> list[dict] | dict[str, list[dict]]:
    """Freeze ``model``, collect the latents at its entropy model(s) and fit the circuit(s).

    ``images`` is a folder (every image, cropped to multiples of ``multiple``, so the circuit
    sees no padding) or a sequence of [1, 3, H, W] tensors. ``name`` is one module name or several,
    e.g. ``("entropy_bottleneck", "gaussian_conditional")`` for a hyperprior codec; plain modules
    are swapped for circuit-backed ones first. All named modules' inputs are collected in one pass.
    Bottlenecks are fitted with ``num_latents`` and the remaining keyword arguments
    (``PCEntropyBottleneck.fit``: ``max_items``, ``epochs``, ``tail``, ...); conditionals with
    the ``conditional`` dict (``PCConditional.fit``: ``num_latents``, ``steps``, ``structure``,
    ``context`` (default ``"three-pass"``; ``"checkerboard"`` for two passes, ``None`` for one), ...). Returns the history, or a dict of histories by name when ``name`` is a sequence.
    """
    names = [name] if isinstance(name, str) else list(name)
    if not names:
        raise ValueError("name must name at least one entropy model")
    for n in names:
        if not isinstance(model.get_submodule(n), PC_MODULES):
            swap_entropy_model(model, n)
    for p in model.parameters():
        p.requires_grad_(False)
    dev = next(model.parameters()).device
    if isinstance(images, (str, Path)):
        files = list_images(images)[:max_images]
        seq: Iterable[Tensor] = (crop_to_multiple(load_image(f), multiple).to(dev) for f in files)
        total = len(files)
    else:
        seq, total = (x.to(dev) for x in images), len(images)
    seq = tqdm(seq, total=total, desc="latents", unit="img", disable=not progress)
    data = _collect(model, seq, names)
    hists: dict[str, list[dict]] = {}
    for n in names:
        module = model.get_submodule(n)
        for p in module.parameters():  # the circuit is what gets trained
            p.requires_grad_(True)
        with torch.enable_grad():
            if isinstance(module, PCConditional):
                sym, idx = data[n]  # type: ignore[misc]
                kw = {"progress": progress, "context": "three-pass"} | (conditional or {})
                hists[n] = module.fit(sym, idx, **kw)
            else:
                hists[n] = module.fit(data[n].to(dev), num_latents, progress=progress, **fit_kwargs)  # type: ignore[union-attr]
    return hists[name] if isinstance(name, str) else hists


def build_codec(arch: str, quality: int, net_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A fresh (untrained) codec: a zoo architecture (``image_models[arch](quality=...)``), or a
    ``compressai.models`` class by name built with ``net_kwargs`` (e.g. ``FactorizedPrior``, N=8, M=12)."""
    import compressai.models
    from compressai.zoo import image_models

    if net_kwargs:
        cls = getattr(compressai.models, arch, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"net_kwargs given, so arch must be a compressai.models class name; got {arch!r}")
        return cls(**net_kwargs)
    if arch in image_models:
        return image_models[arch](quality=quality, pretrained=False)
    cls = getattr(compressai.models, arch, None)
    if isinstance(cls, type) and issubclass(cls, nn.Module):
        return cls()
    raise ValueError(f"unknown arch {arch!r}; zoo architectures: {', '.join(sorted(image_models))}")


def _float_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}


def read_codec_file(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(codec on CPU, the file's dict) for a codec file: the one loader of the project's codec format.

    The format is a dict with ``arch``, ``quality`` and ``state_dict`` (``../shared/models``, the
    train exports and ``save_codec`` files). ``net_kwargs`` select a ``compressai.models`` class
    by name; ``pc_modules`` (written by ``save_codec``) are swapped to PC entropy models before
    loading, so circuits and coding tables come back bit-exactly. Half-precision tensors are cast
    to float32. A plain zoo-architecture file whose weights are not that quality's sizes is built
    from the weights (CompressAI's ``from_state_dict``).
    """
    from compressai.zoo.image import model_architectures

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"codec file not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{path} is not a readable torch file: {e}") from e
    if not isinstance(ck, dict) or not {"arch", "quality", "state_dict"} <= ck.keys():
        raise ValueError(f"{path} is not a codec file (needs arch, quality and state_dict)")
    state = _float_state(ck["state_dict"])
    net = build_codec(ck["arch"], ck["quality"], ck.get("net_kwargs"))
    if ck.get("pc_modules"):
        swap_entropy_model(net, list(ck["pc_modules"]))
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        if ck.get("pc_modules") or ck.get("net_kwargs") or ck["arch"] not in model_architectures:
            raise ValueError(f"{path}: its weights do not fit {ck['arch']} (quality {ck['quality']}): {e}") from e
        try:  # not the zoo's channel counts for this quality: take them from the weights
            net = model_architectures[ck["arch"]].from_state_dict(state)
        except Exception as e2:
            raise ValueError(f"{path}: its weights do not fit architecture {ck['arch']}: {e2}") from e2
    return net, ck


def load_codec(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The codec of a codec file (see ``read_codec_file``), in eval mode on ``map_location``."""
    return read_codec_file(path)[0].to(map_location).eval()


def save_codec(model: nn.Module, path: str | Path, arch: str, quality: int, **extra) -> None:
    """Save a (swapped) CompressAI codec in the format ``load_codec`` reads."""
    pc_modules = [n for n, m in model.named_modules() if isinstance(m, PC_MODULES)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": arch, "quality": quality, "pc_modules": pc_modules,
                "state_dict": model.state_dict(), **extra}, path)
