"""Codec speed: encode and decode milliseconds per Kodak image, baseline vs candidate, CPU and CUDA.

For every device (CPU, and CUDA when present) and model, each image goes through
``pc_prior.eval.rd.evaluate_model`` (what ``pc-prior eval`` runs: padded as CompressAI's eval_model
pads), with ``compress`` and ``decompress`` each run --runs times (after --warmup untimed runs,
CUDA-synchronized); the table shows the mean over images of the per-image median, with the
candidate/baseline ratios from the same run. Coded bpp is printed too, so a speed-up cannot hide a
rate change. The JSON of the same numbers goes to --json when given.

    python bench/bench_codec_speed.py --baseline ../shared/models/bmshj2018-factorized-q1.pt \
        [--candidate runs/pc_codec.pt] [--images 4 --runs 5 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pc_prior.eval.rd import evaluate_model
from pc_prior.images import list_images, load_image
from pc_prior.integrations import resolve_codec

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def bench_model(
    net: torch.nn.Module, files: list[Path], runs: int, warmup: int
) -> dict[str, float]:
    """Mean over images of the median encode / decode milliseconds, and the mean coded bpp
    (``pc_prior.eval.rd.evaluate_model``, the evaluation ``pc-prior eval`` runs, with ``runs``)."""
    res = evaluate_model(net, files, progress=False, runs=runs, warmup=warmup)
    m = res["mean"]
    return {
        "encode_ms": 1000 * m["encoding_time"],
        "decode_ms": 1000 * m["decoding_time"],
        "bpp": m["bpp"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--baseline",
        default=str(SHARED / "models" / "bmshj2018-factorized-q1.pt"),
        help="baseline codec (any 'pc-prior eval' MODEL spec; default: shared factorized q1)",
    )
    ap.add_argument(
        "--candidate", default=None, help="candidate codec (e.g. the same codec with a PC prior)"
    )
    ap.add_argument("--arch", default=None, help="architecture for plain state-dict files")
    ap.add_argument("--data", default=str(SHARED / "data" / "kodak"))
    ap.add_argument("--images", type=int, default=3, help="first N images (default: %(default)s)")
    ap.add_argument(
        "--runs",
        type=int,
        default=5,
        help="timed runs per image, median taken (default: %(default)s)",
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu, and cuda when available"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    files = list_images(args.data)[: args.images]
    specs = {"baseline": args.baseline}
    if args.candidate:
        specs["candidate"] = args.candidate
    results: dict[str, dict[str, dict[str, float]]] = {}
    for dev in devices:
        device = torch.device(dev)
        results[dev] = {}
        for role, spec in specs.items():
            lm = resolve_codec(spec, arch=args.arch, device=device)
            results[dev][role] = {
                "model": lm.name,
                **bench_model(lm.net, files, args.runs, args.warmup),
            }
            del lm

    h, w = load_image(files[0]).shape[-2:]
    print(
        f"{len(files)} images from {args.data} (first is {w}x{h}), median of {args.runs} runs, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    )
    head = f"{'device':<7} {'role':<10} {'model':<32} {'bpp':>7} {'enc ms':>9} {'dec ms':>9}"
    print(head)
    print("-" * len(head))
    for dev, by_role in results.items():
        for role, r in by_role.items():
            print(
                f"{dev:<7} {role:<10} {r['model'][:32]:<32} {r['bpp']:7.4f} {r['encode_ms']:9.1f} {r['decode_ms']:9.1f}"
            )
        if "candidate" in by_role:
            b, c = by_role["baseline"], by_role["candidate"]
            ratios = {
                "encode": c["encode_ms"] / b["encode_ms"],
                "decode": c["decode_ms"] / b["decode_ms"],
            }
            by_role["ratio_candidate_over_baseline"] = ratios
            print(
                f"{dev:<7} {'ratio':<10} {'candidate / baseline':<32} {c['bpp'] / b['bpp']:7.3f} "
                f"{ratios['encode']:8.2f}x {ratios['decode']:8.2f}x"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"images": [f.name for f in files], "runs": args.runs, "results": results}, indent=2
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
