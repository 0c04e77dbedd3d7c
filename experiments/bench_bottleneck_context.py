"""Choosing ``PCEntropyBottleneck``'s spatial context on validation data (never on Kodak).

For each shared factorized codec: collect its latents on ``bsds500/train`` (fit) and
``bsds500/test`` (validation), both cropped to multiples of 64 as ``fit_prior`` reads folders.
Fit a ``PCEntropyBottleneck`` per setting (context schedule x K x positions) on the training
maps and report the validation code length (the model's ``-log2 p``, escapes included) against
the codec's own ``EntropyBottleneck`` on the same latents, plus fit time. Each setting is one
``PCEntropyBottleneck.fit`` call with the ``BottleneckFit`` defaults except what the row names.

    OMP_NUM_THREADS=1 python experiments/bench_bottleneck_context.py --qualities 1 \\
        --contexts none checkerboard three-pass --json runs/bench_bottleneck_context.json
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@torch.no_grad()
def latent_maps(net, folder: Path, limit: int | None, mirror: bool = False) -> list[torch.Tensor]:
    """``g_a`` of each image of ``folder`` (cropped as ``fit_prior`` crops), and with ``mirror``
    of its left-right mirror image too (a data augmentation to validate)."""
    from pc_prior.images import FolderImages
    from pc_prior.settings import ImageFit

    images = list(FolderImages(folder, ImageFit.multiple, limit))
    return [net.g_a(x) for x in images] + [net.g_a(x.flip(-1)) for x in images if mirror]


@torch.no_grad()
def own_bits(eb, maps: list[torch.Tensor]) -> float:
    """The codec's own EntropyBottleneck code length (its likelihoods, eval mode)."""
    return sum(float(-torch.log2(eb(y, training=False)[1]).sum()) for y in maps)


@torch.no_grad()
def pc_bits(pc, maps: list[torch.Tensor]) -> float:
    return sum(float(-pc.log_likelihood(pc.symbols(y)).sum()) / math.log(2) for y in maps)


PINNED = (
    "num_latents",
    "progress",
    "structure",
    "context",
    "max_items",
    "context_bins",
    "group_fit",
    "group_epochs",
)


def fit_options(ap: argparse.ArgumentParser, options: list[str]) -> dict:
    """``--fit-option NAME=VALUE`` pairs as fit keywords; a clear argparse error on a malformed
    pair, a value that is not a Python literal, or a keyword the bench's own axes set."""
    out = {}
    for o in options:
        name, sep, value = o.partition("=")
        if not sep or not name.isidentifier():
            ap.error(f"--fit-option takes NAME=VALUE, got {o!r}")
        if name in PINNED:
            ap.error(f"--fit-option {name}: set it with the bench's own option instead")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            ap.error(f"--fit-option {name}: {value!r} is not a Python literal (e.g. 15.0, 'fixed')")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qualities", type=int, nargs="+", default=[1])
    ap.add_argument("--contexts", nargs="+", default=["none", "checkerboard", "three-pass"])
    ap.add_argument("--latents", type=int, nargs="+", default=[16])
    ap.add_argument("--structures", nargs="+", default=["star"], help="star, chow-liu")
    ap.add_argument("--max-items", type=int, nargs="+", default=[60000], help="0: all positions")
    ap.add_argument("--bins", nargs="+", default=["fixed"], help="context_bins: fixed, channel")
    ap.add_argument(
        "--group-fit", nargs="+", default=["joint"], help="group_fit: joint, states-first"
    )
    ap.add_argument(
        "--group-epochs", type=int, nargs="+", default=[0], help="group_epochs (states-first)"
    )
    ap.add_argument(
        "--fit-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another PCEntropyBottleneck.fit keyword for every row (a Python literal)",
    )
    ap.add_argument(
        "--mirror", action="store_true", help="also fit on the training photos' mirror images"
    )
    ap.add_argument("--limit", type=int, default=None, help="images per split (default: all)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="also save each setting's codec (the frozen codec with the fitted prior) here, "
        "e.g. to time its decoding with bench/bench_codec_speed.py",
    )
    args = ap.parse_args()

    from pc_prior.integrations import load_codec, save_codec, swap_entropy_model

    extra = fit_options(ap, args.fit_option)

    rows = []
    for q in args.qualities:
        net = load_codec(SHARED / "models" / f"bmshj2018-factorized-q{q}.pt")
        train = latent_maps(net, SHARED / "data" / "bsds500" / "train", args.limit, args.mirror)
        valid = latent_maps(net, SHARED / "data" / "bsds500" / "test", args.limit)
        base = own_bits(net.entropy_bottleneck, valid)
        pixels = sum(y.shape[-2] * y.shape[-1] * 256 for y in valid)
        print(f"q{q}: own EntropyBottleneck {base / pixels:.4f} bpp on validation", flush=True)
        settings = [
            (ctx, st, k, items, bins, gf, ge)
            for ctx in args.contexts
            for st in args.structures
            for k in args.latents
            for items in args.max_items
            for bins in (args.bins if ctx != "none" else ["fixed"])
            for gf in (args.group_fit if ctx != "none" else ["joint"])
            for ge in (args.group_epochs if gf == "states-first" else [0])
        ]
        for ctx, st, k, items, bins, gf, ge in settings:
            model = copy.deepcopy(net)  # the codec with this setting's prior swapped in
            pc = swap_entropy_model(model, "entropy_bottleneck")
            t0 = time.perf_counter()
            pc.fit(
                train,
                k,
                structure=st,
                context=None if ctx == "none" else ctx,
                max_items=items or None,
                context_bins=bins,
                group_fit=gf,
                group_epochs=ge,
                progress=False,
                **extra,
            )
            fit_s = time.perf_counter() - t0
            bits = pc_bits(pc, valid)
            row = {
                "quality": q,
                "context": ctx,
                "structure": st,
                "context_bins": bins,
                "group_fit": gf,
                "group_epochs": ge,
                "state_context": pc.state_context,
                "num_latents": k,
                "max_items": items or None,
                "valid_bpp": bits / pixels,
                "own_bpp": base / pixels,
                "saving": 1.0 - bits / base,
                "fit_seconds": round(fit_s, 1),
                "mirror": args.mirror,
                **extra,
            }
            if args.save:
                name = f"q{q}-{ctx}-{st}-k{k}-{bins}-{gf}-ge{ge}-n{items or 'all'}.pt"
                row["codec"] = str(save_codec(model, args.save / name, "bmshj2018-factorized", q))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
