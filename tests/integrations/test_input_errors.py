"""Bad arguments fail at once with the project's error types and a message naming the problem;
state survives ordinary torch calls (``.half()``/``.double()``, ``requires_grad``)."""

import copy
import math

import numpy as np
import pytest
import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.models import FactorizedPrior, ScaleHyperprior

from pc_prior import HCLT, InputError, NotFittedError, Tree, bits_per_dim, fit_adam, fit_em
from pc_prior.cli import main
from pc_prior.devices import resolve_device
from pc_prior.integrations import PCConditional, PCEntropyBottleneck, fit_prior
from pc_prior.settings import BottleneckFit, ConditionalFit

NAN = float("nan")


def _data(n: int = 120, d: int = 3, v: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, v, (n, d), generator=g)


def _hclt(d: int = 3, v: int = 4, k: int = 2) -> HCLT:
    return HCLT.from_data(_data(d=d, v=v), v, k)


def _codec(seed: int = 0) -> FactorizedPrior:
    torch.manual_seed(seed)
    model = FactorizedPrior(N=8, M=12).eval()
    with torch.no_grad():  # multi-symbol latents from a random-init model
        model.g_a[-1].weight.mul_(40.0)
        model.g_a[-1].bias.mul_(40.0)
    return model


def _images(n: int = 1, size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, size, size, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def fact():
    model = _codec()
    fit_prior(model, _images(), num_latents=2, epochs=1, progress=False)
    model.update(force=True)
    return model


@pytest.fixture(scope="module")
def cond():
    g = torch.Generator().manual_seed(1)
    gc = PCConditional(None)
    n_scales = len(gc._scale_table_or_default())
    idx = torch.randint(10, 30, (200, 4), generator=g)
    sym = torch.round(torch.randn(200, 4, generator=g) * 3).long()
    gc.fit(sym, idx, num_latents=2, steps=3, batch_size=64, context=None, progress=False)
    assert n_scales > 30
    return gc, sym, idx


def _is_project_error(e: BaseException, kind: type) -> None:
    assert isinstance(e, kind), type(e)
    if kind is InputError:
        assert isinstance(e, ValueError) and isinstance(e, TypeError)
    else:
        assert isinstance(e, ValueError) and isinstance(e, RuntimeError)


# -- training.py --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"epochs": -1}, "epochs"),
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": 1.5}, "step_size"),
        ({"step_size": NAN}, "step_size"),
        ({"step_size": (0.1, 0.0)}, r"step_size\[1\]"),
        ({"step_size": (NAN, 0.1)}, r"step_size\[0\]"),
        ({"step_size": (0.1, 0.2, 0.3)}, "step_size"),
        ({"pseudocount": -0.1}, "pseudocount"),
        ({"pseudocount": NAN}, "pseudocount"),
        ({"full_batch_epochs": -1}, "full_batch_epochs"),
        ({"x_valid": torch.zeros(0, 3, dtype=torch.long)}, "x_valid is empty"),
        ({"x_valid": torch.zeros(5, 2, dtype=torch.long)}, r"x_valid must have shape \[N, 3\]"),
        ({"callback": 3}, "callback"),
    ],
)
def test_fit_em_refuses_bad_arguments_before_any_update(kwargs, match):
    pc = _hclt()
    before = copy.deepcopy(pc.state_dict())
    with pytest.raises(InputError, match=match) as info:
        fit_em(pc, _data(), progress=False, **kwargs)
    _is_project_error(info.value, InputError)
    assert all(torch.equal(before[k], v) for k, v in pc.state_dict().items())  # nothing was trained


def test_fit_adam_and_bits_per_dim_refuse_bad_arguments():
    pc, x = _hclt(), _data()
    for kwargs, match in [
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": -1}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"lr": NAN}, "lr"),
    ]:
        with pytest.raises(InputError, match=match):
            fit_adam(pc, x, progress=False, **kwargs)
    with pytest.raises(InputError, match="x_train is empty"):
        fit_adam(pc, x[:0], progress=False)
    with pytest.raises(InputError, match="x_train must have shape"):
        fit_em(pc, x[:, :2], progress=False)
    with pytest.raises(InputError, match="x is empty"):
        bits_per_dim(pc, x[:0])
    with pytest.raises(InputError, match="batch_size"):
        bits_per_dim(pc, x, batch_size=0)
    with pytest.raises(InputError, match="num_latents"):
        HCLT(Tree((-1, 0)), 4, 0)
    with pytest.raises(InputError, match="num_cats"):
        HCLT(Tree((-1, 0)), 1.5, 2)
    with pytest.raises(InputError, match=r"shape \[N, D\], got shape \(5,\)"):
        HCLT.from_data(torch.zeros(5, dtype=torch.long), 4, 2)
    with pytest.raises(InputError, match="no rows"):
        HCLT.from_data(torch.zeros(0, 3, dtype=torch.long), 4, 2)
    with pytest.raises(InputError, match="an integer torch.Tensor .* got torch.float32"):
        HCLT.from_data(torch.zeros(4, 3), 4, 2)


