"""Which ``PCConditional`` settings pay: context, states K and Adam steps, on one frozen hyperprior codec.

Collects the shared bmshj2018-hyperprior codec's symbols and scale indexes on BSDS500 train
(the fit split) and BSDS500 test (the validation split), both cropped to 64 as ``fit_prior``
reads folders, then for every variant ``CONTEXT:K:STEPS`` fits a ``PCConditional`` on the
training maps (``--max-items`` positions) and reports the validation y code length under the model
(``log_likelihood``: the coded model's bits up to the 22-bit tables), against CompressAI's
Gaussian conditional on the same symbols. Model bits only: no z, no headers (the eval harness
codes for real). Settings are chosen here, never on Kodak (the test set).

    python experiments/bench_conditional_ablation.py --quality 3 \\
        --variants three-pass:16:6000 three-pass:32:3000 three-pass:32:6000 \\
        --json runs/conditional_ablation_q3.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def gaussian_bits(
    symbols: list[torch.Tensor], indexes: list[torch.Tensor], table: torch.Tensor
) -> float:
    """CompressAI's Gaussian conditional code length (bits) of integer symbols at scale indexes."""
    from pc_prior.continuous import gaussian_bits

    return sum(
        float(gaussian_bits(s.double(), table.double()[i.long()]).sum())
        for s, i in zip(symbols, indexes)
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", type=int, default=3)
    ap.add_argument("--arch", default="bmshj2018-hyperprior")
    ap.add_argument("--models", type=Path, default=SHARED / "models")
    ap.add_argument("--train", type=Path, default=SHARED / "data" / "bsds500" / "train")
    ap.add_argument(
        "--valid", type=Path, default=SHARED / "data" / "bsds500" / "test", help="validation photos"
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["checkerboard:16:1000", "three-pass:32:3000"],
        help="CONTEXT:K:STEPS, CONTEXT one of three-pass, checkerboard, none",
    )
    ap.add_argument("--max-items", type=int, default=120000)
    ap.add_argument("--max-images", type=int, default=None, help="images per split (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="also save each variant's codec (the frozen codec with its own z bottleneck and the "
        "fitted PCConditional) here, e.g. to time its decoding with bench/bench_codec_speed.py",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from pc_prior.integrations import (
        FolderImages,
        collect_conditional_inputs,
        load_codec,
        save_codec,
        swap_entropy_model,
    )
    from pc_prior.settings import ImageFit

    codec = args.models / f"{args.arch}-q{args.quality}.pt"
    for p in (codec, args.train, args.valid):
        if not p.exists():
            print(f"missing {p}: this bench needs ../shared (models and data)", file=sys.stderr)
            return 2
    net = load_codec(codec).eval()
    net.update(force=True)
    table = net.gaussian_conditional.scale_table.cpu()
    train_images = FolderImages(args.train, ImageFit.multiple, args.max_images)
    valid_images = FolderImages(args.valid, ImageFit.multiple, args.max_images)
    tr_sym, tr_idx = collect_conditional_inputs(net, train_images, maps=True)
    va_sym, va_idx = collect_conditional_inputs(net, valid_images, maps=True)
    base = gaussian_bits(va_sym, va_idx, table)
    print(
        f"q{args.quality}: {len(train_images)} training maps, {len(valid_images)} validation maps; "
        f"validation y under the Gaussian: {base:.0f} bits",
        flush=True,
    )
    rows = []
    for spec in args.variants:
        ctx, k, steps = spec.split(":")
        model = copy.deepcopy(net)  # the codec with this variant's conditional swapped in
        gc = swap_entropy_model(model, "gaussian_conditional")
        t = time.perf_counter()
        gc.fit(
            list(tr_sym),
            list(tr_idx),
            num_latents=int(k),
            steps=int(steps),
            max_items=args.max_items,
            context=None if ctx == "none" else ctx,
            progress=False,
        )
        fit_s = time.perf_counter() - t
        with torch.no_grad():
            nats = -sum(
                float(gc.log_likelihood(s.long(), i.long()).sum()) for s, i in zip(va_sym, va_idx)
            )
        bits = nats / math.log(2)
        row = {
            "variant": spec,
            "context": ctx,
            "latents": int(k),
            "steps": int(steps),
            "valid_y_bits": bits,
            "saving_pct": 100 * (1 - bits / base),
            "fit_s": fit_s,
            "table_mb": gc._pc_emit.numel() * 4 / 2**20,
        }
        if args.save:
            name = f"{args.arch}-q{args.quality}-{ctx}-k{k}-{steps}.pt"
            row["codec"] = str(save_codec(model, args.save / name, args.arch, args.quality))
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        "\n| variant (context:K:steps) | validation y bits | saving vs Gaussian | fit s | tables MB |\n|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['variant']} | {r['valid_y_bits']:.0f} | {r['saving_pct']:.2f}% | {r['fit_s']:.0f} | "
            f"{r['table_mb']:.0f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"quality": args.quality, "gaussian_bits": base, "variants": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
