"""Joint fine-tuning at real scale on the shared codecs: the arms, then Kodak (issue 31, item 4).

For one shared codec (``run CODEC``), with ``pc-prior``'s own commands and their defaults
(``settings.Finetune``: 600 steps of 8 crops of 256² on a CPU), training on bsds500/train and
validating on bsds500/test (never Kodak):

- (a) *frozen*: ``pc-prior prior fit BASE`` (the default PC priors on the frozen codec);
- (b) *frozen+*: ``pc-prior codec finetune BASE --own-entropy-models`` (the codec trained alone
  with its own entropy models, same crops, steps and learning rates), then ``prior fit`` on it;
- (c) *joint*: ``pc-prior codec finetune BASE --no-refit`` (codec and PC priors trained
  together, the priors as trained);
- (d) *joint, refit*: ``prior fit`` on (c)'s codec: its jointly trained priors replaced by a
  default fit, as (b) refits its codec. (d) against (b) compares the two codecs alone. It is
  what ``codec finetune BASE`` writes by default (its refit is this same fit, bit for bit); it stays
  a step here so that (c) and (d) share one training.

Each step is skipped when its output exists, and ``codec finetune`` resumes an interrupted run,
so the same command again goes on where a session stopped. Outputs and wall times go to
``RUNS/CODEC/`` (default ``~/runs/train_as_coded``). ``eval FAMILY`` then codes Kodak with every
arm of the family's qualities (``pc-prior eval``: real bytes, decode times) and compares them
(``pc-prior compare``: BD-rates), writing the small JSON files behind the docs' table to ``--out``.

``choose`` is how the learning rate was chosen (on validation data): the joint arm of
factorized q1 for ``--steps`` steps at each ``--lrs``, validated on 8 bsds500/test images every
100 steps, against the frozen default prior (step 0) on the same images.

    python experiments/train_as_coded.py choose --lrs 1e-4 1e-5 --steps 300 \\
        --out docs/results/train-as-coded/choose-lr-factorized-q1.json
    python experiments/train_as_coded.py run bmshj2018-factorized-q1
    python experiments/train_as_coded.py eval factorized --out docs/results/train-as-coded
    python experiments/train_as_coded.py table factorized   # the docs' Markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FAMILIES = {
    "factorized": [f"bmshj2018-factorized-q{q}" for q in (1, 2, 3, 4)],
    "hyperprior": [f"bmshj2018-hyperprior-q{q}" for q in (1, 2, 3)],
}
ARMS = {  # name in the results -> file in the codec's run folder
    "base": None,
    "frozen": "a-frozen.pt",
    "base-plus": "b-codec.pt",
    "frozen-plus": "b-frozen-plus.pt",
    "joint": "c-joint.pt",
    "joint-refit": "d-joint-refit.pt",
}

PAIRS = [("joint", "frozen-plus"), ("frozen-plus", "base"), ("joint", "base"), ("frozen", "base"),
         ("base-plus", "base"), ("joint-refit", "frozen-plus"), ("joint-refit", "joint"),
         ("joint-refit", "base")]  # fmt: skip  # (candidate, reference) of the BD-rates


def quality(codec: str) -> int:
    """The quality of a shared codec's name (``bmshj2018-factorized-q3`` -> 3)."""
    return int(codec.rsplit("q", 1)[1])


def select(family: str, qualities: list[int] | None) -> tuple[list[str], str]:
    """The family's codecs (only ``qualities`` when given) and the name of their results files
    (``FAMILY`` or ``FAMILY-qNqM...``)."""
    codecs = FAMILIES[family]
    if not qualities:
        return codecs, family
    chosen = [c for c in codecs if quality(c) in qualities]
    return chosen, f"{family}-" + "".join(f"q{q}" for q in sorted(qualities))