def test_one_variable_hclt_fits_and_improves():
    """A tree of one node uses no transition: EM must not ask autograd for its (absent) gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(torch.tensor([0.7, 0.2, 0.05, 0.05]), 400, replacement=True, generator=g)[
        :, None
    ]
    pc = HCLT(Tree((-1,)), 4, 3)
    pc.init_params(seed=0)
    start = bits_per_dim(pc, x)
    hist = fit_em(pc, x, epochs=3, full_batch_epochs=1, x_valid=x[:50], progress=False)
    assert len(hist) == 4 and math.isfinite(hist[-1]["valid_bpd"])
    assert bits_per_dim(pc, x) < start - 0.1
    pc.check_finite()
    fit_adam(pc, x, epochs=1, progress=False)  # gradient training of one variable too
    pc.check_finite()


def test_rows_without_counts_keep_their_parameters():
    """pseudocount 0: the root's (unused) transition row gets no counts and must stay finite, not 0/0."""
    pc = _hclt()
    fit_em(pc, _data(), epochs=2, pseudocount=0.0, progress=False)
    pc.check_finite()


def test_check_finite_names_the_parameter():
    pc = _hclt()
    pc.check_finite()
    with torch.no_grad():
        pc.emission_logits[0, 0, 0] = NAN
    with pytest.raises(InputError, match="emission_logits.*1 NaN"):
        pc.check_finite()
    with pytest.raises(InputError, match="emission_logits"):
        fit_em(pc, _data(), progress=False)


# -- entropy models: not fitted, no tables, NaN parameters ----------------------------------------
def test_unfitted_entropy_models_raise_not_fitted_errors():
    eb = PCEntropyBottleneck(4)
    for call, match in [
        (lambda: eb.num_symbols, "not fitted"),
        (eb.update, "not fitted"),
        (lambda: eb.compress(torch.zeros(1, 4, 2, 2)), "no coding tables"),
        (lambda: eb.decompress([b""], (2, 2)), "no coding tables"),
    ]:
        with pytest.raises(NotFittedError, match=match) as info:
            call()
        _is_project_error(info.value, NotFittedError)
    gc = PCConditional(None)
    for call, match in [
        (lambda: gc.radius, "no coding tables"),
        (gc.update, "not fitted"),
        (lambda: gc.channels, "not fitted"),
        (
            lambda: gc.decompress([b""], torch.zeros(1, 4, 1, 1, dtype=torch.int32)),
            "no coding tables",
        ),
    ]:
        with pytest.raises(NotFittedError, match=match):
            call()


def test_update_names_non_finite_parameters(fact, cond):
    eb = copy.deepcopy(fact.entropy_bottleneck)
    with torch.no_grad():
        eb.pc.transition_logits[1, 0, 0] = float("inf")
    with pytest.raises(InputError, match="transition_logits.*1 infinite"):
        eb.update(force=True)
    gc = copy.deepcopy(cond[0])
    with torch.no_grad():
        gc.pc.loc[0, 0] = NAN
    with pytest.raises(InputError, match="parameter loc"):
        gc.update()
    with pytest.raises(InputError, match="parameter loc"):
        gc.update_scale_table(gc.scale_table, force=True)


# -- decompress arguments -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size",
    [
        (4.5, 4),
        "44",
        (4,),
        (4, 4, 4),
        (-1, 4),
        (0, 4),
        (4, 0),
        (True, 4),
        None,
        (torch.tensor(2.0), 2),
        16,
    ],
)
def test_bottleneck_decompress_refuses_bad_sizes(fact, size):
    eb = fact.entropy_bottleneck
    with pytest.raises(InputError, match="size"):
        eb.decompress([b"x"], size)


