"""``pc-prior prior fit`` and ``pc-prior prior adapt``: circuit priors in a frozen CompressAI codec.

``prior fit`` fits new circuits into a codec; ``prior adapt`` continues the fitted ones of a
``prior fit`` output on new images (a warm start: alphabets, structure, sizes, leaves and contexts
are kept, so only the schedule is chosen). The result is measured by ``pc-prior eval`` (the one
evaluation path, ``pc_prior.eval``).

Their parsers are in ``pc_prior.cli`` (``register_prior``), because this package imports
CompressAI on import and ``--help`` must not; this module is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import json

from ..cli import (
    ADAPT_CONDITIONAL_OPTIONS,
    ADAPT_OPTIONS,
    BOTTLENECK_OPTIONS,
    CONDITIONAL_OPTIONS,
)
from ..errors import InputError
from ..settings import BottleneckFit, ConditionalFit, from_args

__all__ = ["BOTTLENECK_OPTIONS", "CONDITIONAL_OPTIONS", "prior_fit"]


def prior_fit(args: argparse.Namespace) -> int:
    """``prior fit`` (``args.adapt`` false) and ``prior adapt`` (true; also the old ``--init``)."""
    import torch

    from ..devices import resolve_device
    from .api import PC_MODULES, adapt_prior, fit_prior
    from .codec_file import read_codec_file, save_codec

    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    options: tuple[str, ...]
    cond_options: tuple[str, ...]
    dev = resolve_device(args.device)  # before anything is loaded
    net, ck = read_codec_file(args.model)
    net.to(dev).eval()
    if args.adapt:  # every fitted PC entropy model of the file, continued
        names = tuple(n for n, m in net.named_modules() if isinstance(m, PC_MODULES))
        if not names:
            raise InputError(
                f"{args.model} holds no PC entropy model to continue: fit one first "
                f"(pc-prior prior fit {args.model} --data DIR -o OUT)"
            )
        options, cond_options = ADAPT_OPTIONS, ADAPT_CONDITIONAL_OPTIONS
    else:
        names = (
            ("entropy_bottleneck", "gaussian_conditional")
            if args.conditional
            else ("entropy_bottleneck",)
        )
        options, cond_options = BOTTLENECK_OPTIONS, CONDITIONAL_OPTIONS
    bottleneck = from_args(BottleneckFit(seed=args.seed), args, options)
    cond = from_args(ConditionalFit(seed=args.seed), args, cond_options, prefix="cond-")
    step = adapt_prior if args.adapt else fit_prior
    hist = step(
        net,
        args.data,
        name=names,
        bottleneck=bottleneck,
        conditional=cond,
        multiple=args.multiple,
        max_images=args.limit,
    )
    kept = {k: ck[k] for k in ("net_kwargs", "lmbda", "metric") if ck.get(k) is not None}
    save_codec(net, args.output, ck["arch"], ck["quality"], fit_history=hist, **kept)
    report: dict[str, object] = {"out": args.output}  # the key scripts read since 0.1
    if "entropy_bottleneck" in hist:
        report["train_bpd"] = hist["entropy_bottleneck"][-1]["train_bpd"]
    if "gaussian_conditional" in hist:
        report["conditional"] = hist["gaussian_conditional"][-1]
    print(json.dumps(report))
    return 0
