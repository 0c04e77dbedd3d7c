"""PCEntropyBottleneck inside CompressAI models: API contract, exact round trips, escapes, errors."""

import math

import pytest
import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.models import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior
from conftest import shared_path

from pc_prior import BitstreamError
from pc_prior.continuous import DiscretizedLogisticTree
from pc_prior.framing import header_bytes
from pc_prior.hclt import GroupedHCLT
from pc_prior.integrations import (
    PCEntropyBottleneck,
    collect_latents,
    fit_prior,
    load_codec,
    save_codec,
    swap_entropy_model,
)


def _spread(model: torch.nn.Module, gain: float) -> None:
    """Scale the analysis transform's output so a random-init model has multi-symbol latents."""
    conv = model.h_a[-1] if hasattr(model, "h_a") else model.g_a[-1]
    with torch.no_grad():
        conv.weight.mul_(gain)
        conv.bias.mul_(gain)


def _images(n: int, h: int = 64, w: int = 64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, h, w, generator=g) for _ in range(n)]


def _fitted(cls=FactorizedPrior, seed: int = 0, gain: float = 40.0, **fit_kwargs):
    torch.manual_seed(seed)
    model = cls(N=8, M=12).eval()
    _spread(model, gain)
    kw = dict(num_latents=4, epochs=2, progress=False, seed=seed) | fit_kwargs
    fit_prior(model, _images(3, seed=seed), **kw)
    model.update(force=True)
    return model


@pytest.fixture(scope="module")
def fact():
    return _fitted()


def _latent(model, x):
    with torch.no_grad():
        return model.g_a(x)


def test_swap_keeps_compressai_contract(fact):
    eb = fact.entropy_bottleneck
    assert isinstance(eb, EntropyBottleneck) and isinstance(eb, PCEntropyBottleneck)
    assert not hasattr(eb, "matrices")  # the factorized density is gone, the circuit replaces it
    assert fact.update() is False and fact.update(force=True) is True
    aux = fact.aux_loss()
    assert aux.requires_grad and float(aux.detach()) == pytest.approx(0.0, abs=1e-4)
    with torch.no_grad():
        eb.quantiles[:, 0, 0] -= 1.0
    aux = fact.aux_loss()
    assert float(aux.detach()) == pytest.approx(eb.channels, rel=1e-4)
    aux.backward()
    assert (
        eb.quantiles.grad is not None and eb.quantiles.grad[:, 0, 1].abs().sum() == 0
    )  # medians untouched
    fact.update(force=True)
    assert eb.num_symbols >= 3 and (eb._cdf_length > 1).any()  # the test latents are not trivial


def test_swap_keeps_medians_and_rejects_non_bottlenecks():
    torch.manual_seed(0)
    model = FactorizedPrior(N=8, M=12)
    with torch.no_grad():
        model.entropy_bottleneck.quantiles[:, 0, 1] = torch.linspace(-2, 2, 12)
    new = swap_entropy_model(model)
    assert model.entropy_bottleneck is new and torch.equal(
        new._medians(), torch.linspace(-2, 2, 12)
    )
    with pytest.raises(TypeError, match="expected an EntropyBottleneck"):
        swap_entropy_model(model, name="g_a")
    with pytest.raises(RuntimeError, match="not fitted"):
        new(torch.randn(1, 12, 2, 2))
    with pytest.raises(RuntimeError, match="not fitted"):
        new.update()
    with pytest.raises(RuntimeError, match="no coding tables"):
        new.compress(torch.randn(1, 12, 2, 2))


def test_model_round_trip_matches_eval_forward(fact):
    x = _images(2, 48, 80, seed=5)
    x = torch.cat(x)
    with torch.no_grad():
        ref = fact(x)["x_hat"].clamp(0, 1)
        enc = fact.compress(x)
        dec = fact.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert len(enc["strings"][0]) == 2 and all(isinstance(s, bytes) for s in enc["strings"][0])
    assert torch.equal(dec, ref)


