"""``pc-prior demo``: fit a circuit prior into a frozen codec on a few photos, code other photos for real.

The default run needs no downloads: the base codec is the one shipped in ``pc_prior/assets`` and the
photos are the public-domain ones in scikit-image's wheel (``skimage.data``). Training photos and test
photos are disjoint (checked on decoded pixels). Both codecs compress and decompress every test image
(:func:`pc_prior.eval.rd.evaluate_model`: rates from the bytes of the real strings), and the demo checks
that the PC codec's reconstructions equal the base codec's bit for bit, so the saving is a saving at
identical distortion. Writes the table (``table.txt``), a plot (``demo.png``), CompressAI results JSON
for each codec (``base.json``, ``pc.json``), a summary (``demo.json``) and the fitted codec
(``pc-codec.pt``) under ``out``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..settings import DEMO_BOTTLENECK

if TYPE_CHECKING:
    from ..integrations.codec_file import ResolvedCodec

__all__ = [
    "TEST_PHOTOS",
    "TRAIN_PHOTOS",
    "format_table",
    "plot_demo",
    "run_demo",
    "skimage_photo",
    "write_photos",
]

# Colour photos that scikit-image's wheel ships (no pooch download). The three famous natural photos
# are the test set; everything else trains the circuit (the two motorcycle views stay together).
#: The scikit-image photos the demo fits its circuit on (with mirrored and downscaled copies).
TRAIN_PHOTOS = (
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "colorwheel",
)
#: The scikit-image photos the demo codes with both codecs (none of them is trained on).
TEST_PHOTOS = ("astronaut", "coffee", "chelsea")
AUG_SCALES = (0.75, 0.5)


def skimage_photo(name: str) -> np.ndarray:
    """An RGB uint8 [H, W, 3] photo from ``skimage.data`` (``motorcycle_left``/``_right``: the stereo pair)."""
    from skimage import data

    if name in ("motorcycle_left", "motorcycle_right"):
        img = data.stereo_motorcycle()[0 if name.endswith("left") else 1]
    else:
        if not hasattr(data, name):
            raise ValueError(f"skimage.data has no photo {name!r}")
        img = getattr(data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name} is {img.dtype}, not an 8-bit photo")
    return np.ascontiguousarray(img[..., :3])


def write_photos(names: Sequence[str], folder: Path) -> list[Path]:
    """Save the named scikit-image photos (``skimage_photo``) as PNGs in ``folder``; their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in names:
        p = folder / f"{n}.png"
        Image.fromarray(skimage_photo(n)).save(p)
        paths.append(p)
    return paths


def _augment(x: Tensor) -> list[Tensor]:
    """The photo, its mirror image and bicubic downscales (more latent positions from the *training* photos)."""
    out = [x, x.flip(-1)]
    for s in AUG_SCALES:
        if min(x.shape[-2:]) * s >= 64:
            out.append(
                F.interpolate(
                    x, scale_factor=s, mode="bicubic", antialias=True, align_corners=False
                ).clamp(0, 1)
            )
    return out


