"""Codec files: the one place that builds, reads and writes a CompressAI codec with or without PC priors.

A codec file is a dict ``{"format": "pc-prior/codec", "version", "arch", "quality", "state_dict",
"pc_modules", ...}`` written by ``save_codec`` (and ``pc_prior.train``'s export) through
``pc_prior.files``: atomically, with a content digest. Plain CompressAI-style exports without a
format key (``{"arch", "quality", "state_dict"}``, as in ``../shared/models``) are read too, but
only without PC entropy models: a file that carries circuits must carry a digest, since a changed
weight in ``g_s`` would otherwise decode the same strings to another image without any error.

Reading a file: ``pc_prior.files.read_file`` (zip CRCs, ``weights_only=True``, digest), then every
field's type, then the architecture is built and the state dict loaded, during which the PC
entropy models validate their coding tables against their shapes and ranges. The file is read
once. Every problem is a ``CheckpointError`` naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import resolve_device
from ..errors import CheckpointError, InputError
from ..files import check_format, read_file, write_file

__all__ = [
    "CODEC_FORMAT",
    "CODEC_VERSION",
    "build_codec",
    "codec_from_content",
    "load_codec",
    "read_codec_file",
    "save_codec",
]

CODEC_FORMAT = "pc-prior/codec"
CODEC_VERSION = 1


def build_codec(arch: str, quality: int, net_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A fresh (untrained) codec: a zoo architecture (``image_models[arch](quality=...)``), or a
    ``compressai.models`` class by name built with ``net_kwargs`` (e.g. ``FactorizedPrior``, N=8, M=12)."""
    import compressai.models
    from compressai.zoo import image_models

    if net_kwargs:
        cls = getattr(compressai.models, arch, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise InputError(
                f"net_kwargs given, so arch must be a compressai.models class name; got {arch!r}"
            )
        return cls(**net_kwargs)
    if arch in image_models:
        return image_models[arch](quality=quality, pretrained=False)
    cls = getattr(compressai.models, arch, None)
    if isinstance(cls, type) and issubclass(cls, nn.Module):
        return cls()
    raise InputError(f"unknown arch {arch!r}; zoo architectures: {', '.join(sorted(image_models))}")


def _float_state(state: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in state.items()
    }


def _check_fields(ck: dict[str, Any], path: Path, digested: bool) -> None:
    if ck.get("format") is not None:  # without one: a plain CompressAI-style export
        check_format(ck, path, CODEC_FORMAT, CODEC_VERSION, digested, "codec file")
    missing = [k for k in ("arch", "quality", "state_dict") if k not in ck]
    if missing:
        raise CheckpointError(f"{path} is not a codec file: no {', '.join(missing)}")
    if (
        not isinstance(ck["arch"], str)
        or not isinstance(ck["quality"], int)
        or isinstance(ck["quality"], bool)
    ):
        raise CheckpointError(
            f"{path}: arch must be a string and quality an integer, got "
            f"{type(ck['arch']).__name__} and {type(ck['quality']).__name__}"
        )
    sd = ck["state_dict"]
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()
    ):
        raise CheckpointError(f"{path}: state_dict must map names to tensors")
    pcm = ck.get("pc_modules") or []
    if not isinstance(pcm, list) or not all(isinstance(n, str) for n in pcm):
        raise CheckpointError(f"{path}: pc_modules must be a list of module names")
    if pcm and not digested:
        raise CheckpointError(
            f"{path} holds PC entropy models but no content digest: refusing it, since a "
            "changed weight would decode to another image without error; re-save it with save_codec"
        )
    nk = ck.get("net_kwargs")
    if nk is not None and not (isinstance(nk, dict) and all(isinstance(k, str) for k in nk)):
        raise CheckpointError(f"{path}: net_kwargs must be a dict of keyword arguments")


def read_codec_file(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(codec on CPU, the file's dict) for a codec file, read once and verified (module docstring).

    ``net_kwargs`` select a ``compressai.models`` class by name; ``pc_modules`` are swapped to PC
    entropy models before loading, so circuits and coding tables come back bit-exactly.
    Half-precision tensors are cast to float32. A plain zoo-architecture file whose weights are not
    that quality's sizes is built from the weights (CompressAI's ``from_state_dict``).
    """
    path = Path(path)
    return codec_from_content(path, *read_file(path))


def codec_from_content(
    path: Path, ck: dict[str, Any], digested: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """``read_codec_file`` for a file already read by ``pc_prior.files.read_file`` (so it is read once)."""
    from compressai.zoo.image import model_architectures

    from .api import swap_entropy_model

    _check_fields(ck, path, digested)
    state = _float_state(ck["state_dict"])
    try:
        net = build_codec(ck["arch"], ck["quality"], ck.get("net_kwargs"))
    except (InputError, TypeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{path}: cannot build {ck['arch']!r} (quality {ck['quality']}): {e}"
        ) from e
    if ck.get("pc_modules"):
        try:
            swap_entropy_model(net, list(ck["pc_modules"]))
        except (AttributeError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{path}: pc_modules {ck['pc_modules']} do not fit {ck['arch']}: {e}"
            ) from e
    try:
        net.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        if ck.get("pc_modules") or ck.get("net_kwargs") or ck["arch"] not in model_architectures:
            raise CheckpointError(
                f"{path}: its weights do not fit {ck['arch']} (quality {ck['quality']}): "
                f"{str(e).strip()}"
            ) from e
        try:  # not the zoo's channel counts for this quality: take them from the weights
            net = model_architectures[ck["arch"]].from_state_dict(state)
        except Exception as e2:
            raise CheckpointError(
                f"{path}: its weights do not fit architecture {ck['arch']}: {e2}"
            ) from e2
    return net, ck


def load_codec(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The codec of a codec file (see ``read_codec_file``), in eval mode on ``map_location``."""
    device = resolve_device(map_location)
    return read_codec_file(path)[0].to(device).eval()


def save_codec(model: nn.Module, path: str | Path, arch: str, quality: int, **extra: Any) -> Path:
    """Save a (swapped) CompressAI codec in the format ``load_codec`` reads; returns the path."""
    from .api import PC_MODULES

    pc_modules = [n for n, m in model.named_modules() if isinstance(m, PC_MODULES)]
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return write_file(
        {
            **extra,
            "format": CODEC_FORMAT,
            "version": CODEC_VERSION,
            "arch": arch,
            "quality": int(quality),
            "pc_modules": pc_modules,
            "state_dict": state,
        },
        path,
    )
