"""Which CompressAI models the PC entropy models serve, and clear errors (never a crash) for the rest.

Every CompressAI image model class is built tiny; each of its entropy models is either swapped,
fitted and round-tripped exactly, or refused at swap time with an ``UnsupportedModelError``.
Everything that runs a codec's ``compress``/``decompress`` with PC modules inside (where a
regression could hand CompressAI's C++ coder empty CDF tables and segfault) runs in one worker
subprocess (``python tests/test_model_support.py``), so a crash fails these tests instead of
killing pytest. Also: wrong latent shapes raise ``InputError`` at every entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import compressai.models as cm
import pytest
import torch
from compressai.entropy_models import EntropyBottleneck, EntropyModel, GaussianConditional
from compressai.entropy_models.entropy_models_vbr import EntropyModelVbr
from torch import nn

from pc_prior.errors import InputError, UnsupportedModelError
from pc_prior.integrations import PCConditional, PCEntropyBottleneck, fit_prior, swap_entropy_model
from pc_prior.settings import ConditionalFit

REPO = Path(__file__).resolve().parents[2]

# Tiny instance of every CompressAI image model (case name -> class name, keyword arguments).
TINY: dict[str, tuple[str, dict]] = {
    "FactorizedPrior": ("FactorizedPrior", dict(N=8, M=8)),
    "FactorizedPriorReLU": ("FactorizedPriorReLU", dict(N=8, M=8)),
    "ScaleHyperprior": ("ScaleHyperprior", dict(N=8, M=8)),
    "MeanScaleHyperprior": ("MeanScaleHyperprior", dict(N=8, M=8)),
    "JointAutoregressiveHierarchicalPriors": (
        "JointAutoregressiveHierarchicalPriors",
        dict(N=8, M=8),
    ),
    "Cheng2020Anchor": ("Cheng2020Anchor", dict(N=8)),
    "Cheng2020Attention": ("Cheng2020Attention", dict(N=8)),
    "Cheng2020AnchorCheckerboard": ("Cheng2020AnchorCheckerboard", dict(N=8)),
    "Elic2022Official": ("Elic2022Official", dict(N=8, M=16, groups=[4, 4, 8])),
    "Elic2022Chandelier": ("Elic2022Chandelier", dict(N=8, M=16, groups=[4, 4, 8])),
    "ScaleHyperpriorVbr": ("ScaleHyperpriorVbr", dict(N=8, M=8)),
    "ScaleHyperpriorVbr-vr": ("ScaleHyperpriorVbr", dict(N=8, M=8, vr_entbttlnck=True)),
    "MeanScaleHyperpriorVbr": ("MeanScaleHyperpriorVbr", dict(N=8, M=8)),
    "JointAutoregressiveHierarchicalPriorsVbr": (
        "JointAutoregressiveHierarchicalPriorsVbr",
        dict(N=8, M=8),
    ),
}
SERIAL = (
    "JointAutoregressiveHierarchicalPriors",
    "Cheng2020Anchor",
    "Cheng2020Attention",
    "JointAutoregressiveHierarchicalPriorsVbr",
)
# Entropy models refused at swap time, and the words their reason must contain.
REFUSED: dict[str, dict[str, str]] = {
    **{m: {"gaussian_conditional": "C++ coder"} for m in SERIAL},
    "ScaleHyperpriorVbr-vr": {"entropy_bottleneck": "EntropyBottleneckVbr"},
}
REFUSED["JointAutoregressiveHierarchicalPriorsVbr"]["gaussian_conditional"] = (
    "once per 1x1 latent position"
)
# Models whose compress/decompress reproduce their eval forward's x_hat bit-exactly.
EXACT_FORWARD = (
    "FactorizedPrior",
    "FactorizedPriorReLU",
    "ScaleHyperprior",
    "MeanScaleHyperprior",
    "ScaleHyperpriorVbr",
    "ScaleHyperpriorVbr-vr",
    "MeanScaleHyperpriorVbr",
)
IMAGE = 64  # every model's total downsampling divides it


def build(case: str) -> nn.Module:
    """The tiny model of ``case``, eval mode, CompressAI tables written, latents spread to many symbols."""
    cls_name, kwargs = TINY[case]
    torch.manual_seed(0)
    net = getattr(cm, cls_name)(**kwargs).eval()
    x = torch.cat(images())
    with (
        torch.no_grad()
    ):  # a random init gives nearly constant latents: scale y to std 3, z to std 2
        _scale_last_conv(net.g_a, 3.0 / float(net.g_a(x).std()))
        h_a = getattr(net, "h_a", None)
        if h_a is None and hasattr(net, "latent_codec"):
            h_a = net.latent_codec["hyper"].h_a
        if h_a is not None:
            seen: list = []
            eb = next(
                m for m in net.modules() if isinstance(m, (EntropyBottleneck, EntropyModelVbr))
            )
            handle = eb.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
            try:
                net(x)
            finally:
                handle.remove()
            _scale_last_conv(h_a, 2.0 / float(seen[0].std()))
    net.update(force=True)
    return net


def _scale_last_conv(part: nn.Module, gain: float) -> None:
    last = [m for m in part.children() if isinstance(m, nn.Conv2d)][-1]
    last.weight.mul_(gain)
    last.bias.mul_(gain)


def entropy_modules(net: nn.Module) -> list[str]:
    return [
        n
        for n, m in net.named_modules()
        if isinstance(m, (EntropyBottleneck, GaussianConditional, EntropyModelVbr))
    ]


def images(n: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, IMAGE, IMAGE, generator=g) for _ in range(n)]


# -- enumeration and swap-time refusals (in process: nothing here runs a coder) --------------------
def test_every_compressai_image_model_is_covered():
    from compressai.registry import MODELS
    from compressai.zoo.image import model_architectures

    classes = {
        c
        for c in vars(cm).values()
        if isinstance(c, type)
        and issubclass(c, cm.CompressionModel)
        and c not in (cm.CompressionModel, cm.SimpleVAECompressionModel)
        and ".pointcloud" not in c.__module__
    }
    classes |= {
        c
        for c in MODELS.values()
        if ".pointcloud" not in c.__module__ and ".video" not in c.__module__
    }
    classes |= set(model_architectures.values())
    covered = {getattr(cm, cls_name) for cls_name, _ in TINY.values()}
    assert classes <= covered, (
        f"CompressAI image models without a support decision: {classes - covered}"
    )
    for case in TINY:
        assert entropy_modules(build(case)), case


@pytest.mark.parametrize("case", list(TINY))
def test_swap_accepts_or_refuses_each_entropy_model(case):
    net = build(case)
    names = entropy_modules(net)
    refused = REFUSED.get(case, {})
    assert set(refused) <= set(names)
    for n in names:
        old = net.get_submodule(n)
        if n in refused:
            with pytest.raises(UnsupportedModelError) as err:
                swap_entropy_model(net, n)
            msg = str(err.value)
            assert isinstance(err.value, TypeError) and n in msg and refused[n] in msg
            if isinstance(old, GaussianConditional):
                assert TINY[case][0] in msg  # names the model class
            assert net.get_submodule(n) is old  # left alone
        else:
            new = swap_entropy_model(net, n)
            assert net.get_submodule(n) is new and isinstance(
                new, (PCEntropyBottleneck, PCConditional)
            )
    if refused:  # a sequence is checked whole before anything is swapped, so nothing is
        fresh = build(case)
        before = {n: fresh.get_submodule(n) for n in names}
        with pytest.raises(UnsupportedModelError):
            swap_entropy_model(fresh, names)
        assert all(fresh.get_submodule(n) is m for n, m in before.items())


def test_raster_scan_latent_codec_and_gaussian_subclasses_are_refused():
    from compressai.entropy_models import GaussianMixtureConditional
    from compressai.latent_codecs import RasterScanLatentCodec
    from compressai.layers import MaskedConv2d

    class RasterScan(cm.SimpleVAECompressionModel):
        def __init__(self):
            super().__init__()
            self.latent_codec = RasterScanLatentCodec(
                GaussianConditional(None),
                nn.Identity(),
                MaskedConv2d(4, 8, kernel_size=5, padding=2),
            )

    net = RasterScan()
    with pytest.raises(UnsupportedModelError, match="RasterScanLatentCodec.*C\\+\\+ coder"):
        swap_entropy_model(net, "latent_codec.gaussian_conditional")
    net.gmm = GaussianMixtureConditional()
    with pytest.raises(UnsupportedModelError, match="GaussianMixtureConditional"):
        swap_entropy_model(net, "gmm")


def test_cdf_tables_of_pc_modules_raise_and_private_buffers_work():
    eb = PCEntropyBottleneck(4)
    eb.fit(torch.randn(300, 4) * 3, num_latents=2, context=None, epochs=1, progress=False)
    gc = PCConditional(None)
    gc.fit(
        [torch.randint(-3, 4, (1, 4, 4, 4))],
        [torch.randint(0, 64, (1, 4, 4, 4))],
        num_latents=2,
        steps=2,
        progress=False,
    )
    for module in (eb, gc):
        for attr in ("quantized_cdf", "offset", "cdf_length"):
            with pytest.raises(
                UnsupportedModelError, match=f"{type(module).__name__}.{attr}.*keep CompressAI"
            ):
                getattr(module, attr)
        assert module._offset.numel() and module._cdf_length.numel()  # ours, untouched
        with pytest.raises(UnsupportedModelError, match="no CompressAI CDF tables"):
            module._pmf_to_cdf(torch.ones(1, 3), torch.zeros(1, 1), torch.tensor([3]), 3)
    # CompressAI's own coder path (EntropyModel.compress/decompress) stops before the C++ call
    y = torch.randn(1, 4, 2, 2)
    with pytest.raises(UnsupportedModelError):
        EntropyModel.compress(eb, y, eb._build_indexes(y.size()))
    with pytest.raises(UnsupportedModelError):
        EntropyModel.decompress(eb, [b""], eb._build_indexes(y.size()))
    with pytest.raises(UnsupportedModelError):
        EntropyModel.compress(gc, y, torch.zeros(1, 4, 2, 2, dtype=torch.int32))
    s = eb.compress(y)  # the PC path is unaffected
    assert torch.equal(eb.decompress(s, (2, 2)), eb(y, training=False)[0])


def test_cli_fit_conditional_refuses_mbt2018(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from pc_prior.cli import main

    net = build("JointAutoregressiveHierarchicalPriors")
    codec = tmp_path / "mbt.pt"
    torch.save(
        {
            "arch": "JointAutoregressiveHierarchicalPriors",
            "quality": 1,
            "net_kwargs": dict(N=8, M=8),
            "state_dict": net.state_dict(),
        },
        codec,
    )
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        imgs / "0.png"
    )
    out = tmp_path / "out.pt"
    capsys.readouterr()
    assert (
        main(
            [
                "prior",
                "fit",
                str(codec),
                "--data",
                str(imgs),
                "-o",
                str(out),
                "--conditional",
                "--latents",
                "2",
                "--epochs",
                "1",
                "--cond-steps",
                "2",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and "JointAutoregressiveHierarchicalPriors" in err
        and "C++ coder" in err
    )
    assert not out.exists()


# -- round trips and forced misuse, in a worker subprocess ---------------------------------------
def _watch(net: nn.Module) -> tuple[dict, list]:
    """Wrap every PC module's compress/decompress to record the symbols coded and decoded per string."""
    coded: dict = {}
    decoded: list = []
    for name, mod in net.named_modules():
        if isinstance(mod, PCEntropyBottleneck):

            def comp(x, _f=mod.compress, _m=mod, _n=name):
                out = _f(x)
                coded[(_n, tuple(out))] = _m.symbols(x)
                return out

            def decomp(strings, size, _f=mod.decompress, _m=mod, _n=name):
                out = _f(strings, size)
                decoded.append(
                    (_n, tuple(strings), torch.round(out - _m._medians().view(1, -1, 1, 1)).long())
                )
                return out
        elif isinstance(mod, PCConditional):

            def comp(inputs, indexes, means=None, _f=mod.compress, _n=name):
                out = _f(inputs, indexes, means)
                coded[(_n, tuple(out))] = torch.round(
                    inputs - means if means is not None else inputs
                ).long()
                return out

            def decomp(strings, indexes, dtype=torch.float, means=None, _f=mod.decompress, _n=name):
                out = _f(strings, indexes, dtype, means)
                decoded.append(
                    (_n, tuple(strings), _f(strings, indexes).long())
                )  # the bare symbols
                return out
        else:
            continue
        mod.compress, mod.decompress = comp, decomp
    return coded, decoded


