"""Continuing fitted priors on new images (``adapt``, ``adapt_prior``, ``pc-prior prior adapt``)."""

import copy
import json

import pytest
import torch
from compressai.models import FactorizedPrior
from helpers import NAMES, fitted_hyperprior, gc_inputs, make_pngs, random_images

from pc_prior.cli import main
from pc_prior.errors import InputError, NotFittedError
from pc_prior.integrations import (
    PCConditional,
    PCEntropyBottleneck,
    adapt_prior,
    collect_latents,
    fit_prior,
    load_codec,
    save_codec,
)
from pc_prior.settings import ConditionalFit


def _factorized(seed=0):
    torch.manual_seed(seed)
    net = FactorizedPrior(N=8, M=12).eval()
    with torch.no_grad():  # latents spread over several symbols
        net.g_a[-1].weight.mul_(15.0)
        net.g_a[-1].bias.mul_(15.0)
    return net


def _bits(eb, values):
    s = eb.symbols(values.T[None, :, :, None])  # [1, C, N, 1]
    with torch.no_grad():
        return float(-eb.log_likelihood(s).sum())


def test_bottleneck_warm_start_keeps_alphabets_and_structure_and_fits_the_new_data():
    net = _factorized()
    fit_prior(net, random_images(2, seed=0), num_latents=3, epochs=1, context=None, progress=False)
    eb = net.entropy_bottleneck
    # "another domain": brighter, smoother images
    new = [0.5 + 0.5 * x for x in random_images(3, seed=5)]
    held = [0.5 + 0.5 * x for x in random_images(2, seed=9)]
    v_new, v_held = collect_latents(net, new), collect_latents(net, held)
    before = copy.deepcopy(eb.state_dict())
    tree, k = eb.pc.tree, eb.pc.num_latents
    bits_before = _bits(eb, v_held)
    with pytest.raises(InputError, match="adapt keeps the fitted model's num_latents, structure"):
        eb.adapt(v_new, num_latents=7, structure="chow-liu", progress=False)
    hist = eb.adapt(v_new, epochs=2, progress=False)
    assert hist and eb.pc.tree == tree and eb.pc.num_latents == k  # kept, not refit
    for key in ("_offset", "_cdf_length"):
        assert torch.equal(eb.state_dict()[key], before[key])
    assert not torch.equal(eb.state_dict()["pc.emission_logits"], before["pc.emission_logits"])
    assert _bits(eb, v_held) < bits_before  # adapted to the new domain's held-out latents
    x = torch.cat(held[:1])
    with torch.no_grad():  # the tables follow the new parameters: exact round trip
        s = eb.symbols(net.g_a(x))
        strings = eb.compress(net.g_a(x))
        assert torch.equal(eb.symbols(eb.decompress(strings, s.shape[-2:])), s)


def test_bottleneck_warm_start_keeps_the_spatial_context():
    net = _factorized()
    fit_prior(net, random_images(2, seed=0), num_latents=2, epochs=1, progress=False)
    eb = net.entropy_bottleneck
    assert eb.schedule == "three-pass"  # the default
    groups = eb._pc_emit.shape[1]
    logits = eb.pc.emission_logits.detach().clone()
    adapt_prior(net, random_images(2, seed=4), epochs=1, progress=False)
    assert eb.schedule == "three-pass" and eb._pc_emit.shape[1] == groups
    assert not torch.equal(eb.pc.emission_logits, logits)
    with pytest.raises(InputError, match="continue it on latent maps"):
        eb.adapt(collect_latents(net, random_images(1)), progress=False)
    x = random_images(1, seed=7)[0]
    with torch.no_grad():
        y = net.g_a(x)
        assert torch.equal(eb.symbols(eb.decompress(eb.compress(y), y.shape[-2:])), eb.symbols(y))


def test_warm_start_needs_a_fitted_pc_model():
    with pytest.raises(NotFittedError):
        PCEntropyBottleneck(4).adapt(torch.randn(50, 4), progress=False)
    with pytest.raises(InputError, match="holds no PC entropy model to continue"):
        adapt_prior(_factorized(), random_images(1), progress=False)
    with pytest.raises(InputError, match="adapt_prior continues fitted PC entropy models"):
        adapt_prior(_factorized(), random_images(1), name="entropy_bottleneck", progress=False)
    with (
        pytest.warns(FutureWarning, match="adapt_prior"),
        pytest.raises(InputError, match="warm_start"),
    ):
        fit_prior(_factorized(), random_images(1), warm_start="yes", progress=False)


