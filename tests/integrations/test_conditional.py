"""PCConditional inside CompressAI hyperprior models: API contract, exact round trips, escapes, errors."""

import itertools
import math

import numpy as np
import pytest
import torch
from compressai.entropy_models import GaussianConditional
from compressai.models import MeanScaleHyperprior, ScaleHyperprior
from helpers import NAMES, fitted_hyperprior, gc_inputs, random_images

from pc_prior import HCLT, BitstreamError
from pc_prior.coding import CodingTables, IncrementalConditionals, naive_conditionals
from pc_prior.continuous import ScaleConditionedTree
from pc_prior.integrations import (
    PCConditional,
    PCEntropyBottleneck,
    collect_conditional_inputs,
    fit_prior,
    swap_entropy_model,
)
from pc_prior.settings import ConditionalFit
from pc_prior.structure import Tree


@pytest.fixture(
    scope="module", params=[ScaleHyperprior, MeanScaleHyperprior], ids=["scale", "mean-scale"]
)
def hyper(request):
    return fitted_hyperprior(request.param)


def test_swap_keeps_compressai_contract(hyper):
    gc = hyper.gaussian_conditional
    assert isinstance(gc, GaussianConditional) and isinstance(gc, PCConditional)
    assert isinstance(hyper.entropy_bottleneck, PCEntropyBottleneck)
    assert hyper.update() is False and hyper.update(force=True) is True
    assert float(hyper.aux_loss().detach()) < 1e-3
    assert gc.channels == 12 and gc.radius >= 4
    assert gc._pc_emit.shape == (12, len(gc.scale_table), gc.pc.num_latents, 2 * gc.radius + 2)
    # plain modules are replaced with their scale table and bound kept
    m = ScaleHyperprior(N=8, M=12)
    m.update(force=True)
    table = m.gaussian_conditional.scale_table.clone()
    s = torch.rand(2, 12, 3, 3) * 5
    want = m.gaussian_conditional.build_indexes(s)
    eb, new = swap_entropy_model(m, NAMES)
    assert isinstance(eb, PCEntropyBottleneck) and new is m.gaussian_conditional
    assert torch.equal(new.scale_table, table) and torch.equal(new.build_indexes(s), want)
    with pytest.raises(RuntimeError, match="not fitted"):
        new(torch.zeros(1, 12, 2, 2), torch.ones(1, 12, 2, 2))
    with pytest.raises(RuntimeError, match="not fitted"):
        m.update(force=True)
    with pytest.raises(TypeError, match="GaussianConditional"):
        swap_entropy_model(m, "g_a")


def test_model_round_trip_matches_eval_forward_and_rate(hyper):
    x = torch.cat(random_images(2, 64, 128, seed=5))
    with torch.no_grad():
        ref = hyper(x)
        enc = hyper.compress(x)
        dec = hyper.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert torch.equal(dec, ref["x_hat"].clamp(0, 1))
    y, _scales, means, idx = gc_inputs(hyper, x)
    gc = hyper.gaussian_conditional
    y_hat = gc.decompress(enc["strings"][0], idx, means=means)
    assert torch.equal(y_hat, gc.quantize(y, "dequantize", means))
    model_bits = float(-torch.log2(ref["likelihoods"]["y"]).sum())
    from pc_prior.framing import header_bytes

    coded_bits = 8 * sum(len(s) - header_bytes(tuple(y.shape[-2:])) for s in enc["strings"][0])
    assert model_bits > 0 and abs(coded_bits - model_bits) <= 0.02 * model_bits + 64 * 2