def _round_trip(case: str) -> dict:
    net = build(case)
    names = [n for n in entropy_modules(net) if n not in REFUSED.get(case, {})]
    imgs = images()
    bottleneck = (
        dict(num_latents=2, epochs=1, full_batch_epochs=0)
        if any("bottleneck" in n for n in names)
        else {}
    )
    fit_prior(
        net,
        imgs,
        name=names,
        progress=False,
        conditional=ConditionalFit(num_latents=2, steps=5, batch_size=64),
        **bottleneck,
    )
    net.update(force=True)
    coded, decoded = _watch(net)
    x = torch.cat(imgs)
    with torch.no_grad():
        ref = net(x)["x_hat"].clamp(0, 1)
        enc = net.compress(x)
        dec = net.decompress(enc["strings"], enc["shape"])["x_hat"]
        if case in EXACT_FORWARD:
            exact = torch.equal(dec, ref)
        elif "y_hat" in enc:  # latent codecs: the encoder's y_hat, synthesized as decompress does
            exact = torch.equal(dec, net.g_s(enc["y_hat"]).clamp(0, 1))
        else:  # mbt2018 family: forward rounds y without the means, so only the symbols can agree
            exact = bool(torch.isfinite(dec).all())
    ok = bool(decoded) and all(k[:2] in coded and torch.equal(coded[k[:2]], k[2]) for k in decoded)
    ok &= {k[0] for k in coded} == set(names) == {k[0] for k in decoded}
    distinct = sum(len(torch.unique(s)) for s in coded.values())
    return {
        "symbols_identical": ok,
        "x_hat_exact": exact,
        "distinct_symbols": distinct,
        "swapped": names,
    }


