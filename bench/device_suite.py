"""Device suite: every check that needs an accelerator, in one time-boxed run (issue 16).

``bench/device_suite.sh`` (which installs what is missing, then runs this module) is the entry point:

    bash bench/device_suite.sh --device cuda --out $OUT --minutes 9     # the lent GPU machine
    bash bench/device_suite.sh --quick --device cpu --out /tmp/suite    # CI, ~1 minute, no ../shared

Checks, in this order (``CHECKS``):

1. ``tests``: a device-relevant part of the test suite (coding, HCLT, training, integrations
   round trips, golden streams, RD training) with the machine's own Python and torch. The tests
   themselves run on the CPU (none of them moves to CUDA), so on the GPU machine this checks
   that machine's platform (Python 3.12, its torch) rather than CUDA kernels.
2. ``determinism``: encode on the device and decode on the CPU, and the reverse, for the lossless
   coder (``pc_prior.encode``/``decode`` of an HCLT), ``PCEntropyBottleneck`` (a factorized codec's
   ``compress``/``decompress``) and ``PCConditional`` (a hyperprior codec with both PC entropy
   models). Per format it reports whether the decoded symbols and the streams are the same bits,
   separating what the README claims (integer coding tables, the same latent coded on either
   device) from what it does not (the hyper-decoder's float scales, the synthesis transform).
   On ``--device cpu`` both sides are the CPU (a self-consistency check).
3. ``speed``: encode and decode milliseconds per Kodak image, base codec against PC codec, on the
   device in the same run (``pc_prior.eval.rd.evaluate_model`` with ``runs``/``warmup``, the
   median per image, as ``bench/bench_codec_speed.py``).
4. ``lossless``: one MNIST EM epoch of our HCLT (``HCLT.from_data`` + ``fit_em``) against pyjuice's
   (``bench/bench_lossless.py``'s ``pyjuice_hclt``) with equal K, batch size and data, and both
   bpd after equal wall time. Skipped, with the reason, where ``import pyjuice`` fails or there is
   no CUDA.
5. ``finetune``: ``pc_prior.train.RDModule`` on factorized q1-q4 for the time that remains (split
   evenly over the qualities), then the eval harness (``evaluate_model``, ``results_json``,
   ``compare``: what ``pc-prior eval`` and ``pc-prior compare`` run) for the BD-rate of joint
   fine-tuning against the frozen-codec PC prior it started from. ``--quick``: 3 steps of 64x64
   crops on two tiny qualities (two, not one, so that the BD-rate path runs too).

Invariants:

- Every check gets a time budget: the time left, split by ``WEIGHTS`` over the checks still to run,
  so time one check does not use goes to the later ones, and the whole run ends within
  ``--minutes``. A check that fails, raises or runs out of time is recorded (``failed``, with the
  reason) and the suite goes on. Outside ``--quick`` every check runs in its own process (a CUDA
  error or a hang cannot take the later checks with it); ``--quick`` runs them in-process to save
  the imports' seconds.
- ``OUT/results.json`` is rewritten after every check (one entry per check: ``status`` ok, skipped
  or failed, ``reason``, ``seconds``, ``budget_seconds``, ``figures``), so a run killed from outside
  still leaves the finished checks. ``OUT/suite.log`` holds every check's output. Nothing else is
  written under OUT except the fine-tune's two RD result files: far below 64 MiB (the log is capped).
  Codecs and other large intermediates go to a scratch folder outside OUT (removed at the end
  unless ``--keep-work``).
- ``--quick`` never reads ``--shared``: it builds tiny synthetic data (8x8 "digits", 64x64 PNGs) and
  tiny random codecs (CompressAI ``FactorizedPrior``/``ScaleHyperprior``, N=8, M=12), so every
  check runs its code path in CI, where there is no ``../shared``. Without ``--quick`` the data come
  from ``--shared`` (``.device/shared``, which ``bench/device_suite_prepare.sh`` fills, else
  ``../shared``), laid out as ``../shared``; a check whose data are missing is skipped, naming them.
- Only public names of ``pc_prior`` are used.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gzip
import json
import math
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
CHECKS = ("tests", "determinism", "speed", "lossless", "finetune")
#: Shares of the time left that each check gets (renormalized over the checks still to run).
WEIGHTS = {"tests": 0.14, "determinism": 0.2, "speed": 0.1, "lossless": 0.14, "finetune": 0.42}
STATUSES = ("ok", "skipped", "failed")
NAMES = ("entropy_bottleneck", "gaussian_conditional")
#: The device part of the test suite: the files that exercise coding, circuits, their training and
#: the codecs' round trips. Left out: packaging (pins this machine's versions), DDP, the fuzzers.
DEVICE_TESTS = (
    "tests/core/test_device.py",  # these run on --device (PC_PRIOR_TEST_DEVICE); the rest on the CPU
    "tests/core/test_coding.py",
    "tests/core/test_coding_fast_path.py",
    "tests/core/test_golden_streams.py",
    "tests/core/test_hclt.py",
    "tests/core/test_portable.py",
    "tests/core/test_training.py",
    "tests/integrations/test_integrations.py",
    "tests/integrations/test_conditional.py",
    "tests/integrations/test_context.py",
    "tests/integrations/test_golden_bottleneck.py",
    "tests/integrations/test_golden_conditional.py",
    "tests/integrations/test_model_support.py",
    "tests/train/test_train.py",
    "tests/train/test_train_rd.py",
)
QUICK_TESTS = (
    "tests/core/test_device.py",
    "tests/core/test_golden_streams.py",
    "tests/core/test_coding.py",
)
QUICK_TESTS_K = "golden or round_trip_random_data or cross_devices"
LOG_CAP = 16 * 2**20  # bytes of suite.log at most


# -- results ----------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    status: str
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "figures": clean(self.figures)}


class CheckTimeout(Exception):
    """Raised inside an in-process check when its budget is spent."""


def clean(o: Any) -> Any:
    """JSON-safe: NaN and infinities become None, tuples lists, numpy/torch scalars floats."""
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    if isinstance(o, bool) or o is None or isinstance(o, (str, int)):
        return o
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if hasattr(o, "item"):
        return clean(o.item())
    if isinstance(o, Path):
        return str(o)
    return str(o)


@dataclass
class Context:
    """What a check needs: the mode, the device, where data and scratch files are, and its deadline."""

    quick: bool
    device: str
    out: Path
    work: Path
    shared: Path
    deadline: float  # time.monotonic() at which the check must have finished
    log: Callable[[str], None] = print
    #: The check's figures so far: a check fills this dict (``ctx.save()`` after each step), so a
    #: check stopped at its budget still reports what it measured.
    figures: dict[str, Any] = field(default_factory=dict)
    partial: Path | None = None  # where save() writes them (child processes)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        if self.partial is not None:
            self.partial.write_text(json.dumps(clean(self.figures)))

    def data(self, *parts: str) -> Path:
        return self.shared.joinpath(*parts)


# -- synthetic data for --quick ---------------------------------------------------------------------
def write_idx(path: Path, arr: Any) -> None:
    """An idx file (MNIST's format, gzipped) of a uint8 array."""
    import numpy as np

    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def _digits(n: int, seed: int, size: int = 8) -> Any:
    """[n, size, size] uint8 images with strong row correlations (so structure and EM matter)."""
    import numpy as np

    g = np.random.default_rng(seed)
    rows = g.random((n, size, 1)) < 0.5
    noise = g.integers(0, 50, (n, size, size))
    return (np.repeat(rows, size, axis=2) * 200 + noise).astype(np.uint8)


def _pngs(root: Path, n: int, size: tuple[int, int], seed: int) -> None:
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        blocks = g.integers(0, 256, (h // 8, w // 8, 3))
        img = np.kron(blocks, np.ones((8, 8, 1))).astype(np.uint8)
        Image.fromarray(img).save(root / f"img{i:02d}.png")


def _tiny_codec(cls_name: str, seed: int, gain: float) -> Any:
    """A tiny random CompressAI codec (N=8, M=12) whose latents span several symbols."""
    import compressai.models
    import torch

    torch.manual_seed(seed)
    net = getattr(compressai.models, cls_name)(N=8, M=12).eval()
    with torch.no_grad():
        net.g_a[-1].weight.mul_(gain)
        net.g_a[-1].bias.mul_(gain)
        if hasattr(net, "h_a"):
            net.h_a[-1].weight.mul_(5.0)
        net.update(force=True)
    return net


def make_synthetic(root: Path) -> Path:
    """A tiny ``../shared`` look-alike: MNIST-format digits, PNG folders and tiny codecs."""
    from pc_prior.integrations import save_codec

    write_idx(root / "data/mnist/train-images-idx3-ubyte.gz", _digits(512, 0))
    write_idx(root / "data/mnist/t10k-images-idx3-ubyte.gz", _digits(128, 1))
    _pngs(root / "data/kodak", 2, (64, 64), 1)
    _pngs(root / "data/bsds500/train", 4, (64, 64), 2)
    models = root / "models"
    for q in (1, 2, 3, 4):
        net = _tiny_codec("FactorizedPrior", q, 6.0 + 3.0 * q)
        save_codec(
            net,
            models / f"bmshj2018-factorized-q{q}.pt",
            "FactorizedPrior",
            q,
            net_kwargs={"N": 8, "M": 12},
        )
    net = _tiny_codec("ScaleHyperprior", 7, 15.0)
    save_codec(
        net,
        models / "bmshj2018-hyperprior-q1.pt",
        "ScaleHyperprior",
        1,
        net_kwargs={"N": 8, "M": 12},
    )
    return root


# -- helpers ----------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _need(*paths: Path) -> str | None:
    """The reason to skip when one of ``paths`` is missing, else None."""
    missing = [str(p) for p in paths if not p.exists()]
    return f"missing: {', '.join(missing)}" if missing else None


def _images(folder: Path, limit: int | None = None) -> list[Path]:
    from pc_prior.images import list_images

    return list_images(folder)[:limit] if folder.is_dir() else []


def _fit_images(folder: Path, limit: int) -> list[Any]:
    """[1, 3, H, W] training images, cropped as ``fit_prior`` crops a folder (none if it is absent)."""
    from pc_prior.images import FolderImages

    return list(FolderImages(folder, max_images=limit)) if folder.is_dir() else []


def _codec_meta(lm: Any) -> dict[str, Any]:
    """save_codec's arch, quality and extra fields for a resolved codec (net_kwargs of tiny ones)."""
    extra = {"net_kwargs": lm.info["net_kwargs"]} if lm.info.get("net_kwargs") else {}
    return {"arch": lm.arch, "quality": lm.quality or 1, **extra}


def fit_bottleneck_codec(ctx: Context, codec: Path, save_to: Path | None) -> Any:
    """The factorized codec at ``codec`` with a ``PCEntropyBottleneck`` fit on BSDS500 crops (on the device)."""
    from pc_prior.integrations import fit_prior, resolve_codec, save_codec

    lm = resolve_codec(codec, device=ctx.device)
    net: Any = lm.net
    images = _fit_images(ctx.data("data/bsds500/train"), 4 if ctx.quick else 12)
    kw: dict[str, Any] = (
        {"num_latents": 3, "max_items": 2000, "epochs": 1, "full_batch_epochs": 1}
        if ctx.quick
        else {"num_latents": 16, "max_items": 30000, "epochs": 2, "full_batch_epochs": 1}
    )
    hist = fit_prior(net, images, progress=False, **kw)
    net.update(force=True)
    net.eval()
    if save_to is not None:
        meta = _codec_meta(lm)
        save_codec(net, save_to, meta.pop("arch"), meta.pop("quality"), **meta)
    return net, hist


def fit_hyperprior_codec(ctx: Context, codec: Path, save_to: Path | None) -> Any:
    """The hyperprior codec at ``codec`` with both PC entropy models (three-pass context), fit on the device."""
    from pc_prior.integrations import fit_prior, resolve_codec, save_codec

    lm = resolve_codec(codec, device=ctx.device)
    net: Any = lm.net
    images = _fit_images(ctx.data("data/bsds500/train"), 4 if ctx.quick else 12)
    bottleneck: dict[str, Any] = (
        {"num_latents": 3, "max_items": 2000, "epochs": 1}
        if ctx.quick
        else {"num_latents": 16, "max_items": 20000, "epochs": 2}
    )
    cond = (
        {"num_latents": 3, "steps": 40, "batch_size": 256, "max_items": 2000}
        if ctx.quick
        else {"num_latents": 16, "steps": 300, "batch_size": 512, "max_items": 40000}
    )
    hist = fit_prior(net, images, name=NAMES, progress=False, conditional=cond, **bottleneck)
    net.update(force=True)
    net.eval()
    if save_to is not None:
        meta = _codec_meta(lm)
        save_codec(net, save_to, meta.pop("arch"), meta.pop("quality"), **meta)
    return net, hist


def _pad_images(files: Sequence[Path]) -> list[Any]:
    from pc_prior.images import load_image, pad_to_multiple

    return [pad_to_multiple(load_image(f), 64) for f in files]


# -- check 1: the tests -----------------------------------------------------------------------------
def check_tests(ctx: Context) -> CheckResult:
    """``python -m pytest -q`` on the device part of the suite (quick: a few seconds of it)."""
    import importlib.util

    files = [f for f in (QUICK_TESTS if ctx.quick else DEVICE_TESTS) if (REPO / f).is_file()]
    if not files:
        return CheckResult("skipped", "none of the device test files is in this checkout")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    if ctx.quick:
        cmd += ["-k", QUICK_TESTS_K]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PC_PRIOR_TEST_DEVICE=str(ctx.device))
    if (
        not ctx.quick
        and importlib.util.find_spec("xdist") is not None
        and (os.cpu_count() or 1) >= 4
    ):
        workers = min(8, (os.cpu_count() or 4) // 2)
        cmd += ["-n", str(workers)]  # pytest-xdist (on the GPU machine): two threads per worker
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // workers))
    timeout = max(5.0, ctx.left())
    ctx.log(f"$ {' '.join(cmd)}  (timeout {timeout:.0f} s)")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        ctx.log(out[-20000:])
        return CheckResult(
            "failed",
            f"pytest ran past its budget of {timeout:.0f} s",
            {"files": files, "seconds": time.monotonic() - t0},
        )
    ctx.log(output[-200000:])
    counts = {
        k: int(n)
        for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", output)
    }
    fig = {
        "command": " ".join(cmd[1:]),
        "files": files,
        "counts": counts,
        "seconds": time.monotonic() - t0,
        "note": "the tests run on this machine's CPU (none moves to CUDA): they check its "
        "platform (Python, torch, the carried wheels), not CUDA kernels",
    }
    if rc == 0:
        return CheckResult("ok", "", fig)
    tail = [ln for ln in output.splitlines() if ln.startswith(("FAILED", "ERROR"))][:10]
    return CheckResult("failed", f"pytest exit code {rc}: " + "; ".join(tail)[:2000], fig)


# -- check 2: cross-device determinism --------------------------------------------------------------
def _sides(device: str) -> list[tuple[str, str]]:
    return [(device, "cpu"), ("cpu", device)]


def det_lossless(ctx: Context) -> dict[str, Any]:
    """HCLT fit on the device, then encode on one side and decode on the other, both ways."""
    import torch

    from pc_prior import HCLT, decode, encode, fit_em
    from pc_prior.coding import coding_tables
    from pc_prior.data import load_mnist

    root = ctx.data("data/mnist")
    n_train, n_test, k = (512, 128, 4) if ctx.quick else (3000, 1000, 16)
    x_train = load_mnist(root, "train", n_train)
    x = load_mnist(root, "test", n_test)
    pc = HCLT.from_data(x_train, 256, k, max_samples=5000).to(ctx.device)
    fit_em(pc, x_train, epochs=1, full_batch_epochs=0, batch_size=512, progress=False)
    pcs = {ctx.device: pc, "cpu": copy.deepcopy(pc).to("cpu")}
    rebuilt = copy.deepcopy(pcs["cpu"])
    coding_tables(rebuilt, refresh=True)  # tables recomputed on the CPU from the parameters
    streams = {d: encode(p, x) for d, p in pcs.items()}
    res: dict[str, Any] = {
        "images": len(x),
        "num_latents": k,
        "streams_identical": streams[ctx.device] == streams["cpu"],
        "stream_bytes": len(streams["cpu"]),
        "cpu_rebuilt_tables_give_same_stream": encode(rebuilt, x) == streams[ctx.device],
    }
    for enc, dec in _sides(ctx.device):
        y = decode(pcs[dec], streams[enc])
        res[f"{enc}_to_{dec}_exact"] = bool(torch.equal(y.cpu(), x))
    res["exact"] = all(
        res[k] for k in res if k.endswith("_exact") or k.startswith(("streams", "cpu_rebuilt"))
    )
    res["claimed"] = "exact: integer coding tables, integer messages below 2^53 (README)"
    return res


def det_bottleneck(ctx: Context) -> dict[str, Any]:
    """Factorized codec + PCEntropyBottleneck: compress on one device, decompress on the other."""
    import torch

    codec = ctx.data("models/bmshj2018-factorized-q1.pt")
    net, _ = fit_bottleneck_codec(ctx, codec, ctx.work / "pc-factorized-q1.pt")
    nets = {ctx.device: net, "cpu": copy.deepcopy(net).to("cpu")}
    xs = _pad_images(_images(ctx.data("data/kodak"), 2))
    res: dict[str, Any] = {"images": len(xs)}
    latents_exact, streams_same, x_hat_same, x_hat_diff = True, True, True, 0.0
    with torch.no_grad():
        for x in xs:
            y = nets["cpu"].g_a(x)  # one latent, coded on both devices
            s = {d: n.entropy_bottleneck.compress(y.to(d)) for d, n in nets.items()}
            streams_same &= s[ctx.device] == s["cpu"]
            for enc, dec in _sides(ctx.device):
                out = nets[enc].compress(x.to(enc))
                own = nets[enc].entropy_bottleneck.decompress(out["strings"][0], out["shape"])
                other = nets[dec].entropy_bottleneck.decompress(out["strings"][0], out["shape"])
                latents_exact &= bool(torch.equal(own.cpu(), other.cpu()))
                a = nets[enc].decompress(out["strings"], out["shape"])["x_hat"].cpu()
                b = nets[dec].decompress(out["strings"], out["shape"])["x_hat"].cpu()
                x_hat_same &= bool(torch.equal(a, b))
                x_hat_diff = max(x_hat_diff, float((a - b).abs().max()))
    res |= {
        "latents_decode_exact_both_ways": latents_exact,
        "same_latent_same_bytes_on_both": streams_same,
        "exact": latents_exact and streams_same,
        "x_hat_identical_both_ways": x_hat_same,
        "x_hat_max_abs_diff": x_hat_diff,
        "claimed": "exact for the coded latents (integer tables); x_hat is the synthesis "
        "transform's float output on each device, not claimed identical",
    }
    return res


def det_conditional(ctx: Context) -> dict[str, Any]:
    """Hyperprior codec + both PC entropy models: compress on one device, decompress on the other."""
    import torch

    from pc_prior import PCPriorError

    codec = ctx.data("models/bmshj2018-hyperprior-q1.pt")
    net, _ = fit_hyperprior_codec(ctx, codec, ctx.work / "pc-hyperprior-q1.pt")
    nets = {ctx.device: net, "cpu": copy.deepcopy(net).to("cpu")}
    xs = _pad_images(_images(ctx.data("data/kodak"), 2))
    z_exact, y_same_idx, y_e2e, streams_same, x_hat_same = True, True, True, True, True
    idx_diff, idx_total, errors = 0, 0, []
    with torch.no_grad():
        for x in xs:
            for enc, dec in _sides(ctx.device):
                e, d = nets[enc], nets[dec]
                out = e.compress(x.to(enc))
                y_str, z_str = out["strings"]
                z_own = e.entropy_bottleneck.decompress(z_str, out["shape"])
                z_other = d.entropy_bottleneck.decompress(z_str, out["shape"])
                z_exact &= bool(torch.equal(z_own.cpu(), z_other.cpu()))
                idx_enc = e.gaussian_conditional.build_indexes(e.h_s(z_own))
                idx_dec = d.gaussian_conditional.build_indexes(d.h_s(z_other))
                idx_diff += int((idx_enc.cpu() != idx_dec.cpu()).sum())
                idx_total += idx_enc.numel()
                y_own = e.gaussian_conditional.decompress(y_str, idx_enc).cpu()
                # the guarantee: the same scale indexes decode the same symbols on either device
                y_other = d.gaussian_conditional.decompress(y_str, idx_enc.to(dec)).cpu()
                y_same_idx &= bool(torch.equal(y_own, y_other))
                # the whole codec: the decoder's indexes come from its own hyper-decoder
                try:
                    y_dec = d.gaussian_conditional.decompress(y_str, idx_dec).cpu()
                    y_e2e &= bool(torch.equal(y_own, y_dec))
                    a = e.decompress(out["strings"], out["shape"])["x_hat"].cpu()
                    b = d.decompress(out["strings"], out["shape"])["x_hat"].cpu()
                    x_hat_same &= bool(torch.equal(a, b))
                except (PCPriorError, ValueError) as err:
                    y_e2e, x_hat_same = False, False
                    errors.append(f"{enc}->{dec}: {type(err).__name__}: {err}"[:300])
            # the same latent and indexes (the CPU's) coded on both devices: the same bytes?
            y = nets["cpu"].g_a(x)
            zs = nets["cpu"].h_a(y.abs())
            z_hat = nets["cpu"].entropy_bottleneck.decompress(
                nets["cpu"].entropy_bottleneck.compress(zs), zs.shape[-2:]
            )
            idx = nets["cpu"].gaussian_conditional.build_indexes(nets["cpu"].h_s(z_hat))
            s = {
                dv: n.gaussian_conditional.compress(y.to(dv), idx.to(dv)) for dv, n in nets.items()
            }
            streams_same &= s[ctx.device] == s["cpu"]
    res: dict[str, Any] = {
        "images": len(xs),
        "z_decode_exact_both_ways": z_exact,
        "y_decode_exact_given_the_encoders_indexes": y_same_idx,
        "same_latent_and_indexes_same_bytes_on_both": streams_same,
        "exact": z_exact and y_same_idx and streams_same,
        "scale_indexes_differing": idx_diff,
        "scale_indexes_total": idx_total,
        "y_decode_exact_end_to_end": y_e2e,
        "x_hat_identical_both_ways": x_hat_same,
        "claimed": "exact for z and for y given the same scale indexes (integer tables and "
        "contexts); the indexes come from the hyper-decoder's float scales, not claimed across "
        "devices (README, 'How the coding works, and what is deterministic')",
    }
    if errors:
        res["end_to_end_errors"] = errors
    if not y_e2e:
        res["end_to_end_reason"] = (
            f"{idx_diff} of {idx_total} scale indexes differ between the two devices' "
            "hyper-decoders (float h_s), so the decoder codes y under other distributions"
            if idx_diff
            else "the scale indexes agree, yet y differs: a coding bug"
        )
    elif not x_hat_same:
        res["end_to_end_reason"] = (
            "y decodes exactly; x_hat differs by the synthesis transform's float"
        )
    return res


def check_determinism(ctx: Context) -> CheckResult:
    """Every format both ways; failed only where a claimed guarantee breaks (or a format errs)."""
    parts = {
        "lossless": (det_lossless, ["data/mnist"]),
        "bottleneck": (
            det_bottleneck,
            ["models/bmshj2018-factorized-q1.pt", "data/kodak", "data/bsds500/train"],
        ),
        "conditional": (
            det_conditional,
            ["models/bmshj2018-hyperprior-q1.pt", "data/kodak", "data/bsds500/train"],
        ),
    }
    figures = ctx.figures
    figures |= {"encode_device": ctx.device, "decode_device": "cpu (and reverse)"}
    if ctx.device == "cpu":
        figures["note"] = "--device cpu: both sides are the CPU (a self-consistency check)"
    broken: list[str] = []
    for name, (fn, needs) in parts.items():
        why = _need(*(ctx.data(p) for p in needs))
        if why:
            figures[name] = {"skipped": why}
            continue
        if ctx.left() < (5 if ctx.quick else 30):
            figures[name] = {"skipped": f"out of time ({ctx.left():.0f} s left)"}
            broken.append(f"{name}: not run (out of time)")
            continue
        t0 = time.monotonic()
        try:
            r = fn(ctx)
        except CheckTimeout:
            raise
        except Exception as e:
            ctx.log(traceback.format_exc())
            r = {"error": f"{type(e).__name__}: {e}"[:1000], "exact": False}
        r["seconds"] = time.monotonic() - t0
        figures[name] = r
        ctx.save()
        ctx.log(f"determinism {name}: {json.dumps(clean(r))}")
        if not r.get("exact"):
            broken.append(f"{name}: {r.get('error', 'a claimed bit-exact part differs')}")
    exact = {n: figures[n].get("exact") for n in parts if "skipped" not in figures[n]}
    figures["exact_by_format"] = exact
    if broken:
        return CheckResult("failed", "; ".join(broken), figures)
    if not exact:
        return CheckResult(
            "skipped", "no format could run: " + figures["lossless"]["skipped"], figures
        )
    return CheckResult("ok", "", figures)


# -- check 3: codec speed ---------------------------------------------------------------------------
def check_speed(ctx: Context) -> CheckResult:
    """Encode/decode ms per Kodak image, base codec against PC codec, same run, on the device."""
    from pc_prior.eval.rd import evaluate_model
    from pc_prior.integrations import resolve_codec

    files = _images(ctx.data("data/kodak"), 2 if ctx.quick else 3)
    if not files:
        return CheckResult("skipped", f"no images in {ctx.data('data/kodak')}")
    runs, warmup = (1, 0) if ctx.quick else (3, 1)
    pairs = {
        "factorized-q1": ("models/bmshj2018-factorized-q1.pt", "pc-factorized-q1.pt"),
        "hyperprior-q1": ("models/bmshj2018-hyperprior-q1.pt", "pc-hyperprior-q1.pt"),
    }
    figures = ctx.figures
    figures |= {
        "device": ctx.device,
        "images": [f.name for f in files],
        "runs": runs,
        "warmup": warmup,
        "statistic": "mean over images of the per-image median",
    }
    ran = 0
    for label, (base_rel, pc_name) in pairs.items():
        base = ctx.data(base_rel)
        if not base.is_file():
            figures[label] = {"skipped": f"missing: {base}"}
            continue
        if ctx.left() < (3 if ctx.quick else 20):
            figures[label] = {"skipped": f"out of time ({ctx.left():.0f} s left)"}
            continue
        pc_path = ctx.work / pc_name
        fitted_here = not pc_path.is_file()
        if fitted_here and ctx.left() < (3 if ctx.quick else 60):
            figures[label] = {
                "skipped": f"the determinism check left no PC codec {pc_name} and "
                f"{ctx.left():.0f} s are too few to fit one"
            }
            continue
        if fitted_here:  # the determinism check fits and saves these; fit here if it did not
            fit = fit_hyperprior_codec if "hyperprior" in label else fit_bottleneck_codec
            fit(ctx, base, pc_path)
        row: dict[str, Any] = {"pc_codec_fitted_in_this_check": fitted_here}
        for role, spec in (("base", base), ("pc", pc_path)):
            net = resolve_codec(spec, device=ctx.device).net
            res = evaluate_model(net, files, progress=False, runs=runs, warmup=warmup)
            m = res["mean"]
            row[role] = {
                "encode_ms": 1000 * m["encoding_time"],
                "decode_ms": 1000 * m["decoding_time"],
                "bpp": m["bpp"],
                "decoded_equals_forward": sum(r["decoded_equals_forward"] for r in res["images"]),
            }
            row[role + "_x_hat_sha256"] = [r["x_hat_sha256"] for r in res["images"]]
            del net
        b, p = row["base"], row["pc"]
        row["pc_over_base"] = {
            "encode": p["encode_ms"] / b["encode_ms"],
            "decode": p["decode_ms"] / b["decode_ms"],
            "bpp": p["bpp"] / b["bpp"],
        }
        row["reconstructions_identical"] = row.pop("base_x_hat_sha256") == row.pop(
            "pc_x_hat_sha256"
        )
        figures[label] = row
        ctx.save()
        ctx.log(f"speed {label}: {json.dumps(clean(row))}")
        ran += 1
    if not ran:
        return CheckResult("skipped", "no codec pair could run", figures)
    return CheckResult("ok", "", figures)


# -- check 4: lossless EM epoch against pyjuice -----------------------------------------------------
def _ours_train_for(pc: Any, x: Any, batch_size: int, seconds: float, device: str) -> int:
    """Mini-batch EM (step 0.1, pseudocount 0.1, as the pyjuice run) for ``seconds`` of wall time."""
    import torch

    from pc_prior.training import apply_em_counts, em_step_counts

    g = torch.Generator().manual_seed(1)
    steps, t0 = 0, time.perf_counter()
    while True:
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            apply_em_counts(pc, em_step_counts(pc, x[idx].to(device))[0], 0.1, 0.1)
            steps += 1
            _sync(device)
            if time.perf_counter() - t0 >= seconds:
                return steps


def check_lossless(ctx: Context) -> CheckResult:
    """One EM epoch of our HCLT against pyjuice's, equal K, batch and data; bpd after equal time."""
    import torch

    from pc_prior import HCLT, bits_per_dim, fit_em
    from pc_prior.data import load_mnist
    from pc_prior.training import em_step_counts

    sys.path.insert(0, str(BENCH))
    from bench_lossless import pyjuice_hclt

    root = ctx.data("data/mnist")
    why = _need(root)
    if why:
        return CheckResult("skipped", why)
    k, batch, n_test, structure = (4, 128, 128, 512) if ctx.quick else (32, 512, 5000, 10000)
    x_train = load_mnist(root, "train")
    x_test = load_mnist(root, "test", n_test)
    structure = min(structure, len(x_train))
    fig = ctx.figures
    fig |= {
        "device": ctx.device,
        "num_latents": k,
        "batch_size": batch,
        "train_images": len(x_train),
        "test_images": len(x_test),
        "structure_images": structure,
        "em": "mini-batch EM, step size 0.1, pseudocount 0.1, one pass over the training "
        "images, after one untimed warm-up batch (both libraries)",
    }
    t0 = time.perf_counter()
    pc = HCLT.from_data(x_train[:structure], 256, k, max_samples=structure).to(ctx.device)
    _sync(ctx.device)
    fig["ours_structure_seconds"] = time.perf_counter() - t0
    fresh = copy.deepcopy(pc)
    em_step_counts(pc, x_train[:batch].to(ctx.device))  # warm-up (CUDA init), as pyjuice's
    _sync(ctx.device)
    t0 = time.perf_counter()
    fit_em(
        pc,
        x_train,
        epochs=1,
        full_batch_epochs=0,
        batch_size=batch,
        step_size=0.1,
        pseudocount=0.1,
        progress=False,
    )
    _sync(ctx.device)
    fig["ours_epoch_seconds"] = time.perf_counter() - t0
    fig["ours_bpd_after_one_epoch"] = bits_per_dim(pc, x_test)
    ctx.save()
    ctx.log(f"lossless ours: {json.dumps(clean(fig))}")
    if not ctx.device.startswith("cuda") or not torch.cuda.is_available():
        return CheckResult(
            "skipped", "pyjuice runs on CUDA only; this run's device is " + ctx.device, fig
        )
    pj = pyjuice_hclt(x_train, x_test, k, batch, ctx.device, structure_images=structure)
    fig["pyjuice"] = pj
    ctx.save()
    if "skipped" in pj:
        return CheckResult("skipped", pj["skipped"], fig)
    fig["ours_over_pyjuice_epoch_time"] = fig["ours_epoch_seconds"] / pj["epoch_seconds"]
    # bpd after equal wall time: the faster library's one epoch is the time both get
    w = min(fig["ours_epoch_seconds"], pj["epoch_seconds"])
    eq: dict[str, Any] = {"seconds": w}
    if ctx.left() < 3 * w + 10:
        eq["skipped"] = f"out of time ({ctx.left():.0f} s left for {w:.1f} s runs)"
    elif fig["ours_epoch_seconds"] <= pj["epoch_seconds"]:
        eq["ours_bpd"] = fig["ours_bpd_after_one_epoch"]
        again = pyjuice_hclt(
            x_train, x_test, k, batch, ctx.device, structure_images=structure, seconds=w
        )
        eq["pyjuice_bpd"] = again.get("bpd", again.get("skipped"))
        eq["pyjuice_batches"] = again.get("batches")
    else:
        eq["pyjuice_bpd"] = pj["bpd_after_one_epoch"]
        eq["ours_batches"] = _ours_train_for(fresh, x_train, batch, w, ctx.device)
        eq["ours_bpd"] = bits_per_dim(fresh, x_test)
    fig["bpd_after_equal_wall_time"] = eq
    return CheckResult("ok", "", fig)


# -- check 5: RD fine-tuning ------------------------------------------------------------------------
def check_finetune(ctx: Context) -> CheckResult:
    """RDModule on factorized q1-q4 for the time left, then BD-rate of joint vs frozen (eval harness)."""
    import pytorch_lightning as pl
    import torch

    from pc_prior.eval.rd import evaluate_model
    from pc_prior.integrations import load_codec
    from pc_prior.train import ImageFolderDataModule, RDModule

    qualities = [1, 2] if ctx.quick else [1, 2, 3, 4]
    codecs = {q: ctx.data(f"models/bmshj2018-factorized-q{q}.pt") for q in qualities}
    codecs = {q: p for q, p in codecs.items() if p.is_file()}
    train_dir, kodak = ctx.data("data/bsds500/train"), ctx.data("data/kodak")
    why = _need(train_dir, kodak) or ("" if codecs else "no factorized codec in models/")
    if why:
        return CheckResult("skipped", why)
    files = _images(kodak, None if not ctx.quick else 2)
    folder = ctx.work / "finetune"
    folder.mkdir(parents=True, exist_ok=True)
    cuda = ctx.device.startswith("cuda")
    patch, batch = (64, 2) if ctx.quick else (256, 8)
    fig = ctx.figures
    fig |= {
        "device": ctx.device,
        "qualities": list(codecs),
        "patch_size": patch,
        "batch_size": batch,
        "eval_images": [f.name for f in files],
        "codec_lr": 1e-5,
        "prior_lr": 1e-3,
        "per_quality": {},
    }
    runs: dict[str, list[dict[str, Any]]] = {"frozen": [], "joint": []}
    # seconds per quality besides training (prior fit, exports, eval of both codecs): a guess
    # for the first, then what the previous quality took
    overhead = 5.0 if ctx.quick else 45.0
    min_train = 1.0 if ctx.quick else 10.0
    for i, (q, codec) in enumerate(codecs.items()):
        # the time left, split evenly over the qualities still to run that fit in it (in order,
        # so a short run fine-tunes q1..qn and skips the last ones)
        # a margin for Lightning's max_time overshoot (it stops after a step) and noisy evals
        usable = ctx.left() - (5 if ctx.quick else max(10.0, 0.08 * ctx.left()))
        n_use = min(len(codecs) - i, int(usable // (1.2 * overhead + min_train)))
        if n_use < 1:
            fig["per_quality"][q] = {"skipped": f"out of time ({ctx.left():.0f} s left)"}
            continue
        train_s = usable / n_use - 1.2 * overhead
        t0 = time.monotonic()
        pl.seed_everything(0, verbose=False)
        dm = ImageFolderDataModule(
            str(train_dir),
            None,
            patch_size=patch,
            batch_size=batch,
            num_workers=0 if ctx.quick else 4,
            pin_memory=cuda,
        )
        dm.setup("fit")
        model = RDModule(
            codec=str(codec),
            num_latents=3 if ctx.quick else 16,
            structure="star",
            prior_max_items=2000 if ctx.quick else 30000,
            prior_epochs=1 if ctx.quick else 3,
            prior_finetune_steps=5 if ctx.quick else 200,
            lr=1e-5,
            prior_lr=1e-3,
            lr_decay_at=None,
            coded_val_batches=0,
            export_path=str(folder / f"joint-q{q}.pt"),
            plain_export_path="",
        )
        model.to(ctx.device)
        assert dm.train_set is not None
        g = torch.Generator().manual_seed(0)
        n_fit = min(len(dm.train_set), 8 if ctx.quick else 64)
        idx = torch.randperm(len(dm.train_set), generator=g)[:n_fit].tolist()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            crops = [dm.train_set[j] for j in idx]
        model.fit_prior([torch.stack(crops[j : j + 8]) for j in range(0, len(crops), 8)])
        model.export(folder / f"frozen-q{q}.pt")
        fit_s = time.monotonic() - t0
        trainer = pl.Trainer(
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            max_steps=3 if ctx.quick else -1,
            max_time=datetime.timedelta(seconds=max(1.0, train_s)),
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
        )
        t1 = time.monotonic()
        trainer.fit(model, dm)
        row: dict[str, Any] = {
            "prior_fit_and_export_seconds": fit_s,
            "train_seconds": time.monotonic() - t1,
            "train_budget_seconds": train_s,
            "steps": int(trainer.global_step),
            "lmbda": float(model.lmbda),
        }
        del model, trainer, dm
        t2 = time.monotonic()
        for kind in runs:  # the eval harness, as pc-prior eval: real bytes, every image decoded
            net = load_codec(folder / f"{kind}-q{q}.pt", map_location=ctx.device)
            res = evaluate_model(net, files, progress=False)
            runs[kind].append({"model": f"{kind}-q{q}", "quality": q, **res})
            row[kind] = {k: res["mean"][k] for k in ("bpp", "psnr-rgb", "ms-ssim-rgb")}
            del net
        row["eval_seconds"] = time.monotonic() - t2
        overhead = fit_s + row["eval_seconds"]
        fig["per_quality"][q] = row
        summarize_rd(ctx, runs)  # after every quality, so a run stopped later keeps these
        ctx.save()
        ctx.log(f"finetune q{q}: {json.dumps(clean(row))}")
    if not runs["joint"]:
        return CheckResult("failed", "no quality was fine-tuned in the time given", fig)
    if len(runs["joint"]) < len(codecs):
        fig["note"] = (
            f"fine-tuned {len(runs['joint'])} of {len(codecs)} qualities in the time given"
        )
    return CheckResult("ok", "", fig)


def summarize_rd(ctx: Context, runs: dict[str, list[dict[str, Any]]]) -> None:
    """The RD files (CompressAI's format) of the qualities done so far, and their comparison
    (``pc-prior compare``: rate savings, BD-rates of joint against frozen), into ``ctx.figures``."""
    from pc_prior.eval.compare import compare, load_curve, rate_savings
    from pc_prior.eval.rd import results_json

    fig = ctx.figures
    paths = {}
    for kind, label in (
        ("frozen", "factorized + PC prior, frozen codec (RDModule start)"),
        ("joint", "factorized + PC prior, joint RD fine-tuning"),
    ):
        paths[kind] = ctx.out / f"finetune-{kind}.json"
        paths[kind].write_text(
            json.dumps(clean(results_json(runs[kind], name=label, extra={"device": ctx.device})))
            + "\n"
        )
    fig.pop("bd_rate_error", None)
    try:
        cmp = compare(paths["frozen"], paths["joint"])
        cmp.pop("_curves", None)
    except (AssertionError, ValueError) as e:  # bjontegaard asserts on non-monotonic curves
        cmp = {
            "bd_rate_psnr": None,
            "bd_rate_ms_ssim": None,
            "per_quality": rate_savings(load_curve(paths["frozen"]), load_curve(paths["joint"])),
        }
        fig["bd_rate_error"] = f"compare() raised {type(e).__name__}: {e} (curves not monotonic?)"
    fig["bd_rate_psnr_joint_vs_frozen"] = cmp["bd_rate_psnr"]
    fig["bd_rate_ms_ssim_joint_vs_frozen"] = cmp["bd_rate_ms_ssim"]
    fig["rate_savings"] = cmp["per_quality"]
    fig["decoded_equals_forward"] = {
        kind: sum(r["decoded_equals_forward"] for run in rs for r in run["images"])
        for kind, rs in runs.items()
    }
    fig["results_files"] = [p.name for p in paths.values()]
    if len(runs["joint"]) < 2:
        fig["bd_rate_note"] = "BD-rate needs two qualities or more; one is done"
    else:
        fig.pop("bd_rate_note", None)


CHECK_FUNCTIONS: dict[str, Callable[[Context], CheckResult]] = {
    "tests": check_tests,
    "determinism": check_determinism,
    "speed": check_speed,
    "lossless": check_lossless,
    "finetune": check_finetune,
}


# -- running the checks -----------------------------------------------------------------------------
@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise CheckTimeout in this (main) thread after ``seconds`` (in-process checks only)."""

    def handler(_sig: int, _frame: Any) -> None:
        raise CheckTimeout(f"ran past its budget of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.1))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_in_process(name: str, ctx: Context, budget: float) -> CheckResult:
    """The check in this process; a timeout or an exception is a ``failed`` with the figures so far."""
    try:
        with _alarm(budget):
            return CHECK_FUNCTIONS[name](ctx)
    except CheckTimeout as e:
        return CheckResult("failed", str(e), ctx.figures)
    except Exception as e:
        ctx.log(traceback.format_exc())
        return CheckResult("failed", f"{type(e).__name__}: {e}"[:2000], ctx.figures)


def run_child(
    name: str, args: argparse.Namespace, work: Path, shared: Path, budget: float, log: Any
) -> CheckResult:
    """The check in its own process, killed at its budget; its output goes to the log."""
    result_file = work / f"{name}.result.json"
    partial = work / f"{name}.partial.json"
    result_file.unlink(missing_ok=True)
    partial.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        name,
        "--device",
        args.device,
        "--out",
        str(args.out),
        "--work",
        str(work),
        "--shared",
        str(shared),
        "--budget",
        f"{budget:.1f}",
    ] + (["--quick"] if args.quick else [])
    log.flush()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        rc = proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    if result_file.is_file():
        d = json.loads(result_file.read_text())
        return CheckResult(d["status"], d["reason"], d["figures"])
    so_far = json.loads(partial.read_text()) if partial.is_file() else {}
    if rc is None:
        return CheckResult("failed", f"ran past its budget of {budget:.0f} s (killed)", so_far)
    return CheckResult("failed", f"the check's process exited with code {rc} and no result", so_far)


def environment(device: str) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    for pkg in (
        "pc-prior",
        "compressai",
        "constriction",
        "bjontegaard",
        "pyjuice",
        "pytorch-lightning",
        "numpy",
        "scipy",
    ):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    return env


class _Log:
    """suite.log, capped at LOG_CAP bytes; also a file object for the children's output."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = path.open("a", buffering=1)

    def __call__(self, msg: str) -> None:
        if self.f.tell() < LOG_CAP:
            self.f.write(msg.rstrip("\n") + "\n")

    def fileno(self) -> int:
        return self.f.fileno()

    def flush(self) -> None:
        self.f.flush()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny synthetic data, CI-sized (~1 min)")
    ap.add_argument("--device", default="cuda", help="device of the checks (default: cuda)")
    ap.add_argument("--out", type=Path, default=Path("runs/device-suite"))
    ap.add_argument(
        "--shared",
        type=Path,
        default=None,
        help="data and codecs laid out as ../shared (default: .device/shared if present, else ../shared)",
    )
    ap.add_argument(
        "--minutes", type=float, default=None, help="wall-clock limit (default 9; --quick 1.5)"
    )
    ap.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--keep-work", action="store_true")
    ap.add_argument("--child", choices=CHECKS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def default_shared() -> Path:
    own = REPO / ".device" / "shared"
    return own if own.is_dir() else REPO.parent / "shared"


def child_main(args: argparse.Namespace) -> int:
    assert args.child and args.work and args.budget is not None
    ctx = Context(
        args.quick,
        args.device,
        args.out,
        args.work,
        args.shared,
        time.monotonic() + args.budget * 0.93,
        partial=args.work / f"{args.child}.partial.json",
    )
    res = run_in_process(args.child, ctx, args.budget * 0.97)
    (args.work / f"{args.child}.result.json").write_text(json.dumps(res.as_dict()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        return child_main(args)
    t_start = time.monotonic()
    minutes = args.minutes if args.minutes is not None else (1.5 if args.quick else 9.0)
    deadline = t_start + 60 * minutes - 3
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    log = _Log(args.out / "suite.log")

    def say(msg: str) -> None:
        print(msg, flush=True)
        log(msg)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        say(f"--device {args.device}: no CUDA device here; every check runs on the CPU instead")
        args.device = "cpu"
    work = (args.work or Path(tempfile.mkdtemp(prefix="pc-prior-suite-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    shared = (args.shared or default_shared()).resolve()
    results: dict[str, Any] = {
        "suite": "bench/device_suite.py",
        "quick": args.quick,
        "minutes": minutes,
        "environment": environment(args.device),
        "checks": {},
    }
    try:
        if args.quick:
            shared = make_synthetic(work / "synthetic")
            results["data"] = "synthetic (--quick): tiny digits, 64x64 PNGs, tiny random codecs"
        else:
            results["data"] = str(shared)
        results["shared"] = str(shared)
        say(f"device suite: device {args.device}, {minutes} min, data {results['data']}")
        todo = [c for c in CHECKS if c in args.checks]
        for i, name in enumerate(todo):
            left = deadline - time.monotonic()
            rest = sum(WEIGHTS[c] for c in todo[i:])
            budget = max(1.0, left * WEIGHTS[name] / rest)
            say(f"== {name}: budget {budget:.0f} s ({left:.0f} s left)")
            t0 = time.monotonic()
            if left < 2:
                res = CheckResult("failed", "no time left in the suite's --minutes")
            elif args.quick:
                ctx = Context(
                    args.quick,
                    args.device,
                    args.out,
                    work,
                    shared,
                    time.monotonic() + budget * 0.93,
                    log,
                )
                res = run_in_process(name, ctx, budget)
            else:
                res = run_child(name, args, work, shared, budget, log)
            entry = res.as_dict() | {"seconds": time.monotonic() - t0, "budget_seconds": budget}
            results["checks"][name] = entry
            say(
                f"== {name}: {res.status}"
                + (f" ({res.reason})" if res.reason else "")
                + f" in {entry['seconds']:.1f} s"
            )
            results["seconds"] = time.monotonic() - t_start
            (args.out / "results.json").write_text(json.dumps(clean(results), indent=1) + "\n")
    finally:
        if not args.keep_work and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.monotonic() - t_start
    (args.out / "results.json").write_text(json.dumps(clean(results), indent=1) + "\n")
    failed = [n for n, r in results["checks"].items() if r["status"] == "failed"]
    say(
        f"device suite done in {results['seconds']:.0f} s: "
        + ", ".join(f"{n} {r['status']}" for n, r in results["checks"].items())
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
