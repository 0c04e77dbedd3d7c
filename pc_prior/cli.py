"""The ``pc-prior`` command line: one entry point, one table of its commands, one grammar.

Grammar. A command is a noun and a verb: ``prior fit|adapt``, ``codec train|finetune``,
``lossless fit|bench|compress|decompress|report``, ``lightning fit``, ``compressai
eval-model|update-model``; ``eval``, ``compare`` and ``demo`` stand alone. One thing has one
option name in every command:

- the model a command works on is the positional ``MODEL`` (``eval``, ``prior fit|adapt``,
  ``lossless bench``); a model a command only uses is ``--codec`` (``demo``, ``lossless
  compress|decompress``);
- an image folder is ``--data``; a second folder is named by its role (``demo --train-data``);
- what a command writes is ``-o/--output``;
- a limit on the number of images is ``--limit`` (of ``--data``; ``--train-limit`` of
  ``--train-data``).

The Lightning commands (``codec train|finetune``, ``lightning fit``) hand everything after the verb
to LightningCLI, so their options are Lightning's (``--config``, ``--trainer.*``, ``--model.*``,
``--data.*``, ``--checkpoint.*``, ``--ckpt_path``).
``compressai eval-model|update-model`` likewise hand everything after the verb to CompressAI's
``eval_model``/``update_model`` (``pc_prior.compressai_cli``).

Table. ``COMMANDS`` names every top-level command and the ``register(subparsers)`` function that
adds it (``"module:function"``, imported when the parser is built). A register function may add
several commands; each one it adds must be in the table (a test checks both ways), so a new command
is one table line plus its register function, and nothing is discovered by scanning packages.
Register functions give every leaf command its function with ``set_command`` (it takes the parsed
``argparse.Namespace`` and returns an exit code).

Light help. ``pc-prior --help`` and every command's ``--help`` build the whole parser, so the
register functions, and the modules they live in, import neither CompressAI nor Lightning nor
torchvision (a test runs every ``--help`` in a fresh interpreter and checks ``sys.modules``).
Command functions import what they need when they run. The packages ``pc_prior.integrations`` and
``pc_prior.train`` import CompressAI and Lightning in their ``__init__``, so the parsers of
``prior``, ``codec`` and ``lightning`` are defined here and name their command functions with
``Lazy("module:function")``, imported only when the command runs. (``pc_prior/__init__`` imports
torch, so torch is loaded by any ``pc_prior`` import, ``--help`` included.)

Errors. ``PCPriorError`` (every error that bad input causes, ``pc_prior.errors``) and
``FileNotFoundError`` become one line, ``pc-prior <command>: error: <message>``, and exit code 1.
Anything else is a bug and keeps its traceback.

Deprecations. Old names keep working for one release and print one line, ``pc-prior: warning:
...``, naming the new one: the top-level commands in ``DEPRECATED`` (hidden from the command
listing) and old option names (``add_argument(..., old=...)``: hidden from ``--help``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .errors import PCPriorError
from .settings import BottleneckFit, ConditionalFit, ImageFit, add_arguments

PROG = "pc-prior"

#: Every top-level command, in ``--help`` order, and the register function that adds it.
COMMANDS: dict[str, str] = {
    "prior": "pc_prior.cli:register_prior",
    "codec": "pc_prior.cli:register_codec",
    "train-codec": "pc_prior.cli:register_codec",  # deprecated: codec train
    "lossless": "pc_prior.lossless:register",
    "report-lossless": "pc_prior.lossless:register",  # deprecated: lossless report
    "eval": "pc_prior.eval.cli:register",
    "compare": "pc_prior.eval.cli:register",
    "demo": "pc_prior.eval.cli:register",
    "compressai": "pc_prior.compressai_cli:register",
    "lightning": "pc_prior.cli:register_lightning",
    "fit": "pc_prior.cli:register_lightning",  # deprecated: lightning fit
}

#: Old top-level commands (hidden from the listing, one release more) and what replaces them.
DEPRECATED: dict[str, str] = {
    "train-codec": "codec train",
    "report-lossless": "lossless report",
    "fit": "lightning fit",
}

Register = Callable[[argparse._SubParsersAction], None]
Command = Callable[[argparse.Namespace], int]


def warn(message: str) -> None:
    """One line on stderr: ``pc-prior: warning: <message>``."""
    print(f"{PROG}: warning: {message}", file=sys.stderr)


class CommandParser(argparse.ArgumentParser):
    """The parser of ``pc-prior`` and of each of its commands (subparsers inherit the class).

    Two additions to argparse, both for old names: a command replaced by another
    (``replaced_by``) warns when it is parsed, and an argument that an old spelling may also set
    (``add_argument(..., old=..., required=True)``) is checked after parsing and shown as required
    in the usage (argparse alone would refuse the old spelling, or show the argument as optional).
    """

    replaced_by: str | None = None

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.replaced_by:
            old = self.prog.removeprefix(PROG + " ")
            warn(
                f"'{PROG} {old}' is deprecated and goes in the next release; "
                f"use '{PROG} {self.replaced_by}'"
            )
        ns, extras = super().parse_known_args(args, namespace)
        missing = [
            _display(a)
            for a in self._actions
            if getattr(a, "pc_required", False) and not hasattr(ns, a.dest)
        ]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return ns, extras

    @contextmanager
    def _required_shown(self) -> Iterator[None]:
        """Show the arguments checked by ``parse_known_args`` as argparse shows required ones."""
        marked = [a for a in self._actions if getattr(a, "pc_required", False)]
        saved = [(a.nargs, a.required) for a in marked]
        for a in marked:
            if a.option_strings:
                a.required = True
            else:
                a.nargs = None
        try:
            yield
        finally:
            for a, (nargs, required) in zip(marked, saved):
                a.nargs, a.required = nargs, required

    def format_usage(self) -> str:
        with self._required_shown():
            return super().format_usage()

    def format_help(self) -> str:
        with self._required_shown():
            return super().format_help()


def _display(action: argparse.Action) -> str:
    if action.option_strings:
        return "/".join(action.option_strings)
    return str(action.metavar or action.dest).upper()


def _given(namespace: argparse.Namespace) -> dict[str, str]:
    """Which spelling set each dest so far (to refuse an old and a new spelling together)."""
    given: dict[str, str] | None = getattr(namespace, "_pc_given", None)
    if given is None:
        given = {}
        namespace._pc_given = given
    return given


class _Store(argparse.Action):
    """``store`` into ``into`` (default: dest), refusing a value that another spelling of the
    same argument (``name``) already gave; ``also`` sets more attributes."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        self.into: str = kw.pop("into", None) or dest
        self.name: str | None = kw.pop("name", None)
        self.also: dict[str, Any] = kw.pop("also", None) or {}
        super().__init__(option_strings, dest, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        spelling = option_string or _display(self)
        given = _given(namespace)
        before = given.get(self.into)
        if before is not None and before != spelling:
            name = self.name or _display(self)
            parser.error(
                f"{before} and {spelling} both give {name} (one is its deprecated old name): "
                f"give {name} once"
            )
        given[self.into] = spelling
        setattr(namespace, self.into, values)
        for k, v in self.also.items():
            setattr(namespace, k, v)


class _Deprecated(_Store):
    """An old spelling of an argument (hidden from help): warns, then stores like the new one."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        self.new: str = kw.pop("new")
        super().__init__(option_strings, dest, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        old = option_string or f"the positional {_display(self)}"
        warn(f"{old} is deprecated and goes in the next release; use {self.new}")
        super().__call__(parser, namespace, values, option_string)


def deprecated_argument(
    parser: argparse.ArgumentParser, old: str, *, into: str, new: str, name: str, **kw: Any
) -> argparse.Action:
    """A hidden old spelling ``old`` of an argument stored in ``into``: it works, prints one
    deprecation line naming ``new``, and is refused together with another spelling of ``name``.
    ``old`` starting with ``-`` is an option, any other an optional positional (an old operand)."""
    common: dict[str, Any] = {
        "help": argparse.SUPPRESS,
        "action": _Deprecated,
        "new": new,
        "name": name,
        "default": argparse.SUPPRESS,  # the new spelling's default stands
    }
    if old.startswith("-"):
        return parser.add_argument(old, dest=into, **common, **kw)
    return parser.add_argument(
        "deprecated_" + old.lower(), metavar=old, nargs="?", into=into, **common, **kw
    )


def add_argument(
    parser: argparse.ArgumentParser,
    *names: str,
    old: Sequence[str] = (),
    required: bool = False,
    **kw: Any,
) -> argparse.Action:
    """``parser.add_argument(*names, **kw)``, with hidden old spellings ``old`` that still work.

    Each old spelling stores into the same dest and prints one deprecation line naming the new
    one (``deprecated_argument``). A positional with old spellings, or a ``required`` option with
    them, defaults to absent and is checked after parsing (``CommandParser``): argparse would
    otherwise refuse the old spelling.
    """
    positional = not names[0].startswith("-")
    if not old:
        if not positional:
            kw["required"] = required
        return parser.add_argument(*names, **kw)
    if positional:
        kw.update(metavar=kw.get("metavar", names[0].upper()), nargs="?")
    if positional or required:
        kw["default"] = argparse.SUPPRESS
    action = parser.add_argument(*names, action=_Store, **kw)
    action.pc_required = positional or required  # type: ignore[attr-defined]
    name = _display(action)
    new = f"the positional {name}" if positional else names[-1]
    alias = {k: v for k, v in kw.items() if k in ("type", "choices")}
    for spelling in old:
        deprecated_argument(parser, spelling, into=action.dest, new=new, name=name, **alias)
    return action


def set_command(parser: argparse.ArgumentParser, func: Command) -> None:
    """Make ``parser`` a leaf command running ``func``; ``command_name`` is its path for errors."""
    parser.set_defaults(func=func, command_name=parser.prog.removeprefix(PROG + " "))


def add_deprecated_command(
    sub: argparse._SubParsersAction, old: str, new: str, **kw: Any
) -> argparse.ArgumentParser:
    """A hidden top-level command ``old`` that works as ``new`` (give it ``new``'s arguments).

    It has no ``help``, so argparse leaves it out of the command listing; its own ``--help``
    starts with the deprecation, and parsing it prints one line naming ``new``.
    """
    if DEPRECATED.get(old) != new:
        raise RuntimeError(f"add {old!r}: {new!r} to DEPRECATED in pc_prior/cli.py")
    note = f"Deprecated: '{PROG} {old}' is '{PROG} {new}', and goes in the next release."
    kw["description"] = f"{note}\n\n{kw.get('description') or ''}".strip()
    p = sub.add_parser(old, **kw)
    p.replaced_by = new
    return p


class Lazy:
    """A command function named ``"module:function"``, imported when the command runs.

    Parsers of commands whose code imports CompressAI or Lightning set it, so that building the
    parser (``--help`` included) imports neither.
    """

    def __init__(self, target: str) -> None:
        self.target = target

    def resolve(self) -> Command:
        module, _, name = self.target.partition(":")
        func: Command = getattr(importlib.import_module(module), name)
        return func

    def __call__(self, args: argparse.Namespace) -> int:
        return self.resolve()(args)

    def __repr__(self) -> str:
        return f"Lazy({self.target!r})"


class _PassThrough(argparse.Action):
    """Everything after the verb, for the tool a pass-through command hands it to; ``-h``/``--help``
    print this parser's help (the tool is imported only when the command runs). With ``verbatim``,
    a leading ``--`` passes everything after it as it is, ``-h`` included (the tool's own help)."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        self.verbatim: bool = kw.pop("verbatim", False)
        super().__init__(option_strings, dest, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        values = list(values)
        if self.verbatim and values[:1] == ["--"]:
            values = values[1:]
        elif "-h" in values or "--help" in values:
            parser.print_help()
            parser.exit()
        setattr(namespace, self.dest, values)


def add_pass_through_command(
    sub: argparse._SubParsersAction,
    name: str,
    target: str,
    *,
    dest: str,
    description: str,
    verbatim: bool = False,
    new: str | None = None,
    **kw: Any,
) -> argparse.ArgumentParser:
    """A leaf command ``name`` that hands every argument after its verb to another tool
    (LightningCLI, CompressAI's scripts), as the list ``dest``, and runs ``Lazy(target)``.

    It has no option of its own but ``-h``/``--help`` (``_PassThrough``, ``verbatim`` included);
    ``description`` is wrapped at 79 columns and ``kw`` (``help``, ``usage``, ``epilog``) go to
    ``add_parser``. With ``new``, ``name`` is a deprecated command that works as ``new``
    (``add_deprecated_command``). Shared so that every pass-through command parses alike.
    """
    kw.update(
        description=textwrap.fill(description, 79),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        prefix_chars="\0",  # no option of its own: the tool parses them all
    )
    p = sub.add_parser(name, **kw) if new is None else add_deprecated_command(sub, name, new, **kw)
    p.add_argument(
        dest,
        nargs=argparse.REMAINDER,
        action=_PassThrough,
        verbatim=verbatim,
        help=argparse.SUPPRESS,
    )
    set_command(p, Lazy(target))
    return p


# ----------------------------------------------------------------------------------------------
# pc-prior prior fit|adapt (pc_prior.integrations.cli runs them)

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
)  #: the PCEntropyBottleneck.fit settings 'prior fit' exposes (--latents, --max-items, ...)
#: the PCConditional.fit settings that 'prior fit --conditional' exposes (--cond-latents, ...)
CONDITIONAL_OPTIONS = ("num_latents", "steps", "max_items", "structure", "context")
ADAPT_OPTIONS = (
    "max_items",
    "epochs",
    "full_batch_epochs",
    "batch_size",
    "step_size",
    "group_epochs",
    "finetune_steps",
)  # the settings a warm start uses: alphabets, structure, K, leaves and context are the file's
ADAPT_CONDITIONAL_OPTIONS = ("steps", "max_items")  # --cond-*


def register_prior(sub: argparse._SubParsersAction) -> None:
    """Add ``prior fit`` and ``prior adapt``."""
    from .settings import CONDITIONAL_CONTEXTS

    p = sub.add_parser(
        "prior",
        help="PC entropy models in CompressAI codecs: fit them into a frozen codec, or adapt "
        "fitted ones to new images (then pc-prior eval)",
    )
    g = p.add_subparsers(dest="prior_command", metavar="ACTION", required=True)

    fit = g.add_parser(
        "fit",
        help="swap a codec's entropy bottleneck (and with --conditional its Gaussian "
        "conditional) for circuits fitted on an image folder",
        description="Fit probabilistic circuits into the frozen codec MODEL on the images of "
        "--data and save the codec with them (-o); measure it with 'pc-prior eval'.",
    )
    add_argument(
        fit,
        "model",
        metavar="MODEL",
        old=("--codec",),
        help="codec file to fit priors into (the shared/models format, a CompressAI checkpoint "
        "or a pc-prior codec)",
    )
    deprecated_argument(
        fit,
        "--init",
        into="model",
        new=f"'{PROG} prior adapt MODEL'",
        name="MODEL",
        also={"adapt": True},
    )
    _prior_io(fit)
    add_arguments(fit, BottleneckFit(), BOTTLENECK_OPTIONS, flags={"num_latents": "latents"})
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
    _prior_run(fit)
    fit.set_defaults(adapt=False)
    set_command(fit, Lazy("pc_prior.integrations.cli:prior_fit"))

    adapt = g.add_parser(
        "adapt",
        help="continue the fitted PC priors of a codec on new images (adapt them to a domain)",
        description="Continue every fitted PC entropy model of MODEL (a 'pc-prior prior fit' "
        "output) on the images of --data and save the codec (-o). Alphabets, structure, sizes, "
        "leaves and contexts are the file's; only the schedule below is chosen here.",
    )
    add_argument(
        adapt,
        "model",
        metavar="MODEL",
        help="a codec with fitted PC priors (a 'pc-prior prior fit' output)",
    )
    _prior_io(adapt)
    add_arguments(adapt, BottleneckFit(), ADAPT_OPTIONS)
    add_arguments(adapt, ConditionalFit(), ADAPT_CONDITIONAL_OPTIONS, prefix="cond-")
    _prior_run(adapt)
    adapt.set_defaults(adapt=True)
    set_command(adapt, Lazy("pc_prior.integrations.cli:prior_fit"))


def _prior_io(p: argparse.ArgumentParser) -> None:
    add_argument(
        p,
        "--data",
        old=("--images",),
        required=True,
        help="folder of training images, e.g. BSDS500 (searched recursively)",
    )
    add_argument(p, "-o", "--output", old=("--out",), required=True, help="where to save the codec")
    add_argument(
        p,
        "--limit",
        old=("--max-images",),
        type=int,
        default=ImageFit.max_images,
        help="at most N images: a larger folder gives a uniform random sample of N (default: "
        "%(default)s)",
    )
    p.add_argument(
        "--multiple",
        type=int,
        default=ImageFit.multiple,
        help="crop training images to multiples of this (default: %(default)s)",
    )


def _prior_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device of the fit, e.g. cuda (the codec file is saved for any device; "
        "default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--seed",
        type=int,
        default=BottleneckFit.seed,
        help="seed of the fits (default: %(default)s)",
    )


# ----------------------------------------------------------------------------------------------
# pc-prior codec train|finetune and pc-prior lightning fit (pc_prior.train.cli runs them)

LIGHTNING_USAGE = (
    "%(prog)s [-h | --lightning-help] [-c CONFIG] [--ckpt_path PATH] [--GROUP.NAME VALUE ...]"
)
LIGHTNING_EPILOG = """\
options (everything but -h and --lightning-help goes to LightningCLI):
  -h, --help            this help
  --lightning-help      LightningCLI's full list of options for this command
  -c, --config CONFIG   a YAML config (configs/*.yaml); options after it override it
  --ckpt_path PATH      resume from a checkpoint ('last': <checkpoint.dirpath>/last.ckpt)
  --trainer.*           Lightning Trainer options, e.g. --trainer.max_steps 10000
  --model.*, --data.*   the model's and data module's arguments, e.g. --data.train_dir DIR
  --checkpoint.*        ModelCheckpoint options (default: every epoch, plus last.ckpt)

Every run writes CSV and TensorBoard logs under trainer.default_root_dir (unless trainer.logger is
set), checkpoints, and interrupted.ckpt on Ctrl+C."""

FINETUNE_OPTIONS = (
    "steps",
    "batch_size",
    "patch_size",
    "lr",
    "prior_lr",
    "aux_lr",
    "prior_images",
    "val_images",
    "checkpoints",
    "num_workers",
    "seed",
    "refit",
)  #: the settings.Finetune fields 'codec finetune MODEL --data DIR -o OUT' exposes
FINETUNE_USAGE = (
    "%(prog)s MODEL --data DIR -o OUTPUT [--val DIR] [--device {auto,cpu,cuda}] [options]\n"
    "       %(prog)s [-h | --lightning-help] [-c CONFIG] [--GROUP.NAME VALUE ...]"
)


def finetune_parser(
    defaults: Any = None, prog: str = "pc-prior codec finetune"
) -> argparse.ArgumentParser:
    """The options of ``codec finetune MODEL --data DIR -o OUTPUT``, with ``defaults`` (a
    ``settings.Finetune``; None: the CPU defaults) as their defaults. ``pc_prior.train.cli``
    parses with it; its option list is also the command's ``--help``."""
    from .settings import Finetune, add_arguments

    p = argparse.ArgumentParser(prog=prog, usage=FINETUNE_USAGE, add_help=False)
    p.add_argument(
        "model",
        metavar="MODEL",
        help="the codec to fine-tune: a codec file (shared/models, pc-prior prior fit or codec "
        "finetune output), a CompressAI checkpoint or state dict (with --arch), or a zoo name "
        "ARCH:qN (downloads)",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="folder of training images")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="the fine-tuned codec file (pc-prior eval reads it); OUTPUT's run folder (OUTPUT "
        "with the suffix .run) holds checkpoints, logs and the config, and the same command "
        "again resumes from its last checkpoint",
    )
    p.add_argument(
        "--val",
        metavar="DIR",
        help="folder of validation images, coded at every checkpoint (never your test set); "
        "default: no validation",
    )
    p.add_argument("--arch", help="the architecture of a checkpoint that does not name its own")
    p.add_argument(
        "--own-entropy-models",
        action="store_true",
        help="fine-tune the codec with CompressAI's own entropy models instead of PC ones (a "
        "base line; 'pc-prior prior fit' on its output gives it frozen PC priors)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to train; it also picks the defaults: those below on a CPU, "
        "settings.FINETUNE_GPU's on a GPU (20000 steps of 16 crops, initial priors on 1000 "
        "crops) (default: %(default)s)",
    )
    p.add_argument(
        "--restart", action="store_true", help="start over instead of resuming OUTPUT's run"
    )
    add_arguments(p, defaults if defaults is not None else Finetune(), FINETUNE_OPTIONS)
    return p


LIGHTNING_COMMANDS: dict[str, tuple[str, str, str]] = {
    # path: (help, description, command function)
    "codec train": (
        "train a CompressAI codec from scratch (CodecModule, ImageFolderDataModule)",
        "Train a CompressAI codec from scratch with LightningCLI: pc_prior.train.CodecModule "
        "on pc_prior.train.ImageFolderDataModule, e.g. pc-prior codec train --data.train_dir DIR "
        "--data.val_dir DIR --model.quality 2 --trainer.max_steps 10000, or --config "
        "configs/codec_factorized.yaml.",
        "pc_prior.train.cli:codec_train",
    ),
    "codec finetune": (
        "fine-tune a trained codec and a PC prior jointly for rate-distortion (RDModule)",
        "Joint rate-distortion fine-tuning of a trained codec and its PC entropy models (every "
        "one, with the default fits and contexts), on random crops of an image folder: pc-prior "
        "codec finetune MODEL --data DIR -o OUTPUT writes the fine-tuned codec file that "
        "pc-prior eval reads, with defaults for a 2-core CPU or a GPU (pc_prior.settings."
        "Finetune), progress, and a resumable run. The second form is LightningCLI's for "
        "pc_prior.train.RDModule on pc_prior.train.ImageFolderDataModule, for full control, e.g. "
        "--config configs/rd_hyperprior.yaml.",
        "pc_prior.train.cli:codec_finetune",
    ),
    "lightning fit": (
        "train any LightningModule on any LightningDataModule named in a config (class_path)",
        "LightningCLI's fit for any LightningModule and LightningDataModule, chosen by "
        "class_path, e.g. the HCLT prior on MNIST: pc-prior lightning fit --config "
        "configs/mnist_hclt.yaml --trainer.max_epochs 1.",
        "pc_prior.train.cli:lightning_fit",
    ),
}


def _add_lightning_command(
    sub: argparse._SubParsersAction, path: str, *, replaced_by: str | None = None
) -> None:
    """Add ``path``'s verb to ``sub``, or with ``replaced_by`` that deprecated name for it."""
    help_, description, target = LIGHTNING_COMMANDS[path]
    kw: dict[str, Any] = {"help": help_} if replaced_by is None else {"new": path}
    epilog, usage = LIGHTNING_EPILOG, LIGHTNING_USAGE
    if path == "codec finetune":  # its own form first, then LightningCLI's
        own = finetune_parser().format_help().split("\n\n", 1)[1]  # without the usage lines
        epilog = f"{own}\nthe LightningCLI form, {epilog}"
        usage = FINETUNE_USAGE
    add_pass_through_command(
        sub,
        replaced_by or path.split()[-1],
        target,
        dest="lightning_args",
        description=description,
        epilog=epilog,
        usage=usage,
        **kw,
    )


def register_codec(sub: argparse._SubParsersAction) -> None:
    """Add ``codec train`` and ``codec finetune`` (and the deprecated ``train-codec``)."""
    p = sub.add_parser(
        "codec",
        help="train a CompressAI codec, or fine-tune one jointly with a PC prior (Lightning)",
    )
    g = p.add_subparsers(dest="codec_command", metavar="ACTION", required=True)
    _add_lightning_command(g, "codec train")
    _add_lightning_command(g, "codec finetune")
    _add_lightning_command(sub, "codec train", replaced_by="train-codec")


def register_lightning(sub: argparse._SubParsersAction) -> None:
    """Add ``lightning fit`` (and the deprecated ``fit``)."""
    p = sub.add_parser(
        "lightning",
        help="LightningCLI for any LightningModule/LightningDataModule chosen in a config",
    )
    g = p.add_subparsers(dest="lightning_command", metavar="ACTION", required=True)
    _add_lightning_command(g, "lightning fit")
    _add_lightning_command(sub, "lightning fit", replaced_by="fit")


# ----------------------------------------------------------------------------------------------


def register_functions() -> list[Register]:
    """The distinct register functions of ``COMMANDS``, in table order (each called once)."""
    funcs: list[Register] = []
    for target in dict.fromkeys(COMMANDS.values()):
        module, _, name = target.partition(":")
        funcs.append(getattr(importlib.import_module(module), name))
    return funcs


def build_parser() -> CommandParser:
    from . import __version__

    parser = CommandParser(
        prog=PROG,
        description="Probabilistic circuits as entropy models for learned image compression.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
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
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except (PCPriorError, FileNotFoundError) as e:  # bad input: one line; anything else: a bug
        print(f"{PROG} {args.command_name}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
