"""Our HCLT against SPFlow 1.1's HCLT on the same CPU, data, K, batch size and epochs, as one JSON object.

In one run, on one machine and the same images:

- tree learning: ours ``HCLT.from_data`` against SPFlow's ``spflow.zoo.hclt.learn_hclt_categorical``
  (each learns its own Chow-Liu tree; the time includes building the circuit);
- mini-batch EM: ours ``pc_prior.fit_em`` against SPFlow's
  ``spflow.learn.expectation_maximization.expectation_maximization_batched``, the same batch size
  and number of epochs, seconds per epoch (median over the epochs);
- test bits per dimension of both, on the same test images, and the ratios ours/SPFlow.

Pixels: ``--levels 2`` (default) binarizes MNIST at 128 (values 0/1); ``--levels 256`` keeps the
256 grey levels. Both libraries get the same integer symbols as categorical leaves. SPFlow's
categorical Chow-Liu learner counts all 256×256 joint bins of every one of the D(D-1)/2 pixel
pairs (about 8 s per 1,000 pairs on this 2-core CPU, so roughly 40 minutes for MNIST's 306,936
pairs), which is why the default is binarized MNIST. The defaults (K=32, 2,048 training and
2,000 test images, 2 epochs) keep a run to a few minutes: SPFlow's EM epoch over 10,000 binarized
images at K=32 took 198 s on this 2-core CPU (and its tree 115 s).

Schedule differences (SPFlow's EM has no step size, inertia or pseudocount option):

- SPFlow replaces every parameter, after every mini-batch, by that batch's maximum-likelihood
  estimate (step size 1; leaves clamped at 1e-10; sums unsmoothed). Ours is run twice from the
  same tree: ``ours_matched`` with step size 1.0 and pseudocount 0 (the same update rule), the
  run the epoch-time ratio is taken from, and ``ours_default`` with the library's own schedule
  (step size 0.2 -> 0.02 annealed over the mini-batch updates, pseudocount 0.1), for its bpd.
- Initialisation: SPFlow's ``init="uniform"`` (uniform sum weights, random leaves, its default);
  ours ``HCLT.from_data`` (random transitions, emissions near each pixel's histogram).
- Tree: SPFlow counts exact joint bins of all training images with pseudocount 1; ours bins to
  ``--num-bins`` levels (no-op for 2 levels) on at most ``--structure-samples`` images.
- Shuffling: both shuffle every epoch with seed ``--seed`` (different permutations); no
  full-batch epoch in either.

bpd: both are ``-sum(log p(x)) / (N * D * ln 2)`` over the same test images, from ours
``pc_prior.bits_per_dim`` and from SPFlow's ``log_likelihood`` (natural-log densities of shape
[N, 1, 1, 1]). The ``normalization_check`` proves both are normalized probabilities of the same
symbols: for each library an HCLT on the first few test-set pixel columns (levels**d <= 65,536
configurations) is trained for one epoch and its probabilities are summed over every
configuration (log of the sum: 0 for a normalized model). It runs first, so it also
warms both libraries up before anything is timed.

SPFlow is an optional bench dependency (``pip install -e .[bench]``); without it the bench prints
a JSON object saying so and exits 0. SPFlow builds and evaluates its circuit by recursion over the
tree, so the bench raises Python's recursion limit.

    python bench/bench_spflow.py [--data ../shared/data/mnist] [--num-latents 32] [--epochs 2]
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from pc_prior import HCLT, bits_per_dim, fit_em
from pc_prior.data import load_mnist

LN2 = math.log(2.0)


def _log(msg: str) -> None:
    print(f"[bench_spflow] {msg}", file=sys.stderr, flush=True)


def _symbols(x: torch.Tensor, levels: int) -> torch.Tensor:
    return (x >= 128).long() if levels == 2 else x.long()


def _ours(
    x_train: torch.Tensor, x_test: torch.Tensor, args: argparse.Namespace, levels: int
) -> dict:
    t0 = time.perf_counter()
    base = HCLT.from_data(
        x_train,
        levels,
        args.num_latents,
        num_bins=args.num_bins,
        max_samples=args.structure_samples,
        seed=args.seed,
    )
    tree_seconds = time.perf_counter() - t0
    out: dict = {"tree_seconds": tree_seconds}
    runs = {
        "ours_matched": (1.0, 0.0, base),
        "ours_default": ((0.2, 0.02), 0.1, copy.deepcopy(base)),  # same tree and start
    }
    for name, (step, pseudo, pc) in runs.items():
        stamps = [time.perf_counter()]
        hist = fit_em(
            pc,
            x_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            step_size=step,
            pseudocount=pseudo,
            full_batch_epochs=0,
            seed=args.seed,
            progress=False,
            callback=lambda epoch, rec: (
                stamps.append(time.perf_counter()),
                _log(f"{name} epoch {epoch + 1}: {stamps[-1] - stamps[-2]:.1f} s"),
            ),
        )
        epochs = [b - a for a, b in itertools.pairwise(stamps)]
        out[name] = {
            "step_size": list(step) if isinstance(step, tuple) else step,
            "pseudocount": pseudo,
            "epoch_seconds": epochs,
            "seconds_per_epoch": statistics.median(epochs),
            "train_bpd_last_epoch": hist[-1]["train_bpd"],
            "test_bpd": bits_per_dim(pc, x_test, args.batch_size),
        }
    return out


def _spflow_ll(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.log_likelihood(b).reshape(-1) for b in x.float().split(batch_size)])


def _spflow(
    x_train: torch.Tensor, x_test: torch.Tensor, args: argparse.Namespace, levels: int
) -> dict:
    from spflow.learn.expectation_maximization import expectation_maximization_batched
    from spflow.zoo.hclt import learn_hclt_categorical
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    model = learn_hclt_categorical(
        x_train.float(), num_hidden_cats=args.num_latents, num_cats=levels
    )
    tree_seconds = time.perf_counter() - t0
    _log(f"spflow tree: {tree_seconds:.1f} s")
    loader = DataLoader(
        x_train.float(),
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    epochs, train_ll = [], []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        hist = expectation_maximization_batched(model, loader, num_epochs=1)
        epochs.append(time.perf_counter() - t0)
        _log(f"spflow epoch {len(epochs)}: {epochs[-1]:.1f} s")
        train_ll.append(float(hist[-1]))
    d = x_test.shape[1]
    ll = _spflow_ll(model, x_test, args.batch_size)
    return {
        "tree_seconds": tree_seconds,
        "epoch_seconds": epochs,
        "seconds_per_epoch": statistics.median(epochs),
        "train_bpd_last_epoch": -train_ll[-1] / (d * LN2),
        "test_bpd": -float(ll.sum()) / (ll.numel() * d * LN2),
    }


def _normalization_check(x: torch.Tensor, levels: int, num_latents: int, batch_size: int) -> dict:
    """log of the total probability over all configurations of a few pixels, for both libraries."""
    from spflow.learn.expectation_maximization import expectation_maximization_batched
    from spflow.zoo.hclt import learn_hclt_categorical
    from torch.utils.data import DataLoader

    d = max(2, int(16 // math.log2(levels)))
    cols = torch.arange(392, 392 + d)  # middle row of the image: pixels that vary
    xs = x[:, cols]
    grid = torch.cartesian_prod(*[torch.arange(levels)] * d).reshape(-1, d)
    ours = HCLT.from_data(xs, levels, num_latents)
    fit_em(ours, xs, epochs=1, batch_size=batch_size, progress=False)
    with torch.no_grad():
        ours_lse = float(torch.logsumexp(ours.log_prob(grid), 0))
    sp = learn_hclt_categorical(xs.float(), num_hidden_cats=num_latents, num_cats=levels)
    expectation_maximization_batched(sp, DataLoader(xs.float(), batch_size=batch_size), 1)
    sp_lse = float(torch.logsumexp(_spflow_ll(sp, grid, 8192), 0))
    return {
        "pixels": d,
        "configurations": len(grid),
        "ours_log_total_probability": ours_lse,
        "spflow_log_total_probability": sp_lse,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="idx folder (default ../shared/data/mnist)")
    ap.add_argument("--levels", type=int, choices=(2, 256), default=2)
    ap.add_argument("--num-latents", type=int, default=32)
    ap.add_argument("--train-limit", type=int, default=2048)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--num-bins", type=int, default=16, help="ours: MI bins (no-op at 2 levels)")
    ap.add_argument("--structure-samples", type=int, default=10000, help="ours: MI images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    try:
        import spflow  # noqa: F401  (optional bench dependency)
    except ImportError:
        print(json.dumps({"skipped": "spflow is not installed (pip install -e '.[bench]')"}))
        return
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 50000))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # SPFlow's random leaf initialisation
    x_train = _symbols(load_mnist(args.data, "train", args.train_limit), args.levels)
    x_test = _symbols(load_mnist(args.data, "test", args.test_limit), args.levels)

    res: dict = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "spflow": importlib.metadata.version("spflow"),
        "levels": args.levels,
        "pixels": "binarized at 128" if args.levels == 2 else "256 grey levels",
        "num_latents": args.num_latents,
        "train_images": len(x_train),
        "test_images": len(x_test),
        "num_dims": x_train.shape[1],
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "schedule": (
            "mini-batch EM only; SPFlow: batch MLE after every batch (step 1, no pseudocount); "
            "ours_matched: step 1.0, pseudocount 0; ours_default: step 0.2->0.02, pseudocount 0.1"
        ),
    }
    # First, so that one-time costs (allocator, first calls) of both libraries fall outside the timings.
    res["normalization_check"] = _normalization_check(
        x_test, args.levels, args.num_latents, args.batch_size
    )
    res["ours"] = _ours(x_train, x_test, args, args.levels)
    res["spflow_hclt"] = _spflow(x_train, x_test, args, args.levels)
    sp, om, od = res["spflow_hclt"], res["ours"]["ours_matched"], res["ours"]["ours_default"]
    res["ratios_ours_over_spflow"] = {
        "seconds_per_epoch": om["seconds_per_epoch"] / sp["seconds_per_epoch"],
        "spflow_over_ours_epoch_speedup": sp["seconds_per_epoch"] / om["seconds_per_epoch"],
        "tree_seconds": res["ours"]["tree_seconds"] / sp["tree_seconds"],
        "test_bpd_matched": om["test_bpd"] / sp["test_bpd"],
        "test_bpd_default": od["test_bpd"] / sp["test_bpd"],
    }
    faster = sp["seconds_per_epoch"] >= 5 * om["seconds_per_epoch"]
    res["target_5x_faster_per_epoch"] = faster
    res["target_met_matched_schedule"] = faster and om["test_bpd"] <= sp["test_bpd"]
    res["target_met_default_schedule"] = faster and od["test_bpd"] <= sp["test_bpd"]
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
