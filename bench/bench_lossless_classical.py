"""The lossless HCLT coder side by side with the classical lossless image codecs a user would pick
instead: PNG, WebP lossless, JPEG-LS, JPEG 2000 (reversible) and JPEG XL (lossless), through
``imagecodecs`` (``pip install -e '.[bench]'``), as one JSON and a Markdown table.

The data are what ``pc-prior lossless`` codes: the test split of an idx-format set of 8-bit
grayscale images (MNIST's 28x28 by default; any folder with ``t10k-images-idx3-ubyte[.gz]``), each
image one item of D = H*W symbols 0..255. In one run, on one machine, at ``--threads`` threads:

- ``set``: the whole test set (or ``--limit``/``--every``'s subset) in one file. The PC coder codes it as one stream
  (what ``pc-prior lossless bench`` codes: one header, blocks of 4096 images); each classical codec
  codes one *mosaic* image: the images in a grid of ceil(sqrt(N)) columns, row-major, unused cells
  black (their bytes count, their pixels do not). A grid rather than a one-image-wide strip,
  because WebP takes at most 16383 pixels a side (a strip of 10,000 MNIST digits is 280,000 rows).
- ``per_image``: each of the first ``--per-image`` test images its own file, as storing them one
  by one costs (headers included); the PC coder one stream per image. The PC coder runs its D
  sequential steps per call whatever the batch, so this mode is slow for it: keep it small.

Each codec at its best lossless setting: the strongest effort ``imagecodecs`` exposes (PNG zlib
level 9; WebP lossless at quality 100, method 6; JPEG XL lossless at effort 10 or 9; JPEG 2000's
reversible 5/3 wavelet as a bare J2K codestream; JPEG-LS with NEAR = 0), and where a setting has
no single best value (PNG's row filter, JPEG 2000's resolution levels, JPEG XL's effort 10 against
9), the candidate with the fewest bytes on the first ``--choose-images`` images of the *training*
split, chosen per mode (a mosaic of them, or each alone), never on the test images. Grayscale goes
to WebP as RGB with three equal channels (WebP has no grayscale mode; its lossless
subtract-green transform makes the copies nearly free); the decoded channels must all be equal
to the image. Every file is decoded and compared with its input bit for bit.

Reported: bytes and bits per dimension (= bits per pixel: one 8-bit channel per pixel) from the
real bytes of each mode's files, per set and, in ``per_image``, per image (min, median, max and
every image's bytes); encode and decode seconds, each the median of ``--repeats`` runs over all the
mode's images (``--per-image-repeats`` in ``per_image``); and each codec's ratios to the PC coder
of the same run (bpd, encode and decode time). A codec that ``imagecodecs`` lacks at runtime, or
``imagecodecs`` itself, is reported ``unavailable`` with the reason; a setting a codec refuses
(e.g. an image too small for JPEG 2000's levels) is ``failed`` with the error. The PC coder runs
regardless. Exits 1 if any file did not decode to its input.

The PC model is ``--model`` (``pc-prior lossless fit``); without it an HCLT is fitted here on the
training split with the ``LosslessFit`` defaults but ``--fit-epochs`` and ``--latents`` (a quick
model for smoke runs, not the README's).

    OMP_NUM_THREADS=1 python bench/bench_lossless_classical.py --model runs/lossless/mnist_k64.pt \\
        --threads 1 --repeats 3 --json runs/lossless/classical.json --markdown runs/lossless/classical.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pc_prior import HCLT, decode, encode, fit_em, load
from pc_prior.coding import check_symbol_circuit
from pc_prior.data import default_data_root, load_mnist
from pc_prior.fitting import bits_per_dim
from pc_prior.settings import LosslessFit

Image = np.ndarray  # [H, W] uint8


@dataclasses.dataclass(frozen=True)
class Codec:
    """One classical codec: its ``imagecodecs`` codec class name, how a setting encodes and how
    a file decodes, and the candidate settings (the first is used where none can be chosen)."""

    key: str
    name: str
    attr: str  # imagecodecs.<attr>.available
    candidates: tuple[dict[str, Any], ...]
    encode: Callable[[Any, Image, dict[str, Any], int], bytes]
    decode: Callable[[Any, bytes, int], np.ndarray]
    rgb: bool = False  # coded as three equal channels


def _png_enc(ic: Any, img: Image, s: dict[str, Any], threads: int) -> bytes:
    return ic.png_encode(img, level=9, filter=getattr(ic.PNG.FILTER, s["filter"]))


def _webp_enc(ic: Any, img: Image, s: dict[str, Any], threads: int) -> bytes:
    rgb = np.repeat(img[..., None], 3, axis=2)
    return ic.webp_encode(rgb, level=100, lossless=True, method=6, numthreads=threads)


def _jpegls_enc(ic: Any, img: Image, s: dict[str, Any], threads: int) -> bytes:
    return ic.jpegls_encode(img, level=0)  # NEAR = 0: lossless


def _jpeg2k_enc(ic: Any, img: Image, s: dict[str, Any], threads: int) -> bytes:
    return ic.jpeg2k_encode(
        img,
        level=0,
        reversible=True,  # the 5/3 integer wavelet: lossless
        codecformat=ic.JPEG2K.CODEC.J2K,  # the bare codestream, no JP2 boxes
        resolutions=s["resolutions"],
        numthreads=threads,
    )


def _jpegxl_enc(ic: Any, img: Image, s: dict[str, Any], threads: int) -> bytes:
    return ic.jpegxl_encode(
        img, lossless=True, effort=s["effort"], usecontainer=False, numthreads=threads
    )


CODECS: tuple[Codec, ...] = (
    Codec(
        "png",
        "PNG",
        "PNG",
        tuple({"filter": f} for f in ("ALL", "NONE", "SUB", "UP", "AVG", "PAETH")),
        _png_enc,
        lambda ic, data, t: ic.png_decode(data),
    ),
    Codec(
        "webp",
        "WebP lossless",
        "WEBP",
        ({"quality": 100, "method": 6},),
        _webp_enc,
        lambda ic, data, t: ic.webp_decode(data),
        rgb=True,
    ),
    Codec(
        "jpegls",
        "JPEG-LS",
        "JPEGLS",
        ({"near": 0},),
        _jpegls_enc,
        lambda ic, data, t: ic.jpegls_decode(data),
    ),
    Codec(
        "jpeg2k",
        "JPEG 2000 lossless",
        "JPEG2K",
        tuple({"resolutions": r} for r in (1, 2, 3, 4, 5, 6)),
        _jpeg2k_enc,
        lambda ic, data, t: ic.jpeg2k_decode(data, numthreads=t),
    ),
    Codec(
        "jpegxl",
        "JPEG XL lossless",
        "JPEGXL",
        ({"effort": 10}, {"effort": 9}),
        _jpegxl_enc,
        lambda ic, data, t: ic.jpegxl_decode(data, numthreads=t),
    ),
)


def import_imagecodecs() -> tuple[Any, str | None]:
    """(the module, None), or (None, why it cannot be used)."""
    try:
        import imagecodecs
    except ImportError as e:
        return None, f"imagecodecs is not installed ({e}; pip install -e '.[bench]')"
    return imagecodecs, None


def unavailable_reason(ic: Any, why: str | None, codec: Codec) -> str | None:
    """Why ``codec`` cannot run here, or None."""
    if ic is None:
        return why or "imagecodecs is not installed"
    cls = getattr(ic, codec.attr, None)
    if cls is None or not getattr(cls, "available", False):
        return f"imagecodecs {getattr(ic, '__version__', '?')} has no {codec.attr} codec here"
    return None


def mosaic(images: np.ndarray) -> np.ndarray:
    """[N, H, W] -> one [rows*H, cols*W] image, ceil(sqrt(N)) columns, row-major, rest black."""
    n, h, w = images.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    grid = np.zeros((rows * cols, h, w), dtype=images.dtype)
    grid[:n] = images
    return grid.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w)


def same_image(decoded: np.ndarray, img: Image, rgb: bool) -> bool:
    """Whether a decoded file is ``img`` bit for bit (with ``rgb``: every channel equal to it)."""
    if rgb:
        return (
            decoded.shape == (*img.shape, 3)
            and decoded.dtype == img.dtype
            and all(np.array_equal(decoded[..., c], img) for c in range(3))
        )
    return (
        decoded.shape == img.shape and decoded.dtype == img.dtype and np.array_equal(decoded, img)
    )


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def choose_setting(
    ic: Any, codec: Codec, images: list[Image], threads: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The candidate with the fewest bytes over ``images`` (each its own file: training images,
    or one mosaic of them) and every candidate's bytes (or its error)."""
    sizes: dict[str, Any] = {}
    best: tuple[int, int] | None = None
    for i, s in enumerate(codec.candidates):
        label = json.dumps(s, sort_keys=True)
        try:
            sizes[label] = sum(len(codec.encode(ic, img, s, threads)) for img in images)
        except Exception as e:  # a setting the codec refuses for these images
            sizes[label] = f"failed: {type(e).__name__}: {e}"
            continue
        if best is None or sizes[label] < best[0]:
            best = (sizes[label], i)
    return codec.candidates[0 if best is None else best[1]], sizes


