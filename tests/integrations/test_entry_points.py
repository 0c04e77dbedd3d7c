"""Every entry point takes every valid input and refuses every invalid one with ``InputError``:
empty batches round-trip (as CompressAI's entropy models do), one-state circuits code their own
output, and tensors of the wrong dtype or layout (bool, complex, meta, sparse) are named before
torch sees them."""

import pytest
import torch
from compressai.models import FactorizedPrior, MeanScaleHyperprior
from helpers import fitted_hyperprior, gc_inputs, random_images

from pc_prior import HCLT, InputError, decode, encode, pairwise_mutual_information
from pc_prior.integrations import PCConditional, PCEntropyBottleneck, fit_prior


def _bottleneck(num_latents: int, context: str | None) -> PCEntropyBottleneck:
    g = torch.Generator().manual_seed(0)
    eb = PCEntropyBottleneck(4)
    vals = torch.randn(600, 4, generator=g) * torch.tensor([0.3, 1.0, 3.0, 8.0])
    values = vals if context is None else [vals.view(6, 10, 10, 4).permute(0, 3, 1, 2)]
    eb.fit(
        values,
        num_latents=num_latents,
        epochs=1,
        full_batch_epochs=0,
        batch_size=200,
        context=context,
        progress=False,
    )
    return eb.eval()


@pytest.fixture(scope="module")
def hyper():
    return fitted_hyperprior(MeanScaleHyperprior)


# -- one latent state (K = 1) ---------------------------------------------------------------------
@pytest.mark.parametrize("context", [None, "three-pass"])
def test_one_state_bottleneck_codes_its_own_output(context):
    # with K = 1 the coder once rewrote the model's tables while encoding (a view, renormalised in
    # place), so the strings' fingerprint no longer matched the model: "another model's stream"
    eb = _bottleneck(1, context)
    y = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)) * 4
    tables = {k: v.clone() for k, v in eb._require_tables()[0].state().items()}
    strings = eb.compress(y)  # 256 positions a string: more items than symbols
    out = eb.decompress(strings, y.shape[-2:])
    med = eb._medians().view(1, -1, 1, 1)
    assert torch.equal(out, torch.round(y - med) + med)
    assert all(torch.equal(v, tables[k]) for k, v in eb._require_tables()[0].state().items())


