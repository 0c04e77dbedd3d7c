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

Compact: a fitted bottleneck's categorical leaves (``PCEntropyBottleneck.pack_state``: one byte
per live entry, the precision they code with), float weights as float16 where that is exact.

Resolving a model spec (``resolve_codec``, what ``pc-prior eval``, the demo, ``RDModule`` and the
benches call): an existing file is read as above, or as a plain CompressAI state dict or training
checkpoint (``{"state_dict" | "network" | "model_state_dict": ...}``) given its architecture
(``compressai_checkpoints.codec_from_checkpoint``, which imports nothing of this module);
``ARCH:qN`` names pretrained zoo weights (downloaded: offline this is a ``ModelLoadError`` that
names the local-file alternative).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import resolve_device
from ..errors import CheckpointError, InputError, ModelLoadError
from ..files import check_format, read_file, write_file
from ..framing import CODEC_FILE
from .base import stored_tables
from .compressai_checkpoints import _float_state, codec_from_checkpoint, describe_checkpoint
from .entropy_models import PCEntropyBottleneck
from .swap import PC_MODULES, swap_entropy_model

__all__ = [
    "CODEC_FORMAT",
    "CODEC_VERSION",
    "ResolvedCodec",
    "build_codec",
    "codec_from_content",
    "load_codec",
    "read_codec_file",
    "resolve_codec",
    "save_codec",
]

#: The ``format`` key of codec files (``pc_prior.framing.FILE_FORMATS`` tables every format and
#: version).
CODEC_FORMAT = CODEC_FILE.key
#: The codec file version that ``save_codec`` writes.
CODEC_VERSION = CODEC_FILE.version


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