def code_classical(
    ic: Any, codec: Codec, setting: dict[str, Any], images: list[Image], threads: int, repeats: int
) -> dict[str, Any]:
    """Encode and decode every image of ``images`` as its own file: bytes, times, round trip."""
    try:
        t_enc, enc_runs, files = _median_time(
            lambda: [codec.encode(ic, img, setting, threads) for img in images], repeats
        )
        t_dec, dec_runs, decoded = _median_time(
            lambda: [codec.decode(ic, f, threads) for f in files], repeats
        )
    except Exception as e:
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}", "settings": setting}
    exact = all(same_image(d, img, codec.rgb) for d, img in zip(decoded, images))
    return {
        "status": "ok" if exact else "mismatch",
        "settings": setting,
        "file_bytes": [len(f) for f in files],
        "encode_seconds": t_enc,
        "decode_seconds": t_dec,
        "encode_seconds_runs": enc_runs,
        "decode_seconds_runs": dec_runs,
        "round_trip_exact": exact,
    }


def code_pc(pc: HCLT, items: list[torch.Tensor], repeats: int) -> dict[str, Any]:
    """The PC coder on each [n, D] batch of ``items`` (one stream per batch)."""
    t_enc, enc_runs, streams = _median_time(lambda: [encode(pc, x) for x in items], repeats)
    t_dec, dec_runs, decoded = _median_time(lambda: [decode(pc, s) for s in streams], repeats)
    exact = all(torch.equal(y, x) for y, x in zip(decoded, items))
    return {
        "status": "ok" if exact else "mismatch",
        "file_bytes": [len(s) for s in streams],
        "encode_seconds": t_enc,
        "decode_seconds": t_dec,
        "encode_seconds_runs": enc_runs,
        "decode_seconds_runs": dec_runs,
        "round_trip_exact": exact,
    }


