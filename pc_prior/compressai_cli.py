"""``pc-prior compressai eval-model|update-model``: CompressAI's own tools on PC codec files.

Each verb hands everything after it to the CompressAI tool of that name (``python -m
compressai.utils.eval_model`` / ``update_model``), run in-process by
``pc_prior.integrations.compressai_tools`` with PC-aware model classes registered and every
checkpoint verified first. So the options are CompressAI's; pc-prior adds none. ``-h`` prints this
help; a leading ``--`` passes everything after it verbatim, ``-h`` included (CompressAI's help).

This module only builds parsers: it imports neither torch nor CompressAI (``pc_prior.cli``'s light
help), and names the command functions with ``Lazy`` (``pc_prior.cli.add_pass_through_command``).
"""

from __future__ import annotations

import argparse

from .cli import add_pass_through_command

USAGE = "%(prog)s [-h] [--] ARGS ..."

TOOLS: dict[str, tuple[str, str, str, str]] = {
    # verb: (help, description, example, command function)
    "eval-model": (
        "CompressAI's eval_model on codec files with PC entropy models (digests verified)",
        "Run CompressAI's own 'python -m compressai.utils.eval_model' on pc-prior codec files "
        "(and CompressAI checkpoints, PC entropy models included): every -p file is verified "
        "first (zip CRCs, weights only, content digest, coding-table digests) and must hold the "
        "-a architecture; then CompressAI's eval_model runs unchanged and prints its JSON.",
        "pc-prior compressai eval-model checkpoint DATA -a bmshj2018-factorized -p pc-codec.pt\n"
        "  pc-prior compressai eval-model -- checkpoint -h    (CompressAI's own help)",
        "pc_prior.integrations.compressai_tools:eval_model_command",
    ),
    "update-model": (
        "CompressAI's update_model on a codec file with PC entropy models (digest verified)",
        "Run CompressAI's own 'python -m compressai.utils.update_model' on a pc-prior codec "
        "file (verified first): it rebuilds the coding tables and exports CompressAI's plain "
        "state dict as NAME-<sha256 prefix>.EXT, which 'pc-prior eval FILE --arch ARCH' and "
        "'pc-prior compressai eval-model' read.",
        "pc-prior compressai update-model pc-codec.pt -a bmshj2018-factorized -d exported\n"
        "  pc-prior compressai update-model -- -h    (CompressAI's own help)",
        "pc_prior.integrations.compressai_tools:update_model_command",
    ),
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``compressai eval-model`` and ``compressai update-model``."""
    p = sub.add_parser(
        "compressai",
        help="CompressAI's own tools (eval_model, update_model) on codecs with PC entropy models",
    )
    g = p.add_subparsers(dest="compressai_command", metavar="ACTION", required=True)
    for verb, (help_, description, example, target) in TOOLS.items():
        add_pass_through_command(
            g,
            verb,
            target,
            dest="tool_args",
            description=description,
            verbatim=True,
            help=help_,
            epilog=f"example:\n  {example}\n\nSee docs/compressai-interop.md.",
            usage=USAGE,
        )
