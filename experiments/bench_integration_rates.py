"""Coded Kodak bpp of frozen CompressAI codecs: their own EntropyBottleneck vs PCEntropyBottleneck.

**Chose on the test set**: it fits on BSDS500 and scores on Kodak, and its results chose structure,
K, positions and leaf kind. Its result must not be used to pick defaults (docs/experiments.md).

For each quality: load the shared base codec, code Kodak with its own entropy bottleneck (real
bytes from ``compress()``), then swap in a PCEntropyBottleneck fitted on BSDS500 latents only
(codec frozen), code Kodak again, check that ``decompress`` reproduces the eval-mode forward
reconstruction exactly (and hence the baseline's reconstruction), and report both rates.

    python experiments/bench_integration_rates.py --qualities 2 1 3 4 --structure star --json rates.json

Measured (K=16, star, 60k positions, 6+2 EM epochs; 1 CPU thread, shared): savings 14.8% (q1),
15.1% (q2), 16.5% (q3), 16.8% (q4); chow-liu gave 15.0% on q2, K=32 gave 14.4% on q1.

Leaves, frozen q2 (``--qualities 2 --leaves categorical logistic``, then ``--leaves logistic
--finetune-steps 3000``): categorical 15.22%, discretized logistic 14.80% after the default 300
Adam steps and 15.15% after 3000.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pc_prior.eval.rd import evaluate_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def code_kodak(net: torch.nn.Module, files: list[Path], check_forward: bool) -> dict:
    """Kodak through ``pc_prior.eval.rd.evaluate_model`` (what ``pc-prior eval`` runs): mean bpp and
    PSNR-RGB, mean encode/decode seconds per image and the decoded images' hashes. With
    ``check_forward`` every decoded image must equal the eval-mode forward's, bit for bit."""
    res = evaluate_model(net, files, progress=False)
    rows = res["images"]
    if check_forward and not all(r["decoded_equals_forward"] for r in rows):
        raise AssertionError("decompress does not reproduce the eval-mode forward reconstruction")
    m = res["mean"]
    return {
        "bpp": m["bpp"],
        "psnr": m["psnr-rgb"],
        "hashes": [r["x_hat_sha256"] for r in rows],
        "enc_s": m["encoding_time"],
        "dec_s": m["decoding_time"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qualities", type=int, nargs="+", default=[2])
    ap.add_argument("--arch", default="bmshj2018-factorized")
    ap.add_argument("--models", type=Path, default=SHARED / "models")
    ap.add_argument("--train", type=Path, default=SHARED / "data" / "bsds500")
    ap.add_argument("--kodak", type=Path, default=SHARED / "data" / "kodak")
    ap.add_argument("--num-latents", type=int, default=16)
    ap.add_argument("--max-items", type=int, default=60000, help="positions subsampled for the fit")
    ap.add_argument(
        "--max-images", type=int, default=None, help="training images used (default: all)"
    )
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--full-batch-epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--step-size", type=float, nargs=2, default=(0.5, 0.02))
    ap.add_argument("--structure", choices=["chow-liu", "star"], default="star")
    ap.add_argument(
        "--leaves",
        nargs="+",
        choices=["categorical", "logistic"],
        default=["categorical"],
        help="leaf kinds to fit, each on a fresh copy of the codec (default: categorical)",
    )
    ap.add_argument("--finetune-steps", type=int, default=300, help="Adam steps of logistic leaves")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pc_prior.images import list_images
    from pc_prior.integrations import fit_prior, load_codec

    kodak = list_images(args.kodak)
    rows = []
    for q in args.qualities:
        path = args.models / f"{args.arch}-q{q}.pt"
        net = load_codec(path)
        net.update(force=True)
        base = code_kodak(net, kodak, check_forward=False)
        for leaves in args.leaves:
            net = load_codec(path)
            t = time.perf_counter()
            hist = fit_prior(
                net,
                args.train,
                num_latents=args.num_latents,
                multiple=getattr(net, "downsampling_factor", 64),
                max_images=args.max_images,
                max_items=args.max_items,
                epochs=args.epochs,
                full_batch_epochs=args.full_batch_epochs,
                batch_size=args.batch_size,
                step_size=tuple(args.step_size),
                structure=args.structure,
                leaves=leaves,
                context=None if leaves == "logistic" else "three-pass",  # logistic: one pass
                finetune_steps=args.finetune_steps,
                progress=not args.no_progress,
            )
            fit_s = time.perf_counter() - t
            pc = code_kodak(net, kodak, check_forward=True)
            same = base["hashes"] == pc["hashes"]
            eb = net.entropy_bottleneck
            row = {
                "model": path.stem,
                "quality": q,
                "leaves": leaves,
                "base_bpp": base["bpp"],
                "pc_bpp": pc["bpp"],
                "saving_pct": 100 * (1 - pc["bpp"] / base["bpp"]),
                "base_psnr": base["psnr"],
                "pc_psnr": pc["psnr"],
                "same_reconstruction": same,
                "num_latents": args.num_latents,
                "structure": args.structure,
                "num_symbols": eb.num_symbols,
                "fit_s": fit_s,
                "train_bpd": hist["entropy_bottleneck"][-1]["train_bpd"],
                "base_enc_s": base["enc_s"],
                "base_dec_s": base["dec_s"],
                "pc_enc_s": pc["enc_s"],
                "pc_dec_s": pc["dec_s"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        "\n| codec | leaves | base bpp | PC bpp | saving | PSNR (both) | same recon | fit s | PC enc/dec s/img |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['leaves']} | {r['base_bpp']:.4f} | {r['pc_bpp']:.4f} | {r['saving_pct']:.1f}% | "
            f"{r['pc_psnr']:.3f} | {r['same_reconstruction']} | {r['fit_s']:.0f} | "
            f"{r['pc_enc_s']:.2f}/{r['pc_dec_s']:.2f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {
                        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    },
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0 if all(r["same_reconstruction"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
