"""Images: listing, reading, padding, cropping and the two distortion metrics, in one place.

Everything that touches image files or image-sized tensors (fitting a prior on a folder, the
evaluation harness, the demo, Lightning validation, the benches) goes through these functions, so
there is one extension list, one padding convention and one PSNR. They follow CompressAI's
``compressai.utils.eval_model``: its extension list (matched case-insensitively here), images as
float tensors in [0, 1], zero padding *centred* on the image to a multiple of 64
(``compressai.ops.compute_padding``), PSNR ``20·log10(max) − 10·log10(MSE)`` and MS-SSIM from
``pytorch_msssim``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_int
from .errors import InputError

__all__ = [
    "IMG_EXTENSIONS",
    "MIN_DIV",
    "MS_SSIM_MIN_SIDE",
    "FolderImages",
    "compute_metrics",
    "crop_padding",
    "crop_to_multiple",
    "list_images",
    "load_image",
    "ms_ssim",
    "pad_to_multiple",
    "psnr",
]

# CompressAI's eval_model list (from torchvision.datasets.folder); matched case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MIN_DIV = 64  # CompressAI pads to allow 6 stride-2 stages
MS_SSIM_MIN_SIDE = 161  # 5 scales of an 11-pixel window: both sides must exceed 160 pixels


def list_images(root: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Image files (``IMG_EXTENSIONS``, any case) in ``root`` and, with ``recursive``, below it; sorted.

    A missing folder raises ``FileNotFoundError``; a file, or a folder without images, ``InputError``.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise InputError(f"expected a folder of images, got a file: {root}")
    found = root.rglob("*") if recursive else root.iterdir()
    files = sorted(p for p in found if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not files:
        raise InputError(
            f"no images ({', '.join(IMG_EXTENSIONS)}) found in {root}"
            + ("" if recursive else " (subfolders not searched)")
            + ": pass a folder that holds some"
        )
    return files


def load_image(path: str | os.PathLike[str]) -> Tensor:
    """The image at ``path`` as RGB, a float32 tensor [1, 3, H, W] in [0, 1] (8-bit values / 255)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read {path} as an image ({e}); pass a readable image file") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div_(255.0)


def _check_image(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 2:
        what = f"a tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{name} must be an image tensor [..., H, W], got {what}")
    return x


def pad_to_multiple(x: Tensor, multiple: int = MIN_DIV) -> Tensor:
    """Zero-pad ``x`` [..., H, W] to multiples of ``multiple``, centred as CompressAI pads
    (``compute_padding``); ``x`` itself when no padding is needed. ``crop_padding`` undoes it."""
    from compressai.ops import compute_padding

    x = _check_image("x", x)
    multiple = check_int("multiple", multiple, 1)
    h, w = x.shape[-2:]
    pad, _ = compute_padding(h, w, min_div=multiple)
    return F.pad(x, pad, mode="constant", value=0) if any(pad) else x


def crop_padding(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The centred ``size`` = (H, W) window of ``x`` [..., H', W']: undoes ``pad_to_multiple``
    (also on a reconstruction of the padded image)."""
    x = _check_image("x", x)
    if not (isinstance(size, (tuple, list, torch.Size)) and len(size) == 2):
        raise InputError(f"size must be (height, width), got {size!r}")
    h, w = (check_int("size", s, 1) for s in size)
    big_h, big_w = x.shape[-2:]
    if big_h < h or big_w < w:
        raise InputError(
            f"cannot crop {h}x{w} out of a {big_h}x{big_w} image: pass the size before padding"
        )
    top, left = (big_h - h) // 2, (big_w - w) // 2
    return x[..., top : top + h, left : left + w]


def crop_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Crop ``x`` [..., H, W] at the bottom and right to multiples of ``multiple``, so no padding
    enters (e.g. a fit); a side shorter than ``multiple`` is padded instead (``pad_to_multiple``)."""
    x = _check_image("x", x)
    multiple = check_int("multiple", multiple, 1)
    h, w = x.shape[-2:]
    if h < multiple or w < multiple:
        return pad_to_multiple(x, multiple)
    return x[..., : h - h % multiple, : w - w % multiple]


class FolderImages(Sequence[Tensor]):
    """The images of a folder as a fit reads them: ``list_images`` order, the first ``max_images``
    (all with ``None``), each ``load_image``-ed and cropped to multiples of ``multiple``.

    Lazy (an image is read when it is indexed or iterated to), so a large folder never sits in
    memory, and sized, so a progress bar knows the total. ``fit_prior``, ``pc-prior prior fit``,
    the Lightning prior fit and the benches read folders through it, so they all see the same crops.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        multiple: int = MIN_DIV,
        max_images: int | None = None,
    ) -> None:
        self.multiple = check_int("multiple", multiple, 1)
        max_images = check_int("max_images", max_images, 1, allow_none=True)
        self.files = list_images(root)[:max_images]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:  # type: ignore[override]
        if not hasattr(i, "__index__"):  # ints and numpy/torch integers; no slices
            raise InputError(f"FolderImages takes an int index, got {type(i).__name__}")
        return crop_to_multiple(load_image(self.files[i.__index__()]), self.multiple)


def psnr(a: Tensor, b: Tensor, max_val: float = 1.0) -> Tensor:
    """PSNR in dB of ``a`` against ``b`` over all their elements, ``20·log10(max_val) − 10·log10(MSE)``
    (CompressAI's formula): a 0-d float64 tensor, ``inf`` where ``a`` equals ``b``."""
    a, b = _check_image("a", a), _check_image("b", b)
    if a.shape != b.shape:
        raise InputError(
            f"psnr needs two tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    mse = (a - b).pow(2).mean().double()
    return 20 * math.log10(max_val) - 10 * torch.log10(mse)


def ms_ssim(a: Tensor, b: Tensor, max_val: float = 1.0) -> Tensor:
    """MS-SSIM of image batches ``a`` and ``b`` [N, 3, H, W] with values in [0, ``max_val``], mean
    over the batch (``pytorch_msssim``, as CompressAI); differentiable, so usable as a loss.

    Both sides must be at least ``MS_SSIM_MIN_SIDE`` (161) pixels, else ``InputError``.
    """
    from pytorch_msssim import ms_ssim as _ms_ssim

    a, b = _check_image("a", a), _check_image("b", b)
    if a.dim() != 4 or a.shape != b.shape:
        raise InputError(
            f"ms_ssim needs two [N, C, H, W] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if min(a.shape[-2:]) < MS_SSIM_MIN_SIDE:
        raise InputError(
            f"MS-SSIM needs both sides of at least {MS_SSIM_MIN_SIDE} pixels (5 scales, 11-pixel "
            f"window), got {a.shape[-2]}x{a.shape[-1]}: use larger images or crops"
        )
    return _ms_ssim(a, b, data_range=max_val)


def compute_metrics(org: Tensor, rec: Tensor, max_val: int = 255) -> dict[str, float]:
    """PSNR-RGB and MS-SSIM-RGB of images [N, 3, H, W] in [0, 1] on 8-bit rounded values, as
    CompressAI's ``eval_model``; MS-SSIM is NaN for images with a side under 161 pixels."""
    org = (org * max_val).clamp(0, max_val).round()
    rec = (rec * max_val).clamp(0, max_val).round()
    small = min(org.shape[-2:]) < MS_SSIM_MIN_SIDE
    return {
        "psnr-rgb": float(psnr(org, rec, max_val)),
        "ms-ssim-rgb": float("nan") if small else float(ms_ssim(org, rec, max_val)),
    }