def _summarize(row: dict[str, Any], pixels: int, images_per_file: int) -> None:
    """Add bytes and bpd (per set, and per file where a file is one image) to a coded row."""
    sizes = row["file_bytes"]
    row["bytes"] = sum(sizes)
    row["bpd"] = 8 * row["bytes"] / pixels
    if images_per_file == 1 and len(sizes) > 1:
        per = [8 * b / (pixels / len(sizes)) for b in sizes]
        row["bpd_per_image"] = {
            "min": min(per),
            "median": statistics.median(per),
            "max": max(per),
        }
    else:
        del row["file_bytes"]  # one file: its size is ``bytes``


def _ratios(rows: dict[str, dict[str, Any]]) -> None:
    pc = rows["pc"]
    for key, row in rows.items():
        if key == "pc" or row.get("status") not in ("ok", "mismatch"):
            continue
        row["bpd_over_pc"] = row["bpd"] / pc["bpd"]
        row["encode_time_over_pc"] = row["encode_seconds"] / pc["encode_seconds"]
        row["decode_time_over_pc"] = row["decode_seconds"] / pc["decode_seconds"]


def machine_info(threads: int, ic: Any) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "imagecodecs": getattr(ic, "__version__", None),
    }
    if ic is not None:
        try:
            v = ic.version(dict)
            info["libraries"] = {
                k: v[k]
                for k in ("zlib", "libpng", "libwebp", "charls", "openjpeg", "libjxl")
                if k in v
            }
        except Exception:  # older imagecodecs: the version string only
            pass
    return info