def test_circuit_normalizes_and_incremental_matches_naive():
    """Brute force on a tiny circuit: every position's pmf sums to one, coder conditionals equal naive ones."""
    g = torch.Generator().manual_seed(3)
    pc = ScaleConditionedTree(Tree((1, -1, 1)), 2, 3, dtype=torch.float64)
    with torch.no_grad():
        for p in pc.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    table = torch.tensor([0.2, 0.9, 2.5])
    r = 2
    probs = pc.emission_probs(r, table)  # [D, S, K, V]
    assert torch.allclose(probs.sum(-1), torch.ones(3, 3, 2, dtype=torch.float64))
    v = 2 * r + 2
    groups = torch.tensor([[0, 1, 2], [2, 2, 0], [1, 0, 1]])
    xs = torch.tensor(list(itertools.product(range(v), repeat=3)))
    for gr in groups:  # the joint over every (symbol or ESCAPE) assignment sums to one
        leaf = probs[torch.arange(3), gr].transpose(1, 2)[torch.arange(3), xs].log()  # [V^3, D, K]
        assert float(pc.upward(leaf)[0].exp().sum()) == pytest.approx(1.0, abs=1e-12)
    # integer coder conditionals vs naive inside/outside passes on the same quantized tables
    from pc_prior.coding import quantize_probs

    tables = CodingTables(
        np.asarray(pc.tree.parent),
        quantize_probs(pc.log_root().exp()),
        quantize_probs(pc.log_transitions().exp()),
        quantize_probs(probs),
    )
    x = torch.tensor([[0, 5, 3], [4, 1, 5], [2, 2, 0]])
    inc = IncrementalConditionals(tables, len(x), groups=groups)
    got = []
    for i in inc.order:
        w = inc.weights()
        got.append(w / w.sum(-1, keepdim=True))
        inc.observe(x[:, i])
    got = torch.stack(got, 1)
    for n in range(len(x)):
        ref = HCLT(pc.tree, v, 2, dtype=torch.float64)
        with torch.no_grad():
            ref.root_logits.copy_(tables.root.log())
            ref.transition_logits.copy_(tables.trans.log())
            ref.emission_logits.copy_(tables.emit[torch.arange(3), groups[n]].log())
        want = naive_conditionals(ref, x[n : n + 1], inc.order)
        assert torch.allclose(got[n], want[0], atol=2e-6)  # messages are floored to 22 bits
    with pytest.raises(ValueError, match="groups"):
        IncrementalConditionals(tables, len(x))
    with pytest.raises(ValueError, match="groups"):
        IncrementalConditionals(tables, len(x), groups=groups + 3)


def test_escapes_round_trip_exactly(hyper):
    gc = hyper.gaussian_conditional
    x = torch.cat(random_images(2, 64, 64, seed=7))
    y, scales, means, idx = gc_inputs(hyper, x)
    y = y.clone()
    far = [
        1e5 + 0.3,
        -3e6,
        2.0**31 - 128,
        -(2.0**31 - 128),
        gc.radius + 1,
        -gc.radius - 1,
    ]  # float32-exact
    for j, val in enumerate(far):
        y[j % 2, j, j % 4, (j + 1) % 4] = val + (
            0.0 if means is None else float(means[j % 2, j, j % 4, (j + 1) % 4])
        )
    strings = gc.compress(y, idx, means=means)
    y_hat = gc.decompress(strings, idx, means=means)
    assert torch.equal(y_hat, gc.quantize(y, "dequantize", means))
    sym = gc.quantize(y, "symbols", means)
    assert (sym.abs() > gc.radius).sum() >= len(far)
    _, lik = gc(y, scales, means, training=False)
    assert torch.isfinite(torch.log2(lik)).all()
    bad = y.clone()
    bad[0, 0, 0, 0] = 2.0**40
    with pytest.raises(ValueError, match="range"):
        gc.compress(bad, idx, means=means)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        gc.compress(bad, idx, means=means)


