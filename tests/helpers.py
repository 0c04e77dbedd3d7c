"""Shared helpers for the tests: tiny synthetic data (idx files, PNG folders, random images),
a tiny fitted hyperprior and a CPU trainer. Test modules import from here, never from each other."""

from __future__ import annotations

import gzip
import importlib.util
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from compressai.models import MeanScaleHyperprior, ScaleHyperprior

from pc_prior.integrations import fit_prior

NAMES = ("entropy_bottleneck", "gaussian_conditional")
BENCH = Path(__file__).resolve().parents[1] / "bench"
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_bench(name: str, folder: Path = BENCH):
    """The module ``bench/<name>.py``, or ``<folder>/<name>.py`` (scripts are not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def load_experiment(name: str):
    """The module ``experiments/<name>.py`` (the one-off studies, docs/experiments.md)."""
    return load_bench(name, EXPERIMENTS)


def write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def structured_digits(n: int, seed: int, size: int = 8) -> np.ndarray:
    """[n, size, size] uint8 images with strong row correlations (so structure and EM matter)."""
    g = np.random.default_rng(seed)
    rows = g.random((n, size, 1)) < 0.5
    return (np.repeat(rows, size, axis=2) * 200 + g.integers(0, 50, (n, size, size))).astype(
        np.uint8
    )


def make_mnist(root: Path, n_train: int = 256, n_test: int = 64) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte.gz", structured_digits(n_train, 0))
    write_idx(root / "t10k-images-idx3-ubyte.gz", structured_digits(n_test, 1))
    return root


def make_pngs(root: Path, n: int, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(seed)
    for i in range(n):
        h, w = size
        smooth = np.kron(g.integers(0, 256, (h // 8, w // 8, 3)), np.ones((8, 8, 1))).astype(
            np.uint8
        )
        Image.fromarray(smooth).save(root / f"img{i:02d}.png")
    return root


def tiny_trainer(**kw) -> pl.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    args.update(kw)
    return pl.Trainer(**args)


def random_images(n: int, h: int = 64, w: int = 64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, h, w, generator=g) for _ in range(n)]


def fitted_hyperprior(cls=ScaleHyperprior, seed: int = 0, **cond):
    """Tiny random hyperprior (N=8, M=12) with multi-symbol latents, both entropy models swapped and fit."""
    torch.manual_seed(seed)
    model = cls(N=8, M=12).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(15.0)
        model.g_a[-1].bias.mul_(15.0)
        model.h_a[-1].weight.mul_(5.0)
    model.update(force=True)
    kw = dict(num_latents=3, steps=40, batch_size=256, seed=seed) | cond
    fit_prior(
        model,
        random_images(3, seed=seed),
        name=NAMES,
        num_latents=3,
        epochs=1,
        progress=False,
        seed=seed,
        conditional=kw,
    )
    model.update(force=True)
    return model


def gc_inputs(model, x):
    """(y, scales, means, indexes) exactly as the model's compress() computes them."""
    with torch.no_grad():
        y = model.g_a(x)
        z = model.h_a(y if isinstance(model, MeanScaleHyperprior) else y.abs())
        z_hat = model.entropy_bottleneck.decompress(
            model.entropy_bottleneck.compress(z), z.shape[-2:]
        )
        params = model.h_s(z_hat)
        if isinstance(model, MeanScaleHyperprior):
            scales, means = params.chunk(2, 1)
        else:
            scales, means = params, None
        return y, scales, means, model.gaussian_conditional.build_indexes(scales)


def bottleneck_round_trip(eb, y: torch.Tensor) -> tuple[list[bytes], torch.Tensor, float, float]:
    """Code latents y with a fitted bottleneck and check the decode is y rounded around the
    medians, exactly; returns the strings, the decoded latent, their real bits and the model's
    code length in bits (``log_likelihood``)."""
    strings = eb.compress(y)
    out = eb.decompress(strings, y.shape[-2:])
    med = eb._medians().view(1, -1, 1, 1)
    assert torch.equal(out, torch.round(y - med) + med)
    bits = sum(8 * len(s) for s in strings)
    model_bits = float(-eb.log_likelihood(eb.symbols(y)).detach().sum()) / math.log(2)
    return strings, out, bits, model_bits
