"""CompressAI's own tools on PC codecs: PC-aware ``from_state_dict``, CompressAI checkpoints of PC
codecs, and ``eval_model``/``update_model`` run on pc-prior codec files.

CompressAI 1.2.8 builds a model from weights with ``model_architectures[arch].from_state_dict``,
which makes the plain class and loads the state dict into it: a state dict holding PC entropy
models (``entropy_bottleneck.pc.*``, ``gaussian_conditional._pc_*``) fails there with a wall of
missing and unexpected keys. This module closes that gap; its invariants and their reasons:

- Which modules hold PC entropy models is read from the keys alone: a module name ``P`` does iff
  ``P._pc_parent`` or ``P._pc_tables_sha256`` is a key (every ``PCEntropyModel`` saves both,
  fitted or not). Nothing else is guessed: sizes and structure come from the weights, as the
  PC modules' own ``_load_from_state_dict`` rebuilds them, and that loader also recomputes their
  coding tables and checks them against the saved digest, so a changed circuit parameter fails
  the load instead of coding with other tables.
- ``pc_aware_class(cls)`` is ``cls`` with one change: ``load_state_dict`` first swaps a PC entropy
  model in (``swap_entropy_model``) wherever the state dict has one. ``cls.from_state_dict``
  (inherited, CompressAI's own) then works unchanged, and a state dict without PC keys loads
  exactly as into ``cls``.
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
- CompressAI checkpoints (``{"epoch", "state_dict", "optimizer", ...}`` as its ``examples/train.py``
  saves, ``{"network": ...}``, plain state dicts, ``update_model`` exports) carry no digest and no
  architecture: ``codec_from_checkpoint`` loads them given ``arch`` (zip CRCs and the PC modules'
  table digests still hold), and without it says in one line what the file is and which
  architectures its weights fit. Their entropy models are kept as loaded and verified; only
  CompressAI's own ones get ``update(force=True)``, as ``eval_model`` does for checkpoints.
"""

from __future__ import annotations

import functools
import io
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.base import CompressionModel, get_scale_table
from torch import nn

from ..errors import CheckpointError, InputError, ModelLoadError
from ..files import read_file
from .codec_file import CODEC_FORMAT, _float_state, codec_from_content
from .swap import PC_MODULES, swap_entropy_model

__all__ = [
    "PCStateDict",
    "checkpoint_state",
    "codec_from_checkpoint",
    "describe_checkpoint",
    "fitting_architectures",
    "pc_architectures",
    "pc_aware_class",
    "pc_module_names",
    "registered_architectures",
    "run_eval_model",
    "run_update_model",
    "update_compressai_modules",
]

PC_MARKERS = ("_pc_parent", "_pc_tables_sha256")  # persistent buffers of every PCEntropyModel
STATE_KEYS = ("network", "state_dict", "model_state_dict")  # eval_model's order: the last one wins
EVAL_MODEL = "compressai.utils.eval_model.__main__"
UPDATE_MODEL = "compressai.utils.update_model.__main__"


# -- PC-aware model classes -------------------------------------------------------------------------


def pc_module_names(state_dict: Mapping[str, Any]) -> list[str]:
    """The modules of ``state_dict`` that hold PC entropy models (module docstring), in key order."""
    names: dict[str, None] = {}
    for key in state_dict:
        head, _, leaf = str(key).rpartition(".")
        if head and leaf in PC_MARKERS:
            names[head] = None
    return list(names)


class PCStateDict:
    """Mixin before a CompressAI model class: ``load_state_dict`` swaps in the PC entropy models
    that the state dict holds, then loads it as the class does."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        """Swap a PC entropy model in wherever ``state_dict`` holds one (``CheckpointError`` where
        the model has no such module), then load it as the class does."""
        model: nn.Module = self  # type: ignore[assignment]
        todo = []
        for name in pc_module_names(state_dict):
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise CheckpointError(
                    f"the state dict has a PC entropy model at {name}, which "
                    f"{_base_class(type(model)).__name__} does not have: the weights are of "
                    "another architecture"
                ) from None
            if not isinstance(module, PC_MODULES):
                todo.append(name)
        if todo:
            swap_entropy_model(model, todo)
        return super().load_state_dict(state_dict, strict=strict)  # type: ignore[misc]


@functools.cache
def pc_aware_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``cls`` whose ``from_state_dict``/``load_state_dict`` read state dicts with PC entropy models.

    One class per ``cls`` (cached), named ``PC<cls name>``; it adds nothing else, so its instances
    code, save and compare like ``cls``'s (a subclass: ``isinstance(net, cls)`` holds).
    """
    if not (isinstance(cls, type) and issubclass(cls, CompressionModel)):
        raise InputError(f"expected a CompressAI CompressionModel class, got {cls!r}")
    if issubclass(cls, PCStateDict):
        return cls
    return type(
        f"PC{cls.__name__}",
        (PCStateDict, cls),
        {
            "__module__": __name__,
            "__doc__": f"{cls.__name__} reading PC entropy models.",
            "pc_base": cls,
        },
    )


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


