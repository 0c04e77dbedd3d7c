"""Joint fine-tuning (``RDModule``) against a frozen-codec PC prior, on a small codec trained here.

For each quality:

1. ``base``: a ``FactorizedPrior(N, M)`` trained from scratch (``CodecModule``, λ of the zoo
   quality) for ``--steps`` steps of random crops;
2. ``frozen``: ``base`` with a PC prior fit on the frozen codec (``fit_prior``'s defaults, as
   ``pc-prior prior fit``);
3. ``joint``: ``RDModule`` from ``base`` (PC prior with logistic leaves, fit first, then codec
   and prior trained together on the RD loss) for ``--extra-steps`` more steps;
4. ``frozen+``: the equal-compute control: ``base`` trained alone (``CodecModule``) for the same
   ``--extra-steps`` more steps, then a frozen PC prior fit as in 2.

``joint`` against ``frozen`` is the question the issue asks; against ``frozen+`` it shows how much
of the gain is joint training rather than more training. Everything is coded for real on
``--eval`` (``pc_prior.eval.rd.evaluate_model``: bpp from the bytes, PSNR on the decoded image).
Writes CompressAI-format JSONs per variant under ``--out`` (for ``pc-prior compare``) and prints
BD-rates. The codec and circuit learning rates are the same in the two continued runs.

    OMP_NUM_THREADS=1 python experiments/bench_joint_vs_frozen.py --qualities 2 --out runs/joint/q2
    OMP_NUM_THREADS=1 python experiments/bench_joint_vs_frozen.py --qualities 4 --out runs/joint/q4
    python experiments/bench_joint_vs_frozen.py --report runs/joint/q2 runs/joint/q4
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

VARIANTS = ("base", "frozen", "joint", "frozen+")


def _trainer(steps: int, out: Path, name: str) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=pl.loggers.CSVLogger(out, name=name),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,  # the CSV logs hold the losses
        log_every_n_steps=25,
    )


def _evaluate(net, images, name: str, out: Path, quality: int) -> dict:
    from pc_prior.eval.rd import evaluate_model

    net = net.eval()
    net.update(force=True)
    res = evaluate_model(net, images, progress=False)
    row = {"variant": name, "quality": quality, **res["mean"]}
    row["exact"] = all(r["decoded_equals_forward"] for r in res["images"])
    (out / f"{name}.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row), flush=True)
    return row


def run_quality(args: argparse.Namespace, q: int) -> None:
    from pc_prior.images import list_images
    from pc_prior.integrations import fit_prior
    from pc_prior.train import CodecModule, ImageFolderDataModule, RDModule

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = list_images(args.eval)[: args.eval_limit]
    dm = ImageFolderDataModule(
        args.train,
        None,
        patch_size=args.patch,
        batch_size=args.batch,
        num_workers=0,
        pin_memory=False,
    )
    times: dict[str, float] = {}
    pl.seed_everything(args.seed)
    kw = {"N": args.N, "M": args.M}
    base = CodecModule(
        arch="FactorizedPrior", quality=q, net_kwargs=kw, lr_decay_at=None, export_path=""
    )
    t = time.perf_counter()
    _trainer(args.steps, out, "base").fit(base, dm)
    times["base"] = time.perf_counter() - t
    base_path = base.export(out / "base.pt")
    rows = [_evaluate(copy.deepcopy(base.net), images, "base", out, q)]

    def frozen(net, name: str) -> None:
        t = time.perf_counter()
        fit_prior(net, args.train, progress=False)
        times[name] = time.perf_counter() - t
        rows.append(_evaluate(net, images, name, out, q))

    frozen(copy.deepcopy(base.net), "frozen")
    # the equal-compute control: the codec alone, the same further steps and codec LR
    more = CodecModule(
        arch="FactorizedPrior",
        quality=q,
        net_kwargs=kw,
        lr=args.lr,
        lr_decay_at=None,
        export_path="",
    )
    more.net = copy.deepcopy(base.net)
    pl.seed_everything(args.seed + 1)
    t = time.perf_counter()
    _trainer(args.extra_steps, out, "more").fit(more, dm)
    times["more"] = time.perf_counter() - t
    frozen(copy.deepcopy(more.net), "frozen+")
    pl.seed_everything(args.seed + 1)
    joint = RDModule(
        codec=str(base_path),
        lr=args.lr,
        prior_lr=args.prior_lr,
        lr_decay_at=None,
        coded_val_batches=0,
        export_path=str(out / "joint.pt"),
        plain_export_path="",
    )
    t = time.perf_counter()
    _trainer(args.extra_steps, out, "joint").fit(joint, dm)
    times["joint"] = time.perf_counter() - t
    rows.append(_evaluate(joint.net, images, "joint", out, q))
    (out / "summary.json").write_text(
        json.dumps({"quality": q, "args": vars(args), "seconds": times, "rows": rows}, indent=1)
    )


def report(folders: list[str]) -> None:
    """Per-quality table and BD-rates of joint against frozen and frozen+ (PSNR-RGB)."""
    from pc_prior.eval.compare import bd_rate
    from pc_prior.train import lambda_for_quality

    summaries = [json.loads((Path(f) / "summary.json").read_text()) for f in folders]
    summaries.sort(key=lambda s: s["quality"])
    curves: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    print(f"{'q':>2} " + " ".join(f"{v + ' bpp/dB':>18}" for v in VARIANTS))
    for s in summaries:
        by = {r["variant"]: r for r in s["rows"]}
        cells = []
        for v in VARIANTS:
            r = by[v]
            curves[v].append((r["bpp"], r["psnr-rgb"]))
            cells.append(f"{r['bpp']:.4f}/{r['psnr-rgb']:.2f}".rjust(18))
        print(f"{s['quality']:>2} " + " ".join(cells))
        print("   seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in s["seconds"].items()))
    # the objective every variant was trained for, on Kodak: λ·255²·MSE + bpp (MSE from the
    # PSNR of the decoded images, which is the mean of per-image PSNRs: an approximation)
    print("RD loss on the evaluation images, λ·255²·MSE + bpp (lower is better):")
    for s in summaries:
        lmbda = lambda_for_quality(s["quality"])
        by = {r["variant"]: r for r in s["rows"]}
        loss = {
            v: lmbda * 255**2 * 10 ** (-by[v]["psnr-rgb"] / 10) + by[v]["bpp"] for v in VARIANTS
        }
        print(f"  q{s['quality']}: " + ", ".join(f"{v} {loss[v]:.4f}" for v in VARIANTS))
    for ref in ("frozen", "frozen+"):
        a, b = curves[ref], curves["joint"]
        bd = bd_rate([p[0] for p in a], [p[1] for p in a], [p[0] for p in b], [p[1] for p in b])
        note = " (undefined: a curve's PSNR does not rise with its rate)" if bd != bd else ""
        print(f"BD-rate joint vs {ref}: {bd:+.2f}%{note}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qualities", type=int, nargs="+", default=[2])
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--M", type=int, default=96)
    ap.add_argument("--steps", type=int, default=1500, help="codec steps from scratch")
    ap.add_argument("--extra-steps", type=int, default=750, help="joint / control steps")
    ap.add_argument("--lr", type=float, default=1e-4, help="codec LR of both continued runs")
    ap.add_argument("--prior-lr", type=float, default=1e-3, help="circuit LR of the joint run")
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--train", default="../shared/data/bsds500")
    ap.add_argument("--eval", default="../shared/data/kodak")
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/joint")
    ap.add_argument("--report", nargs="+", default=None, help="only print the table of these runs")
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return
    torch.set_num_threads(1)
    for q in args.qualities:  # several qualities: one subfolder each
        out = args.out if len(args.qualities) == 1 else f"{args.out}/q{q}"
        run_quality(argparse.Namespace(**{**vars(args), "out": out}), q)


if __name__ == "__main__":
    main()
