"""The ``pc-prior`` command line: one entry point, and one table of its sub-commands.

``COMMANDS`` names every top-level command and the ``register(subparsers)`` function that adds it
(``"module:function"``, imported when the parser is built). A register function may add several
commands; each one it adds must be in the table (a test checks both ways), so a new command is one
table line plus its register function, and nothing is discovered by scanning packages. Register
functions set ``func`` (taking the parsed ``argparse.Namespace``, returning an exit code) as the
default; keep heavy imports inside the command functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable

from .errors import PCPriorError

#: Every top-level command, in ``--help`` order, and the register function that adds it.
COMMANDS: dict[str, str] = {
    "lossless": "pc_prior.lossless:register",
    "demo": "pc_prior.eval.cli:register",
    "eval": "pc_prior.eval.cli:register",
    "compare": "pc_prior.eval.cli:register",
    "report-lossless": "pc_prior.eval.cli:register",
    "prior": "pc_prior.integrations.cli:register",
    "fit": "pc_prior.train.cli:register",
    "train-codec": "pc_prior.train.cli:register",
}

Register = Callable[[argparse._SubParsersAction], None]


def register_functions() -> list[Register]:
    """The distinct register functions of ``COMMANDS``, in table order (each called once)."""
    funcs: list[Register] = []
    for target in dict.fromkeys(COMMANDS.values()):
        module, _, name = target.partition(":")
        funcs.append(getattr(importlib.import_module(module), name))
    return funcs


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pc-prior",
        description="Probabilistic circuits as entropy models for learned image compression.",
    )
    parser.add_argument("--version", action="version", version=f"pc-prior {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in register_functions():
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # CompressAI scripts its entropy-model helpers with torch.jit.script, which torch now flags
    # as deprecated on every import; that is CompressAI's business, not the user's.
    warnings.filterwarnings(
        "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (
        PCPriorError,
        FileNotFoundError,
        ValueError,
        TypeError,
    ) as e:  # user errors: one clear line, no traceback
        print(f"pc-prior {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