def test_bitstream_errors(hyper):
    gc = hyper.gaussian_conditional
    x = torch.cat(random_images(1, 64, 64, seed=13))
    y, _, means, idx = gc_inputs(hyper, x)
    (s,) = gc.compress(y, idx, means=means)
    other = fitted_hyperprior(type(hyper), seed=1).gaussian_conditional
    with pytest.raises(BitstreamError, match="another model"):
        other.decompress([s], idx, means=means)
    with pytest.raises(BitstreamError, match="truncated"):
        gc.decompress([s[:10]], idx, means=means)
    with pytest.raises(BitstreamError, match="truncated|checksum"):
        gc.decompress([s[:-4]], idx, means=means)
    with pytest.raises(BitstreamError, match="truncated|checksum"):
        gc.decompress([s[:-1]], idx, means=means)
    bad = bytearray(s)
    bad[-3] ^= 0x40
    with pytest.raises(BitstreamError, match="corrupted"):
        gc.decompress([bytes(bad)], idx, means=means)
    with pytest.raises(BitstreamError, match="magic"):
        gc.decompress([b"XXXX" + s[4:]], idx, means=means)
    z_string = hyper.entropy_bottleneck.compress(hyper.h_a(y if means is not None else y.abs()))[0]
    with pytest.raises(
        BitstreamError, match="expected a PCConditional bitstream, got a PCEntropyBottleneck"
    ):
        gc.decompress([z_string], idx, means=means)
    with pytest.raises(BitstreamError, match="asked for"):
        gc.decompress([s], idx[..., :-1], means=None if means is None else means[..., :-1])
    with pytest.raises(ValueError, match="strings for a batch"):
        gc.decompress([s, s], idx, means=means)
    with pytest.raises(ValueError, match="indexes must lie"):
        gc.decompress([s], idx + 100, means=means)
    with pytest.raises(TypeError, match="bytes"):
        gc.decompress(["abc"], idx, means=means)
    with pytest.raises(TypeError, match="list"):
        gc.decompress(s, idx, means=means)
    with pytest.raises(ValueError, match="shape"):
        gc.compress(y[:, :5], idx[:, :5])
    assert torch.equal(gc.decompress([s], idx, means=means), gc.quantize(y, "dequantize", means))


@pytest.mark.parametrize("hw", [(64, 64), (128, 64), (192, 320)])
def test_any_latent_size(hyper, hw):
    """1x1 hyper-latents and odd latent sizes (3x5 hyper-latent, 12x20 latent) round trip exactly."""
    x = torch.cat(random_images(1, *hw, seed=hw[0] + hw[1]))
    with torch.no_grad():
        ref = hyper(x)["x_hat"].clamp(0, 1)
        enc = hyper.compress(x)
        dec = hyper.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert torch.equal(dec, ref)
    gc = hyper.gaussian_conditional
    g = torch.Generator().manual_seed(1)
    for h, w in [(1, 1), (3, 7), (5, 2)]:
        y = torch.randn(2, 12, h, w, generator=g) * 4
        idx = torch.randint(0, len(gc.scale_table), (2, 12, h, w), generator=g).int()
        assert torch.equal(gc.decompress(gc.compress(y, idx), idx), torch.round(y))
    with pytest.raises(ValueError, match="empty"):
        gc.compress(torch.zeros(1, 12, 0, 3), torch.zeros(1, 12, 0, 3, dtype=torch.int32))


def test_state_dict_and_save_load_codec(tmp_path):
    import compressai

    from pc_prior.integrations import load_codec, save_codec

    torch.manual_seed(0)
    net = compressai.zoo.image_models["bmshj2018-hyperprior"](quality=1).eval()
    net.update(force=True)
    x = torch.cat(random_images(1, 64, 128, seed=2))
    hist = fit_prior(
        net,
        [x],
        name=NAMES,
        num_latents=2,
        epochs=1,
        max_items=200,
        progress=False,
        conditional=ConditionalFit(num_latents=2, steps=5, batch_size=32, structure="star"),
    )
    assert set(hist) == set(NAMES) and "holdout_pc_bits" in hist["gaussian_conditional"][-1]
    net.update(force=True)
    with torch.no_grad():
        enc = net.compress(x)
        dec = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    path = tmp_path / "codec.pt"
    save_codec(net, path, "bmshj2018-hyperprior", 1)
    assert set(torch.load(path)["pc_modules"]) == set(NAMES)
    state = torch.load(path)["state_dict"]
    assert not any(k.endswith(("_pc_emit", "_pc_trans", "_pc_root")) for k in state)  # compact
    fresh = load_codec(path)
    assert isinstance(fresh.gaussian_conditional, PCConditional) and fresh.update() is False
    for m in NAMES:  # the tables rebuilt from the parameters are the encoder's, bit for bit
        for b in ("_pc_root", "_pc_trans", "_pc_emit"):
            assert torch.equal(getattr(getattr(fresh, m), b), getattr(getattr(net, m), b))
    with torch.no_grad():
        assert torch.equal(fresh.decompress(enc["strings"], enc["shape"])["x_hat"], dec)
        assert fresh.compress(x)["strings"] == enc["strings"]


