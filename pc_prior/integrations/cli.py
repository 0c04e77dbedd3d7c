"""``pc-prior prior fit``: fit a circuit prior into a frozen CompressAI codec.

The fitted codec is measured by ``pc-prior eval`` (the one evaluation path, ``pc_prior.eval``).
"""

from __future__ import annotations

import argparse
import json

from ..errors import InputError
from ..settings import (
    CONDITIONAL_CONTEXTS,
    BottleneckFit,
    ConditionalFit,
    ImageFit,
    add_arguments,
    as_kwargs,
    from_args,
)

BOTTLENECK_OPTIONS = (
    "num_latents",
    "max_items",
    "epochs",
    "full_batch_epochs",
    "batch_size",
    "step_size",
    "structure",
    "context",
    "context_bins",
    "group_fit",
    "group_epochs",
    "state_context",
    "leaves",
    "finetune_steps",
)  # the PCEntropyBottleneck.fit settings pc-prior prior fit exposes (--latents, --max-items, ...)
CONDITIONAL_OPTIONS = ("num_latents", "steps", "max_items", "structure", "context")  # --cond-*


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prior",
        help="PC entropy models inside CompressAI codecs (fit on a frozen codec; then pc-prior eval)",
    )
    g = p.add_subparsers(dest="prior_command", metavar="ACTION", required=True)

    fit = g.add_parser(
        "fit",
        help="swap a codec's entropy bottleneck (and with --conditional its Gaussian "
        "conditional) for circuits fitted on an image folder",
    )
    start = fit.add_mutually_exclusive_group(required=True)
    start.add_argument(
        "--codec", help="codec checkpoint (dict with arch, quality, state_dict) to fit priors into"
    )
    start.add_argument(
        "--init",
        metavar="CODEC",
        help="a codec with fitted PC priors (a prior fit output) whose priors are fitted further "
        "on --images (adapt them to a domain): alphabets, structure, sizes and contexts are "
        "kept, so --latents, --structure, --leaves and --cond-latents/-context/-structure are "
        "not used; every PC entropy model in it is continued",
    )
    fit.add_argument("--images", required=True, help="training image folder (e.g. BSDS500)")
    fit.add_argument("--out", required=True, help="where to save the swapped codec")
    add_arguments(fit, BottleneckFit(), BOTTLENECK_OPTIONS, flags={"num_latents": "latents"})
    fit.add_argument(
        "--max-images", type=int, default=ImageFit.max_images, help="read at most N images"
    )
    fit.add_argument(
        "--multiple",
        type=int,
        default=ImageFit.multiple,
        help="crop training images to multiples of this (default: %(default)s)",
    )
    fit.add_argument(
        "--conditional",
        action="store_true",
        help="also swap the hyperprior's gaussian_conditional for a PCConditional",
    )
    add_arguments(
        fit,
        ConditionalFit(),
        CONDITIONAL_OPTIONS,
        prefix="cond-",
        flags={"num_latents": "latents"},
        choices={"context": CONDITIONAL_CONTEXTS},
    )
    fit.add_argument(
        "--device",
        default="cpu",
        help="torch device of the fit, e.g. cuda (the codec file is saved for any device; "
        "default: %(default)s)",
    )
    fit.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    fit.add_argument(
        "--seed",
        type=int,
        default=BottleneckFit.seed,
        help="seed of both fits (default: %(default)s)",
    )
    fit.set_defaults(func=_fit)


def _fit(args: argparse.Namespace) -> int:
    import torch

    from .api import fit_prior
    from .codec_file import read_codec_file, save_codec

    if args.threads:
        torch.set_num_threads(args.threads)
    from ..devices import resolve_device
    from .api import PC_MODULES

    dev = resolve_device(args.device)  # before anything is loaded
    net, ck = read_codec_file(args.init or args.codec)
    net.to(dev).eval()
    if args.init:  # every fitted PC entropy model of the file, continued
        names = tuple(n for n, m in net.named_modules() if isinstance(m, PC_MODULES))
        if not names:
            raise InputError(
                f"--init {args.init} holds no PC entropy model to continue: fit one first "
                "(pc-prior prior fit --codec ...)"
            )
    else:
        names = (
            ("entropy_bottleneck", "gaussian_conditional")
            if args.conditional
            else ("entropy_bottleneck",)
        )
    bottleneck = from_args(BottleneckFit(seed=args.seed), args, BOTTLENECK_OPTIONS)
    cond = from_args(ConditionalFit(seed=args.seed), args, CONDITIONAL_OPTIONS, prefix="cond-")
    hist = fit_prior(
        net,
        args.images,
        name=names,
        multiple=args.multiple,
        max_images=args.max_images,
        **as_kwargs(bottleneck),
        conditional=as_kwargs(cond),
        warm_start=bool(args.init),
    )
    kept = {k: ck[k] for k in ("net_kwargs", "lmbda", "metric") if ck.get(k) is not None}
    save_codec(net, args.out, ck["arch"], ck["quality"], fit_history=hist, **kept)
    report: dict[str, object] = {"out": args.out}
    if "entropy_bottleneck" in hist:
        report["train_bpd"] = hist["entropy_bottleneck"][-1]["train_bpd"]
    if "gaussian_conditional" in hist:
        report["conditional"] = hist["gaussian_conditional"][-1]
    print(json.dumps(report))
    return 0
