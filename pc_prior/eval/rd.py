"""Rate-distortion evaluation of learned image codecs, following CompressAI's ``eval_model``.

Each image is zero-padded (centred, CompressAI's ``compute_padding``, through ``pc_prior.images``,
which also reads the images and holds the metrics) to a multiple of 64, really
compressed and decompressed; the rate counts every byte of every string ``compress()`` returns, per
original pixel. The eval-mode forward on the same padded image gives the estimated rate. Distortion is
measured on the cropped, 8-bit-rounded reconstruction (PSNR-RGB, MS-SSIM-RGB), as CompressAI does.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_int
from ..errors import InputError
from ..images import (
    MIN_DIV,
    MS_SSIM_MIN_SIDE,
    compute_metrics,
    crop_padding,
    load_image,
    pad_to_multiple,
)

__all__ = [
    "count_bytes",
    "distinct_labels",
    "dumps_json",
    "evaluate_image",
    "evaluate_model",
    "pixel_sha256",
    "refuse_repeats",
    "results_json",
    "write_json",
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


def pixel_sha256(x: Tensor) -> str:
    """SHA-256 of an image's shape and 8-bit pixels (``x`` in [0, 1]): the same picture in another
    file, format or folder gets the same digest, another crop or picture another one."""
    a = (x.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu().contiguous().numpy()
    return hashlib.sha256(str(tuple(a.shape)).encode() + a.tobytes()).hexdigest()


def _json_plain(o: Any, where: str) -> Any:
    """``o`` with numpy scalars and arrays as Python numbers and lists, tuples as lists, paths as
    strings; a NaN or infinity anywhere raises ``InputError`` naming where it is."""
    if isinstance(o, dict):
        return {k: _json_plain(v, f"{where}.{k}" if where else str(k)) for k, v in o.items()}
    if isinstance(o, np.ndarray):
        o = o.tolist()
    if isinstance(o, (list, tuple)):
        return [_json_plain(v, f"{where}[{i}]") for i, v in enumerate(o)]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        raise InputError(
            f"cannot write {o} at {where or 'the top level'} as JSON, which has no NaN or infinity: "
            "store null with the reason it is undefined (an 'undefined' entry) instead"
        )
    return o


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (``allow_nan=False``: no bare NaN or Infinity, which strict
    parsers refuse). Numpy numbers and arrays, tuples and paths are written as plain JSON; a
    non-finite float raises ``InputError`` naming its place, so an undefined value must be written
    as null with a reason rather than slip out as invalid JSON."""
    return json.dumps(_json_plain(obj, ""), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``dumps_json(obj)`` and a newline to ``path`` (creating its folder); returns the path."""
    path = Path(path)
    text = dumps_json(obj)  # fails before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


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
    A metric that is undefined for this image is NaN, with the reason in ``undefined``
    (``{"ms-ssim-rgb": "image side below 161 px (WxH)"}``; MS-SSIM needs both sides >= 161).
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
    if math.isnan(out["ms-ssim-rgb"]) and min(size) < MS_SSIM_MIN_SIDE:
        out["undefined"] = {
            "ms-ssim-rgb": f"image side below {MS_SSIM_MIN_SIDE} px ({size[1]}x{size[0]})"
        }
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

    Each row is ``evaluate_image``'s (``runs``, ``warmup``: its timing) with the file name and
    ``image_sha256`` (``pixel_sha256`` of the image, which tells image sets apart); ``mean``
    averages the numeric fields over the images (NaN where a metric is undefined for any image).
    """
    from ..progress import progress_bar

    images = list(images)
    if not images:
        raise InputError("no images to evaluate: pass at least one image file")
    rows = []
    for path in progress_bar(images, desc=desc, unit="img", disable=not progress, leave=False):
        x = load_image(path)
        row = evaluate_image(net, x, min_div=min_div, runs=runs, warmup=warmup)
        rows.append({"image": Path(path).name, "image_sha256": pixel_sha256(x), **row})
    keys = [
        k
        for k, v in rows[0].items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "image"
    ]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    if any(math.isnan(r["ms-ssim-rgb"]) for r in rows):
        warnings.warn(
            f"MS-SSIM is NaN for images with a side below {MS_SSIM_MIN_SIDE} pixels", stacklevel=2
        )
    return {"mean": mean, "images": rows}


def _image_set(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"count", "names", "sha256"}`` of the images the runs coded (all runs must share them).

    ``sha256`` digests the sorted per-image pixel digests (None when rows lack ``image_sha256``):
    equal for the same pictures in any order, folder or file format, so ``pc-prior compare`` can
    tell whether two results files measured the same images.
    """
    sets: list[dict[str, Any]] = []
    for run in runs:
        rows = run["images"]
        hashes = [r.get("image_sha256") for r in rows]
        digest = None
        if rows and all(isinstance(h, str) for h in hashes):
            digest = hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()
        sets.append({"count": len(rows), "names": [r["image"] for r in rows], "sha256": digest})
    for run, other in zip(runs[1:], sets[1:]):
        if (other["sha256"], sorted(other["names"])) != (
            sets[0]["sha256"],
            sorted(sets[0]["names"]),
        ):
            raise InputError(
                f"runs {runs[0]['model']!r} and {run['model']!r} coded different images "
                f"({sets[0]['count']} and {other['count']}); one results file holds one curve "
                "measured on one image set: evaluate every model on the same images"
            )
    return sets[0]


def _null_undefined(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of a per-image row with each metric it marks undefined (NaN) as None."""
    why = row.get("undefined") or {}
    return {k: (None if k in why and _is_nan(v) else v) for k, v in row.items()}


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def refuse_repeats(sources: Sequence[str | Path]) -> None:
    """``InputError`` naming the first model source given more than once (paths are compared
    resolved, so ``a.pt`` and ``./dir/../a.pt`` are one file). ``pc-prior eval`` calls it on the
    command line's models before loading any of them."""
    seen: set[str] = set()
    for s in sources:
        key = str(Path(s).expanduser().resolve())  # a zoo name stays one name
        if key in seen:
            raise InputError(f"{s} is given twice: give each model once")
        seen.add(key)


def distinct_labels(names: Sequence[str], sources: Sequence[str]) -> list[str]:
    """One label per model for the results' ``model`` list and ``per_image`` keys, all distinct.

    A name shared by several models (``a-frozen`` in ``q1/`` and ``q2/``) becomes the shortest tail
    of each one's source path that tells them apart (``q1/a-frozen``, ``q2/a-frozen``); other names
    stay as they are. ``InputError`` if one source is given twice, which no tail can tell apart.
    """
    if len(names) != len(sources):
        raise ValueError(f"{len(names)} names for {len(sources)} sources")
    refuse_repeats([s for s in sources if s])
    labels = list(names)
    clash = [i for i, n in enumerate(names) if names.count(n) > 1]
    parts = {i: Path(sources[i]).with_suffix("").parts for i in clash}
    depth = 1
    while clash:
        depth += 1
        tails = {i: "/".join(parts[i][-depth:]) for i in clash}
        for i in clash:
            labels[i] = tails[i]
        left = [i for i in clash if list(tails.values()).count(tails[i]) > 1]
        if left and all(depth >= len(parts[i]) for i in left):
            for i in left:  # the same path but its suffix (a.pt, a.pth), or no source at all
                labels[i] = sources[i] or f"{names[i]} ({i + 1})"
            break
        clash = left
    return labels


def results_json(
    runs: Sequence[dict[str, Any]],
    name: str,
    description: str = "Inference (ans)",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """CompressAI's results format: ``{"name", "description", "results": {metric: [one value per run]}}``.

    Each run is ``{"model": label, "quality": int|None, "mean": {...}, "images": [...]}``; the results
    lists follow the order of ``runs``. Per-image rows go under ``"per_image"``, keyed by model label;
    ``"image_set"`` names the images (``count``, ``names``, ``sha256`` of their pixels). A metric
    undefined for some images (MS-SSIM below 161 px) is null, in the rows and in the means, and
    ``"undefined"`` says why (``{"ms-ssim-rgb": reason}``); the result is strict JSON for
    ``dumps_json`` (a NaN without a reason is refused there).
    """
    labels = [run["model"] for run in runs]
    if len(set(labels)) < len(labels):  # per_image is keyed by label: a repeat would drop rows
        raise ValueError(
            f"model labels repeat ({labels}); make them distinct first (distinct_labels)"
        )
    results: dict[str, list[Any]] = {k: [] for k in METRICS}
    results.update({"bpp_estimated": [], "bits": [], "model": [], "quality": []})
    undefined: dict[str, str] = {}
    for run in runs:
        for k in METRICS + ("bpp_estimated", "bits"):
            v = run["mean"][k]
            bad = [r for r in run["images"] if k in (r.get("undefined") or {})]
            if _is_nan(v) and bad:
                v = None
                undefined.setdefault(
                    k,
                    f"{k} undefined for {len(bad)} of {len(run['images'])} images: "
                    + "; ".join(f"{r['image']}: {r['undefined'][k]}" for r in bad[:5])
                    + (" ..." if len(bad) > 5 else ""),
                )
            results[k].append(v)
        results["model"].append(run["model"])
        results["quality"].append(run.get("quality"))
    out: dict[str, Any] = {
        "name": name,
        "description": description,
        "results": results,
        "image_set": _image_set(runs) if runs else None,
        "per_image": {run["model"]: [_null_undefined(r) for r in run["images"]] for run in runs},
    }
    if undefined:
        out["undefined"] = undefined
    if extra:
        out.update(extra)
    return out