def test_symbols_round_trip_exactly_and_rate_matches_model(fact):
    eb = fact.entropy_bottleneck
    y = _latent(fact, torch.cat(_images(3, 64, 96, seed=7)))
    y_hat, lik = eb(y, training=False)
    strings = eb.compress(y)
    out = eb.decompress(strings, y.shape[-2:])
    assert torch.equal(out, y_hat) and torch.equal(eb.symbols(out), eb.symbols(y))
    # the product of the per-channel likelihoods is the position's probability
    logp = eb.log_likelihood(eb.symbols(y))
    assert torch.allclose(lik.log().sum(1), logp, atol=1e-3)
    model_bits = float(-logp.detach().sum() / math.log(2))
    head = header_bytes(tuple(y.shape[-2:]))
    assert head == 13  # magic 2, version 1, fingerprint 4, H and W 1 each, CRC32 4
    coded_bits = 8 * sum(len(s) - head for s in strings)  # minus the headers
    # per string: up to 32 bits of the coder's flush and the 32-bit check of its symbols
    assert model_bits - 1 <= coded_bits <= model_bits * 1.02 + 64 * len(strings)


def test_escapes_round_trip_exactly(fact):
    eb = fact.entropy_bottleneck
    y = _latent(fact, torch.cat(_images(2, 32, 32, seed=3)))
    y[0, 0, 0, 0] = 1e6
    y[0, 1, 1, 0] = -12345.4
    y[1, 2, 0, 1] = 2.0**31 - 100
    y[1, 3, :, :] = -(2.0**30)  # a whole channel escaped
    y[1, 4, 1, 1] = eb._medians()[4] + eb._offset[4] + eb._cdf_length[4]  # just above the alphabet
    y[1, 5, 1, 1] = eb._medians()[5] + eb._offset[5] - 1  # just below
    out = eb.decompress(eb.compress(y), y.shape[-2:])
    assert torch.equal(eb.symbols(out), eb.symbols(y))
    assert torch.equal(out, eb(y, training=False)[0])
    assert float(out[0, 0, 0, 0]) == pytest.approx(1e6, abs=1)
    with pytest.raises(ValueError, match="exceed"):
        eb.compress(torch.full_like(y, 1e12))
    with pytest.raises(ValueError, match="NaN"):
        eb.compress(torch.full_like(y, float("nan")))


def test_single_image_and_1x1_latent(fact):
    eb = fact.entropy_bottleneck
    x = _images(1, 16, 16, seed=9)[0]  # 16x16 image -> 1x1 latent
    with torch.no_grad():
        enc = fact.compress(x)
        assert tuple(enc["shape"]) == (1, 1)
        dec = fact.decompress(enc["strings"], enc["shape"])["x_hat"]
        assert torch.equal(dec, fact(x)["x_hat"].clamp(0, 1))
    y = torch.randn(1, 12, 1, 1) * 5
    assert torch.equal(eb.decompress(eb.compress(y), (1, 1)), eb(y, training=False)[0])
    y = torch.randn(1, 12, 3, 7) * 5  # odd, non-square latent
    assert torch.equal(eb.decompress(eb.compress(y), (3, 7)), eb(y, training=False)[0])
    with pytest.raises(ValueError, match="empty latent"):
        eb.compress(torch.zeros(1, 12, 0, 3))
    with pytest.raises(ValueError, match="shape"):
        eb.compress(torch.zeros(1, 5, 2, 2))


