"""Images: listing, reading, padding, cropping and the two distortion metrics, in one place.

Everything that touches image files or image-sized tensors (fitting a prior on a folder, the
evaluation harness, the demo, Lightning validation, the benches) goes through these functions, so
there is one extension list, one padding convention and one PSNR. They follow CompressAI's
``compressai.utils.eval_model``: its extension list (matched case-insensitively here), images as
float tensors in [0, 1], zero padding *centred* on the image to a multiple of 64
(``compressai.ops.compute_padding``), PSNR ``20·log10(max) − 10·log10(MSE)`` and MS-SSIM from
``pytorch_msssim``.

Reading (``load_image``) departs from CompressAI's ``read_image`` (``convert("RGB")``) where that
is wrong, and follows it where it is a choice:

- Every image becomes 8-bit RGB, because the codecs see 8-bit values. 16-bit grayscale (modes
  ``I;16``, ``I;16B``, ...) is scaled, ``round(v / 257)``, where ``convert("RGB")`` clips every
  value above 255 to white. Mode ``I`` (32-bit integers: Pillow's mode for 16-bit PGM and 32-bit
  TIFFs) is read the same way when its values lie in 0..65535 and refused otherwise; mode ``F``
  (floats, no agreed scale: [0, 1] or [0, 255]) is refused. 16-bit RGB(A) files Pillow reduces
  to 8 bits itself (the high byte: within one level of ``v / 257``).
- Alpha is dropped, as CompressAI does (``LA``, ``RGBA``, ``P`` with transparency, ...): the
  colour channels are the picture, so a fit and an evaluation code what the file stores, and
  bpp and PSNR match CompressAI's. Premultiplied alpha is undone first.
- The EXIF orientation tag is ignored, as CompressAI does: the pixels are coded as stored (the
  tag is metadata that a codec does not carry), so the numbers match ``eval_model``'s on the same
  file. Apply ``PIL.ImageOps.exif_transpose`` yourself to view a picture upright.
- ICC profiles are ignored; CMYK, YCbCr and LAB are converted by Pillow.

A fit crops images to multiples of ``multiple`` so the circuit sees no padding; ``FolderImages``
therefore skips (with a warning naming them) the images with a side shorter than ``multiple``,
which could only be padded, and refuses a folder holding nothing else.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_int, check_tensor
from .errors import InputError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "IMG_EXTENSIONS",
    "MIN_DIV",
    "MS_SSIM_MIN_SIDE",
    "FolderImages",
    "check_image_batch",
    "compute_metrics",
    "crop_padding",
    "crop_to_multiple",
    "list_images",
    "load_image",
    "ms_ssim",
    "pad_to_multiple",
    "psnr",
]

#: The image file extensions read: CompressAI's eval_model list (from torchvision.datasets.folder);
#: matched case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MIN_DIV = 64  #: images are padded to multiples of this, as CompressAI pads for 6 stride-2 stages
#: MS-SSIM's smallest side: 5 scales of an 11-pixel window need both sides above 160 pixels.
MS_SSIM_MIN_SIDE = 161


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


def _open_error(path: Path, e: Exception) -> InputError:
    return InputError(f"cannot read {path} as an image ({e}); pass a readable image file")


def _rgb8(im: PILImage, path: Path) -> np.ndarray:
    """The pixels of ``im`` as 8-bit RGB [H, W, 3] (the reading rules of the module docstring)."""
    mode = im.mode
    if mode == "I" or mode.startswith("I;16"):  # 16-bit grayscale (or 32-bit ints holding it)
        v = np.asarray(im).astype(np.int64)  # the array interface knows the byte order
        lo, hi = (int(v.min()), int(v.max())) if v.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise InputError(
                f"cannot read {path}: a 32-bit integer image (mode {mode}) with values "
                f"{lo}..{hi}, outside 16 bits (0..65535); scale it to 8 or 16 bits "
                "(mode L or I;16) and save it again"
            )
        grey = ((v + 128) // 257).astype(np.uint8)  # round(v / 257): 65535 -> 255, exactly
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "F":
        raise InputError(
            f"cannot read {path}: a 32-bit float image (mode F) has no agreed value scale "
            "([0, 1] or [0, 255]); save it as 8- or 16-bit integers (mode L or I;16)"
        )
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        im = im.convert(_ALPHA_MODES.get(mode, "RGBA"))  # unpremultiplied, palette resolved
    elif mode not in _COLOUR_MODES:
        raise InputError(
            f"cannot read {path}: images of mode {mode} are not supported; save it as RGB or "
            "grayscale (8 or 16 bits)"
        )
    return np.asarray(im.convert("RGB"), dtype=np.uint8)  # from LA / RGBA: alpha dropped


# Modes Pillow opens and converts to RGB itself; the alpha modes by their unpremultiplied form.
_COLOUR_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_ALPHA_MODES = {"LA": "LA", "La": "LA", "PA": "RGBA", "RGBA": "RGBA", "RGBa": "RGBA"}


def load_image(path: str | os.PathLike[str]) -> Tensor:
    """The image at ``path`` as RGB, a float32 tensor [1, 3, H, W] in [0, 1] (8-bit values / 255).

    Any mode Pillow opens: 16-bit grayscale scaled to 8 bits (``round(v / 257)``), alpha dropped,
    the EXIF orientation ignored (pixels as stored, as CompressAI reads them); float images
    (mode ``F``) and 32-bit integer ones beyond 16 bits raise ``InputError`` naming the mode.
    The module docstring gives the reasons.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            arr = _rgb8(im, path)
    except (UnidentifiedImageError, OSError) as e:
        raise _open_error(path, e) from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div_(255.0)


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of the image at ``path`` as ``load_image`` returns it, from its header alone."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError) as e:
        raise _open_error(path, e) from e
    return h, w


