"""How much a learned float context model could save on a *frozen* hyperprior codec's y.

A headroom study for the conditional's spatial context, not a product: it trains small neural
context models (the kind jointly trained codecs use: a 5x5 masked convolution over all channels of
the decoded symbols plus 1x1 "entropy parameter" layers that also see the hyper-decoder's scales,
Minnen et al. 2018; He et al. 2021) on the symbols and scale indexes of a frozen shared
bmshj2018-hyperprior codec, fit on ``bsds500/train``, and reports the validation (``bsds500/test``)
code length of y under their discretized Gaussians against CompressAI's Gaussian conditional on
the same symbols (``PCConditional``'s validation baseline). Kodak is not read unless ``--test``
names it: then, once each model is trained (nothing is chosen from it), the same code lengths of
that folder's y are reported too, the headroom on the test set itself. Variants:

- ``recal``: no context, the 1x1 layers on the hyper-decoder's scales alone (a learned
  recalibration of mean and scale);
- ``checkerboard``: two passes, anchors as ``recal``, the other half with the 5x5 context of its
  decoded anchor neighbours (parallel decoding, as ``PCConditional``'s context);
- ``serial``: the raster-order 5x5 context of every earlier position (serial decoding: 100x slower
  in practice, the bound a parallel schedule approaches);
- ``channel``: the channels in ``--slices`` slices coded one after another, each slice with the 5x5
  context of all earlier slices (Minnen & Singh 2020; parallel over positions, one pass per slice);
- ``channel-checkerboard``: as ``channel``, and each slice in two checkerboard passes, the second
  also seeing the slice's anchors (He et al. 2022's ELIC schedule; 2 x slices parallel passes);
- ``channel-serial``: as ``channel`` with the raster context inside a slice (fully autoregressive).

Float networks are not deterministic across devices, which is why the product's context is integer
arithmetic; this bench only asks how much rate there is to take on a frozen codec. Every model
starts at the Gaussian conditional (zero last layer) and trains with Adam on random 256x256 crops
of the training photos (``--crops`` per photo at random pixel offsets, so the latents vary with the
offset modulo 16). ``--time`` instead times the networks' evaluations a decoder would run for one
Kodak-sized latent.

    OMP_NUM_THREADS=1 python experiments/bench_context_headroom.py --quality 3 --variants checkerboard serial
    OMP_NUM_THREADS=1 python experiments/bench_context_headroom.py --time --variants checkerboard channel-checkerboard
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from pc_prior.continuous import gaussian_bits
from pc_prior.errors import InputError
from pc_prior.integrations.context import anchor_mask

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VARIANTS = ("recal", "checkerboard", "serial", "channel", "channel-checkerboard", "channel-serial")
SCALE_BOUND = 0.11


def variant_slices(variant: str, slices: int) -> int:
    """Channel slices a variant decodes in: ``slices`` for the ``channel*`` ones, else 1."""
    return slices if variant.startswith("channel") else 1


def code_bits(sym: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """Bits of integer ``sym`` under N(mean, scale) integrated over [sym - 0.5, sym + 0.5]."""
    return gaussian_bits(sym - mean, scale.clamp_min(SCALE_BOUND))


PREVIOUS_HIDDEN = 128  # width of the hidden 5x5 layers over earlier slices (--depth > 1)


class ContextModel(nn.Module):
    """Mean and scale of every symbol from the hyper scales and (optionally) masked 5x5 contexts.

    Channels are split in ``slices`` groups decoded one after another (1: no channel order). Two
    context networks: ``previous``, ``depth`` 5x5 convolutions (leaky ReLU between, hidden width
    ``PREVIOUS_HIDDEN``, as ELIC's channel context), sees all taps
    of the slices decoded before the output's slice (the channel-wise context, parallel over
    positions; a hidden unit of slice k sees hidden units of slices <= k, so at any depth it depends
    on slices < k only); ``spatial``, one 5x5 convolution, sees the output's own slice (all
    slices for ``serial``) at the positions decoded before it: the anchors (checkerboard) or the
    earlier positions in raster order (serial). The 1x1 layers are autoregressive masks (MADE):
    a hidden unit of degree d sees context features of slices <= d, an output of slice k hidden
    units of degree <= k, so no symbol sees itself or a later slice.
    """

    def __init__(
        self, channels: int, variant: str, width: int = 384, slices: int = 1, depth: int = 1
    ) -> None:
        super().__init__()
        self.variant, self.slices = variant, slices
        self.spatial_kind = next((k for k in ("checkerboard", "serial") if k in variant), None)
        c, f = channels, 2 * channels
        in_slice = torch.arange(c) * slices // c
        out_slice = torch.arange(f) * slices // f
        feats = [torch.zeros(c, dtype=torch.long)]  # log σ: known before any symbol
        same_or_later = in_slice[None] <= out_slice[:, None]  # [f, c] relations of slices
        earlier = in_slice[None] < out_slice[:, None]
        all_taps = torch.ones(5, 5)
        if slices > 1:  # widths c -> 128 -> ... -> f; degrees: strictly earlier, then <=
            hw = PREVIOUS_HIDDEN
            sizes = [c] + [hw] * (depth - 1) + [f]
            degs = [in_slice] + [torch.arange(hw) * slices // hw] * (depth - 1) + [out_slice]
            self.previous = nn.ModuleList(
                nn.Conv2d(a, b, 5, padding=2) for a, b in itertools.pairwise(sizes)
            )
            for i, (da, db) in enumerate(itertools.pairwise(degs)):
                rel = da[None] < db[:, None] if i == 0 else da[None] <= db[:, None]
                self.register_buffer(f"previous_mask{i}", rel[..., None, None] * all_taps)
            feats.append(out_slice)
        if self.spatial_kind:
            self.spatial = nn.Conv2d(c, f, 5, padding=2)
            if self.spatial_kind == "serial":  # type A: strictly before the centre in raster order
                taps = all_taps.clone()
                taps[2, 2:] = 0
                taps[3:] = 0
                mask = same_or_later[..., None, None] * taps
            else:  # anchors of the output's own slice (inputs masked to anchors in forward)
                mask = (same_or_later & ~earlier)[..., None, None] * all_taps
            self.register_buffer("spatial_mask", mask)
            feats.append(out_slice)
        deg_in = torch.cat(feats)
        hidden = width + width // 3
        deg_h1 = torch.arange(hidden) * slices // hidden
        deg_h2 = torch.arange(width) * slices // width
        deg_out = torch.cat([torch.arange(c) * slices // c] * 2)
        self.layers = nn.ModuleList(
            [
                nn.Conv2d(len(deg_in), hidden, 1),
                nn.Conv2d(hidden, width, 1),
                nn.Conv2d(width, 2 * c, 1),
            ]
        )
        for i, (a, b) in enumerate([(deg_in, deg_h1), (deg_h1, deg_h2), (deg_h2, deg_out)]):
            self.register_buffer(f"made{i}", (a[None] <= b[:, None]).float()[..., None, None])
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, sym: Tensor, log_sigma: Tensor) -> tuple[Tensor, Tensor]:
        conv = nn.functional.conv2d
        feats = [log_sigma]
        if self.slices > 1:
            h = sym
            for i, layer in enumerate(self.previous):
                if i:
                    h = nn.functional.leaky_relu(h)
                h = conv(
                    h, layer.weight * getattr(self, f"previous_mask{i}"), layer.bias, padding=2
                )
            feats.append(h)
        if self.spatial_kind == "serial":
            feats.append(
                conv(sym, self.spatial.weight * self.spatial_mask, self.spatial.bias, padding=2)
            )
        elif self.spatial_kind == "checkerboard":
            anchors = anchor_mask(*sym.shape[-2:]).to(sym)
            ctx = conv(
                sym * anchors, self.spatial.weight * self.spatial_mask, self.spatial.bias, padding=2
            )
            feats.append(ctx * (1 - anchors))  # anchors are decoded with no same-slice context
        h = torch.cat(feats, 1)
        for i, layer in enumerate(self.layers):
            h = conv(h, layer.weight * getattr(self, f"made{i}"), layer.bias)
            if i < len(self.layers) - 1:
                h = nn.functional.leaky_relu(h)
        c = sym.shape[1]
        return h[:, :c], torch.exp(log_sigma + h[:, c:])


def collect(
    quality: int, folder: Path, models: Path, cache: Path, crops: int = 0, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    """Per-image (symbols, log σ_s) maps [1, C, H, W] of a folder, cached under ``cache``.

    ``crops`` > 0: instead of each whole image (cropped as ``fit_prior`` reads folders), that many
    random 256x256 crops of it at random pixel offsets (the codec's latents differ with the offset
    modulo 16, so this multiplies the training latents, as codecs are trained on random crops).
    """
    path = cache / f"q{quality}-{folder.parent.name}-{folder.name}-crops{crops}-seed{seed}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    from pc_prior.integrations import (
        FolderImages,
        collect_conditional_inputs,
        load_codec,
        load_image,
    )
    from pc_prior.settings import ImageFit

    net = load_codec(models / f"bmshj2018-hyperprior-q{quality}.pt")
    net.update(force=True)
    table = net.gaussian_conditional.scale_table.float()
    folder_images = FolderImages(folder, ImageFit.multiple)
    gen = torch.Generator().manual_seed(seed)

    def random_crops():
        for f in folder_images.files:
            img = load_image(f)
            h, w = img.shape[-2:]
            if h < 256 or w < 256:
                raise InputError(f"{f}: {h}x{w} is smaller than the 256x256 crops; pass --crops 0")
            for _ in range(crops):
                dy = int(torch.randint(h - 255, (1,), generator=gen))
                dx = int(torch.randint(w - 255, (1,), generator=gen))
                yield img[..., dy : dy + 256, dx : dx + 256]

    sym, idx = collect_conditional_inputs(
        net, random_crops() if crops else folder_images, maps=True
    )
    out = [(s.float(), table[i.long()].log()) for s, i in zip(sym, idx)]
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def by_shape(maps: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Stack maps of equal shape: [(sym [B, C, H, W], log σ [B, C, H, W]), ...]."""
    groups: dict[tuple, list] = {}
    for s, ls in maps:
        groups.setdefault(tuple(s.shape), []).append((s, ls))
    return [(torch.cat([s for s, _ in g]), torch.cat([ls for _, ls in g])) for g in groups.values()]


