"""Codec speed: encode and decode milliseconds per Kodak image, baseline vs candidate, CPU and CUDA.

For every device (CPU, and CUDA when present) and model, each image is padded as CompressAI's
eval_model does, then ``compress`` and ``decompress`` each run --runs times (after --warmup untimed
runs, CUDA-synchronized); the table shows the mean over images of the per-image median, with the
candidate/baseline ratios from the same run. Coded bpp is printed too, so a speed-up cannot hide a
rate change. The JSON of the same numbers goes to --json when given.

    python bench/bench_codec_speed.py --baseline ../shared/models/bmshj2018-factorized-q1.pt \
        [--candidate runs/pc_codec.pt] [--images 4 --runs 5 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pc_prior.eval.models import load_model
from pc_prior.eval.rd import MIN_DIV, collect_images, count_bytes, read_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, runs: int, warmup: int) -> tuple[float, object]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


@torch.no_grad()
def bench_model(
    net: torch.nn.Module, images: list[torch.Tensor], device: torch.device, runs: int, warmup: int
) -> dict[str, float]:
    """Mean over images of the median encode / decode milliseconds, and the mean coded bpp."""
    from compressai.ops import compute_padding

    enc_ms, dec_ms, bpp = [], [], []
    for x in images:
        x = x[None].to(device)
        pad, _ = compute_padding(x.size(2), x.size(3), min_div=MIN_DIV)
        xp = F.pad(x, pad)
        t_enc, enc = _timed(lambda: net.compress(xp), device, runs, warmup)
        t_dec, _ = _timed(
            lambda: net.decompress(enc["strings"], enc["shape"]), device, runs, warmup
        )
        enc_ms.append(1000 * t_enc)
        dec_ms.append(1000 * t_dec)
        bpp.append(8 * count_bytes(enc["strings"]) / (x.size(2) * x.size(3)))
    n = len(images)
    return {"encode_ms": sum(enc_ms) / n, "decode_ms": sum(dec_ms) / n, "bpp": sum(bpp) / n}


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
    files = collect_images(args.data)[: args.images]
    images = [read_image(f) for f in files]
    specs = {"baseline": args.baseline}
    if args.candidate:
        specs["candidate"] = args.candidate
    results: dict[str, dict[str, dict[str, float]]] = {}
    for dev in devices:
        device = torch.device(dev)
        results[dev] = {}
        for role, spec in specs.items():
            lm = load_model(spec, arch=args.arch, device=device)
            results[dev][role] = {
                "model": lm.name,
                **bench_model(lm.net, images, device, args.runs, args.warmup),
            }
            del lm

    h, w = images[0].shape[1:]
    print(
        f"{len(images)} images from {args.data} (first is {w}x{h}), median of {args.runs} runs, "
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
