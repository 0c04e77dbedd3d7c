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

    from .api import fit_prior_file

    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    options, cond_options = (
        (ADAPT_OPTIONS, ADAPT_CONDITIONAL_OPTIONS)
        if args.adapt
        else (BOTTLENECK_OPTIONS, CONDITIONAL_OPTIONS)
    )
    names = (  # prior adapt continues the file's fitted ones
        ("entropy_bottleneck", "gaussian_conditional")
        if getattr(args, "conditional", False)
        else ("entropy_bottleneck",)
    )
    hist = fit_prior_file(
        args.model,
        args.data,
        args.output,
        name=names,
        adapt=args.adapt,
        bottleneck=from_args(BottleneckFit(seed=args.seed), args, options),
        conditional=from_args(ConditionalFit(seed=args.seed), args, cond_options, prefix="cond-"),
        multiple=args.multiple,
        max_images=args.limit,
        device=args.device,
    )
    report: dict[str, object] = {"out": args.output}  # the key scripts read since 0.1
    if "entropy_bottleneck" in hist:
        report["train_bpd"] = hist["entropy_bottleneck"][-1]["train_bpd"]
    if "gaussian_conditional" in hist:
        report["conditional"] = hist["gaussian_conditional"][-1]
    print(json.dumps(report))
    return 0
