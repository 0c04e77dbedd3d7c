"""``pc-prior eval``, ``pc-prior compare`` and ``pc-prior demo``.

The parsers follow ``pc_prior.cli``'s grammar (``MODEL``, ``--codec``, ``--data``, ``-o``,
``--limit``) and import no codec library; the command functions import what they use.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli import add_argument, set_command
from ..errors import InputError
from ..settings import BD_MIN_POINTS, DEMO_BOTTLENECK, add_arguments

if TYPE_CHECKING:
    from ..integrations.codec_file import ResolvedCodec

DEMO_OPTIONS = ("num_latents", "structure", "epochs", "max_items")  # run_demo's fit options


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``eval``, ``compare`` and ``demo``."""
    p = sub.add_parser(
        "eval",
        help="rate-distortion of codecs on an image folder (real bitstreams), CompressAI JSON",
        description="Compress and decompress every image of --data with each MODEL; write means "
        "and per-image rows as CompressAI results JSON: one RD curve, so all MODELs must share "
        "one architecture and entropy model (run eval once per curve). Undefined values (MS-SSIM "
        "below 161 px) are null, with the reason under 'undefined'.",
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="a codec file (shared/models format, CompressAI checkpoint or state dict with --arch, "
        "pc-prior codec, e.g. from 'pc-prior prior fit') or a zoo name with quality, e.g. "
        "bmshj2018-factorized:q2 (needs network)",
    )
    p.add_argument("--data", required=True, help="folder of images (searched recursively)")
    p.add_argument(
        "--arch",
        default=None,
        help="architecture of plain state-dict checkpoints (zoo name); files naming theirs keep it",
    )
    p.add_argument(
        "--metric", default="mse", choices=["mse", "ms-ssim"], help="zoo weights' training metric"
    )
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument(
        "-o", "--output", default=None, help="write the results JSON here (default: print only)"
    )
    p.add_argument(
        "--name",
        default=None,
        help="curve name in the JSON (default: the architecture, '+ PC prior' for PC codecs)",
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument(
        "--entropy-coder",
        default=None,
        help="CompressAI entropy coder (default: CompressAI's default)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    set_command(p, _eval)

    c = sub.add_parser(
        "compare",
        help="rate savings per quality, BD-rates and an RD plot of two eval JSON files",
        description="Compare two results files of 'pc-prior eval' (or CompressAI's format): rate "
        f"savings per quality and BD-rates, with the number of points per curve (a BD-rate from "
        f"fewer than {BD_MIN_POINTS} is reported with a warning). Files that record different "
        "image sets are refused unless --allow-different-images.",
    )
    c.add_argument("baseline", help="baseline results JSON (CompressAI format)")
    c.add_argument("candidate", help="candidate results JSON")
    add_argument(
        c,
        "-o",
        "--output",
        old=("--json",),
        default=None,
        help="also write the comparison JSON here",
    )
    c.add_argument(
        "--plot",
        default=None,
        help="RD plot PNG (default: <candidate>-vs-<baseline>.png beside candidate)",
    )
    c.add_argument("--no-plot", action="store_true")
    c.add_argument(
        "--method",
        default="akima",
        choices=["akima", "pchip", "cubic"],
        help="BD interpolation (default: %(default)s)",
    )
    c.add_argument(
        "--allow-different-images",
        action="store_true",
        help="compare files measured on different images (a warning instead of an error)",
    )
    set_command(c, _compare)

    d = sub.add_parser(
        "demo",
        help="fit a PC prior into a codec on a few photos, code other photos: table and plot",
        description="Fit a probabilistic-circuit entropy model into a frozen base codec on training "
        "photos (--train-data), then compress and decompress disjoint test photos (--data) with "
        "the base codec and with the PC codec (real bitstreams, identical reconstructions). "
        "Default: the shipped codec and scikit-image's photos, no downloads. Writes table.txt, "
        "demo.png, demo.json, base.json, pc.json and pc-codec.pt under -o.",
    )
    add_argument(
        d,
        "-o",
        "--output",
        old=("--out",),
        default="runs/demo",
        help="output folder (default: %(default)s)",
    )
    d.add_argument(
        "--data",
        default=None,
        help="folder of test images, e.g. Kodak (default: scikit-image's "
        "astronaut, coffee, chelsea)",
    )
    d.add_argument(
        "--train-data",
        default=None,
        help="folder of training images, e.g. BSDS500 (default: seven other scikit-image photos)",
    )
    d.add_argument(
        "--codec",
        default=None,
        help="base codec: a codec file or zoo name as for 'pc-prior eval' "
        "(default: the shipped bmshj2018-factorized q2)",
    )
    d.add_argument(
        "--arch", default=None, help="architecture of a plain state-dict --codec (zoo name)"
    )
    add_arguments(d, DEMO_BOTTLENECK, DEMO_OPTIONS, flags={"num_latents": "latents"})
    aug = d.add_mutually_exclusive_group()
    aug.add_argument(
        "--augment",
        dest="augment",
        action="store_true",
        default=None,
        help="add mirrored and downscaled copies of the training images (default: when they give "
        "fewer than --max-items positions)",
    )
    aug.add_argument("--no-augment", dest="augment", action="store_false")
    d.add_argument("--limit", type=int, default=None, help="code only the first N test images")
    add_argument(
        d,
        "--train-limit",
        old=("--max-train-images",),
        type=int,
        default=None,
        help="fit on only the first N training images",
    )
    d.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: %(default)s; the circuit's coding loop runs many small ops, "
        "which more threads slow down on a busy machine)",
    )
    d.add_argument("--seed", type=int, default=DEMO_BOTTLENECK.seed)
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    set_command(d, _demo)


def _at_least_one(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InputError(f"{option} must be at least 1, got {value}")


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .demo import run_demo

    for option, value in (
        ("--threads", args.threads),
        ("--latents", args.num_latents),
        ("--limit", args.limit),
        ("--train-limit", args.train_limit),
    ):
        _at_least_one(option, value)
    torch.set_num_threads(args.threads)
    res = run_demo(
        args.output,
        data=args.data,
        train_data=args.train_data,
        codec=args.codec,
        arch=args.arch,
        latents=args.num_latents,
        structure=args.structure,
        epochs=args.epochs,
        max_items=args.max_items,
        augment=args.augment,
        limit=args.limit,
        max_train_images=args.train_limit,
        seed=args.seed,
        progress=not args.no_progress,
    )
    return 0 if res["reconstructions_identical"] else 1


def _eval(args: argparse.Namespace) -> int:
    import torch

    from ..devices import resolve_device
    from ..images import MS_SSIM_MIN_SIDE, list_images
    from ..integrations.codec_file import resolve_codec
    from .rd import (
        distinct_labels,
        dumps_json,
        evaluate_model,
        refuse_repeats,
        results_json,
        write_json,
    )

    resolve_device(
        args.device
    )  # a missing or unknown device fails before any image or model is read
    _at_least_one("--threads", args.threads)
    _at_least_one("--limit", args.limit)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = list_images(args.data)  # fail on a bad folder before loading any model
    if args.limit is not None:
        images = images[: args.limit]
    if args.entropy_coder:
        import compressai

        if args.entropy_coder not in compressai.available_entropy_coders():
            raise InputError(
                f"unknown entropy coder {args.entropy_coder!r}; choose one of: "
                f"{', '.join(compressai.available_entropy_coders())}"
            )
        compressai.set_entropy_coder(args.entropy_coder)
    refuse_repeats(args.models)  # before loading any model
    loaded = [
        resolve_codec(m, arch=args.arch, device=args.device, metric=args.metric)
        for m in args.models
    ]
    curve = _one_curve(loaded)  # before any image is coded
    labels = distinct_labels([lm.name for lm in loaded], [lm.source for lm in loaded])
    runs = []
    for lm, label in zip(loaded, labels, strict=True):
        res = evaluate_model(lm.net, images, progress=not args.no_progress, desc=label)
        runs.append({"model": label, "quality": lm.quality, **res})
        m = res["mean"]
        ms = m["ms-ssim-rgb"]
        ms_text = (
            f"n/a (an image side below {MS_SSIM_MIN_SIDE} px)" if math.isnan(ms) else f"{ms:.4f}"
        )
        print(
            f"{label}: bpp {m['bpp']:.4f} (estimated {m['bpp_estimated']:.4f}), PSNR-RGB {m['psnr-rgb']:.3f} dB, "
            f"MS-SSIM {ms_text}, enc {1000 * m['encoding_time']:.1f} ms, "
            f"dec {1000 * m['decoding_time']:.1f} ms ({len(images)} images; decoded = forward "
            f"bit for bit: {sum(r['decoded_equals_forward'] for r in res['images'])}/{len(images)})",
            file=sys.stderr,
        )
    import compressai

    out = results_json(
        runs,
        name=args.name or curve,
        description=f"Inference ({compressai.get_entropy_coder()})",
        extra={
            "dataset": str(args.data),
            "num_images": len(images),
            "device": args.device,
            "sources": [lm.source for lm in loaded],
        },
    )
    if args.output:
        path = write_json(args.output, out)
        print(f"wrote {path}", file=sys.stderr)
    else:
        print(dumps_json(out))
    return 0


def _curve_of(lm: ResolvedCodec) -> str:
    """The RD curve a codec's points belong to: its architecture, and whether it codes with PC priors."""
    pc = lm.info.get("pc_modules")
    return f"{lm.arch or lm.name}{' + PC prior' if pc else ''}"


def _one_curve(loaded: list[ResolvedCodec]) -> str:
    """The name of the one curve ``loaded`` makes; ``InputError`` naming each group if they mix
    architectures or entropy models (a results file holds one curve, named after it)."""
    groups: dict[str, list[str]] = {}
    for lm in loaded:
        groups.setdefault(_curve_of(lm), []).append(lm.source or lm.name)
    if len(groups) > 1:
        listed = "; ".join(f"{g}: {', '.join(srcs)}" for g, srcs in groups.items())
        raise InputError(
            f"these codecs belong to {len(groups)} different RD curves ({listed}), and one results "
            "file holds one curve of one architecture and entropy model: run 'pc-prior eval' once "
            "per curve, each with its own --output, and compare the files with 'pc-prior compare'"
        )
    return next(iter(groups))


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare, comparison_record, format_comparison, plot_rd
    from .rd import write_json

    res = compare(
        args.baseline,
        args.candidate,
        method=args.method,
        allow_different_images=args.allow_different_images,
    )
    base, cand = res.pop("_curves")
    print(format_comparison(res))
    if not args.no_plot:
        plot = (
            Path(args.plot)
            if args.plot
            else Path(args.candidate).with_name(
                f"{Path(args.candidate).stem}-vs-{Path(args.baseline).stem}.png"
            )
        )
        plot_rd(base, cand, plot, title=f"{cand.name} vs {base.name}")
        print(f"\nRD plot: {plot}")
        res["plot"] = str(plot)
    if args.output:
        write_json(args.output, comparison_record(res))
    return 0
