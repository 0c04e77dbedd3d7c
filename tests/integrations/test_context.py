"""Checkerboard context of PCConditional: integer features equal a naive reference, fitting finds
real spatial dependence, and coding with it (or without it) round-trips exactly."""

import copy

import pytest
import torch
from compressai.models import ScaleHyperprior
from compressai.models.base import get_scale_table
from helpers import fitted_hyperprior, gc_inputs, random_images

from pc_prior import BitstreamError
from pc_prior.integrations import PCConditional, collect_conditional_inputs, fit_prior
from pc_prior.integrations.context import (
    COEF_BITS,
    CheckerboardContext,
    anchor_mask,
    lattice_masks,
    pass_masks,
)


def _random_context(c: int, seed: int = 0, lattice: str = "cross") -> CheckerboardContext:
    g = torch.Generator().manual_seed(seed)
    table = get_scale_table()
    ctx = CheckerboardContext(c, table, channel_bins=4, total_bins=3, lattice=lattice)
    ctx.channel_edges = torch.tensor([1, 30000, 90000])
    ctx.total_edges = torch.tensor([20000, 60000])
    ctx.coef = torch.randint(-(2 << COEF_BITS), 2 << COEF_BITS, (c,), generator=g)
    ctx.shift = torch.randint(-5, 6, (c, 4, 3), generator=g)
    return ctx


