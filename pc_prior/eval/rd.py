"""Rate-distortion evaluation of learned image codecs, following CompressAI's ``eval_model``.

Each image is zero-padded (centred, CompressAI's ``compute_padding``) to a multiple of 64, really
compressed and decompressed; the rate counts every byte of every string ``compress()`` returns, per
original pixel. The eval-mode forward on the same padded image gives the estimated rate. Distortion is
measured on the cropped, 8-bit-rounded reconstruction (PSNR-RGB, MS-SSIM-RGB), as CompressAI does.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "IMG_EXTENSIONS",
    "MIN_DIV",
    "collect_images",
    "compute_metrics",
    "count_bytes",
    "evaluate_image",
    "evaluate_model",
    "read_image",
    "results_json",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MIN_DIV = 64  # CompressAI pads to allow 6 stride-2 stages
METRICS = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")


def collect_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursively, sorted); errors name a missing or image-less folder."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"--data must be a folder of images, got a file: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) found in {root}")
    return files


def read_image(path: str | Path) -> Tensor:
    """An RGB image as a float [3, H, W] tensor in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def count_bytes(strings: Any) -> int:
    """Total length of all ``bytes`` in the (arbitrarily nested) lists/tuples that ``compress()`` returns."""
    if isinstance(strings, (bytes, bytearray, memoryview)):
        return len(strings)
    if isinstance(strings, (list, tuple)):
        return sum(count_bytes(s) for s in strings)
    raise TypeError(
        f"compress() strings must be nested lists of bytes, found {type(strings).__name__}"
    )


def _psnr(a: Tensor, b: Tensor, max_val: float = 255.0) -> float:
    mse = (a - b).pow(2).mean().item()
    return float("inf") if mse == 0 else 20 * math.log10(max_val) - 10 * math.log10(mse)


def compute_metrics(org: Tensor, rec: Tensor, max_val: int = 255) -> dict[str, float]:
    """PSNR-RGB and MS-SSIM-RGB of [N, 3, H, W] images in [0, 1], on 8-bit rounded values (as CompressAI).

    MS-SSIM needs both sides above 160 pixels (5 scales, 11-pixel window); smaller images get NaN.
    """
    from pytorch_msssim import ms_ssim

    org = (org * max_val).clamp(0, max_val).round()
    rec = (rec * max_val).clamp(0, max_val).round()
    out = {"psnr-rgb": _psnr(org, rec, max_val)}
    if min(org.shape[-2:]) > 160:
        out["ms-ssim-rgb"] = ms_ssim(org, rec, data_range=max_val).item()
    else:
        out["ms-ssim-rgb"] = float("nan")
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_of(net: nn.Module) -> torch.device:
    p = next(iter(net.parameters()), None)
    if p is None:
        p = next(iter(net.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def _pad(x: Tensor, min_div: int = MIN_DIV) -> tuple[Tensor, tuple[int, int, int, int]]:
    from compressai.ops import compute_padding

    pad, unpad = compute_padding(x.size(2), x.size(3), min_div=min_div)
    return F.pad(x, pad, mode="constant", value=0), unpad


@torch.no_grad()
def evaluate_image(net: nn.Module, x: Tensor, min_div: int = MIN_DIV) -> dict[str, float]:
    """Code one [3, H, W] (or [1, 3, H, W]) image with ``net``; rates in bits per original pixel.

    Returns ``bpp`` (from the real strings), ``bits`` (8 × bytes), ``bpp_estimated`` (from the
    likelihoods of the eval-mode forward), ``psnr-rgb``, ``ms-ssim-rgb``, ``encoding_time`` and
    ``decoding_time`` (seconds, CUDA-synchronized) and ``psnr-rgb_forward`` (reconstruction of the forward).
    """
    device = _device_of(net)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.size(0) != 1:
        raise ValueError(f"evaluate_image expects one image [3, H, W], got shape {tuple(x.shape)}")
    x = x.to(device)
    num_pixels = x.size(2) * x.size(3)
    x_pad, unpad = _pad(x, min_div)

    _sync(device)
    t0 = time.perf_counter()
    enc = net.compress(x_pad)
    _sync(device)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    dec = net.decompress(enc["strings"], enc["shape"])
    _sync(device)
    t_dec = time.perf_counter() - t0
    x_hat = F.pad(dec["x_hat"], unpad)

    nbytes = count_bytes(enc["strings"])
    out = compute_metrics(x, x_hat)
    out.update(
        bpp=nbytes * 8.0 / num_pixels, bits=nbytes * 8, encoding_time=t_enc, decoding_time=t_dec
    )

    fwd = net(x_pad)
    lik = (
        fwd["likelihoods"].values() if isinstance(fwd["likelihoods"], dict) else fwd["likelihoods"]
    )
    bits_est = sum(float(-torch.log2(v.double()).sum()) for v in lik)
    out["bpp_estimated"] = bits_est / num_pixels
    out["psnr-rgb_forward"] = compute_metrics(x, F.pad(fwd["x_hat"], unpad))["psnr-rgb"]
    return out


def evaluate_model(
    net: nn.Module,
    images: Sequence[str | Path] | Iterable[str | Path],
    *,
    progress: bool = True,
    desc: str = "eval",
    min_div: int = MIN_DIV,
) -> dict[str, Any]:
    """Evaluate ``net`` on image files: ``{"mean": {...}, "images": [{"image": name, ...}, ...]}``."""
    from ..progress import progress_bar

    images = list(images)
    if not images:
        raise ValueError("no images to evaluate")
    rows = []
    for path in progress_bar(images, desc=desc, unit="img", disable=not progress, leave=False):
        row = evaluate_image(net, read_image(path), min_div=min_div)
        rows.append({"image": Path(path).name, **row})
    keys = [k for k in rows[0] if k != "image"]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    if any(math.isnan(r["ms-ssim-rgb"]) for r in rows):
        warnings.warn("MS-SSIM is NaN for images with a side of 160 pixels or less", stacklevel=2)
    return {"mean": mean, "images": rows}


def results_json(
    runs: Sequence[dict[str, Any]],
    name: str,
    description: str = "Inference (ans)",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """CompressAI's results format: ``{"name", "description", "results": {metric: [one value per run]}}``.

    Each run is ``{"model": label, "quality": int|None, "mean": {...}, "images": [...]}``; the results
    lists follow the order of ``runs``. Per-image rows go under ``"per_image"``, keyed by model label.
    """
    results: dict[str, list[Any]] = {k: [] for k in METRICS}
    results.update({"bpp_estimated": [], "bits": [], "model": [], "quality": []})
    for run in runs:
        for k in METRICS + ("bpp_estimated", "bits"):
            results[k].append(run["mean"][k])
        results["model"].append(run["model"])
        results["quality"].append(run.get("quality"))
    out = {
        "name": name,
        "description": description,
        "results": results,
        "per_image": {run["model"]: run["images"] for run in runs},
    }
    if extra:
        out.update(extra)
    return out
