"""``pc-prior prior fit``: fit a circuit prior into a frozen CompressAI codec.

The fitted codec is measured by ``pc-prior eval`` (the one evaluation path, ``pc_prior.eval``).
"""

from __future__ import annotations

import argparse
import json

from ..settings import BottleneckFit as B
from ..settings import ConditionalFit as C
from ..settings import ImageFit


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
        "--latents",
        type=int,
        default=B.num_latents,
        help="latent states per channel (default: %(default)s)",
    )
    fit.add_argument(
        "--max-items",
        type=int,
        default=B.max_items,
        help="latent positions used (default: %(default)s)",
    )
    fit.add_argument("--max-images", type=int, default=ImageFit.max_images)
    fit.add_argument(
        "--epochs", type=int, default=B.epochs, help="mini-batch EM epochs (default: %(default)s)"
    )
    fit.add_argument("--full-batch-epochs", type=int, default=B.full_batch_epochs)
    fit.add_argument("--batch-size", type=int, default=B.batch_size)
    fit.add_argument(
        "--step-size", type=float, nargs=2, default=B.step_size, metavar=("START", "END")
    )
    fit.add_argument(
        "--structure",
        choices=["chow-liu", "star"],
        default=B.structure,
        help="circuit structure over the channels (default: %(default)s)",
    )
    fit.add_argument(
        "--leaves",
        choices=["categorical", "logistic"],
        default=B.leaves,
        help="bottleneck leaves: categorical fit a frozen codec best; logistic (discretized "
        "logistic, smooth in the latent) for joint fine-tuning (default: %(default)s)",
    )
    fit.add_argument(
        "--finetune-steps",
        type=int,
        default=B.finetune_steps,
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
        default=C.num_latents,
        help="PCConditional states per channel (default: %(default)s)",
    )
    fit.add_argument(
        "--cond-steps",
        type=int,
        default=C.steps,
        help="PCConditional Adam steps (default: %(default)s)",
    )
    fit.add_argument(
        "--cond-max-items",
        type=int,
        default=C.max_items,
        help="PCConditional positions used (default: all)",
    )
    fit.add_argument("--cond-structure", choices=["chow-liu", "star"], default=C.structure)
    fit.add_argument(
        "--cond-context",
        choices=["three-pass", "checkerboard", "none"],
        default=C.context or "none",
        help="PCConditional spatial context: three-pass (the anchors' diagonal halves, then the "
        "rest), checkerboard (anchors, then the rest) or none (one pass) (default: %(default)s)",
    )
    fit.add_argument(
        "--multiple",
        type=int,
        default=ImageFit.multiple,
        help="crop training images to multiples of this (default: %(default)s)",
    )
    fit.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    fit.add_argument("--seed", type=int, default=B.seed)
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
    hist = fit_prior(
        net,
        args.images,
        name=names,
        num_latents=args.latents,
        multiple=args.multiple,
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
    kept = {k: ck[k] for k in ("net_kwargs", "lmbda", "metric") if ck.get(k) is not None}
    save_codec(net, args.out, ck["arch"], ck["quality"], fit_history=hist, **kept)
    report = {"out": args.out, "train_bpd": hist["entropy_bottleneck"][-1]["train_bpd"]}
    if args.conditional:
        report["conditional"] = hist["gaussian_conditional"][-1]
    print(json.dumps(report))
    return 0
