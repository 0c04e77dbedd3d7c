"""Turning a model spec (zoo name, CompressAI checkpoint, pc-prior codec file) into an eval-mode codec.

Specs, tried in this order:

1. an existing file: loaders registered with :func:`register_model_loader` first (newest first), then
   the built-in ones: the ``shared/models`` format (``{"arch", "quality", "state_dict"}``), CompressAI
   training checkpoints (``{"state_dict": ...}``) and plain state dicts (both need ``arch``);
2. ``ARCH:qN`` (or ``ARCH:N``) with ``ARCH`` in ``compressai.zoo.image_models``: pretrained zoo weights,
   which need the network (or a filled torch hub cache).
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "load_model",
    "read_checkpoint",
    "register_model_loader",
    "registered_model_loaders",
    "unregister_model_loader",
]


@dataclass
class LoadedModel:
    """An eval-mode codec and how it was obtained (``name`` labels result rows; ``quality`` may be None)."""

    net: nn.Module
    name: str
    arch: str | None = None
    quality: int | None = None
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)


Predicate = Callable[[Path, Any], bool]
Loader = Callable[[Path, Any, "str | torch.device"], "nn.Module | LoadedModel"]
_LOADERS: list[tuple[Predicate, Loader]] = []
_SENTINEL_INTEGRATIONS = "pc_prior.integrations"


def register_model_loader(predicate: Predicate, loader: Loader) -> Loader:
    """Let ``pc-prior eval`` load codec files that ``predicate(path, obj)`` accepts with ``loader(path, obj, device)``.

    ``obj`` is the file read by ``torch.load(path, map_location="cpu", weights_only=True)``, or ``None``
    where that fails (e.g. pickled custom classes: the loader then reads the file itself). ``loader``
    returns the codec (an ``nn.Module`` with ``compress``/``decompress``/``forward``) or a
    :class:`LoadedModel`. Later registrations are tried first. Returns ``loader`` (usable as a decorator
    factory's result).
    """
    if not callable(predicate) or not callable(loader):
        raise TypeError(
            "register_model_loader expects two callables: predicate(path, obj) and loader(path, obj, device)"
        )
    _LOADERS.insert(0, (predicate, loader))
    return loader


def unregister_model_loader(loader: Loader) -> None:
    """Remove every registration of ``loader``."""
    _LOADERS[:] = [(p, lo) for p, lo in _LOADERS if lo is not loader]


def registered_model_loaders() -> list[tuple[Predicate, Loader]]:
    """The registered (predicate, loader) pairs, in the order they are tried."""
    return list(_LOADERS)


def _import_integrations() -> None:
    """Import ``pc_prior.integrations`` so that it can register its loaders; never fatal."""
    try:
        importlib.import_module(_SENTINEL_INTEGRATIONS)
    except (
        Exception
    ) as e:  # a half-built integrations package must not break evaluation of plain codecs
        warnings.warn(
            f"could not import {_SENTINEL_INTEGRATIONS} ({e}); only built-in model loaders are available",
            stacklevel=2,
        )


def read_checkpoint(path: str | Path) -> Any:
    """The file verified and read by ``pc_prior.files.read_file`` (zip CRCs, ``weights_only=True``,
    digest), or ``None`` if it is not such a file (``_read`` keeps the reason)."""
    return _read(Path(path))[0]


def _read(path: Path) -> tuple[Any, bool, str]:
    from ..errors import CheckpointError
    from ..files import read_file

    try:
        obj, digested = read_file(path)
        return obj, digested, ""
    except CheckpointError as e:
        return None, False, str(e)


def _architectures() -> dict[str, Callable[..., nn.Module]]:
    from compressai.zoo.image import model_architectures

    return dict(model_architectures)


def _zoo() -> dict[str, Callable[..., nn.Module]]:
    from compressai.zoo import image_models

    return dict(image_models)


def _float_state(sd: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in sd.items()
    }


def _load_file(path: Path, arch: str | None, device: str | torch.device) -> LoadedModel:
    obj, digested, reason = _read(path)
    for predicate, loader in _LOADERS:
        if predicate(path, obj):
            out = loader(path, obj, device)
            if isinstance(out, LoadedModel):
                out.net = out.net.to(device).eval()
                return out
            if not isinstance(out, nn.Module):
                raise ModelLoadError(
                    f"the loader registered for {path} returned {type(out).__name__}, not a codec"
                )
            return LoadedModel(out.to(device).eval(), name=path.stem, source=str(path))
    if obj is None:
        raise ModelLoadError(f"{reason}; no registered model loader accepts it")
    if not isinstance(obj, dict):
        raise ModelLoadError(
            f"{path} holds a {type(obj).__name__}, not a checkpoint dict or state dict"
        )
    fmt = obj.get("format")
    if isinstance(fmt, str) and fmt.startswith("pc-prior/") and fmt != "pc-prior/codec":
        if fmt == "pc-prior/hclt":
            raise ModelLoadError(
                f"{path} is a pc-prior HCLT (lossless) checkpoint, not an image codec; "
                "use 'pc-prior lossless bench' and 'pc-prior report-lossless'"
            )
        raise ModelLoadError(
            f"{path} has format {fmt!r} but no model loader for it is registered "
            f"(expected from {_SENTINEL_INTEGRATIONS} via register_model_loader)"
        )
    archs = _architectures()
    if (
        "state_dict" in obj and "arch" in obj and "quality" in obj
    ):  # the project's codec format: one loader
        from pc_prior.integrations.codec_file import codec_from_content

        a, q = obj["arch"], obj["quality"]
        if arch is not None and arch != a:
            raise ModelLoadError(f"{path} is a {a} checkpoint but --arch {arch} was given")
        try:
            net, _ = codec_from_content(path, obj, digested)
        except ValueError as e:
            raise ModelLoadError(str(e)) from e
        info = {k: obj[k] for k in ("lmbda", "steps", "kodak") if k in obj}
        return LoadedModel(
            net.to(device).eval(), name=path.stem, arch=a, quality=q, source=str(path), info=info
        )
    state = obj
    for key in ("network", "state_dict", "model_state_dict"):  # CompressAI eval_model's convention
        if key in obj and isinstance(obj[key], dict):
            state = obj[key]
    if not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelLoadError(
            f"{path} is neither a codec file (arch, quality, state_dict) nor a state dict"
        )
    if arch is None:
        raise ModelLoadError(
            f"{path} is a plain state dict: pass its architecture with --arch "
            f"(one of {', '.join(sorted(archs))})"
        )
    if arch not in archs:
        raise ModelLoadError(f"unknown architecture {arch!r}; known: {', '.join(sorted(archs))}")
    try:
        net = archs[arch].from_state_dict(_float_state(state))
    except Exception as e:
        raise ModelLoadError(f"{path} does not fit architecture {arch}: {e}") from e
    net.update(force=True)  # as CompressAI's eval_model does for checkpoints
    return LoadedModel(net.to(device).eval(), name=path.stem, arch=arch, source=str(path))


_ZOO_SPEC = re.compile(r"^(?P<arch>[A-Za-z0-9_\-]+):q?(?P<quality>\d+)$")


def _load_zoo(spec: str, metric: str, device: str | torch.device) -> LoadedModel:
    m = _ZOO_SPEC.match(spec)
    zoo = _zoo()
    if m is None or m["arch"] not in zoo:
        raise ModelLoadError(
            f"unknown model {spec!r}: not an existing file, and not ARCH:qN with ARCH one of {', '.join(sorted(zoo))}"
        )
    arch, quality = m["arch"], int(m["quality"])
    try:
        net = zoo[arch](quality=quality, metric=metric, pretrained=True, progress=False)
    except (ValueError, KeyError) as e:
        raise ModelLoadError(f"{spec}: {e}") from e
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise ModelLoadError(
            f"could not get pretrained weights for {spec} (metric {metric}): {e}. They are downloaded from the "
            "CompressAI model zoo, which needs network access; offline, pass a local checkpoint file instead "
            "(with --arch for a plain state dict)"
        ) from e
    return LoadedModel(
        net.to(device).eval(),
        name=f"{arch}-{metric}-q{quality}",
        arch=arch,
        quality=quality,
        source=f"zoo:{spec}",
    )


def load_model(
    spec: str | Path,
    arch: str | None = None,
    device: str | torch.device = "cpu",
    metric: str = "mse",
) -> LoadedModel:
    """Load the codec named by ``spec`` (see the module docstring) in eval mode on ``device``.

    A device that is no torch device or not on this machine raises ``InputError`` before loading.
    """
    from ..devices import resolve_device

    resolve_device(device)
    spec_s = str(spec)
    path = Path(spec_s).expanduser()
    if path.is_file():
        _import_integrations()
        return _load_file(path, arch, device)
    if path.exists():
        raise ModelLoadError(f"{path} is a directory, not a model file")
    if _ZOO_SPEC.match(spec_s) is None and (
        path.suffix in {".pt", ".pth", ".tar", ".ckpt"} or "/" in spec_s
    ):
        raise FileNotFoundError(f"model file not found: {path}")
    return _load_zoo(spec_s, metric, device)