def _forced(case: str) -> dict:
    """A PC conditional put into a serial model by hand (not by swap): coding raises, no crash."""
    from pc_prior.errors import UnsupportedModelError as Err

    net = build(case)
    x = torch.cat(images())
    with torch.no_grad():
        enc = net.compress(x)  # CompressAI's own entropy models
    gc = PCConditional(None)
    gc.scale_table = net.gaussian_conditional.scale_table.clone()
    gc.fit(
        [torch.randint(-3, 4, (1, 8, 4, 4))],
        [torch.randint(0, 64, (1, 8, 4, 4))],
        num_latents=2,
        steps=2,
        progress=False,
    )  # M = 8 latent channels in every tiny serial model
    net.gaussian_conditional = gc
    got = {}
    for what, call in (
        ("compress", lambda: net.compress(x)),
        ("decompress", lambda: net.decompress(enc["strings"], enc["shape"])),
    ):
        try:
            with torch.no_grad():
                call()
            got[what] = "no error"
        except Err as e:
            got[what] = str(e)
    return got


def _custom_serial() -> dict:
    """An unknown model whose compress runs CompressAI's own coder on a swapped bottleneck."""
    from pc_prior.errors import UnsupportedModelError as Err

    class Serial(cm.CompressionModel):
        def __init__(self):
            super().__init__()
            self.entropy_bottleneck = EntropyBottleneck(4)

        def forward(self, x):
            y_hat, lik = self.entropy_bottleneck(x)
            return {"x_hat": y_hat, "likelihoods": {"y": lik}}

        def compress(self, x):  # the C++ coder straight from the CDF tables
            eb = self.entropy_bottleneck
            return eb.entropy_coder.encode_with_indexes(
                eb.quantize(x, "symbols", eb._get_medians()).reshape(-1).tolist(),
                eb._build_indexes(x.size()).reshape(-1).tolist(),
                eb.quantized_cdf.tolist(),
                eb.cdf_length.tolist(),
                eb.offset.tolist(),
            )

        def decompress_base(self, strings, size):
            return EntropyModel.decompress(
                self.entropy_bottleneck,
                strings,
                self.entropy_bottleneck._build_indexes((1, 4, *size)),
            )

    net = Serial()
    swap_entropy_model(net)  # unknown models are accepted: their coding must raise, not crash
    net.entropy_bottleneck.fit(
        torch.randn(200, 4) * 3, num_latents=2, context=None, epochs=1, progress=False
    )
    got = {}
    y = torch.randn(1, 4, 4, 4)
    for what, call in (
        ("compress", lambda: net.compress(y)),
        ("decompress", lambda: net.decompress_base([b"x"], (4, 4))),
    ):
        try:
            call()
            got[what] = "no error"
        except Err as e:
            got[what] = str(e)
    return got