def test_state_dict_round_trip_decodes_bit_exactly(fact):
    x = torch.cat(_images(2, 32, 48, seed=11))
    enc = fact.compress(x)
    sd = fact.state_dict()
    # compact: parameters and a digest of the tables, which loading rebuilds
    assert not any(k.endswith(("_pc_emit", "_pc_trans", "_pc_root")) for k in sd)
    assert sd["entropy_bottleneck._pc_tables_sha256"].numel() == 32
    torch.manual_seed(123)
    fresh = FactorizedPrior(N=8, M=12)
    swap_entropy_model(fresh)
    fresh.load_state_dict(sd)
    fresh.eval()
    assert fresh.update() is False  # the tables were rebuilt while loading
    for name in ("_pc_root", "_pc_trans", "_pc_emit"):
        assert torch.equal(
            getattr(fresh.entropy_bottleneck, name), getattr(fact.entropy_bottleneck, name)
        )
    with torch.no_grad():
        a = fresh.decompress(enc["strings"], enc["shape"])["x_hat"]
        b = fact.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert torch.equal(a, b)
    assert fresh.compress(x)["strings"] == enc["strings"]
    # the loaded circuit is the same model too
    y = _latent(fact, x)
    s = fact.entropy_bottleneck.symbols(y)
    assert torch.equal(
        fresh.entropy_bottleneck.log_likelihood(s), fact.entropy_bottleneck.log_likelihood(s)
    )


def test_bitstream_errors(fact):
    eb = fact.entropy_bottleneck
    y = _latent(fact, torch.cat(_images(1, 64, 64, seed=13)))
    (s,) = eb.compress(y)
    size = y.shape[-2:]
    other = _fitted(seed=1).entropy_bottleneck
    with pytest.raises(BitstreamError, match="another model"):
        other.decompress([s], size)
    with pytest.raises(BitstreamError, match="truncated"):
        eb.decompress([s[:10]], size)
    with pytest.raises(BitstreamError, match="truncated|checksum"):
        eb.decompress([s[:-4]], size)
    with pytest.raises(BitstreamError, match="truncated|checksum"):
        eb.decompress([s[:-1]], size)
    bad = bytearray(s)
    bad[-3] ^= 0x40
    with pytest.raises(BitstreamError, match="corrupted"):
        eb.decompress([bytes(bad)], size)
    with pytest.raises(BitstreamError, match="magic"):
        eb.decompress([b"XXXX" + s[4:]], size)
    with pytest.raises(BitstreamError, match="asked for"):
        eb.decompress([s], (size[0], size[1] + 1))
    with pytest.raises(TypeError, match="bytes"):
        eb.decompress(["abc"], size)
    with pytest.raises(TypeError, match="list"):
        eb.decompress(s, size)
    assert torch.equal(
        eb.decompress([s], size), eb(y, training=False)[0]
    )  # the original still decodes


def test_training_modes_give_gradients_to_the_circuit(fact):
    eb = fact.entropy_bottleneck
    y = _latent(fact, torch.cat(_images(1, 32, 32, seed=2))).requires_grad_(True)
    eb.train()
    try:
        out, lik = eb(y)
        assert not torch.equal(out, eb(y, training=False)[0])  # noise, not rounding
        (-lik.log().sum()).backward()
        assert eb.pc.emission_logits.grad is not None and eb.pc.emission_logits.grad.abs().sum() > 0
        assert y.grad is not None and y.grad.abs().sum() > 0  # the rate trains the latent too
        y.grad = None
        eb.quantization = "ste"
        out, _ = eb(y)
        assert torch.equal(out, eb(y, training=False)[0])
        out.sum().backward()
        assert torch.allclose(y.grad, torch.ones_like(y))  # straight through
    finally:
        eb.quantization = "noise"
        eb.eval()
        eb.zero_grad()
    with pytest.raises(ValueError, match="quantization"):
        PCEntropyBottleneck(4, quantization="round")


@pytest.mark.parametrize("cls", [ScaleHyperprior, MeanScaleHyperprior])
def test_hyperprior_models_round_trip(cls):
    model = _fitted(cls, gain=20.0)
    assert isinstance(model.entropy_bottleneck, PCEntropyBottleneck)
    x = torch.cat(_images(2, 64, 64, seed=4))
    with torch.no_grad():
        ref = model(x)
        enc = model.compress(x)
        dec = model.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert torch.equal(dec, ref["x_hat"].clamp(0, 1))
    assert torch.isfinite(ref["likelihoods"]["z"]).all() and float(model.aux_loss()) < 1e-3
    z = collect_latents(model, [x])
    assert z.shape == (2 * 1 * 1, 8)  # 64x64 image -> 1x1 hyper-latent, N=8 channels


