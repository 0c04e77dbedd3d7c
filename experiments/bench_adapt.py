"""Adapting a fitted PC prior to a new domain (``pc-prior prior adapt``, formerly ``pc-prior prior fit --init``), measured on images
the prior was not fit on.

Variants, each coded for real on the evaluation images (``pc_prior.eval.rd.evaluate_model``: bpp
from the bytes of ``compress()``):

- ``prior``: the given PC codec as it is (e.g. fit on BSDS500);
- ``scratch``: a new prior fit on the adaptation images alone, with ``pc-prior prior fit``'s
  defaults (``fit_prior``);
- ``warm:E:F:S0:S1``: the given prior continued on the adaptation images (``adapt_prior``) with E
  mini-batch EM epochs, F full-batch epochs and the step size annealed S0 -> S1;
  ``warm`` alone: with the defaults, as ``pc-prior prior adapt`` runs it.

Where the images come from:

- default: the ten scikit-image photos of ``pc-prior demo`` (``TRAIN_PHOTOS`` and
  ``TEST_PHOTOS``), each cut in two: the left halves adapt, the right halves evaluate. A domain
  that is neither BSDS500 nor Kodak, the same on both sides: use it to *choose* a schedule;
- ``--split DIR``: the first half of DIR's images (sorted by name) adapts, the second half
  evaluates (the README's Kodak table: a report, not a choice);
- ``--adapt DIR --eval DIR``: two folders.

    OMP_NUM_THREADS=1 python experiments/bench_adapt.py --prior runs/init/bsds-q2.pt \\
        --variants prior scratch warm warm:2:0:0.1:0.02 --out runs/init/choose.json
    OMP_NUM_THREADS=1 python experiments/bench_adapt.py --prior runs/init/bsds-q2.pt \\
        --split ../shared/data/kodak --variants prior scratch warm --out runs/init/kodak.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from pc_prior.eval.demo import TEST_PHOTOS, TRAIN_PHOTOS, write_photos
from pc_prior.eval.rd import evaluate_model
from pc_prior.images import list_images
from pc_prior.integrations import adapt_prior, fit_prior, load_codec
from pc_prior.settings import BottleneckFit


def _halves(photos: list[Path], tmp: Path) -> tuple[list[Path], list[Path]]:
    """Each photo's left and right halves as PNGs: (lefts, rights)."""
    from PIL import Image

    sides: dict[str, list[Path]] = {"left": [], "right": []}
    for p in photos:
        with Image.open(p) as im:
            w, h = im.size
            for side, box in (("left", (0, 0, w // 2, h)), ("right", (w // 2, 0, w, h))):
                (tmp / side).mkdir(exist_ok=True)
                out = tmp / side / p.name
                im.crop(box).save(out)
                sides[side].append(out)
    return sides["left"], sides["right"]


def _fit_kwargs(variant: str) -> dict:
    """fit_prior keyword arguments of a ``warm[:E:F:S0:S1]`` variant."""
    parts = variant.split(":")
    if len(parts) == 1:
        return {}
    e, f, s0, s1 = parts[1:]
    return {"epochs": int(e), "full_batch_epochs": int(f), "step_size": (float(s0), float(s1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", required=True, help="a PC codec file (pc-prior prior fit output)")
    ap.add_argument("--split", default=None, help="folder: first half adapts, second evaluates")
    ap.add_argument("--adapt", default=None, help="adaptation images (with --eval)")
    ap.add_argument("--eval", default=None, help="evaluation images (with --adapt)")
    ap.add_argument("--variants", nargs="+", default=["prior", "scratch", "warm"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_adapt_"))
    if args.split:
        files = list_images(args.split)
        half = len(files) // 2
        adapt, evaluate, source = files[:half], files[half:], f"split of {args.split}"
    elif args.adapt and args.eval:
        adapt, evaluate = list_images(args.adapt), list_images(args.eval)
        source = f"{args.adapt} -> {args.eval}"
    else:
        adapt, evaluate = _halves(write_photos(TRAIN_PHOTOS + TEST_PHOTOS, tmp / "photos"), tmp)
        source = "scikit-image photos (left halves -> right halves)"
    adapt_dir = tmp / "adapt-links"
    adapt_dir.mkdir(exist_ok=True)
    for p in adapt:  # fit_prior reads a folder (or tensors); links keep the files as they are
        link = adapt_dir / Path(p).name
        if not link.exists():
            link.symlink_to(Path(p).resolve())
    rows = []
    for variant in args.variants:
        net = load_codec(args.prior).eval()
        t0 = time.perf_counter()
        if variant == "scratch":
            fit_prior(net, adapt_dir, progress=False)
        elif variant.startswith("warm"):
            adapt_prior(net, adapt_dir, progress=False, **_fit_kwargs(variant))
        elif variant != "prior":
            raise SystemExit(f"unknown variant {variant!r}")
        fit_s = time.perf_counter() - t0
        net.update(force=True)
        res = evaluate_model(net, evaluate, progress=False)
        exact = all(r["decoded_equals_forward"] for r in res["images"])
        rows.append(
            {"variant": variant, "bpp": res["mean"]["bpp"], "fit_seconds": fit_s, "exact": exact}
        )
        print(json.dumps(rows[-1]), flush=True)
    base = next((r["bpp"] for r in rows if r["variant"] == "prior"), None)
    print(f"\n{source}: {len(adapt)} images adapt, {len(evaluate)} evaluate")
    print(f"{'variant':<24} {'bpp':>8} {'vs prior':>9} {'fit s':>7}")
    for r in rows:
        rel = "" if base is None else f"{100 * (r['bpp'] / base - 1):+.2f}%"
        print(f"{r['variant']:<24} {r['bpp']:8.4f} {rel:>9} {r['fit_seconds']:7.1f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "source": source,
            "prior": args.prior,
            "adapt": [str(p) for p in adapt],
            "eval": [str(p) for p in evaluate],
            "defaults": {
                k: getattr(BottleneckFit, k) for k in ("epochs", "full_batch_epochs", "step_size")
            },
            "rows": rows,
        }
        Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
