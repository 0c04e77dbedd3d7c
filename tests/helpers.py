"""Shared helpers for the tests: tiny synthetic data (idx files, PNG folders, random images, a
``../shared`` look-alike), tiny random codecs, a tiny fitted hyperprior and a CPU trainer. Test
modules import from here, never from each other; ``bench/device_suite.sh --quick`` builds its
synthetic data with ``make_shared``."""

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
from compressai.models import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior

from pc_prior.integrations import fit_prior, save_codec
from pc_prior.settings import ConditionalFit

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


def make_shared(root: Path) -> Path:
    """A tiny ``../shared`` look-alike under ``root``, the device suite's ``--quick`` data:
    MNIST-format 8x8 digits (512 training, 128 test images), two 64x64 "Kodak" and four "BSDS500"
    PNGs, and the two codecs the suite fits priors into, tiny and random, in the ``shared/models``
    format (factorized q1, hyperprior q1)."""
    root = Path(root)
    make_mnist(root / "data" / "mnist", 512, 128)
    make_pngs(root / "data" / "kodak", 2, seed=1)
    make_pngs(root / "data" / "bsds500" / "train", 4, seed=2)
    tiny = {"net_kwargs": {"N": 8, "M": 12}}
    path = root / "models" / "bmshj2018-factorized-q1.pt"
    save_codec(tiny_codec(FactorizedPrior, 1, 9.0), path, "FactorizedPrior", 1, **tiny)
    path = root / "models" / "bmshj2018-hyperprior-q1.pt"
    save_codec(tiny_codec(ScaleHyperprior, 7), path, "ScaleHyperprior", 1, **tiny)
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


def tiny_codec(cls=FactorizedPrior, seed: int = 0, gain: float = 15.0) -> torch.nn.Module:
    """A tiny random CompressAI codec (N=8, M=12, eval mode) whose latents span several symbols:
    the analysis transform's last layer scaled by ``gain`` (a hyperprior's ``h_a`` by 5)."""
    torch.manual_seed(seed)
    model = cls(N=8, M=12).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(gain)
        model.g_a[-1].bias.mul_(gain)
        if hasattr(model, "h_a"):
            model.h_a[-1].weight.mul_(5.0)
    model.update(force=True)
    return model


def fitted_hyperprior(cls=ScaleHyperprior, seed: int = 0, *, device="cpu", **cond):
    """Tiny random hyperprior (N=8, M=12) with multi-symbol latents, both entropy models swapped
    and fit on ``device`` (where the model stays)."""
    model = tiny_codec(cls, seed).to(device)
    kw = dict(num_latents=3, steps=40, batch_size=256, seed=seed) | cond
    fit_prior(
        model,
        random_images(3, seed=seed),
        name=NAMES,
        num_latents=3,
        epochs=1,
        progress=False,
        seed=seed,
        conditional=ConditionalFit(**kw),
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


def assert_round_trip(net: torch.nn.Module, x: torch.Tensor) -> None:
    """``compress`` then ``decompress`` gives the forward pass's reconstruction, exactly."""
    enc = net.compress(x)
    rec = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert torch.equal(rec, net(x)["x_hat"].clamp(0, 1))
