"""Rate-distortion evaluation of learned image codecs, following CompressAI's ``eval_model``.

Each image is zero-padded (centred, CompressAI's ``compute_padding``, through ``pc_prior.images``,
which also reads the images and holds the metrics) to a multiple of 64, really
compressed and decompressed; the rate counts every byte of every string ``compress()`` returns, per
original pixel. The eval-mode forward on the same padded image gives the estimated rate. Distortion is
measured on the cropped, 8-bit-rounded reconstruction (PSNR-RGB, MS-SSIM-RGB), as CompressAI does.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..errors import InputError
from ..images import (
    IMG_EXTENSIONS,
    MIN_DIV,
    compute_metrics,
    crop_padding,
    load_image,
    pad_to_multiple,
)

__all__ = [
    "IMG_EXTENSIONS",
    "MIN_DIV",
    "compute_metrics",
    "count_bytes",
    "evaluate_image",
    "evaluate_model",
    "results_json",
]

METRICS = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")


def count_bytes(strings: Any) -> int:
    """Total length of all ``bytes`` in the (arbitrarily nested) lists/tuples that ``compress()`` returns."""
    if isinstance(strings, (bytes, bytearray, memoryview)):
        return len(strings)
    if isinstance(strings, (list, tuple)):
        return sum(count_bytes(s) for s in strings)
    raise TypeError(
        f"compress() strings must be nested lists of bytes, found {type(strings).__name__}"
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_of(net: nn.Module) -> torch.device:
    p = next(iter(net.parameters()), None)
    if p is None:
        p = next(iter(net.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def _timed(fn: Callable[[], Any], device: torch.device, runs: int) -> tuple[float, Any]:
    """(median seconds of ``runs`` calls of ``fn``, CUDA-synchronized; the last call's result)."""
    times, out = [], None
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


@torch.no_grad()
def evaluate_image(
    net: nn.Module, x: Tensor, min_div: int = MIN_DIV, *, runs: int = 1, warmup: int = 0
) -> dict[str, Any]:
    """Code one [3, H, W] (or [1, 3, H, W]) image with ``net``; rates in bits per original pixel.

    The image is padded as CompressAI pads (``pc_prior.images.pad_to_multiple``, centred) and the
    reconstruction cropped back. Returns ``bpp`` (from the real strings), ``bits`` (8 × bytes),
    ``group_bpp`` (the bpp of each string group ``compress()`` returns, e.g. [y, z] for a hyperprior),
    ``bpp_estimated`` (from the likelihoods of the eval-mode forward), ``psnr-rgb``, ``ms-ssim-rgb``,
    ``encoding_time`` and ``decoding_time`` (seconds, CUDA-synchronized; the median of ``runs``
    timed calls after ``warmup`` untimed ones), ``psnr-rgb_forward`` (of the forward's
    reconstruction), ``decoded_equals_forward`` (the decoded image is the forward's, clamped to
    [0, 1], bit for bit) and ``x_hat_sha256`` (of the decoded image, to compare two codecs').
    """
    runs, warmup = check_int("runs", runs, 1), check_int("warmup", warmup, 0)
    device = _device_of(net)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.size(0) != 1:
        raise InputError(f"evaluate_image expects one image [3, H, W], got shape {tuple(x.shape)}")
    x = x.to(device)
    size = (x.size(2), x.size(3))
    num_pixels = size[0] * size[1]
    x_pad = pad_to_multiple(x, min_div)

    def encode() -> Any:
        return net.compress(x_pad)

    for _ in range(warmup):
        encode()
    t_enc, enc = _timed(encode, device, runs)

    def decode() -> Any:
        return net.decompress(enc["strings"], enc["shape"])

    for _ in range(warmup):
        decode()
    t_dec, dec = _timed(decode, device, runs)
    x_hat = crop_padding(dec["x_hat"], size)

    nbytes = count_bytes(enc["strings"])
    out: dict[str, Any] = compute_metrics(x, x_hat)
    out.update(
        bpp=nbytes * 8.0 / num_pixels,
        bits=nbytes * 8,
        group_bpp=[count_bytes(g) * 8.0 / num_pixels for g in enc["strings"]],
        encoding_time=t_enc,
        decoding_time=t_dec,
    )

    fwd = net(x_pad)
    lik = (
        fwd["likelihoods"].values() if isinstance(fwd["likelihoods"], dict) else fwd["likelihoods"]
    )
    bits_est = sum(float(-torch.log2(v.double()).sum()) for v in lik)
    out["bpp_estimated"] = bits_est / num_pixels
    x_fwd = crop_padding(fwd["x_hat"], size)
    out["psnr-rgb_forward"] = compute_metrics(x, x_fwd)["psnr-rgb"]
    out["decoded_equals_forward"] = bool(torch.equal(x_hat, x_fwd.clamp(0, 1)))
    out["x_hat_sha256"] = hashlib.sha256(
        x_hat.detach().cpu().contiguous().numpy().tobytes()
    ).hexdigest()
    return out


def evaluate_model(
    net: nn.Module,
    images: Sequence[str | Path] | Iterable[str | Path],
    *,
    progress: bool = True,
    desc: str = "eval",
    min_div: int = MIN_DIV,
    runs: int = 1,
    warmup: int = 0,
) -> dict[str, Any]:
    """Evaluate ``net`` on image files: ``{"mean": {...}, "images": [{"image": name, ...}, ...]}``.

    Each row is ``evaluate_image``'s (``runs``, ``warmup``: its timing); ``mean`` averages the
    numeric fields over the images.
    """
    from ..progress import progress_bar

    images = list(images)
    if not images:
        raise InputError("no images to evaluate: pass at least one image file")
    rows = []
    for path in progress_bar(images, desc=desc, unit="img", disable=not progress, leave=False):
        row = evaluate_image(net, load_image(path), min_div=min_div, runs=runs, warmup=warmup)
        rows.append({"image": Path(path).name, **row})
    keys = [
        k
        for k, v in rows[0].items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "image"
    ]
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
