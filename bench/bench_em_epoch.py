"""Time of one mini-batch EM step of an MNIST HCLT: ``em_step_counts`` + ``em_update``, against
the reference way to get the same counts (autograd through the leaf gather in variable order).

Both compute the same expected counts (``tests/core/test_training.py`` checks that they agree);
the bench prints the median seconds per batch of each at every thread count, their ratio, and
the implied seconds per 60,000-image epoch. ``--device cuda`` times the same steps on the GPU
(synchronized before each clock read; the thread count then only sets the CPU side's threads).

    python bench/bench_em_epoch.py --threads 1 2 --batches 8 --repeats 3 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from pc_prior import HCLT
from pc_prior.data import load_mnist
from pc_prior.fitting import em_step_counts, em_update


def reference_counts(pc: HCLT, x: torch.Tensor) -> list[torch.Tensor]:
    """Counts as gradients of log p through the variable-order leaf gather (no flow shortcut)."""
    params = [
        p.detach().requires_grad_(True)
        for p in (pc.log_root(), pc.log_transitions(), pc.log_emissions())
    ]
    lr, lt, le = params
    ll = pc.upward(pc.leaf_log_probs(x, log_emit=le), log_root=lr, log_trans=lt)[0].sum()
    return list(torch.autograd.grad(ll, params))


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels, so that a clock read times finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(pc: HCLT, x: torch.Tensor, counts_fn) -> None:
    # em_update per parameter rather than training.apply_em_counts, so that the same bench also
    # times older releases of the package (README: PYTHONPATH at the previous release)
    counts = counts_fn(pc, x)
    for logits, c in zip((pc.root_logits, pc.transition_logits, pc.emission_logits), counts):
        em_update(logits, c, 0.1, 0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="idx folder (default ../shared/data/mnist)")
    ap.add_argument("--latents", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--batches", type=int, default=8, help="batches timed per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu", help="torch device of the steps (default: cpu)")
    args = ap.parse_args()
    device = torch.device(args.device)
    x = load_mnist(args.data, "train", args.batch_size * (args.batches + 1))
    pc = HCLT.from_data(x, 256, args.latents).to(device)
    batches = x.to(device).split(args.batch_size)
    per_epoch = math.ceil(60_000 / args.batch_size)
    ways = {"ours": lambda p, b: em_step_counts(p, b)[0], "reference": reference_counts}
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        row: dict = {"device": str(device), "threads": threads}
        for name, fn in ways.items():
            step(pc, batches[0], fn)  # warm-up
            times = []
            for _ in range(args.repeats):
                sync(device)
                t0 = time.perf_counter()
                for b in batches[1:]:
                    step(pc, b, fn)
                sync(device)
                times.append((time.perf_counter() - t0) / (len(batches) - 1))
            row[f"{name}_s_per_batch"] = statistics.median(times)
            row[f"{name}_s_per_epoch"] = statistics.median(times) * per_epoch
        row["reference_over_ours"] = row["reference_s_per_batch"] / row["ours_s_per_batch"]
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