# -- CompressAI checkpoints -----------------------------------------------------------------------


def checkpoint_state(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The state dict in a CompressAI checkpoint, found as ``eval_model`` finds it (``network``,
    ``state_dict`` or ``model_state_dict``, else the dict itself); None unless it maps names to
    tensors."""
    state: Any = obj
    for key in STATE_KEYS:
        if isinstance(obj.get(key), dict):
            state = obj[key]
    if not state or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        return None
    return dict(state)


def describe_checkpoint(obj: Mapping[str, Any], state: Mapping[str, Any] | None = None) -> str:
    """What a file without pc-prior's fields is, in a few words, e.g. "a CompressAI training
    checkpoint (epoch 12) with PC entropy models (entropy_bottleneck)"."""
    if state is None:
        state = checkpoint_state(obj) or {}
    epoch = obj.get("epoch")
    epoch_text = (
        f" (epoch {epoch})" if isinstance(epoch, int) and not isinstance(epoch, bool) else ""
    )
    if "pytorch-lightning_version" in obj:
        what = f"a Lightning checkpoint{epoch_text}"
    elif isinstance(obj.get("state_dict"), dict) and ("optimizer" in obj or "epoch" in obj):
        what = f"a CompressAI training checkpoint{epoch_text}"
    elif any(isinstance(obj.get(k), dict) for k in STATE_KEYS):
        key = next(k for k in reversed(STATE_KEYS) if isinstance(obj.get(k), dict))
        what = f"a checkpoint with a '{key}' state dict{epoch_text}"
    else:
        what = "a plain state dict"
    names = pc_module_names(state)
    if names:
        what += f" with PC entropy models ({', '.join(names)})"
    return what


def _entropy_prefixes(net: nn.Module) -> tuple[str, ...]:
    return tuple(
        name + "."
        for name, m in net.named_modules()
        if name and isinstance(m, (EntropyBottleneck, GaussianConditional))
    )


def _layout_fits(net: nn.Module, state: Mapping[str, Any]) -> bool:
    """Whether ``state`` has ``net``'s keys and shapes outside its entropy models, and PC entropy
    models only where ``net`` has entropy models (theirs are checked by their own loaders)."""
    prefixes = _entropy_prefixes(net)
    if any(not (n + ".").startswith(prefixes) for n in pc_module_names(state)):
        return False
    mine = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith(prefixes)}
    theirs = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(prefixes)}
    return mine == theirs


def fitting_architectures(state: Mapping[str, Any]) -> list[str]:
    """The image zoo architectures whose layout (keys and shapes outside the entropy models) the
    weights ``state`` have, sizes taken from the weights as ``from_state_dict`` takes them.

    Builds each candidate at the weights' sizes without loading anything (no coding tables are
    rebuilt); candidates whose ``from_state_dict`` cannot even read their sizes are skipped.
    """
    from compressai.zoo.image import model_architectures

    found = []
    for arch, cls in sorted(model_architectures.items()):
        if not (isinstance(cls, type) and issubclass(cls, CompressionModel)):
            continue
        seen: list[bool] = []

        def probe(self: nn.Module, sd: Mapping[str, Any], strict: bool = True) -> None:
            seen.append(_layout_fits(self, sd))  # noqa: B023 (called right here, in this loop)

        probe_cls = type(f"Probe{cls.__name__}", (cls,), {"load_state_dict": probe})
        try:
            with torch.no_grad():
                probe_cls.from_state_dict(state)  # type: ignore[attr-defined]
        except Exception:  # sizes it reads are absent or odd: not this architecture
            continue
        if seen and seen[0]:
            found.append(arch)
    return found