def test_the_old_warm_start_switch_still_continues_for_one_release():
    net = _factorized()
    fit_prior(net, random_images(2, seed=0), num_latents=3, epochs=1, context=None, progress=False)
    eb = net.entropy_bottleneck
    k, logits = eb.pc.num_latents, eb.pc.emission_logits.detach().clone()
    with pytest.warns(FutureWarning, match="adapt_prior"):
        fit_prior(
            net, random_images(2, seed=3), num_latents=9, epochs=1, warm_start=True, progress=False
        )
    assert eb.pc.num_latents == k and not torch.equal(eb.pc.emission_logits, logits)
    with pytest.warns(FutureWarning, match="adapt"):
        eb.fit(collect_latents(net, random_images(1)), warm_start=True, epochs=1, progress=False)


def test_conditional_warm_start_keeps_the_contexts_and_round_trips():
    hyper = fitted_hyperprior()
    gc = hyper.gaussian_conditional
    assert isinstance(gc, PCConditional) and gc.context is not None
    ctx_before = copy.deepcopy({k: v for k, v in gc.state_dict().items() if "context" in k})
    radius = gc.radius
    trans = gc.pc.transition_logits.detach().clone()
    hist = adapt_prior(
        hyper,
        random_images(2, seed=7),
        epochs=1,
        progress=False,
        conditional=ConditionalFit(steps=10, batch_size=64),
    )
    assert set(hist) == set(NAMES) and hist["gaussian_conditional"][-1]["step"] == 10
    assert gc.radius == radius and gc.pc.num_latents == 3  # kept
    for k, v in gc.state_dict().items():
        if "context" in k:
            assert torch.equal(v, ctx_before[k])
    assert not torch.equal(gc.pc.transition_logits, trans)
    x = torch.cat(random_images(1, seed=11))
    y, _scales, means, indexes = gc_inputs(hyper, x)
    with torch.no_grad():  # the tables follow the new parameters: exact round trip
        strings = gc.compress(y, indexes, means)
        y_hat = gc.decompress(strings, indexes, means=means)
        assert torch.equal(y_hat, gc.quantize(y, "dequantize", means))


def test_cli_adapt_continues_a_fitted_codec(tmp_path, capsys):
    net = _factorized()
    fit_prior(net, random_images(2, seed=0), num_latents=3, epochs=1, progress=False)
    first = tmp_path / "first.pt"
    save_codec(net, first, "FactorizedPrior", 1, net_kwargs={"N": 8, "M": 12})
    images = make_pngs(tmp_path / "imgs", 2, seed=3)
    out = tmp_path / "adapted.pt"
    argv = ["prior", "adapt", str(first), "--data", str(images), "-o", str(out)]
    assert main(argv + ["--epochs", "1", "--full-batch-epochs", "0", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["out"] == str(out) and "train_bpd" in report
    adapted = load_codec(out)
    a, b = adapted.entropy_bottleneck, net.entropy_bottleneck
    assert torch.equal(a._offset, b._offset) and a.pc.tree == b.pc.tree
    assert not torch.equal(a.pc.emission_logits, b.pc.emission_logits)
    # adapt has no fit-only settings: the file's structure and sizes are kept
    with pytest.raises(SystemExit):
        main(argv + ["--latents", "7"])
    assert "unrecognized arguments: --latents 7" in capsys.readouterr().err
    # the old spelling, prior fit --init, still adapts (one release more), with one warning
    old = ["prior", "fit", "--init", str(first), "--images", str(images), "--out", str(out)]
    assert main(old + ["--epochs", "1", "--full-batch-epochs", "0"]) == 0
    captured = capsys.readouterr()
    assert (
        "--init is deprecated and goes in the next release; use 'pc-prior prior adapt MODEL'"
        in (captured.err)
    )
    assert "train_bpd" in json.loads(captured.out.strip().splitlines()[-1])
    again = load_codec(out)
    assert (
        torch.equal(again.entropy_bottleneck._offset, b._offset)
        and again.entropy_bottleneck.pc.tree == b.pc.tree
    )
    # --init and a codec are one or the other; adapting needs PC priors in the file
    with pytest.raises(SystemExit):
        main(old + ["--codec", str(first)])
    assert "give MODEL once" in capsys.readouterr().err
    plain = tmp_path / "plain.pt"
    save_codec(_factorized(), plain, "FactorizedPrior", 1, net_kwargs={"N": 8, "M": 12})
    assert main(["prior", "adapt", str(plain), "--data", str(images), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "pc-prior prior adapt: error:" in err and "holds no PC entropy model to continue" in err
