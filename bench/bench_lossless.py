"""Lossless HCLT benchmark on an idx-format dataset (MNIST by default), printed as one JSON object.

Reports, from one run on one machine:
- bits per dimension on the test set, theoretical (model NLL) and coded (real bytes), round trip checked;
- encode and decode seconds and images per second (median over --repeats runs), at each
  --threads count (torch intra-op threads; the top-level figures are the first count's);
- seconds per training epoch of mini-batch EM, and bpd after it, for a fresh HCLT of the same size;
- the incremental coding scheme against the naive one (one full inside/outside pass per variable),
  both computing p(x_i | x_<i) for --naive-images images, as a speed ratio;
- when CUDA and pyjuice are both present: the same HCLT size trained with pyjuice on the same data
  and device, with ours/pyjuice ratios for epoch time and bpd (otherwise the reason it was skipped).

    python bench/bench_lossless.py --model runs/lossless/mnist_k32.pt [--data ../shared/data/mnist]
    python bench/bench_lossless.py --model M --threads 1 2 --coding-only   # coding throughput only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import torch

from pc_prior import HCLT, decode, encode, fit_em, load
from pc_prior.coding import incremental_conditionals, naive_conditionals
from pc_prior.data import load_mnist
from pc_prior.fitting import bits_per_dim


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def pyjuice_hclt(
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    num_latents: int,
    batch_size: int,
    device: str,
    *,
    structure_images: int = 20000,
    seconds: float | None = None,
    step_size: float = 0.1,
    pseudocount: float = 0.1,
) -> dict:
    """pyjuice's HCLT of the same size on the same data: one epoch of mini-batch EM (or, with
    ``seconds``, as many batches as fit in that wall time), then test bpd.

    The tree is learned from the first ``structure_images`` training images. One untimed forward
    and backward pass (kernel compilation) precedes the timed EM. Returns
    ``structure_seconds``, ``warmup_seconds``, ``epoch_seconds`` (or ``train_seconds``), ``batches``, ``bpd`` (and
    ``bpd_after_one_epoch`` for an epoch), or ``{"skipped": reason}`` when there is no CUDA, pyjuice
    is missing or its run fails (an API mismatch is reported, not hidden).
    """
    if not torch.cuda.is_available() or not str(device).startswith("cuda"):
        return {"skipped": "no CUDA device (pyjuice needs one)"}
    if importlib.util.find_spec("pyjuice") is None:
        return {"skipped": "pyjuice is not installed"}
    try:
        import pyjuice as juice
    except Exception as e:
        return {"skipped": f"import pyjuice failed: {type(e).__name__}: {e}"}
    try:
        t0 = time.perf_counter()
        root = juice.structures.HCLT(
            x_train[:structure_images].float().to(device),
            num_bins=32,
            sigma=0.5 / 32,
            num_latents=num_latents,
            chunk_size=32,
        )
        pc = juice.compile(root).to(device)
        torch.cuda.synchronize()
        out: dict = {"structure_seconds": time.perf_counter() - t0}
        xs = x_train.to(device)
        t0 = time.perf_counter()  # warm-up, untimed below: Triton compiles its kernels here
        pc.init_param_flows(flows_memory=0.0)
        pc(xs[:batch_size]).mean().backward()
        pc.init_param_flows(flows_memory=0.0)
        torch.cuda.synchronize()
        out["warmup_seconds"] = time.perf_counter() - t0
        g = torch.Generator().manual_seed(0)
        batches = 0
        t0 = time.perf_counter()
        done = False
        while not done:
            order = torch.randperm(len(xs), generator=g).to(device)
            for idx in order.split(batch_size):
                pc.init_param_flows(flows_memory=0.0)
                lls = pc(xs[idx])
                lls.mean().backward()
                pc.mini_batch_em(step_size=step_size, pseudocount=pseudocount)
                batches += 1
                if seconds is not None:
                    torch.cuda.synchronize()
                    if time.perf_counter() - t0 >= seconds:
                        done = True
                        break
            done = done or seconds is None
        torch.cuda.synchronize()
        out["train_seconds" if seconds is not None else "epoch_seconds"] = time.perf_counter() - t0
        out["batches"] = batches
        with torch.no_grad():
            ll = sum(float(pc(b.to(device)).sum()) for b in x_test.split(batch_size))
        out["bpd"] = -ll / (x_test.numel() * 0.6931471805599453)
        if seconds is None:
            out["bpd_after_one_epoch"] = out["bpd"]
        return out
    except Exception as e:  # report, don't hide, an API mismatch
        return {"skipped": f"pyjuice run failed: {type(e).__name__}: {e}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="checkpoint from 'pc-prior lossless fit'")
    ap.add_argument("--data", default=None, help="idx folder (default ../shared/data/mnist)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=int, default=None, help="test images to code (default: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-images", type=int, default=20)
    ap.add_argument(
        "--epoch-images",
        type=int,
        default=None,
        help="training images for the epoch timing (default: all)",
    )
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch thread counts to time encode/decode at (default: the current count)",
    )
    ap.add_argument(
        "--coding-only",
        action="store_true",
        help="only bpd and coding times: skip the conditionals, the training epoch and pyjuice",
    )
    args = ap.parse_args()

    pc = load(args.model, map_location=args.device)
    x_test = load_mnist(args.data, "test", args.limit)
    x_train = load_mnist(args.data, "train", args.epoch_images)
    n, d = x_test.shape
    res: dict = {
        "model": args.model,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "num_images": n,
        "num_dims": d,
        "num_latents": pc.num_latents,
    }

    res["bpd_theoretical"] = bits_per_dim(pc, x_test)
    threads = args.threads or [torch.get_num_threads()]
    default_threads = torch.get_num_threads()
    by_threads: dict = {}
    first: bytes | None = None
    for t in threads:
        torch.set_num_threads(t)
        t_enc, data = _median_time(lambda: encode(pc, x_test), args.repeats)
        t_dec, y = _median_time(lambda s=data: decode(pc, s), args.repeats)
        if not torch.equal(y, x_test):
            raise SystemExit(f"round trip failed at {t} threads")
        if first is not None and data != first:
            raise SystemExit(f"the stream at {t} threads differs from the one at {threads[0]}")
        first = data
        by_threads[str(t)] = {
            "encode_seconds": t_enc,
            "decode_seconds": t_dec,
            "encode_images_per_second": n / t_enc,
            "decode_images_per_second": n / t_dec,
        }
    torch.set_num_threads(default_threads)
    assert first is not None
    res |= {
        "bpd_coded": len(first) * 8 / (n * d),
        "coded_bytes": len(first),
        "round_trip_exact": True,
        "threads": threads[0],
    } | by_threads[str(threads[0])]
    res["coding_by_threads"] = by_threads
    if args.coding_only:
        print(json.dumps(res, indent=1))
        return

    xs = x_test[: args.naive_images]
    t_inc, (order, _) = _median_time(lambda: incremental_conditionals(pc, xs), args.repeats)
    t_naive, _ = _median_time(lambda: naive_conditionals(pc, xs, order), 1)
    res["conditionals"] = {
        "images": len(xs),
        "incremental_seconds": t_inc,
        "naive_seconds": t_naive,
        "naive_over_incremental": t_naive / t_inc,
    }

    # A fresh HCLT of the same size, one epoch of mini-batch EM: epoch time and bpd after it,
    # the numbers compared with pyjuice's below.
    trainee = HCLT.from_data(x_train, pc.num_cats, pc.num_latents, max_samples=10000).to(
        args.device
    )
    t0 = time.perf_counter()
    fit_em(trainee, x_train, epochs=1, batch_size=args.batch_size, step_size=0.1, progress=False)
    res["train_seconds_per_epoch"] = time.perf_counter() - t0
    res["train_images_per_epoch"] = len(x_train)
    res["fresh_bpd_after_one_epoch"] = bits_per_dim(trainee, x_test)

    pj = pyjuice_hclt(
        x_train,
        x_test,
        pc.num_latents,
        args.batch_size,
        args.device if args.device != "cpu" else "cuda",
        structure_images=10000,
    )
    if "epoch_seconds" in pj:
        pj["ours_over_pyjuice_epoch_time"] = res["train_seconds_per_epoch"] / pj["epoch_seconds"]
        pj["ours_over_pyjuice_bpd_after_one_epoch"] = (
            res["fresh_bpd_after_one_epoch"] / pj["bpd_after_one_epoch"]
        )
    res["pyjuice"] = pj
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
