"""``pc-prior prior fit``: fit a circuit prior into a frozen CompressAI codec.

The fitted codec is measured by ``pc-prior eval`` (the one evaluation path, ``pc_prior.eval``).
"""

from __future__ import annotations

import argparse
import json


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
    fit.add_argument(
        "--codec", required=True, help="codec checkpoint (dict with arch, quality, state_dict)"
    )
    fit.add_argument("--images", required=True, help="training image folder (e.g. BSDS500)")
    fit.add_argument("--out", required=True, help="where to save the swapped codec")
    fit.add_argument(
        "--latents", type=int, default=16, help="latent states per channel (default: %(default)s)"
    )
    fit.add_argument(
        "--max-items", type=int, default=60000, help="latent positions used (default: %(default)s)"
    )
    fit.add_argument("--max-images", type=int, default=None)
    fit.add_argument(
        "--epochs", type=int, default=6, help="mini-batch EM epochs (default: %(default)s)"
    )
    fit.add_argument("--full-batch-epochs", type=int, default=2)
    fit.add_argument("--batch-size", type=int, default=256)
    fit.add_argument(
        "--step-size", type=float, nargs=2, default=(0.5, 0.02), metavar=("START", "END")
    )
    fit.add_argument(
        "--structure",
        choices=["chow-liu", "star"],
        default="chow-liu",
        help="circuit structure over the channels (default: %(default)s)",
    )
    fit.add_argument(
        "--leaves",
        choices=["categorical", "logistic"],
        default="categorical",
        help="bottleneck leaves: categorical fit a frozen codec best; logistic (discretized "
        "logistic, smooth in the latent) for joint fine-tuning (default: %(default)s)",
    )
    fit.add_argument(
        "--finetune-steps",
        type=int,
        default=300,
        help="Adam steps that refine logistic leaves after EM (default: %(default)s)",
    )
    fit.add_argument(
        "--conditional",
        action="store_true",
        help="also swap the hyperprior's gaussian_conditional for a PCConditional",
    )
    fit.add_argument(
        "--cond-latents",
        type=int,
        default=32,
        help="PCConditional states per channel (default: %(default)s)",
    )
    fit.add_argument(
        "--cond-steps",
        type=int,
        default=6000,
        help="PCConditional Adam steps (default: %(default)s)",
    )
    fit.add_argument(
        "--cond-max-items",
        type=int,
        default=None,
        help="PCConditional positions used (default: all)",
    )
    fit.add_argument("--cond-structure", choices=["chow-liu", "star"], default="chow-liu")
    fit.add_argument(
        "--cond-context",
        choices=["three-pass", "checkerboard", "none"],
        default="three-pass",
        help="PCConditional spatial context: three-pass (the anchors' diagonal halves, then the "
        "rest), checkerboard (anchors, then the rest) or none (one pass) (default: %(default)s)",
    )
    fit.add_argument(
        "--multiple",
        type=int,
        default=None,
        help="crop training images to multiples of this (default: 64 with --conditional, else 16)",
    )
    fit.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    fit.add_argument("--seed", type=int, default=0)
    fit.set_defaults(func=_fit)


def _fit(args: argparse.Namespace) -> int:
    import torch

    from .api import fit_prior
    from .codec_file import read_codec_file, save_codec

    if args.threads:
        torch.set_num_threads(args.threads)
    net, ck = read_codec_file(args.codec)
    net.eval()
    names = (
        ("entropy_bottleneck", "gaussian_conditional") if args.conditional else "entropy_bottleneck"
    )
    cond = {
        "num_latents": args.cond_latents,
        "steps": args.cond_steps,
        "max_items": args.cond_max_items,
        "structure": args.cond_structure,
        "seed": args.seed,
        "context": None if args.cond_context == "none" else args.cond_context,
    }
    multiple = args.multiple or (64 if args.conditional else 16)
    hist = fit_prior(
        net,
        args.images,
        name=names,
        num_latents=args.latents,
        multiple=multiple,
        max_images=args.max_images,
        max_items=args.max_items,
        epochs=args.epochs,
        full_batch_epochs=args.full_batch_epochs,
        batch_size=args.batch_size,
        step_size=tuple(args.step_size),
        structure=args.structure,
        leaves=args.leaves,
        finetune_steps=args.finetune_steps,
        seed=args.seed,
        conditional=cond,
    )
    save_codec(net, args.out, ck["arch"], ck["quality"], fit_history=hist)
    report = {"out": args.out}
    if args.conditional:
        report["train_bpd"] = hist["entropy_bottleneck"][-1]["train_bpd"]
        report["conditional"] = hist["gaussian_conditional"][-1]
    else:
        report["train_bpd"] = hist[-1]["train_bpd"]
    print(json.dumps(report))
    return 0
