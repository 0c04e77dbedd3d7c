"""The training-mode rate of the PC entropy models is the rate that codes, and it trains the codec
(issue 31): its value is the code length of the rounded latents under the coder's contexts, its
gradient that of a density smooth in y (``smooth_log_likelihood``) which equals the pmf at
integers and interpolates it between them."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from compressai.models import FactorizedPrior, MeanScaleHyperprior
from conftest import shared_path
from helpers import fitted_hyperprior, random_images, tiny_codec

from pc_prior.images import load_image
from pc_prior.integrations import PCEntropyBottleneck, fit_prior, load_codec

LN2 = math.log(2.0)


def _maps(n: int = 3, c: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.5, 1.0, 3.0, 8.0][:c]).view(1, c, 1, 1)
    return [torch.randn(2, c, 12, 12, generator=g) * scale for _ in range(n)]


@pytest.fixture(scope="module", params=[None, "three-pass"])
def bottleneck(request) -> PCEntropyBottleneck:
    """A fitted bottleneck in float64: one pass, or the default three-pass context with its
    state context (leaf groups and state-context ids both in play)."""
    eb = PCEntropyBottleneck(4)
    eb.fit(_maps(), num_latents=3, context=request.param, epochs=1, progress=False)
    assert (eb.state_context is not None) == (request.param is not None)
    return eb.double().eval()


def test_smooth_density_is_the_code_length_at_integers(bottleneck):
    s = bottleneck.symbols(_maps(1, seed=5)[0].double())
    want = bottleneck.log_likelihood(s)
    got = bottleneck.smooth_log_likelihood(s.double(), s)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_smooth_density_interpolates_the_pmf_between_integers():
    eb = PCEntropyBottleneck(1)
    eb.fit(_maps(c=1), num_latents=2, context=None, epochs=1, progress=False)
    eb.double()
    k = torch.arange(-12, 12, dtype=torch.float64).view(-1, 1, 1, 1)  # escapes on both sides
    p = eb.log_likelihood(k.long()).exp().flatten()  # brute force: the pmf at each integer
    for frac in (0.0, 0.25, 0.5, 0.9):
        got = eb.smooth_log_likelihood(k[:-1] + frac, k[:-1].long()).exp().flatten()
        assert torch.allclose(got, (1 - frac) * p[:-1] + frac * p[1:], rtol=1e-12)


def test_smooth_density_gradient_matches_finite_differences(bottleneck):
    y = _maps(1, seed=7)[0].double()
    s = bottleneck.symbols(y)
    u = (y - bottleneck._medians().view(1, -1, 1, 1)).requires_grad_(True)
    bottleneck.smooth_log_likelihood(u, s).sum().backward()
    eps = 1e-6
    for idx in ((0, 0, 1, 2), (1, 2, 3, 4), (0, 3, 7, 7)):
        plus, minus = u.detach().clone(), u.detach().clone()
        plus[idx] += eps
        minus[idx] -= eps
        with torch.no_grad():
            f = [float(bottleneck.smooth_log_likelihood(v, s).sum()) for v in (plus, minus)]
        assert u.grad[idx] == pytest.approx((f[0] - f[1]) / (2 * eps), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("quantization", ["noise", "ste"])
def test_training_rate_is_the_coded_rate_and_trains_g_a(quantization):
    net = tiny_codec(FactorizedPrior, seed=1)
    fit_prior(net, random_images(3, seed=1), num_latents=3, epochs=1, progress=False)
    eb = net.entropy_bottleneck
    eb.quantization = quantization
    assert eb.schedule == "three-pass" and eb.state_context == "neighbours"  # the defaults
    x = torch.cat(random_images(2, seed=2))
    net.train()
    bits = -torch.log2(net(x)["likelihoods"]["y"]).sum()
    net.zero_grad()
    bits.backward()
    grad = net.g_a[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        y = net.g_a(x)
        model_bits = float(-eb.log_likelihood(eb.symbols(y)).sum()) / LN2
        coded_bits = sum(8 * len(s) for s in eb.compress(y))
    assert float(bits) == pytest.approx(model_bits, rel=1e-5)
    assert model_bits <= coded_bits <= model_bits + 8 * 64 * len(x)  # headers and range-coder tail


def test_hyperprior_training_rates_are_the_coded_rates_and_train_the_transforms():
    net = fitted_hyperprior(MeanScaleHyperprior, seed=3)
    x = torch.cat(random_images(2, seed=4))
    net.eval()
    with torch.no_grad():
        want = {k: float(-torch.log2(v).sum()) for k, v in net(x)["likelihoods"].items()}
    net.train()
    lik = net(x)["likelihoods"]
    got = {k: -torch.log2(v).sum() for k, v in lik.items()}
    for k in ("y", "z"):
        assert float(got[k]) == pytest.approx(want[k], rel=1e-5), k
    net.zero_grad()
    (got["y"] + got["z"]).backward()
    for module in (net.g_a[0], net.h_a[0], net.h_s[0]):
        grad = module.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_training_rate_is_no_looser_than_compressais_own():
    """On the shared factorized q1 codec and a bsds500/test crop: CompressAI's own bottleneck's
    training-mode bits (noise proxy, mean of draws) over its coded bits, against the PC
    bottleneck's (a small default-context fit on four bsds500/train photos)."""
    path = shared_path("models", "bmshj2018-factorized-q1.pt")
    photo = sorted(shared_path("data", "bsds500", "test").iterdir())[0]
    net = load_codec(path).eval()
    base = copy.deepcopy(net)
    base.update(force=True)
    train = shared_path("data", "bsds500", "train")
    fit_prior(net, train, max_images=4, epochs=1, full_batch_epochs=0, progress=False)
    x = load_image(photo)[..., :128, :128]
    ratios = {}
    torch.manual_seed(0)
    for name, model in (("compressai", base), ("pc", net)):
        eb = model.entropy_bottleneck
        with torch.no_grad():
            y = model.g_a(x)
            coded = sum(8 * len(s) for s in eb.eval().compress(y))
            eb.train()
            proxy = sum(float(-torch.log2(eb(y)[1]).sum()) for _ in range(8)) / 8
            eb.eval()
        ratios[name] = proxy / coded
    assert ratios["pc"] <= ratios["compressai"], ratios