def _cli_eval_of_broken_codec(tmp: Path) -> dict:
    """A codec file written before the refusal (a PC conditional inside mbt2018): eval fails clearly."""
    import contextlib
    import io

    import numpy as np
    from PIL import Image

    from pc_prior.cli import main
    from pc_prior.integrations import save_codec

    net = build("JointAutoregressiveHierarchicalPriors")
    fit_prior(
        net,
        images(),
        name="entropy_bottleneck",
        num_latents=2,
        epochs=1,
        full_batch_epochs=0,
        progress=False,
    )
    gc = PCConditional(None)
    gc.scale_table = net.gaussian_conditional.scale_table.clone()
    gc.fit(
        [torch.randint(-3, 4, (1, 8, 4, 4))],
        [torch.randint(0, 64, (1, 8, 4, 4))],
        num_latents=2,
        steps=2,
        progress=False,
    )
    net.gaussian_conditional = gc
    codec = tmp / "broken.pt"
    save_codec(net, codec, "JointAutoregressiveHierarchicalPriors", 1, net_kwargs=dict(N=8, M=8))
    (tmp / "imgs").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        tmp / "imgs" / "0.png"
    )
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["eval", str(codec), "--data", str(tmp / "imgs"), "--no-progress"])
    return {"rc": rc, "stderr": err.getvalue()}


