"""The ``pc-prior`` command line: one entry point, one sub-command module per area.

Every ``pc_prior.<area>.cli`` module (and ``pc_prior.lossless``) exposes ``register(subparsers)``,
which adds its sub-command(s) and sets ``func`` (taking the parsed ``argparse.Namespace``,
returning an exit code) as the default. Keep heavy imports inside the command functions.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import warnings

from .errors import PCPriorError


def command_modules() -> list[str]:
    """``pc_prior.lossless`` plus every ``pc_prior.<sub-package>.cli`` that exists, sorted."""
    import pkgutil

    from . import __path__ as pkg_path

    mods = ["pc_prior.lossless"]
    for info in sorted(pkgutil.iter_modules(pkg_path), key=lambda m: m.name):
        if info.ispkg and importlib.util.find_spec(f"pc_prior.{info.name}.cli") is not None:
            mods.append(f"pc_prior.{info.name}.cli")
    return mods


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pc-prior",
        description="Probabilistic circuits as entropy models for learned image compression.",
    )
    parser.add_argument("--version", action="version", version=f"pc-prior {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        importlib.import_module(name).register(sub)
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
