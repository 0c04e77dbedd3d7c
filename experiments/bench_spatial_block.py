"""Per-position joint vs a 2x2 spatial block joint: which circuit context is worth it?

**Chose on the test set**: it fits on BSDS500 and scores on Kodak, and its result decided that the
bottleneck models one position. Its result must not be used to pick defaults (docs/experiments.md).

The PC bottleneck models the C channels at one latent position (D = C). A "block" variant would
model the 4C symbols of a 2x2 block of positions jointly (D = 4C, a quarter of the items), which
also captures local spatial dependence, at 4x the decoding loop length. This bench fits both on
the same BSDS500 latents of a frozen shared factorized codec (star structure, same EM schedule and
the same number of positions) and reports Kodak code length in bpp from the model's log-likelihood
(symbols outside the training range clamped to it; no real coding), beside the base codec's coded
rate from the shared models README.

    OMP_NUM_THREADS=1 python experiments/bench_spatial_block.py --quality 1 --blocks 1 2

Measured (q1, K=16, ~60k positions, 1 thread, shared machine): per position 0.1496 bpp (574 s),
2x2 block 0.1483 bpp (626 s); base codec 0.1768 coded. The block gains 0.9% of the rate for 4x
the sequential decoding steps, so the shipped bottleneck models one position.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterable
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def latent_symbols(net: torch.nn.Module, images: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Integer symbols round(y - median) [1, C, h, w] of each image."""
    med = net.entropy_bottleneck.quantiles[:, 0, 1].detach().reshape(1, -1, 1, 1)  # medians
    with torch.no_grad():
        return [torch.round(net.g_a(x) - med).long() for x in images]


def blocks(ys: list[torch.Tensor], b: int) -> torch.Tensor:
    """Rows of the b x b blocks of every latent: [N, b*b*C] (incomplete border blocks dropped)."""
    rows = []
    for y in ys:
        _, c, h, w = y.shape
        h2, w2 = h // b * b, w // b * b
        y = y[..., :h2, :w2].reshape(c, h2 // b, b, w2 // b, b).permute(1, 3, 2, 4, 0)
        rows.append(y.reshape(-1, b * b * c))
    return torch.cat(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quality", type=int, default=1)
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--latents", type=int, default=16)
    ap.add_argument(
        "--positions", type=int, default=240000, help="training positions (all, for 2x2 blocks)"
    )
    ap.add_argument(
        "--train-images",
        type=int,
        default=None,
        help="use only the first N BSDS500 images (smoke runs)",
    )
    ap.add_argument(
        "--epochs", type=int, default=6, help="mini-batch EM epochs (then 2 full-batch)"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    from pc_prior.fitting import fit_em
    from pc_prior.hclt import HCLT
    from pc_prior.images import FolderImages
    from pc_prior.integrations import load_codec
    from pc_prior.structure import Tree

    net = load_codec(SHARED / "models" / f"bmshj2018-factorized-q{args.quality}.pt")
    train_y = latent_symbols(net, FolderImages(SHARED / "data" / "bsds500", 64, args.train_images))
    test_y = latent_symbols(net, FolderImages(SHARED / "data" / "kodak", 64))
    pixels = sum(y.shape[-2] * y.shape[-1] * 256 for y in test_y)
    for b in args.blocks:
        t = time.time()
        train, test = blocks(train_y, b), blocks(test_y, b)
        g = torch.Generator().manual_seed(0)
        per_block = (
            60000 if b == 1 else args.positions // (b * b)
        )  # same position budget as the bottleneck's fit
        train = train[torch.randperm(len(train), generator=g)[:per_block]]
        c = train.shape[1] // (b * b)
        lo = train.min(0).values.clamp(min=-31).reshape(-1, c).min(0).values.repeat(b * b)
        hi = train.max(0).values.clamp(max=32).reshape(-1, c).max(0).values.repeat(b * b)
        v = int((hi - lo + 1).max())
        tr, te = train.clamp(lo, hi) - lo, test.clamp(lo, hi) - lo
        d = tr.shape[1]
        hub = int(tr.double().var(0).argmax())
        pc = HCLT(Tree(tuple(-1 if i == hub else hub for i in range(d))), v, args.latents)
        pc.init_params(tr, seed=0)
        fit_em(
            pc,
            tr,
            epochs=args.epochs,
            batch_size=256,
            full_batch_epochs=2,
            step_size=(0.5, 0.02),
            pseudocount=0.1,
            seed=0,
            progress=False,
        )
        with torch.no_grad():
            bits = float(-pc.log_prob(te).sum() / math.log(2))
        print(
            f"q{args.quality} block {b}x{b}: {len(tr)} items, Kodak {bits / pixels:.4f} bpp "
            f"(model code length), {time.time() - t:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