def _check_fields(ck: dict[str, Any], path: Path, digested: bool) -> None:
    if ck.get("format") is not None:  # without one: a plain CompressAI-style export
        check_format(ck, path, CODEC_FILE, digested)
    missing = [k for k in ("arch", "quality", "state_dict") if k not in ck]
    if missing:
        raise CheckpointError(
            f"{path} is {describe_checkpoint(ck)}, not a codec file (no {', '.join(missing)}): "
            "read it with resolve_codec(path, arch=ARCH) or 'pc-prior eval FILE --arch ARCH'"
        )
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


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float16 where that is lossless (weights that came from a float16 file, as the shared
    base codecs' do), else unchanged; loading casts back to the module's dtype, bit for bit."""
    if t.dtype in (torch.float32, torch.float64) and t.numel():
        half = t.half()
        if torch.equal(half.to(t.dtype), t):
            return half
    return t


def save_codec(
    model: nn.Module,
    path: str | Path,
    arch: str,
    quality: int,
    *,
    tables: bool = False,
    **extra: Any,
) -> Path:
    """Save a (swapped) CompressAI codec in the format ``load_codec`` reads; returns the path.

    PC entropy models are stored compactly (parameters and a digest of their coding tables, which
    loading rebuilds bit for bit: ``pc_prior.integrations.base``); ``tables=True`` also stores the
    integer tables themselves (8-10x larger for a ``PCConditional``), which loading then uses as
    they are. Floating tensors that float16 holds exactly are stored as float16 (lossless).
    """
    pc_modules = [n for n, m in model.named_modules() if isinstance(m, PC_MODULES)]
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name in pc_modules:
        if isinstance(model.get_submodule(name), PCEntropyBottleneck):
            PCEntropyBottleneck.pack_state(state, name + ".")
    state = {k: _compact(v) for k, v in state.items()}
    if tables:
        state |= {k: v.detach().cpu() for k, v in stored_tables(model).items()}
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


@dataclass
class ResolvedCodec:
    """An eval-mode codec and where it came from (``name`` labels result rows; ``quality`` may be None).

    ``info`` holds what the codec file says about itself beyond its weights (``lmbda``, ``metric``,
    ``steps``, ``net_kwargs``, ``pc_modules``, ...).
    """

    net: nn.Module
    name: str
    arch: str | None = None
    quality: int | None = None
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)


_ZOO_SPEC = re.compile(r"^(?P<arch>[A-Za-z0-9_\-]+):q?(?P<quality>\d+)$")
_INFO_SKIP = ("format", "version", "arch", "quality", "state_dict")


def resolve_codec(
    spec: str | Path,
    arch: str | None = None,
    *,
    device: str | torch.device = "cpu",
    metric: str = "mse",
    base_only: bool = False,
) -> ResolvedCodec:
    """The codec named by ``spec``, in eval mode on ``device``.

    ``spec`` is a file (a codec file as ``read_codec_file`` reads, or a plain CompressAI state dict
    or training checkpoint, whose architecture ``arch`` gives: a zoo name such as
    ``bmshj2018-factorized``; files that name their own architecture keep it), or ``ARCH:qN``
    (also ``ARCH:N``): the zoo's pretrained weights for ``metric``, downloaded by CompressAI.
    ``base_only`` refuses a file holding PC entropy models (``InputError``) before building it.
    A device that is no torch device or not on this machine raises ``InputError`` before anything
    is read; an unknown spec, a file that is no codec, or zoo weights that cannot be downloaded
    raise ``ModelLoadError``; a damaged file ``CheckpointError``; a missing one ``FileNotFoundError``.
    """
    dev = resolve_device(device)
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        out = _resolve_file(path, arch, base_only)
    elif path.exists():
        raise ModelLoadError(f"{path} is a directory, not a model file")
    elif _ZOO_SPEC.match(text) is None and (
        path.suffix in {".pt", ".pth", ".tar", ".ckpt"} or "/" in text or "\\" in text
    ):
        raise FileNotFoundError(f"model file not found: {path}")
    else:
        out = _resolve_zoo(text, metric)
    out.net = out.net.to(dev).eval()
    return out


def _resolve_file(path: Path, arch: str | None, base_only: bool) -> ResolvedCodec:
    obj, digested = read_file(path)  # verified, weights only; read once
    fmt = obj.get("format")
    if fmt is not None and fmt != CODEC_FORMAT:
        if fmt == "pc-prior/hclt":
            raise ModelLoadError(
                f"{path} is a pc-prior HCLT (lossless) checkpoint, not an image codec; "
                "use 'pc-prior lossless bench' and 'pc-prior lossless report'"
            )
        raise ModelLoadError(
            f"{path} has format {fmt!r}, not an image codec file ({CODEC_FORMAT!r}); pass a codec "
            "file, a CompressAI state dict or checkpoint, or a zoo name ARCH:qN"
        )
    if base_only and obj.get("pc_modules"):
        names = obj["pc_modules"]
        raise InputError(
            f"{path} already has a PC entropy model "
            f"({', '.join(map(str, names)) if isinstance(names, list) else names}); "
            "pass the base codec it was made from"
        )
    if fmt is not None or {"arch", "quality", "state_dict"} <= obj.keys():
        net, ck = codec_from_content(path, obj, digested)
        info = {k: v for k, v in ck.items() if k not in _INFO_SKIP}
        return ResolvedCodec(
            net, name=path.stem, arch=ck["arch"], quality=ck["quality"], source=str(path), info=info
        )
    # a CompressAI state dict or training checkpoint, PC entropy models included (given --arch)
    net, info = codec_from_checkpoint(path, obj, arch)
    return ResolvedCodec(net, name=path.stem, arch=arch, source=str(path), info=info)


def _resolve_zoo(spec: str, metric: str) -> ResolvedCodec:
    from compressai.zoo import image_models

    m = _ZOO_SPEC.match(spec)
    if m is None or m["arch"] not in image_models:
        raise ModelLoadError(
            f"unknown model {spec!r}: not an existing file, and not ARCH:qN with ARCH one of "
            f"{', '.join(sorted(image_models))}"
        )
    arch, quality = m["arch"], int(m["quality"])
    try:
        net = image_models[arch](quality=quality, metric=metric, pretrained=True, progress=False)
    except (ValueError, KeyError) as e:
        raise ModelLoadError(f"{spec}: {e}") from e
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise ModelLoadError(
            f"could not get pretrained weights for {spec} (metric {metric}): {e}. They are "
            "downloaded from the CompressAI model zoo, which needs network access; offline, pass a "
            "local checkpoint file instead (a codec file such as ../shared/models/"
            f"{arch}-q{quality}.pt, or a state dict with its arch)"
        ) from e
    return ResolvedCodec(
        net, name=f"{arch}-{metric}-q{quality}", arch=arch, quality=quality, source=f"zoo:{spec}"
    )
