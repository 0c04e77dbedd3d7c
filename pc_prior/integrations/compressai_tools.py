"""CompressAI's own tools on PC codecs: ``eval_model``/``update_model`` run on pc-prior codec files,
with PC-aware model classes registered in CompressAI's tables for the run only.

The PC-aware classes (``pc_aware_class``: CompressAI's ``from_state_dict`` reading state dicts
with PC entropy models) and the reading of CompressAI checkpoints are
``pc_prior.integrations.compressai_checkpoints``'; pc-prior's own codec files are ``codec_file``'s.
This module's invariants and their reasons:

- Importing pc-prior changes nothing in CompressAI. The PC-aware classes are put into
  CompressAI's tables (``compressai.zoo.image.model_architectures`` and the tools' own copies)
  only inside ``registered_architectures()``, which restores every table on exit.
- CompressAI reads only what pc-prior verified. ``run_eval_model``/``run_update_model`` read every
  checkpoint the tool is given with ``pc_prior.files.read_file`` (zip CRCs, ``weights_only``,
  the content digest where the file carries one, which every pc-prior codec file does); a
  pc-prior codec file is also loaded in full (fields, format version, architecture, coding-table
  digests) and must be of the architecture given with ``-a``. The tool's loader then gets, in
  memory, a plain checkpoint ``{"state_dict": ...}`` made from that verified content (for a codec
  file, the state dict of the model pc-prior loaded from it, so however the file stores its
  circuits CompressAI sees CompressAI's layout): its own ``torch.load``, ``from_state_dict`` and
  ``update`` run unchanged, and no second read of the file can see other bytes.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from compressai.models.base import CompressionModel
from torch import nn

from ..errors import InputError, ModelLoadError
from ..files import read_file
from .codec_file import CODEC_FORMAT, codec_from_content
from .compressai_checkpoints import _base_class, _float_state, checkpoint_state, pc_aware_class

__all__ = [
    "pc_architectures",
    "registered_architectures",
    "run_eval_model",
    "run_update_model",
]

EVAL_MODEL = "compressai.utils.eval_model.__main__"
UPDATE_MODEL = "compressai.utils.update_model.__main__"


# -- PC-aware classes in CompressAI's tables --------------------------------------------------------


def pc_architectures() -> dict[str, type[nn.Module]]:
    """CompressAI's image zoo architectures (``bmshj2018-factorized``, ``bmshj2018-hyperprior``,
    ``mbt2018-mean``, ...) as PC-aware classes. Where a PC entropy model cannot serve a module
    (mbt2018's and cheng2020's conditionals), loading one there raises ``UnsupportedModelError``."""
    from compressai.zoo.image import model_architectures

    return {
        arch: pc_aware_class(cls)
        for arch, cls in model_architectures.items()
        if isinstance(cls, type) and issubclass(cls, CompressionModel)
    }


@contextmanager
def registered_architectures(*tables: dict[str, Any]) -> Iterator[None]:
    """Inside: ``compressai.zoo.image.model_architectures`` and ``tables`` (e.g. ``update_model``'s
    ``models``) give PC-aware classes for every image zoo class they hold; on exit every table
    holds exactly what it held before (entries CompressAI's modules added meanwhile included)."""
    import compressai.zoo.image as zoo

    unique = {id(t): t for t in (zoo.model_architectures, *tables)}
    saved = [(t, dict(t)) for t in unique.values()]
    served = {id(c) for c in zoo.model_architectures.values() if isinstance(c, type)}
    try:
        for table, before in saved:
            for key, cls in before.items():
                if id(cls) in served and isinstance(cls, type):
                    table[key] = pc_aware_class(cls)
        yield
    finally:
        for table, before in saved:
            table.clear()
            table.update(before)


# -- the tools --------------------------------------------------------------------------------------


def _verified_checkpoint(path: Path, want: type | None, flag: str) -> bytes:
    """A plain checkpoint ``{"state_dict": ...}`` (serialized) of the file ``path``, verified as the
    module docstring says; a pc-prior codec file must hold a ``want`` (the class ``flag`` names)."""
    from compressai.zoo.image import model_architectures

    obj, digested = read_file(path)
    fmt = obj.get("format")
    if fmt is not None and fmt != CODEC_FORMAT:
        raise ModelLoadError(
            f"{path} has format {fmt!r}, not an image codec file ({CODEC_FORMAT!r})"
        )
    if fmt is not None or {"arch", "quality", "state_dict"} <= obj.keys():
        net, ck = codec_from_content(path, obj, digested)  # fields, digest, tables: all checked
        if want is not None and type(net) is not want:
            fits = [a for a, c in model_architectures.items() if _base_class(c) is type(net)]
            raise InputError(
                f"{path} holds a {type(net).__name__} (arch {ck['arch']!r}), not the "
                f"{want.__name__} of {flag}: pass -a {fits[0] if fits else ck['arch']}"
            )
        # the loaded model's own state dict, not the file's: the file's may be stored compactly
        # (pc-prior's packing), and the loaded model is what every check above passed
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    else:
        found = checkpoint_state(obj)
        if found is None:
            raise ModelLoadError(
                f"{path} is neither a codec file (arch, quality, state_dict) nor a state dict"
            )
        state = _float_state(found)
    buf = io.BytesIO()
    torch.save({"state_dict": state}, buf)
    return buf.getvalue()


@contextmanager
def _patched(module: Any, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


@contextmanager
def _tool(module_name: str, command: str) -> Iterator[Any]:
    """CompressAI's tool module ``module_name``, imported, its usage lines naming ``command``; on
    exit the zoo table holds what it held before (importing ``eval_model`` adds the VBR
    architectures to it), and torch's thread count (``eval_model`` sets 1 on import) and
    ``sys.argv`` are what they were."""
    import importlib

    import compressai.zoo.image as zoo

    before = dict(zoo.model_architectures)
    threads = torch.get_num_threads()
    argv0 = sys.argv[:1]
    sys.argv[:1] = [f"pc-prior compressai {command} --"]  # argparse's prog: basename(argv[0])
    try:
        yield importlib.import_module(module_name)
    finally:
        sys.argv[:1] = argv0
        zoo.model_architectures.clear()
        zoo.model_architectures.update(before)
        torch.set_num_threads(threads)


def run_eval_model(argv: Sequence[str]) -> int:
    """CompressAI's ``python -m compressai.utils.eval_model`` with ``argv``, PC codecs readable.

    In ``checkpoint`` mode every ``-p`` file is verified first (module docstring) and a pc-prior
    codec file must hold the ``-a`` architecture; then ``eval_model.main(argv)`` runs as
    CompressAI wrote it, with the PC-aware classes registered and its loader reading the verified
    content. Its output (JSON on stdout, ``-d``/``-o`` files) and its exits (``SystemExit``) are
    its own.
    """
    argv = list(argv)
    with _tool(EVAL_MODEL, "eval-model") as tool:
        args, _ = tool.setup_args().parse_known_args(argv)
        verified: dict[str, bytes] = {}
        if getattr(args, "source", None) == "checkpoint":
            want = _base_class(tool.architectures.get(args.architecture))
            flag = f"-a {args.architecture}"
            for p in args.checkpoint_paths:
                verified[p] = _verified_checkpoint(Path(p), want, flag)
        original = tool.load_checkpoint

        def load_checkpoint(arch: str, no_update: bool, checkpoint_path: Any) -> nn.Module:
            return original(arch, no_update, io.BytesIO(verified[checkpoint_path]))

        with registered_architectures(), _patched(tool, "load_checkpoint", load_checkpoint):
            tool.main(argv)
    return 0


def run_update_model(argv: Sequence[str]) -> int:
    """CompressAI's ``python -m compressai.utils.update_model`` with ``argv``, PC codecs readable.

    The input file is verified first (module docstring); ``update_model.main(argv)`` then runs as
    CompressAI wrote it, with the PC-aware classes registered: it rebuilds the coding tables
    (unless ``--no-update``) and writes the state dict to ``<name>-<sha256 prefix><ext>`` (in
    ``-d``, else the current folder). That export is CompressAI's plain state dict, without
    pc-prior's digest: read it with ``pc-prior eval FILE --arch ARCH`` or ``pc-prior compressai
    eval-model``.
    """
    argv = list(argv)
    with _tool(UPDATE_MODEL, "update-model") as tool:
        args = tool.setup_args().parse_args(argv)
        path = Path(args.filepath).resolve()
        want = _base_class(tool.models.get(args.architecture))
        data = _verified_checkpoint(path, want, f"-a {args.architecture}")
        original = tool.load_checkpoint

        def load_checkpoint(filepath: Any, arch: str) -> Any:
            if Path(filepath) != path:
                raise InputError(f"update_model asked for {filepath}, not the verified {path}")
            return original(io.BytesIO(data), arch)

        with (
            registered_architectures(tool.models),
            _patched(tool, "load_checkpoint", load_checkpoint),
        ):
            tool.main(argv)
    print(f"pc-prior compressai update-model: wrote {_export_of(args, path)}", file=sys.stderr)
    return 0


def _export_of(args: Any, source: Path) -> str:
    """The file ``update_model`` just wrote: ``<name>-<hash><ext>``, the newest such one."""
    folder = Path(args.dir) if args.dir is not None else Path.cwd()
    stem = args.name or source.name.split(".")[0]
    ext = "".join(source.suffixes)
    found = sorted(folder.glob(f"{stem}-*{ext}"), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found else str(folder)


# -- pc-prior compressai eval-model|update-model (pc_prior.compressai_cli parses them) ------------


def eval_model_command(args: Any) -> int:
    """``pc-prior compressai eval-model``."""
    return run_eval_model(args.tool_args)


def update_model_command(args: Any) -> int:
    """``pc-prior compressai update-model``."""
    return run_update_model(args.tool_args)