def _check_image(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 2:
        what = f"a tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{name} must be an image tensor [..., H, W], got {what}")
    return x


def check_image_batch(name: str, x: object) -> Tensor:
    """``x`` if it is an image batch a codec reads: a dense float tensor [B, 3, H, W] with B, H and
    W >= 1 and values in [0, 1] (any float dtype: it is converted to the codec's own), else
    ``InputError`` naming what is wrong. Images in 0..255 or with 1 or 4 channels would otherwise
    run through the codec and fit a prior to latents no real image gives."""
    x = check_tensor(name, x, "float", "[B, 3, H, W]")
    if x.dim() != 4 or x.shape[1] != 3 or 0 in x.shape:
        raise InputError(
            f"{name} must be an RGB image batch [B, 3, H, W] with B, H, W >= 1, got shape "
            f"{tuple(x.shape)}"
            + (" (grayscale: repeat it to 3 channels)" if x.dim() == 4 and x.shape[1] == 1 else "")
        )
    lo, hi = float(x.min()), float(x.max())
    if not (lo >= 0.0 and hi <= 1.0):  # also false for NaN
        raise InputError(
            f"{name} must hold values in [0, 1] (as load_image gives), got "
            f"{lo:g}..{hi:g}" + (" (divide by 255)" if 1.0 < hi <= 255.0 else "")
        )
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
    enters (e.g. a fit); a side shorter than ``multiple`` is padded instead (``pad_to_multiple``),
    so ``FolderImages`` skips such images."""
    x = _check_image("x", x)
    multiple = check_int("multiple", multiple, 1)
    h, w = x.shape[-2:]
    if h < multiple or w < multiple:
        return pad_to_multiple(x, multiple)
    return x[..., : h - h % multiple, : w - w % multiple]


class FolderImages(Sequence[Tensor]):
    """The images of a folder as a fit reads them: ``list_images`` order, the first ``max_images``
    (all with ``None``) with both sides at least ``multiple``, each ``load_image``-ed and cropped
    to multiples of ``multiple``, so no padding enters. With ``seed``, a folder holding more than
    ``max_images`` images gives a uniform random sample of them instead of the first ones (drawn
    with ``seed``, kept in ``list_images`` order): what ``fit_prior`` reads from a large folder
    (ImageNet's), so its memory is bounded and its sample is not the first classes.

    Images with a side shorter than ``multiple`` could only be padded, so they are skipped, named
    in ``skipped`` and in one warning (``skipped N images smaller than MxM``); a folder holding
    only such images raises ``InputError``. Lazy (only the headers are read up front, for the
    sizes; an image's pixels when it is indexed or iterated to), so a large folder never sits in
    memory, and sized, so a progress bar knows the total. ``fit_prior``, ``pc-prior prior fit``,
    the Lightning prior fit and the benches read folders through it, so they all see the same crops.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        multiple: int = MIN_DIV,
        max_images: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.multiple = check_int("multiple", multiple, 1)
        max_images = check_int("max_images", max_images, 1, allow_none=True)
        self.files: list[Path] = []
        self.skipped: list[Path] = []  # too small: a side shorter than ``multiple``
        named = []  # the skipped images with their sizes, for the message
        paths = list_images(root)
        order: Sequence[int] = range(len(paths))
        if seed is not None and max_images is not None and len(paths) > max_images:
            g = torch.Generator().manual_seed(check_int("seed", seed, 0))
            order = torch.randperm(len(paths), generator=g).tolist()  # headers read as needed
        for i in order:
            path = paths[i]
            if max_images is not None and len(self.files) == max_images:
                break
            h, w = _image_size(path)
            if min(h, w) < self.multiple:
                self.skipped.append(path)
                named.append(f"{path.relative_to(root).as_posix()} ({h}x{w})")
            else:
                self.files.append(path)
        self.files.sort()  # list_images order (it is sorted) when sampled
        if self.skipped:
            m, n = self.multiple, len(self.skipped)
            names = ", ".join(named[:5]) + (", ..." if n > 5 else "")
            if not self.files:
                raise InputError(
                    f"{'the one image' if n == 1 else f'all {n} images'} in {root} "
                    f"{'is' if n == 1 else 'are'} smaller than {m}x{m} ({names}); a fit crops "
                    f"images to multiples of {m} and pads none: pass larger images, or a smaller "
                    "multiple (--multiple) if the codec's downsampling allows it"
                )
            warnings.warn(
                f"skipped {n} image{'s' if n > 1 else ''} smaller than {m}x{m} in {root} "
                f"(a fit crops to multiples of {m} and pads none): {names}",
                stacklevel=2,
            )

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