def test_shared_factorized_codec_round_trip_on_kodak_crop():
    import compressai

    from pc_prior.images import load_image

    path = shared_path("models", "bmshj2018-factorized-q1.pt")
    img = shared_path("data", "kodak", "kodim01.png")
    ck = torch.load(path, map_location="cpu")
    net = compressai.zoo.image_models[ck["arch"]](quality=ck["quality"])
    net.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    )
    net.eval()
    x = load_image(img)[:, :, 100:228, 200:328]
    fit_prior(net, [x], num_latents=4, epochs=1, progress=False)
    with torch.no_grad():
        ref = net(x)["x_hat"].clamp(0, 1)
        enc = net.compress(x)
        dec = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert torch.equal(dec, ref)


@pytest.mark.parametrize("leaves", ["categorical", "logistic"])
def test_save_load_codec_and_cli(tmp_path, capsys, leaves):
    import json

    import compressai
    import numpy as np
    from PIL import Image

    from pc_prior.cli import main
    from pc_prior.integrations import load_codec

    torch.manual_seed(0)
    net = compressai.zoo.image_models["bmshj2018-factorized"](quality=1)
    _spread(net, 20.0)
    ck = tmp_path / "codec.pt"
    torch.save(
        {
            "arch": "bmshj2018-factorized",
            "quality": 1,
            "state_dict": {
                k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()
            },
        },
        ck,
    )
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
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
                "--multiple",  # a factorized codec downsamples by 16; the images are 40x56
                "16",
                "--leaves",
                leaves,
                "--finetune-steps",
                "5",
                *(["--context", "none"] if leaves == "logistic" else []),
            ]
        )
        == 0
    )
    capsys.readouterr()
    swapped = load_codec(out)
    assert isinstance(swapped.entropy_bottleneck, PCEntropyBottleneck) and swapped.update() is False
    # the default three-pass context groups categorical leaves; logistic ones code in one pass
    # (asked for: --context none; with a context they are refused, not silently one pass)
    leaf_kind = DiscretizedLogisticTree if leaves == "logistic" else GroupedHCLT
    assert type(swapped.entropy_bottleneck.pc) is leaf_kind
    assert main(["eval", str(out), "--data", str(imgs), "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    rows = rep["per_image"][out.stem]
    assert len(rows) == 2 and all(r["decoded_equals_forward"] for r in rows)
    assert rep["results"]["bpp"][0] > 0
    assert (
        main(
            [
                "prior",
                "fit",
                str(ck),
                "--data",
                str(tmp_path / "none"),
                "-o",
                str(out),
            ]
        )
        == 1
    )
    assert "image folder not found" in capsys.readouterr().err


def test_star_structure_and_fit_argument_errors():
    model = _fitted(structure="star")
    eb = model.entropy_bottleneck
    parent = eb._pc_parent
    hub = int((parent < 0).nonzero())
    assert ((parent == hub) | (parent < 0)).all()  # every channel hangs off the hub
    y = _latent(model, torch.cat(_images(2, 32, 48, seed=21)))
    assert torch.equal(eb.decompress(eb.compress(y), y.shape[-2:]), eb(y, training=False)[0])
    with pytest.raises(ValueError, match="structure"):
        eb.fit(torch.randn(10, 12), structure="dag")
    with pytest.raises(ValueError, match=r"shape \[N, 12\]"):
        eb.fit(torch.randn(10, 5))
    with pytest.raises(ValueError, match="empty"):
        eb.fit(torch.randn(0, 12))
    with pytest.raises(ValueError, match="no images"):
        collect_latents(model, [])


def test_logistic_leaves_round_trip_and_train_the_analysis_transform():

    model = _fitted(leaves="logistic", context=None, finetune_steps=20)
    eb = model.entropy_bottleneck
    assert isinstance(eb.pc, DiscretizedLogisticTree)
    emit = eb.pc.log_emissions().exp()
    assert torch.allclose(emit.sum(-1), torch.ones_like(emit[..., 0]), atol=1e-5)
    x = torch.cat(_images(2, 48, 48, seed=17))
    with torch.no_grad():
        enc = model.compress(x)
        assert torch.equal(
            model.decompress(enc["strings"], enc["shape"])["x_hat"], model(x)["x_hat"].clamp(0, 1)
        )
    # joint fine-tuning: the rate term alone reaches the analysis transform
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    lik = model(x)["likelihoods"]["y"]
    (-lik.log().sum()).backward()
    assert model.g_a[0].weight.grad is not None and model.g_a[0].weight.grad.abs().sum() > 0
    model.eval()
    # state dict round trip rebuilds the logistic circuit
    torch.manual_seed(5)
    fresh = FactorizedPrior(N=8, M=12)
    swap_entropy_model(fresh)
    fresh.load_state_dict(model.state_dict())
    assert isinstance(fresh.entropy_bottleneck.pc, DiscretizedLogisticTree)
    with torch.no_grad():
        assert torch.equal(
            fresh.eval().decompress(enc["strings"], enc["shape"])["x_hat"],
            model.decompress(enc["strings"], enc["shape"])["x_hat"],
        )
    with pytest.raises(ValueError, match="leaves"):
        eb.fit(torch.randn(10, 12), leaves="gaussian")


def test_header_varints_version_and_checksum():
    from pc_prior import framing

    payload = b"\x01\x02\x03\x04"
    fmt = framing.BOTTLENECK
    for size in [(1, 1), (127, 128), (300, 70000)]:
        s = framing.pack(fmt, b"abcdefgh", size, payload)
        assert len(s) == framing.header_bytes(size) + 4
        fields, words = framing.unpack(s, fmt, b"abcdXXXX")
        assert fields == size and words.tolist() == [0x04030201]
        for cut in range(1, len(s)):
            with pytest.raises(BitstreamError, match="truncated"):
                framing.unpack(s[:cut], fmt, b"abcd")
        for byte in range(len(s)):  # every field, the checksum and the payload are under the CRC
            bad = bytearray(s)
            bad[byte] ^= 0x04
            with pytest.raises(BitstreamError):
                framing.unpack(bytes(bad), fmt, b"abcd")
    old = framing.Format(b"PB", 3, 2, "PCEntropyBottleneck")  # before the symbols' check
    with pytest.raises(BitstreamError, match="version 3, this pc-prior reads version 4"):
        framing.unpack(framing.pack(old, b"abcd", (2, 2), payload), fmt, b"abcd")
    with pytest.raises(BitstreamError, match="got a PCConditional bitstream"):
        framing.unpack(framing.pack(framing.CONDITIONAL, b"abcd", (2, 2), payload), fmt, b"abcd")


@pytest.mark.parametrize(
    "tables, key, edit, message",
    [
        (True, "entropy_bottleneck._pc_emit", lambda t: t.neg(), "emit has entries outside"),
        (True, "entropy_bottleneck._pc_parent", lambda t: t[:-1], "trans has shape"),
        (False, "entropy_bottleneck._pc_parent", lambda t: t[:-1], "tree is not valid"),
        (False, "entropy_bottleneck.pc.transition_logits", lambda t: t * 1.5, "SHA-256 mismatch"),
        (False, "entropy_bottleneck._pc_tables_sha256", lambda t: t[:5], "digest"),
        (  # the alphabets no longer fit the stored leaves, or the tables
            False,
            "entropy_bottleneck._cdf_length",
            lambda t: t + 1000,
            "_cdf_length must lie in|live leaf entries",
        ),
        (False, "entropy_bottleneck._offset", lambda t: t[:-1], "alphabets"),
    ],
)
def test_codec_file_with_forged_tables_is_refused(fact, tmp_path, tables, key, edit, message):
    from pc_prior import CheckpointError
    from pc_prior.files import read_file, write_file

    save_codec(
        fact, tmp_path / "c.pt", "FactorizedPrior", 1, tables=tables, net_kwargs={"N": 8, "M": 12}
    )
    content, _ = read_file(tmp_path / "c.pt")
    content["state_dict"][key] = edit(content["state_dict"][key])
    write_file(content, tmp_path / "forged.pt")  # a consistent file (digest recomputed), bad tables
    with pytest.raises(CheckpointError, match=message):
        load_codec(tmp_path / "forged.pt")
    assert torch.equal(
        load_codec(tmp_path / "c.pt").entropy_bottleneck._pc_emit, fact.entropy_bottleneck._pc_emit
    )


def test_codec_file_with_or_without_tables_decodes_the_same(fact, tmp_path):
    """Compact files rebuild the tables; files that store them use them: both decode bit-exactly."""
    x = torch.cat(_images(1, 32, 32, seed=5))
    enc = fact.compress(x)
    kw = {"net_kwargs": {"N": 8, "M": 12}}
    small = save_codec(fact, tmp_path / "small.pt", "FactorizedPrior", 1, **kw)
    full = save_codec(fact, tmp_path / "full.pt", "FactorizedPrior", 1, tables=True, **kw)
    assert small.stat().st_size < full.stat().st_size
    for path in (small, full):
        net = load_codec(path)
        assert net.compress(x)["strings"] == enc["strings"]
        with torch.no_grad():
            assert torch.equal(
                net.decompress(enc["strings"], enc["shape"])["x_hat"],
                fact.decompress(enc["strings"], enc["shape"])["x_hat"],
            )


def test_a_float64_codec_saves_and_reloads_bit_exactly(fact, tmp_path):
    """Tables are rebuilt from the saved parameters in their own dtype (no float32 round trip)."""
    import copy

    net = copy.deepcopy(fact).double()
    net.update(force=True)  # float64 parameters: tables from them
    x = torch.cat(_images(1, 32, 32, seed=6)).double()
    enc = net.compress(x)
    path = save_codec(net, tmp_path / "f64.pt", "FactorizedPrior", 1, net_kwargs={"N": 8, "M": 12})
    back = load_codec(path)
    assert back.entropy_bottleneck.pc.root_logits.dtype == torch.float64
    assert torch.equal(back.entropy_bottleneck._pc_emit, net.entropy_bottleneck._pc_emit)
    assert back.double().compress(x)["strings"] == enc["strings"]


def test_parameters_changed_after_update_save_the_tables_they_code_with(fact, tmp_path):
    """Training after update() leaves the tables stale: the file then stores them, and decodes
    what the model coded; after update() it is compact again."""
    import copy

    net = copy.deepcopy(fact)
    x = torch.cat(_images(1, 32, 32, seed=7))
    with torch.no_grad():
        net.entropy_bottleneck.pc.emission_logits.mul_(1.3)  # a training step, no update()
    enc = net.compress(x)  # still coded with the tables of the last update()
    assert any(k.endswith("_pc_emit") for k in net.state_dict())
    kw = {"net_kwargs": {"N": 8, "M": 12}}
    back = load_codec(save_codec(net, tmp_path / "stale.pt", "FactorizedPrior", 1, **kw))
    assert back.compress(x)["strings"] == enc["strings"]
    assert any(k.endswith("_pc_emit") for k in back.state_dict())  # loaded as stored: kept
    net.update(force=True)
    assert not any(k.endswith("_pc_emit") for k in net.state_dict())


def test_tables_updated_under_inference_mode_code_and_decode():
    """Lightning's ``trainer.validate`` updates the tables under ``torch.inference_mode``, whose
    tensors have no version counter: coding must still work (found running it on an RDModule)."""
    from compressai.models import MeanScaleHyperprior
    from helpers import assert_round_trip, fitted_hyperprior

    model = fitted_hyperprior(MeanScaleHyperprior)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        model.update(force=True)
        assert model.entropy_bottleneck._pc_emit.is_inference()
        assert_round_trip(model, x)
    assert_round_trip(model, x)  # and outside it