def test_bottleneck_decompress_accepts_integer_sizes_and_refuses_non_lists(fact):
    eb = fact.entropy_bottleneck
    with torch.no_grad():
        y = fact.g_a(_images(seed=3)[0])
    strings = eb.compress(y)
    want = eb.decompress(strings, y.shape[-2:])  # a torch.Size
    for size in [
        tuple(y.shape[-2:]),
        list(y.shape[-2:]),
        (np.int64(y.shape[-2]), np.int32(y.shape[-1])),
        (torch.tensor(y.shape[-2]), torch.tensor(y.shape[-1])),
    ]:
        assert torch.equal(eb.decompress(strings, size), want)
    for bad in (strings[0], "abc", None):
        with pytest.raises(InputError, match="list"):
            eb.decompress(bad, y.shape[-2:])
        with pytest.raises(ValueError):  # what CompressAI raises there
            eb.decompress(bad, y.shape[-2:])


# -- dtypes and requires_grad ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_converted_codec_decompresses_to_its_dtype(fact, dtype):
    """As CompressAI's EntropyBottleneck: the latent comes back in the medians' dtype, so g_s runs."""
    model = copy.deepcopy(fact).to(dtype)
    x = _images(seed=4)[0].to(dtype)
    with torch.no_grad():
        enc = model.compress(x)
        z_hat = model.entropy_bottleneck.decompress(enc["strings"][0], enc["shape"])
        out = model.decompress(enc["strings"], enc["shape"])
        y = model.g_a(x)
    assert z_hat.dtype == dtype and out["x_hat"].dtype == dtype
    med = model.entropy_bottleneck._medians().view(1, -1, 1, 1)
    assert torch.equal(z_hat, torch.round(y - med) + med)
    ref = EntropyBottleneck(12).to(dtype)
    ref.update(force=True)
    assert ref.decompress(ref.compress(y), y.shape[-2:]).dtype == dtype  # CompressAI does the same


def test_fit_prior_restores_requires_grad():
    model = _codec(seed=1)
    model.g_a[0].weight.requires_grad_(False)  # a user's own frozen layer stays frozen
    model.g_s[0].bias.requires_grad_(False)
    before = {
        n: p.requires_grad
        for n, p in model.named_parameters()
        if not n.startswith("entropy_bottleneck")
    }
    fit_prior(model, _images(seed=1), num_latents=2, epochs=1, progress=False)
    after = {
        n: p.requires_grad
        for n, p in model.named_parameters()
        if not n.startswith("entropy_bottleneck")
    }
    assert after == before
    eb = model.entropy_bottleneck
    assert eb.quantiles.requires_grad and all(p.requires_grad for p in eb.pc.parameters())
    # CompressAI's examples/train.py configure_optimizers: every parameter in one of its two sets
    model.g_a[0].weight.requires_grad_(True)
    model.g_s[0].bias.requires_grad_(True)
    fit_prior(
        model, _images(seed=2), num_latents=2, epochs=1, progress=False
    )  # refit a swapped model
    names = dict(model.named_parameters())
    net = {n for n, p in names.items() if not n.endswith(".quantiles") and p.requires_grad}
    aux = {n for n, p in names.items() if n.endswith(".quantiles") and p.requires_grad}
    assert not net & aux and len(net | aux) == len(names)


def test_fit_prior_restores_requires_grad_after_a_failed_fit():
    model = _codec(seed=2)
    with pytest.raises(ValueError, match="no images"):
        fit_prior(model, (x for x in []), num_latents=2, epochs=1, progress=False)
    with pytest.raises(InputError):  # a bad image reaches no swap either
        fit_prior(model, [torch.rand(3, 32, 32)], progress=False)
    assert type(model.entropy_bottleneck) is EntropyBottleneck
    assert all(p.requires_grad for p in model.parameters())
    hyper = ScaleHyperprior(N=8, M=12)
    hyper.h_s[0].weight.requires_grad_(False)
    with pytest.raises(
        ValueError, match="downsampling"
    ):  # fails while collecting, with the codec frozen
        fit_prior(
            hyper,
            [torch.rand(1, 3, 64, 80)],
            name=("entropy_bottleneck", "gaussian_conditional"),
            progress=False,
        )
    assert [n for n, p in hyper.named_parameters() if not p.requires_grad] == ["h_s.0.weight"]