def test_training_mode_is_differentiable(hyper):
    gc = hyper.gaussian_conditional
    x = torch.cat(random_images(1, 64, 64, seed=3))
    y, scales, means, _ = gc_inputs(hyper, x)
    y = y.clone().requires_grad_(True)
    scales = scales.clone().requires_grad_(True)
    out, lik = gc(y, scales, means, training=True)
    assert not torch.equal(out, gc(y, scales, means, training=False)[0])  # noise, not rounding
    (-lik.log().sum()).backward()
    assert y.grad.abs().sum() > 0 and scales.grad.abs().sum() > 0
    assert gc.pc.log_scale.grad is not None and gc.pc.log_scale.grad.abs().sum() > 0
    assert gc.pc.scale_offset.grad.abs().sum() > 0
    gc.zero_grad()


def test_collect_and_fit_argument_errors(hyper):
    x = torch.cat(random_images(1, 64, 64, seed=9))
    sym, idx = collect_conditional_inputs(hyper, [x])
    assert sym.shape == idx.shape == (16, 12) and sym.dtype == torch.int32
    _y, _, _means, want = gc_inputs(hyper, x)
    assert torch.equal(idx.long(), want.permute(0, 2, 3, 1).reshape(-1, 12).long())
    gc = PCConditional(None)
    with pytest.raises(ValueError, match="structure"):
        gc.fit(sym, idx, structure="ring")
    with pytest.raises(ValueError, match="init"):
        gc.fit(sym, idx, init="random")
    with pytest.raises(ValueError, match="context"):  # the bottleneck's schedule only
        gc.fit(sym, idx, context="four-pass")
    with pytest.raises(ValueError, match="needs latent maps.*context=None"):
        gc.fit(sym, idx)  # rows, under the default three-pass context
    with pytest.raises(ValueError, match="shape"):
        gc.fit(sym, idx[:, :3], context=None)
    with pytest.raises(ValueError, match="no latent"):
        gc.fit(sym[:0], idx[:0], context=None)
    with pytest.raises(ValueError, match="indexes must lie"):
        gc.fit(sym, idx + 1000, context=None)
    with pytest.raises(RuntimeError, match="no coding tables"):
        gc.compress(torch.zeros(1, 12, 1, 1), torch.zeros(1, 12, 1, 1, dtype=torch.int32))
    with pytest.raises(TypeError, match="GaussianConditional"):
        fit_prior(
            ScaleHyperprior(N=8, M=12), [x], name=("gaussian_conditional", "g_s"), progress=False
        )
    with pytest.raises(ValueError, match="at least one"):
        fit_prior(ScaleHyperprior(N=8, M=12), [x], name=(), progress=False)


def test_k1_reproduces_gaussian_conditional_rate(hyper):
    """K=1 with zero offsets is the Gaussian conditional: same likelihoods as CompressAI's."""
    gc = hyper.gaussian_conditional
    x = torch.cat(random_images(1, 64, 64, seed=21))
    y, _scales, means, idx = gc_inputs(hyper, x)
    pc = ScaleConditionedTree(Tree(tuple([-1] + [0] * 11)), 1, len(gc.scale_table))
    sigma = gc.scale_table[idx.long()]
    u = gc.quantize(y, "symbols", means)
    rows = lambda t: t.permute(0, 2, 3, 1).reshape(-1, 12)  # noqa: E731
    ours = pc.log_prob(rows(u), rows(sigma), rows(idx))
    ref = GaussianConditional(None)._likelihood(u, sigma).clamp_min(1e-9).log().sum(1).flatten()
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-3)
    assert math.isfinite(float(ours.sum()))