class _Recorder(nn.Module):
    """Wraps a codec for ``evaluate_model``; keeps a hash (and a few thumbnails) of every decoded image."""

    def __init__(self, net: nn.Module, thumbs: int = 0) -> None:
        super().__init__()
        self.net = net
        self.hashes: list[str] = []
        self.decoded: list[Tensor] = []
        self.max_thumbs = thumbs

    def compress(self, x: Tensor) -> dict:
        return self.net.compress(x)

    def decompress(self, strings: Any, shape: Any) -> dict:
        out = self.net.decompress(strings, shape)
        x_hat = out["x_hat"]
        self.hashes.append(
            hashlib.sha256(x_hat.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        )
        if len(self.decoded) < self.max_thumbs:
            self.decoded.append(x_hat.detach().cpu())
        return out

    def forward(self, x: Tensor) -> dict:
        return self.net(x)


def _load_base(codec: str | Path | None, arch: str | None) -> ResolvedCodec:
    from ..assets import DEFAULT_CODEC
    from ..integrations.codec_file import resolve_codec

    spec = Path(DEFAULT_CODEC) if codec is None else codec
    lm = resolve_codec(spec, arch=arch, base_only=True)  # a PC codec is refused before it is built
    if codec is None:
        lm.name = "shipped " + lm.name
    return lm


def _thumbnail(x_hat: Tensor, height: int, width: int, side: int = 256) -> np.ndarray:
    """The decoded image without the evaluation's centred padding, at most ``side`` pixels, as uint8 [h, w, 3]."""
    from ..images import crop_padding

    t = crop_padding(x_hat, (height, width))[0].clamp(0, 1)
    s = side / max(t.shape[-2:])
    if s < 1:
        t = F.interpolate(
            t[None], scale_factor=s, mode="bilinear", antialias=True, align_corners=False
        )[0]
    return (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _fmt_ms(a: float, b: float) -> str:
    return f"{1000 * a:.0f}/{1000 * b:.0f}"


def format_table(rows: Sequence[dict[str, Any]], mean: dict[str, Any]) -> str:
    """Plain-text table: per test image and mean, base and PC bpp, saving, PSNR, encode/decode ms."""
    head = (
        f"{'test image':<24} {'size':>9} {'bpp base':>9} {'bpp PC':>8} {'saving':>7} {'PSNR dB':>8}"
        f" {'enc ms base/PC':>15} {'dec ms base/PC':>15}"
    )
    lines = [head, "-" * len(head)]
    for r in list(rows) + [mean]:
        if r is mean:
            lines.append("-" * len(head))
        lines.append(
            f"{r['image'][:24]:<24} {r['size']:>9} {r['bpp_base']:9.4f} {r['bpp_pc']:8.4f}"
            f" {r['saving_pct']:6.2f}% {r['psnr']:8.3f} {_fmt_ms(r['enc_base'], r['enc_pc']):>15}"
            f" {_fmt_ms(r['dec_base'], r['dec_pc']):>15}"
        )
    return "\n".join(lines)


def plot_demo(
    rows: Sequence[dict[str, Any]],
    mean: dict[str, Any],
    thumbs: Sequence[np.ndarray],
    output: Path,
    title: str,
) -> Path:
    """PNG: decoded test images captioned with both rates, and bars of bpp per image (base vs PC)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_t = len(thumbs)
    cols = max(n_t, 1)
    fig = plt.figure(figsize=(max(3.2 * cols, 8), 7.5 if n_t else 4.5))
    gs = fig.add_gridspec(2 if n_t else 1, cols, height_ratios=[1, 1.1] if n_t else [1])
    for i, im in enumerate(thumbs):
        ax = fig.add_subplot(gs[0, i])
        ax.imshow(im)
        ax.set_axis_off()
        r = rows[i]
        ax.set_title(
            f"{r['image']} (decoded by the PC codec)\n"
            f"{r['bpp_base']:.3f} → {r['bpp_pc']:.3f} bpp ({-r['saving_pct']:+.1f}%)",
            fontsize=9,
        )
    ax = fig.add_subplot(gs[-1, :])
    labels = [r["image"].rsplit(".", 1)[0] for r in rows] + ["mean"]
    base = [r["bpp_base"] for r in rows] + [mean["bpp_base"]]
    pc = [r["bpp_pc"] for r in rows] + [mean["bpp_pc"]]
    sav = [r["saving_pct"] for r in rows] + [mean["saving_pct"]]
    xs = np.arange(len(labels))
    w = 0.38
    ax.bar(xs - w / 2, base, w, label="base codec (its own factorized prior)", color="#9aa5b1")
    ax.bar(xs + w / 2, pc, w, label="same codec, PC prior", color="#2b7bba")
    for x, _b, p, s in zip(xs, base, pc, sav):
        ax.text(x + w / 2, p, f"{-s:+.1f}%", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(
        xs,
        labels,
        rotation=30 if len(labels) > 8 else 0,
        ha="right" if len(labels) > 8 else "center",
        fontsize=8,
    )
    ax.set_ylabel("bits per pixel (real bitstreams)")
    ax.set_title("identical reconstructions; lower is better", fontsize=9)
    ax.set_ylim(0, 1.3 * max(base + pc))
    ax.legend(loc="upper left", ncol=2, fontsize=8)
    ax.grid(True, axis="y", alpha=0.4)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def run_demo(
    out: str | Path = "runs/demo",
    *,
    data: str | Path | None = None,
    train_data: str | Path | None = None,
    codec: str | Path | None = None,
    arch: str | None = None,
    latents: int = DEMO_BOTTLENECK.num_latents,
    structure: str = DEMO_BOTTLENECK.structure,
    epochs: int = DEMO_BOTTLENECK.epochs,
    full_batch_epochs: int = DEMO_BOTTLENECK.full_batch_epochs,
    max_items: int = DEMO_BOTTLENECK.max_items,  # type: ignore[assignment]
    augment: bool | None = None,
    limit: int | None = None,
    max_train_images: int | None = None,
    seed: int = DEMO_BOTTLENECK.seed,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fit a PC prior into a frozen base codec on training photos, code the test photos with both codecs.

    ``data`` / ``train_data``: image folders (default: the scikit-image photos ``TEST_PHOTOS`` /
    ``TRAIN_PHOTOS``, written as PNG under ``out/images``). ``codec``: anything ``pc-prior eval`` loads
    (default: the shipped codec). ``augment`` (default: when the training photos give fewer than
    ``max_items`` latent positions) adds mirrored and downscaled copies of the training photos only.
    The fit settings not named here are ``pc_prior.settings.DEMO_BOTTLENECK``'s (the defaults'
    but for fewer epochs). Returns the summary written to ``out/demo.json``.
    """
    from PIL import Image

    from ..images import crop_to_multiple, list_images, load_image
    from ..integrations import fit_prior, save_codec
    from .compare import load_curve, rate_savings
    from .rd import evaluate_model, pixel_sha256, results_json, write_json

    t_start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(out)
    if latents < 1:
        raise InputError(f"--latents must be at least 1, got {latents}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    # Fail on bad folders and codecs before any work.
    test_paths = list_images(data) if data is not None else None
    train_paths = list_images(train_data) if train_data is not None else None
    lm = _load_base(codec, arch)
    base = lm.net.cpu().eval()
    if test_paths is None:
        test_paths = write_photos(TEST_PHOTOS, out / "images" / "test")
    if train_paths is None:
        train_paths = write_photos(TRAIN_PHOTOS, out / "images" / "train")
    test_paths = test_paths[:limit]
    train_paths = train_paths[:max_train_images]

    train_x = [load_image(p) for p in train_paths]
    train_hash = {pixel_sha256(x): p for x, p in zip(train_x, train_paths)}
    overlap = []
    for p in test_paths:
        q = train_hash.get(pixel_sha256(load_image(p)))
        if q is not None:
            overlap.append(f"{p} = {q}")
    if overlap:
        raise InputError(
            "training and test images must be disjoint, but these are the same picture: "
            + "; ".join(overlap[:5])
            + (" ..." if len(overlap) > 5 else "")
        )

    multiple = (
        64 if hasattr(base, "h_a") else 16
    )  # whole latent positions (hyperprior: whole z positions)
    crops = [crop_to_multiple(x, multiple) for x in train_x]
    positions = sum((x.shape[-2] // 16) * (x.shape[-1] // 16) for x in crops)
    if augment is None:
        augment = positions < max_items
    fit_images = [a for x in crops for a in _augment(x)] if augment else crops
    fit_images = [crop_to_multiple(a, multiple) for a in fit_images]

    log(f"base codec:   {lm.name} ({lm.source})")
    log(
        f"train images: {len(train_paths)} ({train_data or 'scikit-image: ' + ', '.join(TRAIN_PHOTOS)}); "
        f"{len(fit_images)} pictures with augmentation (mirror, x{', x'.join(map(str, AUG_SCALES))})"
        if augment
        else f"train images: {len(train_paths)} ({train_data or 'scikit-image: ' + ', '.join(TRAIN_PHOTOS)}), "
        "no augmentation"
    )
    log(
        f"test images:  {len(test_paths)} ({data or 'scikit-image: ' + ', '.join(TEST_PHOTOS)}); "
        "disjoint from the training images (checked on pixels)"
    )

    pc = copy.deepcopy(base)
    t0 = time.perf_counter()
    hist = fit_prior(
        pc,
        fit_images,
        num_latents=latents,
        structure=structure,
        max_items=max_items,
        epochs=epochs,
        full_batch_epochs=full_batch_epochs,
        batch_size=DEMO_BOTTLENECK.batch_size,
        step_size=DEMO_BOTTLENECK.step_size,
        context=DEMO_BOTTLENECK.context,
        seed=seed,
        progress=progress,
    )
    pc.update(force=True)
    pc.eval()
    t_fit = time.perf_counter() - t0
    eb = pc.entropy_bottleneck
    log(
        f"fitted PC prior: K={latents} latent states, {structure} structure over {eb.channels} channels, "
        f"{sum(p.numel() for p in eb.pc.parameters())} parameters, {t_fit:.1f} s"
    )

    rec_base, rec_pc = _Recorder(base), _Recorder(pc, thumbs=6)
    t0 = time.perf_counter()
    res_base = evaluate_model(rec_base, test_paths, progress=progress, desc="base codec")
    res_pc = evaluate_model(rec_pc, test_paths, progress=progress, desc="PC codec")
    t_eval = time.perf_counter() - t0
    identical = [a == b for a, b in zip(rec_base.hashes, rec_pc.hashes)]

    rows, sizes = [], []
    for p, b, c in zip(test_paths, res_base["images"], res_pc["images"]):
        with Image.open(p) as im:
            size = f"{im.width}x{im.height}"
            sizes.append((im.height, im.width))
        rows.append(
            {
                "image": b["image"],
                "size": size,
                "bpp_base": b["bpp"],
                "bpp_pc": c["bpp"],
                "bits_base": b["bits"],
                "bits_pc": c["bits"],
                "saving_pct": 100.0 * (1.0 - c["bpp"] / b["bpp"]),
                "psnr": c["psnr-rgb"],
                "psnr_base": b["psnr-rgb"],
                # null where undefined (an image side below 161 px), the reason beside it
                "ms_ssim": None if math.isnan(c["ms-ssim-rgb"]) else c["ms-ssim-rgb"],
                **(
                    {"ms_ssim_undefined": c["undefined"]["ms-ssim-rgb"]}
                    if "ms-ssim-rgb" in c.get("undefined", {})
                    else {}
                ),
                "enc_base": b["encoding_time"],
                "enc_pc": c["encoding_time"],
                "dec_base": b["decoding_time"],
                "dec_pc": c["decoding_time"],
            }
        )
    mb, mc = res_base["mean"], res_pc["mean"]
    mean = {
        "image": f"mean of {len(rows)}",
        "size": "",
        "bpp_base": mb["bpp"],
        "bpp_pc": mc["bpp"],
        "saving_pct": 100.0 * (1.0 - mc["bpp"] / mb["bpp"]),
        "psnr": mc["psnr-rgb"],
        "enc_base": mb["encoding_time"],
        "enc_pc": mc["encoding_time"],
        "dec_base": mb["decoding_time"],
        "dec_pc": mc["decoding_time"],
    }

    out.mkdir(parents=True, exist_ok=True)
    name = lm.arch or lm.name
    extra = {
        "dataset": str(data) if data else "skimage.data: " + ", ".join(TEST_PHOTOS),
        "num_images": len(rows),
        "device": "cpu",
    }
    base_json = results_json(
        [{"model": lm.name, "quality": lm.quality, **res_base}],
        name=name,
        description="base codec, own entropy bottleneck",
        extra=extra,
    )
    pc_json = results_json(
        [{"model": lm.name + " + PC prior", "quality": lm.quality, **res_pc}],
        name=name + " + PC prior",
        description=f"PC prior K={latents} {structure}",
        extra=extra,
    )
    write_json(out / "base.json", base_json)
    write_json(out / "pc.json", pc_json)
    savings = rate_savings(load_curve(out / "base.json"), load_curve(out / "pc.json"))

    codec_path = None
    if lm.arch is not None and lm.quality is not None:
        codec_path = out / "pc-codec.pt"
        save_codec(
            pc,
            codec_path,
            lm.arch,
            lm.quality,
            fit_history=hist,
            base_codec=lm.source,
            train_images=[str(p) for p in train_paths],
        )

    table = format_table(rows, mean)
    title = (
        f"{lm.name}: its own entropy model vs a PC prior fitted on {len(train_paths)} other photos"
    )
    thumbs = [_thumbnail(x, h, w) for x, (h, w) in zip(rec_pc.decoded, sizes)]
    plot = plot_demo(rows, mean, thumbs, out / "demo.png", title)
    wall, cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
    summary = {
        "codec": lm.source,
        "arch": lm.arch,
        "quality": lm.quality,
        "train_images": [str(p) for p in train_paths],
        "test_images": [str(p) for p in test_paths],
        "disjoint": True,
        "augment": bool(augment),
        "fit_pictures": len(fit_images),
        "fit": {
            "num_latents": latents,
            "structure": structure,
            "epochs": epochs,
            "full_batch_epochs": full_batch_epochs,
            "max_items": max_items,
            "seed": seed,
            "history": hist,
            "seconds": t_fit,
        },
        "reconstructions_identical": all(identical),
        "identical_per_image": identical,
        "images": rows,
        "mean": mean,
        "saving_of_mean_bpp": savings,
        "eval_seconds": t_eval,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "threads": torch.get_num_threads(),
        "files": {
            "table": str(out / "table.txt"),
            "plot": str(plot),
            "base_json": str(out / "base.json"),
            "pc_json": str(out / "pc.json"),
            "codec": str(codec_path) if codec_path else None,
        },
    }
    (out / "table.txt").write_text(table + "\n")
    write_json(out / "demo.json", summary)

    log("")
    log(table)
    log("")
    same = sum(identical)
    log(
        f"reconstructions identical (PC vs base, bit for bit): {'yes' if all(identical) else 'NO'} "
        f"({same}/{len(identical)} images); rates are 8 x the bytes of the real bitstreams"
    )
    log(f"mean saving: {mean['saving_pct']:.2f}% at {mean['psnr']:.3f} dB PSNR-RGB")
    log(
        f"time: {wall:.0f} s wall, {cpu:.0f} s CPU, torch threads: {torch.get_num_threads()} "
        f"(fit {t_fit:.0f} s, coding both codecs {t_eval:.0f} s)"
    )
    log(
        f"wrote {out / 'table.txt'}, {plot}, {out / 'demo.json'}, {out / 'base.json'}, {out / 'pc.json'}"
        + (f", {codec_path}" if codec_path else "")
    )
    return summary