# -- fit arguments: bottleneck, conditional, fit_prior ----------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_latents": 0}, "num_latents"),
        ({"tail": -0.1}, "tail"),
        ({"tail": 0.5}, "tail"),
        ({"tail": NAN}, "tail"),
        ({"max_items": 0}, "max_items"),
        ({"max_alphabet": 0}, "max_alphabet"),
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"full_batch_epochs": -1}, "full_batch_epochs"),
        ({"step_size": 2.0}, "step_size"),
        ({"pseudocount": -1.0}, "pseudocount"),
        ({"finetune_steps": -1}, "finetune_steps"),
        ({"lr": 0.0}, "lr"),
        ({"lr": NAN}, "lr"),
        ({"leaves": "gaussian"}, "leaves must be"),
        ({"structure": "ring"}, "structure must be"),
    ],
)
def test_bottleneck_fit_refuses_bad_arguments(kwargs, match):
    eb = PCEntropyBottleneck(3)
    with pytest.raises(InputError, match=match):
        eb.fit(torch.randn(50, 3) * 3, progress=False, **({"context": None} | kwargs))
    assert not eb.fitted


def test_check_settings_without_data():
    s = PCEntropyBottleneck.check_settings(epochs=np.int64(2), step_size=[0.5, 0.1])
    assert s == BottleneckFit(epochs=2, step_size=(0.5, 0.1)) and type(s.epochs) is int
    with pytest.raises(InputError, match="unknown setting epoch; the BottleneckFit fields are"):
        PCEntropyBottleneck.check_settings(epoch=3)
    with pytest.raises(InputError, match="unknown setting step; the ConditionalFit fields"):
        PCConditional.check_settings(step=3)
    with pytest.raises(InputError, match="must be a pc_prior.settings.ConditionalFit"):
        PCConditional.check_settings(BottleneckFit())
    assert PCConditional.check_settings(ConditionalFit(steps=7), seed=2).steps == 7
    with pytest.warns(FutureWarning, match="check_settings"):  # the old name, for one release
        assert PCConditional.check_fit_args(steps=0)["steps"] == 0


def test_settings_that_the_model_cannot_honour_are_errors_not_dropped():
    eb = PCEntropyBottleneck(3)
    with pytest.raises(InputError, match=r"rows \[N, C\] have no neighbours.*context=None"):
        eb.fit(torch.randn(50, 3) * 3, progress=False)  # the default three-pass context
    with pytest.raises(InputError, match="logistic.*pass context=None"):
        PCEntropyBottleneck.check_settings(leaves="logistic")
    assert not eb.fitted


def test_bottleneck_fit_checks_values_and_logistic_without_finetuning():
    eb = PCEntropyBottleneck(3)
    with pytest.raises(InputError, match="torch.Tensor"):
        eb.fit(np.zeros((50, 3)), progress=False)
    with pytest.raises(InputError, match=r"shape \[N, 3\]"):
        eb.fit(torch.zeros(50, 4), progress=False)
    with pytest.raises(InputError, match="empty"):
        eb.fit(torch.zeros(0, 3), progress=False)
    hist = eb.fit(
        torch.randn(60, 3) * 3,
        num_latents=2,
        epochs=1,
        leaves="logistic",
        context=None,
        finetune_steps=0,
        progress=False,
    )
    assert eb.fitted and all(r["mode"] != "adam-logistic" for r in hist)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_latents": 0}, "num_latents"),
        ({"steps": -1}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": NAN}, "lr"),
        ({"holdout": 1.0}, "holdout"),
        ({"holdout": -0.1}, "holdout"),
        ({"tail": 1.0}, "tail"),
        ({"tail": NAN}, "tail"),
        ({"max_radius": 2}, "max_radius"),
        ({"max_items": 0}, "max_items"),
        ({"context": "raster"}, "context must be"),
        ({"init": "x"}, "init must be"),
    ],
)
def test_conditional_fit_refuses_bad_arguments(cond, kwargs, match):
    _, sym, idx = cond
    gc = PCConditional(None)
    with pytest.raises(InputError, match=match):
        gc.fit(sym, idx, progress=False, **({"context": None} | kwargs))
    assert not gc.fitted