def test_data_init_and_star_structure_round_trip():
    """init="data" starts from the binned standardized symbols; with a star it still codes exactly."""
    model = fitted_hyperprior(ScaleHyperprior, seed=2, init="data", structure="star", num_latents=4)
    gc = model.gaussian_conditional
    parent = np.asarray(gc.pc.tree.parent)
    assert (parent < 0).sum() == 1 and len(set(parent[parent >= 0].tolist())) == 1  # a star
    hist_pc = gc.pc
    assert torch.isfinite(hist_pc.loc).all() and float(hist_pc.loc.detach().abs().max()) > 0
    x = torch.cat(random_images(2, 64, 64, seed=11))
    with torch.no_grad():
        ref = model(x)["x_hat"].clamp(0, 1)
        enc = model.compress(x)
        assert torch.equal(model.decompress(enc["strings"], enc["shape"])["x_hat"], ref)
    pc = ScaleConditionedTree(Tree((-1, 0, 0)), 4, 3)
    u = torch.tensor([[0.0, 3.0, -3.0], [1.0, -1.0, 0.0]] * 10)
    pc.init_from_data(u, torch.ones_like(u))
    assert torch.allclose(pc.log_transitions().exp().sum(-1), torch.ones(3, 4))
    assert float(pc.loc[0].min()) < 0 < float(pc.loc[0].max())


def test_sliced_gradient_equals_whole_batch_gradient():
    """fit's per-slice backward passes sum to the whole batch's gradient, whatever the slicing."""
    from pc_prior.integrations.conditional_fit import accumulate_gradient

    g = torch.Generator().manual_seed(4)
    tree = Tree((-1, 0, 0, 1))
    pc = ScaleConditionedTree(tree, 3, num_scales=5)
    pc.init_params(seed=1)
    with torch.no_grad():
        for p in pc.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    s = torch.randint(5, (23, 4), generator=g)
    sigma = torch.tensor([0.2, 0.5, 1.0, 3.0, 9.0])[s]
    u = torch.randint(-6, 7, (23, 4), generator=g).float()
    grads, losses = [], []
    for chunk in (23, 5, 1):
        pc.zero_grad()
        losses.append(accumulate_gradient(pc, u, sigma, s, chunk=chunk))
        grads.append([p.grad.clone() for p in pc.parameters()])
    want = -pc.log_prob(u, sigma, s).mean() / math.log(2)
    for loss, grad in zip(losses, grads):
        torch.testing.assert_close(loss, want.detach())
        for a, b in zip(grad, grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(float(p.abs().sum()) > 0 for p in grads[0])


def _plain_leaf_log_probs(pc: ScaleConditionedTree, u, sigma, s):
    """The leaf formula written out with autograd's own operations (the reference)."""
    from pc_prior.continuous import LIKELIHOOD_BOUND, normal_cdf

    mu = sigma[..., None] * pc.loc
    off = pc.scale_offset[torch.arange(pc.num_vars), s][..., None]
    scale = torch.exp(pc.log_scale + off + torch.log(sigma)[..., None] * (1.0 + pc.scale_power))
    v = (u[..., None] - mu).abs()
    mass = normal_cdf((0.5 - v) / scale) - normal_cdf((-0.5 - v) / scale)
    return torch.log(mass.clamp_min(LIKELIHOOD_BOUND))


def test_gaussian_leaves_and_their_gradients_equal_the_plain_formula():
    g = torch.Generator().manual_seed(7)
    pc = ScaleConditionedTree(Tree((-1, 0, 1)), 4, num_scales=6, dtype=torch.float64)
    with torch.no_grad():
        for p in (pc.loc, pc.log_scale, pc.scale_power, pc.scale_offset):
            p.copy_(0.4 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    s = torch.randint(6, (40, 3), generator=g)
    sigma = torch.tensor([0.11, 0.3, 0.9, 2.0, 5.0, 20.0], dtype=torch.float64)[s]
    u = torch.randint(-30, 31, (40, 3), generator=g).double()  # far tails: clamped leaves too
    u[:5] += (
        torch.rand(5, 3, generator=g, dtype=torch.float64) - 0.5
    )  # noisy values, as in training
    results = []
    for fn in (pc.leaf_log_probs, lambda *a: _plain_leaf_log_probs(pc, *a)):
        pc.zero_grad()
        uu, ss = u.clone().requires_grad_(True), sigma.clone().requires_grad_(True)
        out = fn(uu, ss, s)
        weights = torch.randn(
            out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype
        )
        (out * weights).sum().backward()
        results.append(
            [out.detach(), uu.grad, ss.grad]
            + [p.grad.clone() for p in pc.parameters() if p.grad is not None]
        )
    assert (results[1][0] <= math.log(1e-9) + 1e-9).any()  # the test reaches the clamp
    assert len(results[0]) == len(results[1]) == 7  # u, sigma and the four leaf parameters
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
