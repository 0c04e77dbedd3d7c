"""Swapping a CompressAI model's entropy bottleneck for a circuit, and fitting it on images."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck
from torch import Tensor, nn
from tqdm.auto import tqdm

from .entropy_models import PCEntropyBottleneck

__all__ = ["swap_entropy_model", "collect_latents", "fit_prior", "load_image", "pad_to_multiple", "crop_to_multiple", "list_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")


def swap_entropy_model(model: nn.Module, name: str = "entropy_bottleneck", **kwargs) -> PCEntropyBottleneck:
    """Replace ``model.<name>`` (an ``EntropyBottleneck``) by an unfitted ``PCEntropyBottleneck``.

    The new module keeps the old one's channels, device and ``quantiles`` (hence its medians, so
    rounding, and thus the reconstruction, stay the same). Returns the new module.
    """
    old = getattr(model, name, None)
    if not isinstance(old, EntropyBottleneck):
        raise TypeError(f"model.{name} is {type(old).__name__}, expected an EntropyBottleneck to replace")
    new = PCEntropyBottleneck(old.channels, **kwargs).to(old.quantiles.device)
    with torch.no_grad():
        new.quantiles.copy_(old.quantiles.detach())
    setattr(model, name, new)
    return new


class _Stop(Exception):
    """Raised by the bottleneck pre-hook to end a forward pass once its input is captured."""


@torch.no_grad()
def collect_latents(model: nn.Module, images: Iterable[Tensor], name: str = "entropy_bottleneck") -> Tensor:
    """The values entering ``model.<name>`` for each image, as rows [N positions, C].

    Runs the model's own ``forward`` in eval mode and stops it at the bottleneck (a pre-hook),
    so this works for any CompressAI model whatever transforms lead to the bottleneck.
    """
    module = getattr(model, name)
    rows: list[Tensor] = []

    def hook(_mod: nn.Module, args: tuple) -> None:
        y = args[0]
        rows.append(y.detach().permute(0, 2, 3, 1).reshape(-1, y.shape[1]).cpu())
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for x in images:
            try:
                model(x)
            except _Stop:
                pass
    finally:
        handle.remove()
        model.train(was_training)
    if not rows:
        raise ValueError("no images given to collect latents from")
    return torch.cat(rows)


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
    name: str = "entropy_bottleneck",
    num_latents: int = 16,
    multiple: int = 64,
    max_images: int | None = None,
    progress: bool = True,
    **fit_kwargs,
) -> list[dict]:
    """Freeze ``model``, collect the latents at ``model.<name>`` and fit its circuit.

    ``images`` is a folder (every image, cropped to multiples of ``multiple``, so the circuit
    sees no padding) or a sequence of [1, 3, H, W] tensors. Swaps in a ``PCEntropyBottleneck`` first if the model still has a plain one.
    Remaining keyword arguments go to ``PCEntropyBottleneck.fit`` (``max_items``, ``epochs``,
    ``tail``, ...). Returns the EM history.
    """
    if not isinstance(getattr(model, name, None), PCEntropyBottleneck):
        swap_entropy_model(model, name)
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
    values = collect_latents(model, seq, name)
    bottleneck: PCEntropyBottleneck = getattr(model, name)
    for p in bottleneck.parameters():  # the circuit is what gets trained
        p.requires_grad_(True)
    with torch.enable_grad():
        return bottleneck.fit(values.to(dev), num_latents, progress=progress, **fit_kwargs)


def load_codec(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A CompressAI zoo codec from a checkpoint dict (``arch``, ``quality``, ``state_dict``), in eval mode.

    Checkpoints written by ``save_codec`` list their swapped modules under ``pc_modules``; those
    are swapped in before loading, so the circuit and its coding tables come back bit-exactly.
    Floating tensors stored in half precision are cast to float32.
    """
    import compressai

    ck = torch.load(path, map_location=map_location)
    for key in ("arch", "quality", "state_dict"):
        if key not in ck:
            raise ValueError(f"{path} is not a codec checkpoint: no {key!r} entry")
    net = compressai.zoo.image_models[ck["arch"]](quality=ck["quality"])
    for name in ck.get("pc_modules", []):
        swap_entropy_model(net, name)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()})
    return net.to(map_location).eval()


def save_codec(model: nn.Module, path: str | Path, arch: str, quality: int, **extra) -> None:
    """Save a (swapped) CompressAI codec in the format ``load_codec`` reads."""
    pc_modules = [n for n, m in model.named_modules() if isinstance(m, PCEntropyBottleneck)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": arch, "quality": quality, "pc_modules": pc_modules,
                "state_dict": model.state_dict(), **extra}, path)
