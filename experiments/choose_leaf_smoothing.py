"""Choose ``leaf_smoothing`` and ``smoothing_width`` on held-out training images (never the test split).

Takes an HCLT that ``pc-prior lossless fit --valid N --leaf-smoothing 0`` trained on all but the
last N training images, applies ``pc_prior.fitting.smooth_leaves`` at each (share, width) of the
grid to a copy (smoothing is the fit's last step, so this is exactly what a fit with that setting
gives) and prints the held-out bpd of each as one JSON line, the unsmoothed model first.

    pc-prior lossless fit --latents 64 --valid 5000 --leaf-smoothing 0 -o runs/lossless/valid_k64.pt
    OMP_NUM_THREADS=1 python experiments/choose_leaf_smoothing.py --model runs/lossless/valid_k64.pt --valid 5000
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from pc_prior import load
from pc_prior.data import load_mnist
from pc_prior.fitting import bits_per_dim, smooth_leaves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model", required=True, help="an HCLT fitted with --valid N --leaf-smoothing 0"
    )
    ap.add_argument("--data", default=None, help="idx folder (default: ../shared/data/mnist)")
    ap.add_argument("--valid", type=int, default=5000, help="the N the model was fitted with")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    ap.add_argument("--widths", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    args = ap.parse_args()

    pc = load(args.model)
    x = load_mnist(args.data, "train")
    fitted_on = pc.metadata.get("num_train")
    if fitted_on is not None and fitted_on + args.valid != len(x):
        raise SystemExit(
            f"{args.model} was fitted on {fitted_on} of {len(x)} training images: pass --valid "
            f"{len(x) - fitted_on} so the held-out images are the ones the fit did not see"
        )
    held_out = x[len(x) - args.valid :]
    print(json.dumps({"share": 0.0, "valid_bpd": round(bits_per_dim(pc, held_out), 5)}), flush=True)
    for width in args.widths:
        for share in args.shares:
            smoothed = copy.deepcopy(pc)
            smooth_leaves(smoothed, share, width)
            bpd = bits_per_dim(smoothed, held_out)
            print(
                json.dumps({"share": share, "width": width, "valid_bpd": round(bpd, 5)}), flush=True
            )


if __name__ == "__main__":
    with torch.no_grad():
        main()
