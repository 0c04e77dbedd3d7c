"""CompressAI checkpoints and state dicts of PC codecs: PC-aware model classes, and reading the
files CompressAI's tools and training write (no pc-prior fields, no digest, no architecture).

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
- CompressAI checkpoints (``{"epoch", "state_dict", "optimizer", ...}`` as its ``examples/train.py``
  saves, ``{"network": ...}``, plain state dicts, ``update_model`` exports) carry no digest and no
  architecture: ``codec_from_checkpoint`` loads them given ``arch`` (zip CRCs and the PC modules'
  table digests still hold), and without it says in one line what the file is and which
  architectures its weights fit. Their entropy models are kept as loaded and verified; only
  CompressAI's own ones get ``update(force=True)``, as ``eval_model`` does for checkpoints.

Where it sits: pc-prior's own codec files are ``codec_file``'s (which calls this module for the
files that are not codec files); running CompressAI's ``eval_model``/``update_model`` on them is
``compressai_tools``'. This module imports neither, so neither import is deferred.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.base import CompressionModel, get_scale_table
from torch import nn

from ..errors import CheckpointError, InputError, ModelLoadError
from .swap import PC_MODULES, swap_entropy_model

__all__ = [
    "PCStateDict",
    "checkpoint_state",
    "codec_from_checkpoint",
    "describe_checkpoint",
    "fitting_architectures",
    "pc_aware_class",
    "pc_module_names",
    "update_compressai_modules",
]

PC_MARKERS = ("_pc_parent", "_pc_tables_sha256")  # persistent buffers of every PCEntropyModel
STATE_KEYS = ("network", "state_dict", "model_state_dict")  # eval_model's order: the last one wins


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


def _base_class(cls: Any) -> Any:
    """The CompressAI class of a PC-aware class (``cls`` itself for any other)."""
    return vars(cls).get("pc_base", cls) if isinstance(cls, type) else cls


# -- CompressAI checkpoints -----------------------------------------------------------------------


def _float_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Half-precision tensors (as the shared codecs store their weights) as float32; float32 and
    float64 stay as saved, so a float64 circuit rebuilds its tables from its exact parameters."""
    return {
        k: v.float() if torch.is_tensor(v) and v.dtype in (torch.float16, torch.bfloat16) else v
        for k, v in state.items()
    }


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