@torch.no_grad()
def total_bits(model: ContextModel | None, groups: list[tuple[Tensor, Tensor]]) -> float:
    bits = 0.0
    for s, ls in groups:
        for part in range(0, len(s), 16):
            x, y = s[part : part + 16], ls[part : part + 16]
            mean, scale = (torch.zeros_like(x), y.exp()) if model is None else model(x, y)
            bits += float(code_bits(x, mean, scale).double().sum())
    return bits


def train(
    variant: str,
    train_maps,
    valid_groups,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    width: int,
    slices: int,
    depth: int = 1,
) -> tuple[ContextModel, list[dict]]:
    torch.manual_seed(seed)
    c = train_maps[0][0].shape[1]
    model = ContextModel(c, variant, width, variant_slices(variant, slices), depth)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / steps, 1.0)))
    )
    groups = by_shape(train_maps)
    weights = torch.tensor([float(len(g[0])) for g in groups])
    log, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        s, ls = groups[int(torch.multinomial(weights, 1))]
        pick = torch.randint(len(s), (min(batch, len(s)),))
        mean, scale = model(s[pick], ls[pick])
        loss = code_bits(s[pick], mean, scale).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(steps // 6, 1) == 0 or step == steps:
            model.eval()
            row = {
                "step": step,
                "train_bits_per_position_channel": float(loss),
                "valid_bits": total_bits(model, valid_groups),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            model.train()
            log.append(row)
            print(json.dumps({"variant": variant, **row}), flush=True)
    return model.eval(), log


def decode_passes(variant: str, slices: int) -> int | None:
    """Network evaluations a decoder needs: one per pass (None: serial, one per position)."""
    if "serial" in variant:
        return None
    per_slice = 2 if "checkerboard" in variant else 1
    return per_slice * variant_slices(variant, slices)


@torch.no_grad()
def time_networks(
    variants: list[str], channels: int, width: int, slices: int, runs: int, depth: int = 1
) -> None:
    """Median time of the networks' evaluations a decoder of one Kodak image (y 32x48) needs.

    Every pass evaluates the whole network (an upper bound: a decoder could compute only the pass's
    slice, a fraction 1/slices of the output layers). Float32, this process's threads.
    """
    print("\n| variant | network passes | one pass (ms) | decode's network time (ms) |")
    print("|---|---|---|---|")
    x = torch.randn(1, channels, 32, 48).round()
    ls = torch.zeros_like(x)
    for v in variants:
        passes = decode_passes(v, slices)
        if passes is None:
            print(f"| {v} | 1536 (serial, one per position) | | |")
            continue
        model = ContextModel(channels, v, width, variant_slices(v, slices), depth).eval()
        model(x, ls)  # warm up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x, ls)
            times.append(time.perf_counter() - t0)
        one = statistics.median(times) * 1e3
        print(f"| {v} | {passes} | {one:.1f} | {one * passes:.0f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", type=int, default=3)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--models", type=Path, default=SHARED / "models")
    ap.add_argument("--train", type=Path, default=SHARED / "data" / "bsds500" / "train")
    ap.add_argument("--valid", type=Path, default=SHARED / "data" / "bsds500" / "test")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16, help="latent maps per Adam step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crops", type=int, default=16, help="random 256x256 crops per training image")
    ap.add_argument("--width", type=int, default=384, help="width of the 1x1 layers")
    ap.add_argument(
        "--slices", type=int, default=8, help="channel slices of the channel-* variants"
    )
    ap.add_argument(
        "--depth",
        type=int,
        default=1,
        help="5x5 convolutions over the earlier slices (channel-* variants)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "headroom")
    ap.add_argument(
        "--test",
        type=Path,
        default=None,
        metavar="DIR",
        help="also report the trained models' code length of this folder's y (e.g. Kodak, the "
        "test set); measured after training, never used for any choice",
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--time",
        action="store_true",
        help="only time the networks' evaluations for one Kodak-sized latent (no data, no fit)",
    )
    args = ap.parse_args(argv)
    for name, low in (("steps", 1), ("batch", 1), ("width", 1), ("slices", 1), ("depth", 1)):
        if getattr(args, name) < low:
            ap.error(f"--{name} must be at least {low}, got {getattr(args, name)}")
    if args.crops < 0:
        ap.error(f"--crops must be 0 (whole photos) or more, got {args.crops}")
    torch.set_num_threads(args.threads)
    if args.time:
        time_networks(args.variants, 192, args.width, args.slices, runs=7, depth=args.depth)
        return 0

    train_maps = collect(args.quality, args.train, args.models, args.cache, args.crops, args.seed)
    valid_groups = by_shape(collect(args.quality, args.valid, args.models, args.cache))
    base = total_bits(None, valid_groups)
    print(json.dumps({"quality": args.quality, "valid_y_bits_gaussian": base}), flush=True)
    test_groups = (
        by_shape(collect(args.quality, args.test, args.models, args.cache)) if args.test else []
    )
    test_base = total_bits(None, test_groups) if args.test else math.nan
    rows = []
    for v in args.variants:
        model, log = train(
            v,
            train_maps,
            valid_groups,
            args.steps,
            args.batch,
            args.lr,
            args.seed,
            args.width,
            args.slices,
            args.depth,
        )
        final = log[-1]["valid_bits"]
        rows.append(
            {
                "quality": args.quality,
                "variant": v,
                "steps": args.steps,
                "crops": args.crops,
                "width": args.width,
                "slices": args.slices,
                "depth": args.depth,
                "valid_y_bits_gaussian": base,
                "valid_y_bits": final,
                "saving_pct": 100 * (1 - final / base),
                "fit_seconds": log[-1]["seconds"],
                "log": log,
            }
        )
        if args.test:
            test_bits = total_bits(model, test_groups)
            rows[-1] |= {
                "test": str(args.test),
                "test_y_bits_gaussian": test_base,
                "test_y_bits": test_bits,
                "test_saving_pct": 100 * (1 - test_bits / test_base),
            }
        keys = ("quality", "variant", "saving_pct", "test_saving_pct", "fit_seconds")
        print(json.dumps({k: rows[-1][k] for k in keys if k in rows[-1]}), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    print(
        "\n| codec | variant | validation y saving vs Gaussian | test y saving | Adam steps | fit (s) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        test = f"{r['test_saving_pct']:.2f}%" if "test_saving_pct" in r else ""
        print(
            f"| hyperprior q{r['quality']} | {r['variant']} | {r['saving_pct']:.2f}% | {test} | "
            f"{r['steps']} | {r['fit_seconds']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
