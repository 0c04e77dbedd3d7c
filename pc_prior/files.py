"""Reading and writing pc-prior's files: the one place that touches ``torch.save`` and ``torch.load``.

Files come from elsewhere, so a file is trusted only once it has passed, in this order:

1. it is a zip archive (torch's format) whose every member matches its CRC32 (``torch.load``
   itself does not check them, so a flipped byte in a weight would otherwise load silently);
2. ``torch.load(..., weights_only=True)``: tensors and plain containers only, never code;
3. where the file carries a ``digest`` (every file ``write_file`` writes does), the SHA-256 of
   its content, recomputed over every tensor's bytes, dtype and shape and every other value,
   must match it.

Every failure is a ``CheckpointError`` that names the file and the problem. Writes are atomic
(a temporary file, then ``os.replace``), so an interrupted save never leaves half a file.
Callers then check the fields they use for plausibility before allocating anything.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .framing import FileFormat

__all__ = ["check_format", "content_digest", "read_file", "write_file"]

_DIGEST_KEY = "digest"


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(b"T" + str(t.dtype).encode() + repr(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update((b"L" if isinstance(obj, list) else b"U") + b"%d" % len(obj))
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(
        obj, (bool, int, float, str, bytes, torch.dtype, torch.Size, torch.device)
    ):
        h.update(type(obj).__name__.encode() + b":" + repr(obj).encode() + b";")
    else:
        raise TypeError(
            f"cannot digest a {type(obj).__name__} (files hold tensors and plain values only)"
        )


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) of a file's content: tensors by dtype, shape and bytes, containers in key order."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def write_file(content: dict[str, Any], path: str | os.PathLike) -> Path:
    """Save ``content`` with its ``digest`` to ``path`` atomically; returns the path."""
    if _DIGEST_KEY in content:
        raise ValueError(f"'{_DIGEST_KEY}' is reserved for the file's own digest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**content, _DIGEST_KEY: content_digest(content)}, tmp)
    os.replace(tmp, path)
    return path


def read_file(path: str | os.PathLike) -> tuple[dict[str, Any], bool]:
    """The verified content of a torch file (see the module docstring) without its digest, and
    whether it carried one (every file pc-prior writes does; callers refuse those that do not)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(
            f"{path} is not a readable torch file (corrupted or truncated zip archive: {e})"
        ) from e
    except Exception as e:  # zlib / struct errors inside a damaged member
        raise CheckpointError(f"{path} is corrupted: {e}") from e
    if bad is not None:
        raise CheckpointError(f"{path} is corrupted: member {bad} fails its CRC32 check")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, unsafe globals, bad records: torch raises many types
        raise CheckpointError(
            f"{path} is not a weights-only torch file (pc-prior never runs code from a file): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict")
    digest = obj.pop(_DIGEST_KEY, None)
    if digest is None:
        return obj, False
    try:
        actual = content_digest(obj)
    except TypeError as e:
        raise CheckpointError(f"{path}: {e}") from e
    if digest != actual:
        raise CheckpointError(
            f"{path} is corrupted or was modified: its content does not match its digest"
        )
    return obj, True


def check_format(content: dict[str, Any], path: Path, fmt: FileFormat, digested: bool) -> None:
    """Refuse a file that is not of ``fmt`` (``pc_prior.framing.FILE_FORMATS``) in a version this
    pc-prior reads, or that carries no digest."""
    what = fmt.name
    if content.get("format") != fmt.key:
        raise CheckpointError(
            f"{path} is not a {what} (format {content.get('format')!r}, expected {fmt.key!r})"
        )
    version = content.get("version")
    if version not in fmt.readable or isinstance(version, bool):
        names = " or ".join(str(v) for v in fmt.readable)
        raise CheckpointError(
            f"{path} has {what} version {version!r}; this pc-prior reads "
            f"version {names} (see CHANGELOG.md)"
        )
    if not digested:
        raise CheckpointError(
            f"{path} has no content digest (not written by pc-prior, or stripped)"
        )