def test_conditional_fit_checks_symbols_and_indexes(cond):
    _, sym, idx = cond
    gc = PCConditional(None)
    with pytest.raises(InputError, match="indexes must be integers"):
        gc.fit(sym, idx.float(), context=None, progress=False)
    with pytest.raises(InputError, match="symbols must be integers"):
        gc.fit(sym.float() + 0.5, idx, context=None, progress=False)
    with pytest.raises(InputError, match="symbols must be a torch.Tensor"):
        gc.fit(sym.numpy(), idx, context=None, progress=False)
    with pytest.raises(InputError, match="indexes must lie"):
        gc.fit(
            [sym.T.reshape(1, 4, 10, 20)], [(idx.T + 1000).reshape(1, 4, 10, 20)], progress=False
        )
    with pytest.raises(InputError, match="indexes must be integers"):
        gc.fit([sym.T.reshape(1, 4, 10, 20)], [idx.T.reshape(1, 4, 10, 20).float()], progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_items": 0}, "max_items"),
        ({"max_items": -5}, "max_items"),
        ({"num_latents": 0}, "num_latents"),
        ({"multiple": 0}, "multiple"),
        ({"max_images": 0}, "max_images"),
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"step_size": (0.5, NAN)}, "step_size"),
        ({"epoch": 2}, "epoch"),
        ({"name": "nothing_here"}, "no module 'nothing_here'"),
        ({"name": 3}, "name must be"),
        ({"conditional": [1]}, "must be a pc_prior.settings.ConditionalFit"),
    ],
)
def test_fit_prior_refuses_bad_arguments_before_swapping(kwargs, match):
    model = _codec()
    with pytest.raises(InputError, match=match):
        fit_prior(model, _images(), progress=False, **kwargs)
    assert type(model.entropy_bottleneck) is EntropyBottleneck  # nothing was swapped


def test_fit_prior_refuses_bad_images_and_misplaced_arguments():
    model = _codec()
    for images, match in [
        ([], "images is empty"),
        (torch.rand(2, 3, 32, 32), "batch tensor"),
        ([torch.rand(3, 32, 32)], r"images\[0\]"),
        ([np.zeros((1, 3, 8, 8))], r"images\[0\]"),
        ([torch.zeros(1, 3, 8, 8, dtype=torch.uint8)], r"images\[0\]"),
        (5, "images must be"),
    ]:
        with pytest.raises(InputError, match=match):
            fit_prior(model, images, progress=False)
    hyper = ScaleHyperprior(N=8, M=12)
    with pytest.raises(InputError, match="no entropy bottleneck"):
        fit_prior(hyper, _images(size=64), name="gaussian_conditional", epochs=2, progress=False)
    with pytest.raises(InputError, match="steps"):
        fit_prior(
            hyper,
            _images(size=64),
            name=("entropy_bottleneck", "gaussian_conditional"),
            conditional=ConditionalFit(steps=-1),
            progress=False,
        )
    assert type(hyper.entropy_bottleneck) is EntropyBottleneck
    with pytest.raises(
        TypeError, match="GaussianConditional"
    ):  # a failed swap leaves the model as it was
        fit_prior(hyper, _images(size=64), name=("entropy_bottleneck", "g_s"), progress=False)
    assert type(hyper.entropy_bottleneck) is EntropyBottleneck


def test_double_codec_fits_on_float_images():
    model = _codec().double()
    fit_prior(model, _images(), num_latents=2, epochs=1, progress=False)
    assert model.entropy_bottleneck.fitted


# -- devices ----------------------------------------------------------------------------------------
def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("bogus", "cpu:x", ""):
        with pytest.raises(InputError, match="is not a torch device"):
            resolve_device(bad)
    with pytest.raises(InputError, match="device must be"):
        resolve_device(None)
    if not torch.cuda.is_available():
        with pytest.raises(
            InputError, match="device 'cuda' is not available: no CUDA GPU found; use --device cpu"
        ):
            resolve_device("cuda")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(InputError, match="not available"):
            resolve_device(f"cuda:{n}")


@pytest.mark.parametrize(
    "argv",
    [
        [
            "lossless",
            "compress",
            "missing.npy",
            "--codec",
            "missing.pt",
            "-o",
            "out.bin",
            "--device",
            "bogus",
        ],
        [
            "lossless",
            "decompress",
            "missing.bin",
            "--codec",
            "missing.pt",
            "-o",
            "out.npy",
            "--device",
            "bogus",
        ],
        ["lossless", "bench", "missing.pt", "--device", "bogus"],
        ["lossless", "fit", "--data", "missing_dir", "--device", "bogus"],
        ["eval", "missing.pt", "--data", "missing_dir", "--device", "bogus"],
    ],
)
def test_cli_device_fails_before_loading(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "'bogus' is not a torch device" in err  # not a missing file: the device is checked first


def test_resolve_codec_checks_device_first():
    from pc_prior.integrations import resolve_codec

    with pytest.raises(InputError, match="'bogus' is not a torch device"):
        resolve_codec("missing.pt", device="bogus")