def _naive(
    ctx: CheckerboardContext, u: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Position by position with Python integers: the specification of ``apply``.

    Cross lattice: (i + j) odd positions read their row/column neighbours (all anchors). Diagonal:
    (odd, odd) positions read their diagonal neighbours (all (even, even))."""
    b_, c, h, w = u.shape
    s_out, m_out = s.clone().long(), torch.zeros_like(u, dtype=torch.long)
    inv = ctx.inv_scale.tolist()
    if ctx.lattice == "cross":
        target, steps = (lambda i, j: (i + j) % 2 == 1), ((-1, 0), (1, 0), (0, -1), (0, 1))
    else:
        target, steps = (
            (lambda i, j: i % 2 == 1 and j % 2 == 1),
            ((-1, -1), (1, 1), (1, -1), (-1, 1)),
        )
    for b in range(b_):
        for i in range(h):
            for j in range(w):
                if not target(i, j):
                    continue
                nb = [(i + di, j + dj) for di, dj in steps if 0 <= i + di < h and 0 <= j + dj < w]
                n = len(nb)
                act = [
                    sum(abs(int(u[b, k, y, x])) * inv[int(s[b, k, y, x])] for y, x in nb)
                    for k in range(c)
                ]
                total = sum(act)
                bt = sum(total >= int(e) * n * c for e in ctx.total_edges)
                for k in range(c):
                    a = sum(act[k] >= int(e) * n for e in ctx.channel_edges)
                    s_out[b, k, i, j] = min(
                        max(int(s[b, k, i, j]) + int(ctx.shift[k, a, bt]), 0), len(inv) - 1
                    )
                    num = int(ctx.coef[k]) * sum(int(u[b, k, y, x]) for y, x in nb)
                    den = n << COEF_BITS
                    m_out[b, k, i, j] = (2 * num + den) // (2 * den)
    return s_out, m_out


@pytest.mark.parametrize("lattice", ["cross", "diagonal"])
@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (2, 1), (3, 5), (4, 4)])
def test_apply_equals_naive_integer_reference(hw, lattice):
    g = torch.Generator().manual_seed(hw[0] * 7 + hw[1])
    ctx = _random_context(5, lattice=lattice)
    u = torch.randint(-6, 7, (2, 5, *hw), generator=g)
    s = torch.randint(0, 64, (2, 5, *hw), generator=g)
    got_s, got_m = ctx(u, s)
    want_s, want_m = _naive(ctx, u, s)
    assert torch.equal(got_s, want_s) and torch.equal(got_m, want_m)
    sources, targets = lattice_masks(*hw, lattice)
    assert not (sources & targets).any()
    assert torch.equal(got_s[..., ~targets], s[..., ~targets]) and not got_m[..., ~targets].any()
    # only the sources' symbols and indexes (and a target's own index) are read
    u2 = torch.where(sources, u, torch.randint(-50, 50, u.shape, generator=g))
    s2 = torch.where(sources | targets, s, torch.randint(0, 64, s.shape, generator=g))
    got2 = ctx(u2, s2)
    assert torch.equal(got2[1], got_m) and torch.equal(got2[0][..., targets], got_s[..., targets])
    with pytest.raises(ValueError, match="shape"):
        ctx(u[:, :3], s[:, :3])


def test_bin_edges_are_inclusive_and_means_round_half_up():
    """Activity exactly on an edge goes to the upper bin; a mean of exactly k + 1/2 rounds to k + 1."""
    ctx = _random_context(1)
    inv = int(ctx.inv_scale[20])
    ctx.shift = torch.arange(12).view(1, 4, 3)
    ctx.coef = torch.tensor([1 << (COEF_BITS - 1)])  # 1/2
    u = torch.tensor([[[[3, 0]]]])  # anchor |u| = 3, one neighbour: activity 3·inv
    s = torch.tensor([[[[20, 30]]]])
    ctx.channel_edges = torch.tensor([1, 3 * inv, 3 * inv + 1])
    ctx.total_edges = torch.tensor([3 * inv, 3 * inv + 1])
    s_new, m = ctx(u, s)
    assert (
        int(s_new[0, 0, 0, 1]) == 30 + int(ctx.shift[0, 2, 1]) and int(m[0, 0, 0, 1]) == 2
    )  # 1.5 -> 2
    s_new, m = ctx(-u, s)
    assert int(m[0, 0, 0, 1]) == -1  # -1.5 -> -1 (half up)


def test_fit_finds_spatial_dependence():
    """Non-anchors built from their neighbours: negative mean coupling, wider where neighbours are busy."""
    g = torch.Generator().manual_seed(0)
    table = get_scale_table()
    maps = []
    for _ in range(6):
        h, w = 12, 16
        busy = (torch.rand(1, 3, 1, 1, generator=g) < 0.5).float()
        anchors = torch.round(torch.randn(1, 3, h, w, generator=g) * (0.3 + 4 * busy))
        a = anchor_mask(h, w)
        anchors = anchors * a
        nsum = torch.nn.functional.conv2d(
            anchors.view(3, 1, h, w),
            torch.tensor([[[[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]]]),
            padding=1,
        ).view(1, 3, h, w)
        cnt = torch.nn.functional.conv2d(
            a[None, None].float(), torch.tensor([[[[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]]]), padding=1
        )
        non = torch.round(-0.5 * nsum / cnt + torch.randn(1, 3, h, w, generator=g) * 0.3)
        u = torch.where(a, anchors, non).long()
        idx = torch.full_like(u, 20)  # the hyperprior says σ≈1.0 everywhere
        maps.append((u, idx))
    ctx = CheckerboardContext(3, table)
    info = ctx.fit(maps, table)
    assert info["context_bits"] < 0.7 * info["context_base_bits"]
    coef = ctx.coef.double() / 2**COEF_BITS
    assert torch.all((coef < -0.3) & (coef > -0.7)), coef
    assert int(ctx.shift.min()) < 0  # quiet neighbourhoods narrow the distribution
    with pytest.raises(ValueError, match="scale table"):
        ctx.fit(maps, table[:10])
    with pytest.raises(ValueError, match="maps"):
        ctx.fit([(u[:, :2], idx[:, :2])], table)


def _assert_codec_round_trip(model, x):
    """The model's own compress/decompress reproduce its eval-mode forward reconstruction."""
    with torch.no_grad():
        ref = model(x)["x_hat"].clamp(0, 1)
        enc = model.compress(x)
        assert torch.equal(model.decompress(enc["strings"], enc["shape"])["x_hat"], ref)


def test_context_and_no_context_models_round_trip_and_do_not_mix():
    with_ctx = fitted_hyperprior(ScaleHyperprior, seed=4, context="checkerboard")
    gc = with_ctx.gaussian_conditional
    assert isinstance(gc.context, CheckerboardContext)
    plain = fitted_hyperprior(ScaleHyperprior, seed=4, context=None)
    assert plain.gaussian_conditional.context is None
    x = torch.cat(random_images(2, 64, 192, seed=8))
    for model in (with_ctx, plain):
        _assert_codec_round_trip(model, x)
    y, _, _means, idx = gc_inputs(with_ctx, x)
    strings = gc.compress(y, idx)
    stripped = copy.deepcopy(gc)
    stripped.context = None  # same circuit and tables, no context: a different model
    with pytest.raises(BitstreamError, match="another model"):
        stripped.decompress(strings, idx)
    # state dicts carry the context, and loading a context-free one drops it
    fresh = PCConditional(None)
    fresh.load_state_dict(gc.state_dict())
    assert torch.equal(fresh.decompress(strings, idx), torch.round(y))
    fresh.load_state_dict(plain.gaussian_conditional.state_dict())
    assert fresh.context is None


def test_three_pass_context_round_trips_and_is_its_own_model():
    """Three passes: (even, even), then (odd, odd) given diagonal neighbours, then the rest."""
    model = fitted_hyperprior(ScaleHyperprior, seed=4, context="three-pass")
    gc = model.gaussian_conditional
    assert gc.context.lattice == "cross" and gc.anchor_context.lattice == "diagonal"
    for (h, w), passes in {
        (1, 1): 1,
        (1, 3): 2,
        (3, 1): 2,
        (5, 6): 3,
    }.items():  # one row has no (odd, odd)
        assert gc.schedule == "three-pass"
        masks = [m for m, _ in pass_masks(h, w, gc.schedule)]
        assert len(masks) == passes
        assert torch.equal(
            torch.stack(masks).sum(0), torch.ones(h, w, dtype=torch.long)
        )  # a partition
    x = torch.cat(random_images(2, 64, 192, seed=8))
    _assert_codec_round_trip(model, x)
    y, _, _means, idx = gc_inputs(model, x)
    strings = gc.compress(y, idx)
    two_pass = copy.deepcopy(gc)
    two_pass.anchor_context = None  # same circuit, tables and cross context: a different model
    with pytest.raises(BitstreamError, match="another model"):
        two_pass.decompress(strings, idx)
    fresh = PCConditional(None)
    fresh.load_state_dict(gc.state_dict())
    assert fresh.anchor_context.lattice == "diagonal"
    assert torch.equal(fresh.decompress(strings, idx), torch.round(y))
    fresh.load_state_dict(two_pass.state_dict())  # a two-pass state dict drops the anchor context
    assert fresh.anchor_context is None and fresh.context is not None


def test_fit_argument_errors_for_context():
    model = fitted_hyperprior(ScaleHyperprior, seed=5)
    x = torch.cat(random_images(1, 64, 64, seed=9))
    rows = collect_conditional_inputs(model, [x])
    sym, idx = collect_conditional_inputs(model, [x], maps=True)
    assert len(sym) == 1 and sym[0].shape == (1, 12, 4, 4)
    assert torch.equal(torch.cat([s.permute(0, 2, 3, 1).reshape(-1, 12) for s in sym]), rows[0])
    gc = PCConditional(None)
    with pytest.raises(ValueError, match="needs latent maps"):
        gc.fit(*rows, context="checkerboard")
    with pytest.raises(ValueError, match="context must be"):
        gc.fit(sym, idx, context="raster")
    with pytest.raises(ValueError, match="both"):
        gc.fit(sym, rows[1])
    with pytest.raises(ValueError, match="equal shape"):
        gc.fit(sym, [i[:, :3] for i in idx])
    with pytest.raises(
        ValueError, match="downsampling"
    ):  # 80 is not a multiple of 64: the scales do not fit y
        fit_prior(
            model,
            [torch.rand(1, 3, 64, 80)],
            name=("entropy_bottleneck", "gaussian_conditional"),
            progress=False,
        )


@pytest.mark.parametrize("context", ["three-pass", "checkerboard", "none"])
def test_cli_fits_conditional_with_and_without_context(tmp_path, capsys, context):
    import json

    import compressai
    import numpy as np
    from PIL import Image

    from pc_prior.cli import main
    from pc_prior.integrations import load_codec

    torch.manual_seed(0)
    net = compressai.zoo.image_models["bmshj2018-hyperprior"](quality=1)
    ck = tmp_path / "codec.pt"
    torch.save({"arch": "bmshj2018-hyperprior", "quality": 1, "state_dict": net.state_dict()}, ck)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    out = tmp_path / "swapped.pt"
    assert (
        main(
            [
                "prior",
                "fit",
                str(ck),
                "--data",
                str(imgs),
                "-o",
                str(out),
                "--latents",
                "2",
                "--epochs",
                "1",
                "--full-batch-epochs",
                "0",
                "--max-items",
                "500",
                "--conditional",
                "--cond-latents",
                "2",
                "--cond-steps",
                "3",
                "--cond-context",
                context,
            ]
        )
        == 0
    )
    capsys.readouterr()
    swapped = load_codec(out)
    gc = swapped.gaussian_conditional
    assert isinstance(gc, PCConditional) and (gc.context is None) == (context == "none")
    assert (gc.anchor_context is not None) == (context == "three-pass")
    assert main(["eval", str(out), "--data", str(imgs), "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)["per_image"][out.stem]
    assert len(rows) == 2 and all(r["decoded_equals_forward"] for r in rows)
    if context == "none":  # a refit of a file with both PC models refits both, context kept
        from pc_prior.integrations.api import fit_prior_file
        from pc_prior.settings import BottleneckFit, ConditionalFit

        small = BottleneckFit(num_latents=2, epochs=1, full_batch_epochs=0, max_items=500)
        hist = fit_prior_file(
            out, imgs, tmp_path / "refit.pt", bottleneck=small,
            conditional=ConditionalFit(num_latents=2, steps=3, context=None), progress=False,
        )  # fmt: skip
        assert set(hist) == {"entropy_bottleneck", "gaussian_conditional"}
        refit = torch.load(tmp_path / "refit.pt", weights_only=True)
        assert refit["pc_modules"] == ["entropy_bottleneck", "gaussian_conditional"]
        assert isinstance(load_codec(tmp_path / "refit.pt").gaussian_conditional, PCConditional)