TASKS = (
    [f"round_trip:{c}" for c in TINY] + [f"forced:{c}" for c in SERIAL] + ["custom:", "cli_eval:"]
)


def _worker(tasks: list[str]) -> None:
    """Run ``tasks`` in order, one JSON line as each starts and one with its result."""
    import tempfile
    import traceback
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    for task in tasks:
        kind, case = task.split(":", 1)
        print(json.dumps({"task": task, "started": True}), flush=True)
        try:
            if kind == "round_trip":
                res = _round_trip(case)
            elif kind == "forced":
                res = _forced(case)
            elif kind == "custom":
                res = _custom_serial()
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    res = _cli_eval_of_broken_codec(Path(tmp))
        except Exception:
            res = {"exception": traceback.format_exc()}
        print(json.dumps({"task": task, "result": res}), flush=True)


@pytest.fixture(scope="module")
def worker() -> dict:
    """Every task's result; a task that kills the worker (a segfault) is recorded and the rest rerun."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    results: dict = {}
    crashed: dict = {}
    pending = list(TASKS)
    while pending:
        try:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), *pending],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            out, err, why = proc.stdout, proc.stderr, f"exit code {proc.returncode}"
        except subprocess.TimeoutExpired as e:
            out, err, why = e.stdout or "", e.stderr or "", "timed out after 240 s"
            out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
        for line in out.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                if "result" in rec:
                    results[rec["task"]] = rec["result"]
        pending = [t for t in pending if t not in results]
        if pending:  # tasks run in order: the first without a result is the one the worker died in
            crashed[pending.pop(0)] = (
                f"{why} (negative: killed by that signal, -11 a segfault)\n{err[-3000:]}"
            )
    return {"results": results, "crashed": crashed}


def _result(worker: dict, task: str) -> dict:
    if task in worker["crashed"]:
        pytest.fail(f"the worker subprocess died in {task}: {worker['crashed'][task]}")
    res = worker["results"][task]
    assert "exception" not in res, res.get("exception")
    return res


@pytest.mark.parametrize("case", list(TINY))
def test_swapped_models_round_trip_exactly(worker, case):
    res = _result(worker, f"round_trip:{case}")
    assert res["symbols_identical"], res  # every PC module decodes exactly the symbols it coded
    assert res["x_hat_exact"], res
    assert res["distinct_symbols"] > 2 * len(res["swapped"]), res  # the latents are not trivial


@pytest.mark.parametrize("case", SERIAL)
def test_pc_conditional_forced_into_serial_model_raises(worker, case):
    res = _result(worker, f"forced:{case}")
    for what in ("compress", "decompress"):
        assert (
            "PCConditional.quantized_cdf" in res[what]
            and "keep CompressAI's entropy model" in res[what]
        ), res


def test_unknown_model_reading_cdf_tables_raises(worker):
    res = _result(worker, "custom:")
    assert "PCEntropyBottleneck.quantized_cdf" in res["compress"], res
    assert "PCEntropyBottleneck._quantized_cdf" in res["decompress"], res


def test_cli_eval_of_pre_refusal_mbt2018_codec_fails_cleanly(worker):
    res = _result(worker, "cli_eval:")
    lines = res["stderr"].strip().splitlines()
    assert res["rc"] == 1 and len(lines) == 1, res
    assert "JointAutoregressiveHierarchicalPriors" in lines[0] and "C++ coder" in lines[0]


# -- shapes: a clear InputError, never a broadcast ------------------------------------------------
@pytest.fixture(scope="module")
def fitted_pair() -> tuple[PCEntropyBottleneck, PCConditional]:
    torch.manual_seed(0)
    eb = PCEntropyBottleneck(4)
    eb.fit(torch.randn(300, 4) * 3, num_latents=2, context=None, epochs=1, progress=False)
    gc = PCConditional(None)
    gc.fit(
        [torch.randint(-3, 4, (2, 4, 4, 4))],
        [torch.randint(0, 64, (2, 4, 4, 4))],
        num_latents=2,
        steps=2,
        progress=False,
    )
    return eb, gc


BAD_SHAPES = [(2, 4), (2, 4, 5), (2, 4, 3, 3, 2), (2, 3, 4, 4), (4,)]


@pytest.mark.parametrize("shape", BAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bottleneck_rejects_non_image_latents(fitted_pair, shape):
    eb, _ = fitted_pair
    y = torch.randn(shape)
    want = r"expected a latent of shape \[B, 4, H, W\], got " + str(tuple(shape)).replace(
        "(", r"\("
    ).replace(")", r"\)")
    for call in (
        lambda: eb(y),
        lambda: eb(y, training=True),
        lambda: eb.compress(y),
        lambda: eb.symbols(y),
        lambda: eb.log_likelihood(y.long()),
    ):
        with pytest.raises(InputError, match=want):
            call()


@pytest.mark.parametrize("shape", BAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conditional_rejects_non_image_latents(fitted_pair, shape):
    _, gc = fitted_pair
    y = torch.randn(shape) * 3
    idx = torch.zeros(shape, dtype=torch.int32)
    want = r"expected a (latent|symbol map|scale index map) of shape \[B, 4, H, W\], got "
    for call in (
        lambda: gc(y, torch.ones(shape)),
        lambda: gc(y, torch.ones(shape), training=True),
        lambda: gc.compress(y, idx),
        lambda: gc.decompress([b""] * (shape[0] if len(shape) > 1 else 1), idx),
        lambda: gc.log_likelihood(y.long(), idx),
    ):
        with pytest.raises(InputError, match=want):
            call()


def test_fit_rejects_wrong_shapes():
    eb = PCEntropyBottleneck(4)
    for values in (torch.randn(50, 3), torch.randn(50, 4, 1), torch.randn(50)):
        with pytest.raises(InputError, match=r"\[N, 4\], got"):
            eb.fit(values, num_latents=2, progress=False)
    gc = PCConditional(None)
    for shape in ((2, 4), (2, 4, 5), (2, 4, 3, 3, 2)):
        with pytest.raises(InputError, match="shape"):
            gc.fit(
                [torch.zeros(shape, dtype=torch.long)],
                [torch.zeros(shape, dtype=torch.long)],
                steps=1,
                progress=False,
            )
    with pytest.raises(InputError, match="shape"):
        gc.fit(
            torch.zeros(10, 4, 1, dtype=torch.long),
            torch.zeros(10, 4, 1, dtype=torch.long),
            steps=1,
            context=None,
            progress=False,
        )
    assert not eb.fitted and not gc.fitted


def test_conditional_rejects_mismatched_side_information(fitted_pair):
    _, gc = fitted_pair
    y = torch.randn(2, 4, 4, 4) * 3
    scales = torch.ones(2, 4, 4, 4)
    idx = gc.build_indexes(scales)
    with pytest.raises(
        InputError, match=r"scales have shape \(2, 4, 1, 1\), the latent \(2, 4, 4, 4\)"
    ):
        gc(y, scales[..., :1, :1])
    with pytest.raises(InputError, match=r"indexes have shape \(2, 4, 4, 2\)"):
        gc.compress(y, idx[..., :2])
    with pytest.raises(InputError, match=r"means have shape \(2, 4, 4, 8\)"):
        gc.compress(y, idx, torch.zeros(2, 4, 4, 8))
    with pytest.raises(InputError, match=r"means have shape \(4, 4\)"):
        gc(y, scales, torch.zeros(4, 4))
    with pytest.raises(InputError, match="indexes must be an integer torch.Tensor"):
        gc.compress(y, idx.float())
    # broadcastable means (1 along a dimension, as CompressAI allows) still code and decode exactly
    means = torch.randn(2, 4, 1, 1)
    s = gc.compress(y, idx, means)
    assert torch.equal(gc.decompress(s, idx, means=means), gc.quantize(y, "dequantize", means))


if __name__ == "__main__":
    _worker(sys.argv[1:] or TASKS)
