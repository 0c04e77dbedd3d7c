"""Reading datasets in MNIST's idx format (optionally gzipped), from a local folder."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

__all__ = ["default_data_root", "load_idx", "load_mnist"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SPLITS = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}


def default_data_root() -> Path:
    """``$PC_PRIOR_DATA`` if set, else ``../shared/data`` relative to the working directory."""
    return Path(os.environ.get("PC_PRIOR_DATA", Path.cwd().parent / "shared" / "data"))


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (``.gz`` or raw) into a numpy array of its stored shape and dtype."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise InputError(f"{path} is not an idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{path} is truncated (header)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    need = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != need:
        raise InputError(
            f"{path} holds {len(data) - header} data bytes, expected {need} for shape {shape}"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx3", ".idx3")):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"no {stem}[.gz] in {root}; pass --data pointing at a folder holding the idx files"
    )


def load_mnist(
    root: str | os.PathLike | None = None, split: str = "train", limit: int | None = None
) -> torch.Tensor:
    """Images of an idx-format dataset (MNIST layout) flattened to LongTensor [N, H*W] in 0..255."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    root = Path(root) if root is not None else default_data_root() / "mnist"
    images = load_idx(_find(root, _SPLITS[split]))
    if images.ndim < 2:
        raise InputError(f"expected images, got an idx array of shape {images.shape}")
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.int64))
    return x[:limit] if limit is not None else x