def load_or_fit(args: argparse.Namespace, num_vars: int) -> tuple[HCLT, dict[str, Any]]:
    if args.model:
        pc = check_symbol_circuit(load(args.model, map_location="cpu"), "bench_lossless_classical")
        info: dict[str, Any] = {"model": str(args.model)}
    else:
        s = dataclasses.replace(LosslessFit(), num_latents=args.latents, epochs=args.fit_epochs)
        x = load_mnist(args.data, "train", args.fit_limit)
        t0 = time.perf_counter()
        torch.manual_seed(s.seed)
        pc = HCLT.from_data(
            x, 256, s.num_latents, num_bins=s.num_bins, max_samples=s.structure_samples, seed=s.seed
        )
        fit_em(
            pc,
            x,
            epochs=s.epochs,
            batch_size=s.batch_size,
            step_size=s.step_size,
            pseudocount=s.pseudocount,
            full_batch_epochs=s.full_batch_epochs,
            leaf_smoothing=s.leaf_smoothing,
            smoothing_width=s.smoothing_width,
            seed=s.seed,
            progress=False,
        )
        info = {
            "model": None,
            "fitted_here": {
                "train_images": len(x),
                "epochs": s.epochs,
                "full_batch_epochs": s.full_batch_epochs,
                "seconds": time.perf_counter() - t0,
            },
        }
    if pc.num_vars != num_vars or pc.num_cats < 256:
        raise SystemExit(
            f"the model codes {pc.num_vars} variables of {pc.num_cats} levels; the data are "
            f"{num_vars} pixels of 256 grey levels"
        )
    return pc, info | {"num_latents": pc.num_latents, "num_cats": pc.num_cats}


def image_shape(num_vars: int, shape: list[int] | None) -> tuple[int, int]:
    if shape:
        h, w = shape
        if h * w != num_vars:
            raise SystemExit(f"--image-shape {h} {w} is {h * w} pixels, the items have {num_vars}")
        return h, w
    side = math.isqrt(num_vars)
    if side * side != num_vars:
        raise SystemExit(f"items of {num_vars} pixels are not square: give --image-shape H W")
    return side, side


MODES = {
    "set": "the whole set in one file: the PC coder one stream, each classical codec one mosaic",
    "per_image": "every image its own file (headers included)",
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    ic, why = import_imagecodecs()
    x = load_mnist(args.data, "test", args.limit)[:: args.every].contiguous()
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > 255):
        raise SystemExit("the classical codecs here code 8-bit images; the data exceed 0..255")
    n, d = x.shape
    h, w = image_shape(d, args.image_shape)
    images = x.numpy().astype(np.uint8).reshape(n, h, w)
    try:
        train = load_mnist(args.data, "train", args.choose_images).numpy().astype(np.uint8)
        choose_on = list(train.reshape(len(train), h, w)) if args.choose_images else []
    except FileNotFoundError:
        choose_on = []
    pc, pc_info = load_or_fit(args, d)

    n_per = min(args.per_image, n)
    mode_items = {
        "set": ([mosaic(images)], [x], n),
        "per_image": (list(images[:n_per]), [x[i : i + 1] for i in range(n_per)], n_per),
    }
    res: dict[str, Any] = {
        "bench": "bench_lossless_classical",
        "data": {
            "folder": str(args.data or default_data_root() / "mnist"),
            "split": "test",
            "limit": args.limit,
            "every": args.every,
            "images": n,
            "height": h,
            "width": w,
            "dims_per_image": d,
            "levels": 256,
        },
        "machine": machine_info(args.threads, ic),
        "threads": args.threads,
        "repeats": {"set": args.repeats, "per_image": args.per_image_repeats},
        "pc": pc_info | {"bpd_theoretical": bits_per_dim(pc, x)},
        "settings_chosen_on": (
            f"the first {len(choose_on)} images of the training split" if choose_on else None
        ),
        "modes": {},
    }
    for mode, (classical_items, pc_items, count) in mode_items.items():
        if count == 0:
            continue
        repeats = args.repeats if mode == "set" else args.per_image_repeats
        pixels = count * d
        rows: dict[str, dict[str, Any]] = {"pc": code_pc(pc, pc_items, repeats)}
        _summarize(rows["pc"], pixels, 1 if mode == "per_image" else count)
        rows["pc"]["name"] = "PC coder (HCLT)"
        for codec in CODECS:
            if codec.key not in args.codecs:
                continue
            reason = unavailable_reason(ic, why, codec)
            if reason is not None:
                rows[codec.key] = {"name": codec.name, "status": "unavailable", "reason": reason}
                continue
            choice: dict[str, Any] = {}
            setting = codec.candidates[0]
            if len(codec.candidates) > 1 and choose_on:
                train_items = [mosaic(np.stack(choose_on))] if mode == "set" else choose_on
                setting, sizes = choose_setting(ic, codec, train_items, args.threads)
                choice = {"candidates_bytes_on_training_images": sizes}
            row = code_classical(ic, codec, setting, classical_items, args.threads, repeats)
            if row["status"] != "failed":
                _summarize(row, pixels, 1 if mode == "per_image" else count)
            rows[codec.key] = {"name": codec.name} | row | choice
            print(f"[{mode}] {codec.name}: {row['status']}", file=sys.stderr, flush=True)
        _ratios(rows)
        res["modes"][mode] = {"description": MODES[mode], "images": count, "codecs": rows}
        if mode == "set":
            res["modes"][mode]["mosaic_shape"] = list(classical_items[0].shape)
    return res


