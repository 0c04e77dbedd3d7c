"""The ``pc-prior`` command line: one entry point, one sub-command module per area.

Each module in ``COMMANDS`` exposes ``register(subparsers)``, which adds its sub-command(s) and
sets ``func`` (taking the parsed ``argparse.Namespace``, returning an exit code) as the default.
Modules are imported only to build the parser, so a command's heavy imports stay inside it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = [
    "pc_prior.lossless_cli",
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="pc-prior", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pc-prior {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, TypeError) as e:  # user errors: one clear line, no traceback
        print(f"pc-prior {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
