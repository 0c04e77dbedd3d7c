"""One source of fit defaults: ``fit_prior`` and ``pc-prior prior fit`` fit the same circuit."""

from __future__ import annotations

import inspect

import pytest
import torch
from compressai.models import FactorizedPrior
from helpers import make_pngs

from pc_prior.cli import build_parser, main
from pc_prior.files import read_file
from pc_prior.integrations import (
    PCConditional,
    PCEntropyBottleneck,
    adapt_prior,
    fit_prior,
    read_codec_file,
    save_codec,
)
from pc_prior.settings import BottleneckFit, ConditionalFit, ImageFit


def _defaults(fn) -> dict:
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _assert_same_files(a, b) -> None:
    """The state dicts two codec files store (written by the same ``save_codec``), tensor by tensor."""
    sa, sb = read_file(a)[0]["state_dict"], read_file(b)[0]["state_dict"]
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        assert v.dtype == sb[k].dtype and torch.equal(v, sb[k]), k


def test_fit_methods_take_their_defaults_from_the_settings():
    for model, settings in ((PCEntropyBottleneck, BottleneckFit), (PCConditional, ConditionalFit)):
        for method in (model.fit, model.adapt):  # no default of their own but the progress bar
            assert _defaults(method) == {"settings": None, "progress": True}
        assert model.check_settings() == settings()
        assert model.check_settings(settings(seed=3), num_latents=5) == settings(
            seed=3, num_latents=5
        )
    for fn in (fit_prior, adapt_prior):
        fp = _defaults(fn)
        assert (fp["bottleneck"], fp["conditional"]) == (None, None)
        assert (fp["multiple"], fp["max_images"]) == (ImageFit.multiple, ImageFit.max_images)
    # the measured settings (README): star K=16 on 60k positions, 6+2 epochs; three-pass K=32
    assert (BottleneckFit.structure, BottleneckFit.epochs, BottleneckFit.full_batch_epochs) == (
        "star",
        6,
        2,
    )
    assert (ConditionalFit.context, ConditionalFit.num_latents, ConditionalFit.steps) == (
        "three-pass",
        32,
        6000,
    )
    with pytest.raises(AttributeError):
        BottleneckFit().epochs = 1  # frozen


def test_cli_defaults_are_the_settings():
    from pc_prior.integrations.cli import BOTTLENECK_OPTIONS, CONDITIONAL_OPTIONS
    from pc_prior.settings import from_args

    args = build_parser().parse_args(["prior", "fit", "c", "--data", "i", "-o", "o"])
    # the parsed defaults read back into the dataclasses are the dataclasses' defaults
    assert from_args(BottleneckFit(), args, BOTTLENECK_OPTIONS) == BottleneckFit()
    assert (
        from_args(ConditionalFit(), args, CONDITIONAL_OPTIONS, prefix="cond-") == ConditionalFit()
    )
    assert args.seed == BottleneckFit.seed == ConditionalFit.seed
    assert (args.multiple, args.limit) == (ImageFit.multiple, ImageFit.max_images)
    # and the options keep their documented names
    args = build_parser().parse_args(
        ["prior", "fit", "c", "--data", "i", "-o", "o", "--latents", "7"]
        + ["--cond-latents", "5", "--cond-context", "none", "--step-size", "0.3", "0.1"]
    )
    got = from_args(BottleneckFit(), args, BOTTLENECK_OPTIONS)
    assert (got.num_latents, got.step_size) == (7, (0.3, 0.1))
    cond = from_args(ConditionalFit(), args, CONDITIONAL_OPTIONS, prefix="cond-")
    assert (cond.num_latents, cond.context) == (5, None)


def test_fit_prior_and_cli_fit_the_same_circuit(tmp_path, capsys):
    torch.manual_seed(0)
    net = FactorizedPrior(N=8, M=12).eval()
    with torch.no_grad():  # latents spread over several symbols, so the fit has work to do
        net.g_a[-1].weight.mul_(20.0)
        net.g_a[-1].bias.mul_(20.0)
    codec = tmp_path / "codec.pt"
    save_codec(net, codec, "FactorizedPrior", 2, net_kwargs={"N": 8, "M": 12})
    images = make_pngs(tmp_path / "images", 3, (80, 72))  # cropped to 64x64 by the defaults
    out = tmp_path / "cli.pt"
    # every fit setting at its default, on both paths
    assert main(["prior", "fit", str(codec), "--data", str(images), "-o", str(out)]) == 0
    capsys.readouterr()
    api, _ = read_codec_file(codec)
    hist = fit_prior(api, images, progress=False)
    assert list(hist) == ["entropy_bottleneck"] and hist["entropy_bottleneck"][-1]["train_bpd"] > 0
    eb = api.entropy_bottleneck
    assert eb.pc.num_latents == BottleneckFit.num_latents and eb.pc.num_vars == 12
    _assert_same_files(out, save_codec(api, tmp_path / "api.pt", "FactorizedPrior", 2))


def test_fit_prior_returns_histories_by_name_for_one_or_several():
    torch.manual_seed(0)
    net = FactorizedPrior(N=8, M=12).eval()
    x = [torch.rand(1, 3, 64, 64)]
    one = fit_prior(net, x, num_latents=2, epochs=1, full_batch_epochs=0, progress=False)
    seq = fit_prior(
        net,
        x,
        name=["entropy_bottleneck"],
        num_latents=2,
        epochs=1,
        full_batch_epochs=0,
        progress=False,
    )
    assert isinstance(one, dict) and list(one) == list(seq) == ["entropy_bottleneck"]
    # one mini-batch epoch, then the default grouped epochs (full batch) after the count pass
    modes = [r["mode"] for r in one["entropy_bottleneck"]]
    assert modes == ["mini"] + ["full"] * BottleneckFit.group_epochs


def test_fit_prior_and_cli_fit_the_same_hyperprior_circuits(tmp_path, capsys):
    """Both entropy models of a hyperprior: the conditional's context (three-pass) included."""
    from compressai.models import ScaleHyperprior

    torch.manual_seed(0)
    net = ScaleHyperprior(N=8, M=12).eval()
    with torch.no_grad():
        net.g_a[-1].weight.mul_(15.0)
        net.g_a[-1].bias.mul_(15.0)
        net.h_a[-1].weight.mul_(5.0)
    codec = tmp_path / "codec.pt"
    save_codec(net, codec, "ScaleHyperprior", 2, net_kwargs={"N": 8, "M": 12})
    images = make_pngs(tmp_path / "images", 2, (128, 128))
    out = tmp_path / "cli.pt"
    few = ["--cond-steps", "20"]  # the one setting both paths are given, the same way
    args = ["prior", "fit", str(codec), "--data", str(images), "-o", str(out)]
    assert main([*args, "--conditional", *few]) == 0
    capsys.readouterr()
    api, _ = read_codec_file(codec)
    names = ("entropy_bottleneck", "gaussian_conditional")
    hist = fit_prior(api, images, name=names, conditional=ConditionalFit(steps=20), progress=False)
    assert list(hist) == list(names)
    gc = api.gaussian_conditional
    assert gc.context is not None and gc.anchor_context is not None  # three-pass by default
    _assert_same_files(out, save_codec(api, tmp_path / "api.pt", "ScaleHyperprior", 2))


def test_prior_fit_device_is_checked_before_anything_is_loaded(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this check needs a machine without CUDA")
    argv = ["prior", "fit", str(tmp_path / "missing.pt"), "--data", str(tmp_path)]
    assert main(argv + ["-o", str(tmp_path / "o.pt"), "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "no CUDA GPU found; use --device cpu" in err and "missing.pt" not in err