def _fit_hint(obj: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """Which ``--arch`` to pass, from the architectures the weights fit."""
    fits = fitting_architectures(state)
    if len(fits) == 1:
        return f"its weights fit {fits[0]}: pass --arch {fits[0]} (arch={fits[0]!r})"
    if fits:
        return f"its weights fit {', '.join(fits)}: pass one of them with --arch (arch=...)"
    if "pytorch-lightning_version" in obj:
        return (
            "its weights are the LightningModule's, not a codec's: pass the codec file its run "
            "exported (<log_dir>/codec.pt)"
        )
    from compressai.zoo.image import model_architectures

    return (
        "its weights fit no image zoo architecture as saved; pass the architecture it was "
        f"trained as with --arch (arch=...), one of {', '.join(sorted(model_architectures))}"
    )


def _one_line(e: BaseException, limit: int = 300) -> str:
    """``e``'s message on one line, without torch's "Error(s) in loading state_dict for X:"."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = re.sub(r"^Error\(s\) in loading state_dict for \w+: ", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def update_compressai_modules(net: nn.Module) -> None:
    """``update(force=True)`` of the model's CompressAI entropy models (their CDFs follow the
    loaded weights, as ``eval_model`` does); PC entropy models keep the tables they loaded and
    verified."""
    for _, m in net.named_modules():
        if isinstance(m, PC_MODULES):
            continue
        if isinstance(m, EntropyBottleneck):
            m.update(force=True)
        elif isinstance(m, GaussianConditional):
            m.update_scale_table(get_scale_table(), force=True)


def codec_from_checkpoint(
    path: Path, obj: Mapping[str, Any], arch: str | None
) -> tuple[nn.Module, dict[str, Any]]:
    """(codec on CPU, info) for a CompressAI checkpoint or state dict ``obj`` read from ``path``
    (by ``pc_prior.files.read_file``), built as the image zoo architecture ``arch``.

    ``info`` holds ``pc_modules`` (the modules with PC entropy models) and the checkpoint's
    ``epoch`` where it has one. A file that is no state dict, or no ``arch``, raises
    ``ModelLoadError`` saying what the file is and which architecture its weights fit; an unknown
    ``arch`` or weights of another layout ``ModelLoadError``; weights of ``arch``'s layout that do
    not load (a PC entropy model whose tables do not match their digest) ``CheckpointError``.
    """
    from compressai.zoo.image import model_architectures

    state = checkpoint_state(obj)
    if state is None:
        raise ModelLoadError(
            f"{path} is neither a codec file (arch, quality, state_dict) nor a state dict"
        )
    what = describe_checkpoint(obj, state)
    if arch is None:
        raise ModelLoadError(
            f"{path} is {what}, which does not name its architecture: {_fit_hint(obj, state)}"
        )
    if arch not in model_architectures:
        raise ModelLoadError(
            f"unknown architecture {arch!r}; known: {', '.join(sorted(model_architectures))}"
        )
    state = _float_state(state)
    try:
        net = pc_aware_class(model_architectures[arch]).from_state_dict(state)  # type: ignore[attr-defined]
    except Exception as e:
        if arch in fitting_architectures(state):
            raise CheckpointError(
                f"{path} ({what}) has the layout of {arch} but does not load: {_one_line(e)}"
            ) from e
        raise ModelLoadError(
            f"{path} ({what}) does not fit architecture {arch} ({_one_line(e, 160)}); "
            f"{_fit_hint(obj, state)}"
        ) from e
    if pc_module_names(state):
        update_compressai_modules(net)
    else:
        net.update(force=True)  # as CompressAI's eval_model does for checkpoints
    info: dict[str, Any] = {"pc_modules": pc_module_names(state)}
    epoch = obj.get("epoch")
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        info["epoch"] = epoch
    return net, info


# -- the tools --------------------------------------------------------------------------------------


def _base_class(cls: Any) -> Any:
    """The CompressAI class of a PC-aware class (``cls`` itself for any other)."""
    return vars(cls).get("pc_base", cls) if isinstance(cls, type) else cls


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