def test_one_state_lossless_circuit_decodes_its_own_output():
    hclt = HCLT.from_data(torch.randint(0, 3, (200, 4)), 3, 1)
    x = torch.randint(0, 3, (50, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(decode(hclt, encode(hclt, x)), x)


# -- empty batches --------------------------------------------------------------------------------
def test_bottleneck_codes_an_empty_batch_as_no_strings():
    eb = _bottleneck(2, "three-pass")
    assert eb.compress(torch.zeros(0, 4, 3, 5)) == []
    out = eb.decompress([], (3, 5))
    assert out.shape == (0, 4, 3, 5) and out.dtype == eb._medians().dtype
    with pytest.raises(InputError, match="empty latent"):
        eb.compress(torch.zeros(1, 4, 0, 5))


def test_conditional_codes_an_empty_batch_as_no_strings(hyper):
    gc = hyper.gaussian_conditional
    y, _scales, means, idx = gc_inputs(hyper, random_images(1)[0])
    assert gc.compress(y[:0], idx[:0], means[:0]) == []
    out = gc.decompress([], idx[:0], means=means[:0])
    assert out.shape == (0, *y.shape[1:])
    with pytest.raises(InputError, match="1 strings for a batch of 0"):
        gc.decompress([b"x"], idx[:0])


@pytest.mark.parametrize("hyperprior", [False, True])
def test_codecs_round_trip_an_empty_batch(hyperprior, hyper):
    if hyperprior:
        net = hyper
    else:
        net = FactorizedPrior(N=8, M=12).eval()
        fit_prior(net, random_images(2), num_latents=2, epochs=1, progress=False)
        net.update(force=True)
    with torch.no_grad():
        enc = net.compress(torch.rand(0, 3, 64, 64))
        assert all(s == [] for s in enc["strings"])
        x_hat = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert x_hat.shape == (0, 3, 64, 64)


# -- dtypes and layouts ---------------------------------------------------------------------------
# a bad tensor of each kind; meta and sparse ones have the dtype the entry point wants
BAD_TENSORS = {
    "bool": lambda shape, dtype=None: torch.zeros(shape, dtype=torch.bool),
    "complex": lambda shape, dtype=None: torch.zeros(shape, dtype=torch.complex64),
    "meta": lambda shape, dtype=torch.float32: torch.zeros(shape, dtype=dtype, device="meta"),
    "sparse": lambda shape, dtype=torch.float32: torch.zeros(shape, dtype=dtype).to_sparse(),
}


@pytest.mark.parametrize("kind", sorted(BAD_TENSORS))
def test_bottleneck_entry_points_name_bad_tensors(kind):
    eb = _bottleneck(2, "three-pass")
    y = BAD_TENSORS[kind]((1, 4, 2, 2))
    for call in (eb.compress, eb.symbols, lambda t: eb(t, training=False)):
        with pytest.raises(InputError, match="latent"):
            call(y)


@pytest.mark.parametrize("kind", sorted(BAD_TENSORS))
def test_conditional_entry_points_name_bad_tensors(kind, hyper):
    gc: PCConditional = hyper.gaussian_conditional
    y, _scales, means, idx = gc_inputs(hyper, random_images(1)[0])
    bad = BAD_TENSORS[kind](tuple(y.shape))
    bad_idx = BAD_TENSORS[kind](tuple(y.shape), torch.int32)
    calls = [
        (lambda: gc.compress(bad, idx, means), "latent"),
        (lambda: gc.compress(y, bad_idx, means), "indexes"),
        (lambda: gc.compress(y, idx, bad), "means"),
        (lambda: gc(y, bad, means, training=False), "scales"),
    ]
    for call, match in calls:
        with pytest.raises(InputError, match=match):
            call()


def test_integer_latents_are_symbols():
    # integers are valid latents (already quantized); float64 ones code the same bytes
    eb = _bottleneck(2, "three-pass")
    y = torch.round(torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(3)) * 3)
    med = eb._medians().view(1, -1, 1, 1)
    ref = eb.compress(y + med)
    assert eb.compress((y + med).double()) == ref
    if torch.equal(med, torch.round(med)):
        assert eb.compress((y + med).long()) == ref


@pytest.mark.parametrize("kind", sorted(BAD_TENSORS))
def test_lossless_entry_points_name_bad_tensors(kind):
    hclt = HCLT.from_data(torch.randint(0, 3, (200, 4)), 3, 2)
    x = BAD_TENSORS[kind]((5, 4), torch.int64)
    for call in (lambda: encode(hclt, x), lambda: hclt.log_prob(x)):
        with pytest.raises(InputError, match="x"):
            call()


# -- arguments that reached torch or numpy errors ------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_bins": 0}, "num_bins"),
        ({"max_samples": 0}, "max_samples"),
        ({"dtype": torch.int64}, "dtype"),
        ({"dtype": torch.float16}, "dtype"),
    ],
)
def test_from_data_refuses_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        HCLT.from_data(torch.randint(0, 3, (200, 4)), 3, 2, **kwargs)


def test_from_data_and_mutual_information_refuse_data_without_variables():
    with pytest.raises(InputError, match="no variables"):
        HCLT.from_data(torch.zeros(20, 0, dtype=torch.long), 3, 2)
    with pytest.raises(InputError, match="integer"):
        pairwise_mutual_information(torch.rand(20, 3), 3)


@pytest.mark.parametrize(
    "image, match",
    [
        (torch.rand(1, 1, 32, 32), "grayscale"),
        (torch.rand(1, 4, 32, 32), r"\[B, 3, H, W\]"),
        (torch.rand(1, 3, 32, 32) * 255, "divide by 255"),
        (torch.full((1, 3, 32, 32), float("nan")), r"\[0, 1\]"),
        (torch.rand(1, 3, 32, 32).to_sparse(), "dense"),
        (torch.rand(1, 3, 32, 32, dtype=torch.complex64), "complex64"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.bool), "bool"),
    ],
)
def test_fit_prior_refuses_images_a_codec_cannot_read(image, match):
    net = FactorizedPrior(N=8, M=12).eval()
    with pytest.raises(InputError, match=match):
        fit_prior(net, [image], num_latents=2, epochs=1, progress=False)


def test_fit_prior_converts_float64_images_to_the_codecs_dtype():
    # the codec is float32: a float64 image in [0, 1] is the same image, converted as documented
    a, b = FactorizedPrior(N=8, M=12).eval(), FactorizedPrior(N=8, M=12).eval()
    b.load_state_dict(a.state_dict())
    images = random_images(2)
    fit_prior(a, images, num_latents=2, epochs=1, progress=False, seed=0)
    fit_prior(b, [x.double() for x in images], num_latents=2, epochs=1, progress=False, seed=0)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