def sh(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (output appended to ``log``); its wall time in seconds."""
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    with log.open("a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t


STEPS = tuple(f for f in ARMS.values() if f)  # run's steps, in order: one file each
FITTED_ON = {"b-frozen-plus.pt": "b-codec.pt", "d-joint-refit.pt": "c-joint.pt"}  # refit -> codec


def run(codec: str, runs: Path, extra: list[str], until: str = STEPS[-1]) -> None:
    """The arms of one codec (each step skipped when done), up to the step ``until``: a
    session too short for all of them stops between steps, where no step's time is lost."""
    base = SHARED / "models" / f"{codec}.pt"
    train, val = SHARED / "data" / "bsds500" / "train", SHARED / "data" / "bsds500" / "test"
    out = runs / codec
    out.mkdir(parents=True, exist_ok=True)
    times_path = out / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    fit = ["--conditional"] if "hyperprior" in codec else []
    finetune = ["codec", "finetune", str(base), "--data", str(train), "--val", str(val)]
    finetune += ["--device", "cpu", *extra]
    steps = {"a-frozen.pt": ["prior", "fit", str(base), "--data", str(train), *fit],
             "b-codec.pt": [*finetune, "--own-entropy-models"],
             "c-joint.pt": [*finetune, "--no-refit"]}  # fmt: skip
    for refit, codec_file in FITTED_ON.items():
        steps[refit] = ["prior", "fit", str(out / codec_file), "--data", str(train), *fit]
    for name in STEPS[: STEPS.index(until) + 1]:
        args = steps[name]
        if (out / name).exists():
            print(f"{out / name}: done", flush=True)
            continue
        cmd = [sys.executable, "-m", "pc_prior.cli", *args, "-o", str(out / name)]
        seconds = sh(cmd, out / f"{Path(name).stem}.log")
        times[name] = times.get(name, 0.0) + seconds  # a resumed run adds its part
        times_path.write_text(json.dumps(times, indent=1))


def evaluate(
    family: str,
    runs: Path,
    out: Path,
    limit: int | None,
    qualities: list[int] | None,
    data: Path = SHARED / "data" / "kodak",
    arms: list[str] | None = None,
) -> None:
    """Results on ``data`` (Kodak) of every arm (or ``arms``) over the family's qualities
    (``qualities``: only those, files named ``FAMILY-qN-...``), and the BD-rates (or, for one
    quality, the savings) between them."""
    out.mkdir(parents=True, exist_ok=True)
    codecs, family = select(family, qualities)
    for arm, file in ARMS.items():
        if arms and arm not in arms:
            continue
        models = [
            str(SHARED / "models" / f"{c}.pt") if file is None else str(runs / c / file)
            for c in codecs
        ]
        missing = [m for m in models if not Path(m).exists()]
        if missing:
            print(f"{family} {arm}: missing {', '.join(missing)}; run them first", flush=True)
            continue
        target = out / f"{family}-{arm}.json"
        cmd = [sys.executable, "-m", "pc_prior.cli", "eval", *models, "--data", str(data),
               "--name", f"{family} {arm}", "-o", str(target), "--no-progress"]  # fmt: skip
        if limit:
            cmd += ["--limit", str(limit)]
        sh(cmd, out / f"{family}-eval.log")
    for cand, ref in PAIRS:
        a, b = out / f"{family}-{ref}.json", out / f"{family}-{cand}.json"
        if a.exists() and b.exists():
            target = out / f"{family}-{cand}-vs-{ref}.json"
            cmd = [sys.executable, "-m", "pc_prior.cli", "compare", str(a), str(b), "-o", str(target),
                   "--no-plot"]  # fmt: skip
            sh(cmd, out / f"{family}-eval.log")
    for codec in codecs:  # the fine-tuning wall times, and the pauses they include
        for name in ("times", "paused"):
            t = runs / codec / f"{name}.json"
            if t.exists():
                (out / f"{codec}-{name}.json").write_text(t.read_text())


def wall_times(out: Path, codec: str) -> dict[str, float]:
    """Seconds of each run step of ``codec`` (``eval``'s copies), less the pauses recorded."""
    t = out / f"{codec}-times.json"
    times = json.loads(t.read_text()) if t.exists() else {}
    p = out / f"{codec}-paused.json"
    paused = json.loads(p.read_text()) if p.exists() else {}
    return {k: v - paused.get(k, 0) for k, v in times.items()}


def table(family: str, out: Path, qualities: list[int] | None) -> str:
    """The docs' Markdown table of ``eval``'s files: every arm at every quality (bpp, PSNR, RD
    loss λ·255²·MSE + bpp from the per-image MSE with the zoo's λ, decode time, fine-tuning wall
    time), then the BD-rates."""
    from pc_prior.train.codec import lambda_for_quality

    codecs, family = select(family, qualities)
    names = {"base": "base codec", "frozen": "(a) frozen", "base-plus": "base+ (own entropy models)",
             "frozen-plus": "(b) frozen+", "joint": "(c) joint", "joint-refit": "(d) joint, refit"}  # fmt: skip
    lines = ["| codec | arm | bpp | PSNR (dB) | RD loss | decode (s) | wall time (s) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, codec in enumerate(codecs):
        lmbda = lambda_for_quality(quality(codec))
        times = wall_times(out, codec)
        for arm in ARMS:
            f = out / f"{family}-{arm}.json"
            if not f.exists():
                continue
            d = json.loads(f.read_text())
            bpp = d["results"]["bpp"][i]
            psnr = d["results"]["psnr-rgb"][i]
            per = d["per_image"][d["results"]["model"][i]]
            loss = sum(lmbda * 255**2 * 10 ** (-r["psnr-rgb"] / 10) + r["bpp"] for r in per) / len(
                per
            )
            decode = d["results"]["decoding_time"][i]
            file = ARMS[arm]
            steps = [FITTED_ON[file], file] if file in FITTED_ON else [file] if file else []
            wall = " + ".join(f"{times[s]:,.0f}" for s in steps if s in times)
            lines.append(f"| {codec.removeprefix('bmshj2018-')} | {names[arm]} | {bpp:.4f} | "
                         f"{psnr:.3f} | {loss:.4f} | {decode:.3f} | {wall or '—'} |")  # fmt: skip
    lines += ["", "| BD-rate (PSNR / MS-SSIM) | value |", "|---|---|"]
    for cand, ref in PAIRS:
        f = out / f"{family}-{cand}-vs-{ref}.json"
        if not f.exists():
            continue
        d = json.loads(f.read_text())
        vals = [d[k] for k in ("bd_rate_psnr", "bd_rate_ms_ssim")]
        text = " / ".join("undefined" if v is None else f"{v:+.2f}%" for v in vals)
        lines.append(f"| {names[cand]} vs {names[ref]} | {text} |")
    return "\n".join(lines)


def frozen_validation(codec: Path, train: Path, val: Path, images: int) -> dict[str, float]:
    """The validation metrics of ``codec finetune``'s step 0: RDModule's initial (frozen default)
    fit on the same seeded crops, validated on the first ``images`` images of ``val``."""
    import pytorch_lightning as pl

    from pc_prior.settings import Finetune
    from pc_prior.train import ImageFolderDataModule, RDModule

    s = Finetune()
    pl.seed_everything(s.seed)
    dm = ImageFolderDataModule(str(train), str(val), s.patch_size, batch_size=s.batch_size,
                               num_workers=0, val_limit=images, pin_memory=False)  # fmt: skip
    dm.setup("fit")
    module = RDModule(codec=str(codec), coded_val_batches=images, export_path="")
    module.fit_prior(module.prior_batches(dm.train_set))  # the run's initial fit
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    return dict(trainer.validate(module, datamodule=dm, verbose=False)[0])


def choose(lrs: list[float], steps: int, runs: Path, out: Path) -> None:
    """The joint arm of factorized q1 at each learning rate, validated; JSON to ``out``."""
    import csv

    codec = SHARED / "models" / "bmshj2018-factorized-q1.pt"
    train, val = SHARED / "data" / "bsds500" / "train", SHARED / "data" / "bsds500" / "test"
    folder = runs / "choose"
    folder.mkdir(parents=True, exist_ok=True)
    res: dict = {"steps": steps, "val_images": 8, "frozen": frozen_validation(codec, train, val, 8)}
    for lr in lrs:
        target = folder / f"fq1-joint-lr{lr:g}.pt"
        if not target.exists():
            cmd = [sys.executable, "-m", "pc_prior.cli", "codec", "finetune", str(codec),
                   "--data", str(train), "--val", str(val), "--device", "cpu", "-o", str(target),
                   "--steps", str(steps), "--lr", str(lr), "--checkpoints", str(steps // 100)]  # fmt: skip
            sh(cmd, folder / f"fq1-joint-lr{lr:g}.log")
        rows = []
        for metrics in sorted(target.with_suffix(".run").glob("csv/version_*/metrics.csv")):
            with metrics.open() as f:
                rows += [r for r in csv.DictReader(f) if r.get("val_loss")]
        res[f"joint lr {lr:g}"] = [
            {k: float(v) for k, v in r.items() if k.startswith("val_") or k == "step"} for r in rows
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="the arms of one shared codec")
    r.add_argument("codec", choices=[c for cs in FAMILIES.values() for c in cs])
    r.add_argument("--runs", type=Path, default=Path.home() / "runs" / "train_as_coded")
    r.add_argument("--until", choices=STEPS, default=STEPS[-1], help="stop after this step")
    r.add_argument("--finetune-args", default="", metavar="ARGS",
                   help="more codec finetune options, one string: --finetune-args='--steps 300'")  # fmt: skip
    e = sub.add_parser("eval", help="Kodak results and BD-rates of a family's arms")
    e.add_argument("family", choices=sorted(FAMILIES))
    e.add_argument("--runs", type=Path, default=Path.home() / "runs" / "train_as_coded")
    e.add_argument("--out", type=Path, default=Path("docs/results/train-as-coded"))
    e.add_argument("--limit", type=int, help="only the first N images (a quick look)")
    e.add_argument(
        "--data",
        type=Path,
        default=SHARED / "data" / "kodak",
        help="the images (default Kodak, the test set; bsds500/test to validate)",
    )
    e.add_argument("--arms", nargs="+", choices=list(ARMS), help="only these arms")  # fmt: skip
    e.add_argument("--qualities", type=int, nargs="+", help="only these qualities (done so far)")
    t = sub.add_parser("table", help="the docs' Markdown table of eval's files")
    t.add_argument("family", choices=sorted(FAMILIES))
    t.add_argument("--out", type=Path, default=Path("docs/results/train-as-coded"))
    t.add_argument("--qualities", type=int, nargs="+", help="only these qualities (done so far)")
    c = sub.add_parser("choose", help="the learning rate, chosen on bsds500/test")
    c.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 1e-5])
    c.add_argument("--steps", type=int, default=300)
    c.add_argument("--runs", type=Path, default=Path.home() / "runs" / "train_as_coded")
    c.add_argument("--out", type=Path, default=Path("docs/results/train-as-coded/choose-lr.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    if args.what == "choose":
        choose(args.lrs, args.steps, args.runs, args.out)
    elif args.what == "table":
        print(table(args.family, args.out, args.qualities))
    elif args.what == "run":
        run(args.codec, args.runs, shlex.split(args.finetune_args), args.until)
    else:
        evaluate(args.family, args.runs, args.out, args.limit, args.qualities, args.data, args.arms)


if __name__ == "__main__":
    main()