def _fmt_setting(s: dict[str, Any] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in (s or {}).items())


def markdown(res: dict[str, Any]) -> str:
    """The JSON's tables: one per mode, the PC coder first, ratios from the same run."""
    out = []
    for mode, m in res["modes"].items():
        per = mode == "per_image"
        if per:
            title = f"{m['images']} images, each its own file"
        else:
            rows, cols = m["mosaic_shape"]
            title = f"{m['images']} images in one file (classical codecs: a {rows}x{cols} mosaic)"
        out.append(f"**{mode}**: {title}; times: median of {res['repeats'][mode]} runs\n")
        bpd_head = "bpd (min / median / max per image)" if per else "bpd"
        head = (
            f"| codec (setting) | bytes | {bpd_head} | bpd / PC | encode s | decode s "
            "| encode / PC | decode / PC | round trip |"
        )
        out += [head, "|" + "---|" * (head.count("|") - 1)]
        for key, r in m["codecs"].items():
            name = r["name"]
            if r.get("settings"):
                name += f" ({_fmt_setting(r['settings'])})"
            if r.get("status") in ("unavailable", "failed"):
                out.append(f"| {name} | {r['status']}: {r['reason']} |" + " |" * 7)
                continue
            bpd = f"{r['bpd']:.4f}"
            if "bpd_per_image" in r:
                b = r["bpd_per_image"]
                bpd += f" ({b['min']:.3f} / {b['median']:.3f} / {b['max']:.3f})"
            if key == "pc":
                bpd, ratios = f"**{bpd}**", ("1", "1", "1")
            else:
                ratios = (
                    f"{r['bpd_over_pc']:.3f}",
                    f"{r['encode_time_over_pc']:.3g}",
                    f"{r['decode_time_over_pc']:.3g}",
                )
            trip = "exact" if r["round_trip_exact"] else "MISMATCH"
            out.append(
                f"| {name} | {r['bytes']:,} | {bpd} | {ratios[0]} | {r['encode_seconds']:.3g} | "
                f"{r['decode_seconds']:.3g} | {ratios[1]} | {ratios[2]} | {trip} |"
            )
        out.append("")
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--data", default=None, help="idx folder (default ../shared/data/mnist)")
    ap.add_argument("--model", default=None, help="checkpoint from 'pc-prior lossless fit'")
    ap.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    ap.add_argument(
        "--every",
        type=int,
        default=1,
        help="then every K-th of them (a subset spread over the split; default: %(default)s)",
    )
    ap.add_argument(
        "--per-image",
        type=int,
        default=20,
        help="first N test images each coded as its own file (0: skip; default: %(default)s)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed runs in 'set' (median)")
    ap.add_argument(
        "--per-image-repeats", type=int, default=1, help="timed runs in 'per_image' (median)"
    )
    ap.add_argument(
        "--choose-images",
        type=int,
        default=1000,
        help="training images the settings are chosen on (0: each codec's first candidate)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch and codec threads")
    ap.add_argument(
        "--codecs",
        nargs="+",
        default=[c.key for c in CODECS],
        choices=[c.key for c in CODECS],
        help="classical codecs to run (default: all)",
    )
    ap.add_argument("--image-shape", type=int, nargs=2, default=None, metavar=("H", "W"))
    ap.add_argument("--latents", type=int, default=LosslessFit.num_latents, help="without --model")
    ap.add_argument("--fit-epochs", type=int, default=1, help="without --model")
    ap.add_argument("--fit-limit", type=int, default=None, help="without --model: train images")
    ap.add_argument("--json", type=Path, default=None, help="write the JSON here")
    ap.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    args = ap.parse_args(argv)
    for name in ("every", "repeats", "per_image_repeats", "threads", "latents", "fit_epochs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("per_image", "choose_images"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    table = markdown(res)
    print(table)
    text = json.dumps(res, indent=1)
    for path, body in ((args.json, text), (args.markdown, table)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body + "\n")
    if args.json is None:
        print(text)
    ok = all(
        r.get("round_trip_exact", True) for m in res["modes"].values() for r in m["codecs"].values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
