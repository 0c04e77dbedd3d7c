"""Turning a user's device argument (``--device``, ``device=``, ``map_location=``) into a ``torch.device``.

``resolve_device`` fails at once, with ``InputError`` and a message naming the device, for a string
that is no torch device and for a device this machine does not have (``"cuda"`` without a GPU,
``"cuda:3"`` on a one-GPU machine), instead of deep inside torch after a model has been loaded.
Call it at every entry point that takes a device, before loading anything.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import InputError

__all__ = ["resolve_device"]


def resolve_device(device: Any) -> torch.device:
    """``device`` (a string such as ``"cpu"``, ``"cuda:1"``, a ``torch.device`` or a CUDA index) as an
    available ``torch.device``; raises ``InputError`` naming the problem otherwise."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str) or (isinstance(device, int) and not isinstance(device, bool)):
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise InputError(
                f"{device!r} is not a torch device (use e.g. 'cpu', 'cuda' or 'cuda:1')"
            ) from None
    else:
        raise InputError(
            f"a device must be a string such as 'cpu' or 'cuda:1', or a torch.device, got "
            f"{type(device).__name__} {device!r}"
        )
    if dev.type in ("cpu", "meta"):
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"device {str(device)!r} is not available: no CUDA GPU found; use --device cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(
                f"device {str(device)!r} is not available: this machine has {count} CUDA GPU"
                f"{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})"
            )
        return dev
    backend = (
        getattr(torch.backends, dev.type, None)
        if dev.type == "mps"
        else getattr(torch, dev.type, None)
    )
    available = getattr(backend, "is_available", None)
    if callable(available) and not available():
        raise InputError(
            f"device {str(device)!r} is not available: no {dev.type} device found; use --device cpu"
        )
    return dev
