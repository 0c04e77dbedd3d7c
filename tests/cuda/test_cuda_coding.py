"""Cross-device determinism on CUDA: fit on the GPU, encode on the GPU and decode on the CPU, and the
reverse, for every coded format; the same tables, symbols and stream bits on both sides.

What is asserted is what docs/guide/coding-and-determinism.md claims exact across devices: the
integer coding tables (computed from the same parameters, on either device: the same bits), so the
same symbols (and their scale indexes) give the same bytes on either device, a stream decodes to the
encoder's symbols anywhere, and a model saved on the GPU codes the same after loading on the CPU. A
hyperprior's scale indexes come from the hyper-decoder's float output and are not claimed equal
across devices: the conditional's check decodes ``y`` with the encoder's indexes. Marked ``cuda``:
skipped without a GPU; ``PC_PRIOR_TEST_DEVICE=cpu`` runs them with the CPU on both sides
(tests/conftest.py).
"""

import copy

import pytest
import torch
from compressai.models import FactorizedPrior
from helpers import fitted_hyperprior, gc_inputs, random_images, structured_digits, tiny_codec

from pc_prior import HCLT, decode, encode, fit_em, load, save
from pc_prior.coding import coding_tables
from pc_prior.integrations import (
    PCConditional,
    PCEntropyBottleneck,
    fit_prior,
    load_codec,
    save_codec,
)

pytestmark = pytest.mark.cuda
CPU = torch.device("cpu")
BOTH_WAYS = (("device", "cpu"), ("cpu", "device"))
#: An entropy model's integer coding tables and their digest (pc_prior.integrations.base).
TABLE_BUFFERS = ("_pc_root", "_pc_trans", "_pc_emit", "_pc_tables_sha256")


def on_both(model: torch.nn.Module, device: torch.device) -> dict[str, torch.nn.Module]:
    """``model`` (on ``device``) and a copy of it on the CPU, keyed ``"device"`` and ``"cpu"``."""
    return {"device": model, "cpu": copy.deepcopy(model).to(CPU)}


def where(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def rebuilt_on_cpu(net: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of the codec ``net`` whose coding tables are computed again, on the CPU, from
    the same parameters (``update(force=True)``)."""
    cpu = copy.deepcopy(net).to(CPU)
    cpu.update(force=True)
    return cpu


def assert_same_tables(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """The PC entropy models ``a`` and ``b`` hold the same integer tables, bit for bit."""
    assert a._pc_root.numel() > 0
    for name in TABLE_BUFFERS:
        assert torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()), name


def test_lossless_hclt_fit_on_the_device_codes_the_same_bits(device, tmp_path):
    x_train = torch.from_numpy(structured_digits(512, 0)).reshape(512, -1).long()
    x = torch.from_numpy(structured_digits(64, 1)).reshape(64, -1).long()
    pc = HCLT.from_data(x_train, 256, 4, max_samples=512).to(device)
    fit_em(pc, x_train, epochs=1, full_batch_epochs=0, batch_size=128, progress=False)
    assert pc.root_logits.device.type == device.type
    pcs = on_both(pc, device)
    rebuilt = copy.deepcopy(pcs["cpu"])
    on_device, on_cpu = coding_tables(pc), coding_tables(rebuilt, refresh=True)
    for field in ("root", "trans", "emit"):  # computed on the device and again on the CPU
        assert torch.equal(getattr(on_device, field).cpu(), getattr(on_cpu, field)), field
    assert on_device.digest == on_cpu.digest
    streams = {side: encode(p, x.to(where(p))) for side, p in pcs.items()}
    assert streams["device"] == streams["cpu"] == encode(rebuilt, x)
    for enc, dec in BOTH_WAYS:
        assert torch.equal(decode(pcs[dec], streams[enc]).cpu(), x)
    save(pc, tmp_path / "hclt.pt")  # saved from the device, loaded on the CPU: the same stream
    assert encode(load(tmp_path / "hclt.pt", map_location="cpu"), x) == streams["device"]


def test_factorized_codec_with_a_pc_bottleneck_crosses_devices(device, tmp_path):
    net = tiny_codec(FactorizedPrior, seed=1, gain=40.0).to(device)
    fit_prior(net, random_images(3), num_latents=3, epochs=1, max_items=2000, progress=False)
    net.update(force=True)  # the tables computed on the device
    assert isinstance(net.entropy_bottleneck, PCEntropyBottleneck)
    assert_same_tables(net.entropy_bottleneck, rebuilt_on_cpu(net).entropy_bottleneck)
    nets = on_both(net, device)
    x = torch.cat(random_images(2, seed=5))
    with torch.no_grad():
        y = nets["cpu"].g_a(x)  # one latent, coded on both devices: the same bytes
        same = [n.entropy_bottleneck.compress(y.to(where(n))) for n in nets.values()]
        assert same[0] == same[1]
        for enc, dec in BOTH_WAYS:
            e, d = nets[enc], nets[dec]
            out = e.compress(x.to(where(e)))
            y_e = e.g_a(x.to(where(e)))
            med = e.entropy_bottleneck._medians().view(1, -1, 1, 1)
            want = (torch.round(y_e - med) + med).cpu()  # what the encoder coded
            got = d.entropy_bottleneck.decompress(out["strings"][0], out["shape"])
            assert torch.equal(got.cpu(), want)
            x_hat = d.decompress(out["strings"], out["shape"])["x_hat"]
            assert x_hat.shape == x.shape and x_hat.device == where(d)
        # the codec file written from the device decodes the device's strings on the CPU
        path = save_codec(
            net, tmp_path / "pc.pt", "FactorizedPrior", 1, net_kwargs={"N": 8, "M": 12}
        )
        loaded = load_codec(path, map_location="cpu")
        out = net.compress(x.to(device))
        got = loaded.entropy_bottleneck.decompress(out["strings"][0], out["shape"])
        want = net.entropy_bottleneck.decompress(out["strings"][0], out["shape"])
        assert torch.equal(got, want.cpu())


def test_hyperprior_codec_with_pc_models_crosses_devices(device):
    net = fitted_hyperprior(seed=2, device=device)  # fit and tables on the device
    assert isinstance(net.gaussian_conditional, PCConditional)
    assert where(net).type == device.type
    rebuilt = rebuilt_on_cpu(net)
    for name in ("entropy_bottleneck", "gaussian_conditional"):
        assert_same_tables(getattr(net, name), getattr(rebuilt, name))
    nets = on_both(net, device)
    x = torch.cat(random_images(2, seed=5))
    with torch.no_grad():
        for enc, dec in BOTH_WAYS:
            e, d = nets[enc], nets[dec]
            xe = x.to(where(e))
            out = e.compress(xe)
            y_strings, z_strings = out["strings"]
            z_e = e.entropy_bottleneck.decompress(z_strings, out["shape"])
            z_d = d.entropy_bottleneck.decompress(z_strings, out["shape"])
            assert torch.equal(z_d.cpu(), z_e.cpu())
            y, _scales, means, idx = gc_inputs(e, xe)  # the encoder's latent and scale indexes
            want = e.gaussian_conditional.quantize(y, "dequantize", means).cpu()
            got = d.gaussian_conditional.decompress(y_strings, idx.to(where(d)))
            assert torch.equal(got.cpu(), want)
        # the same latent and indexes (the CPU's) coded on both devices: the same bytes
        y, _scales, _means, idx = gc_inputs(nets["cpu"], x)
        z = nets["cpu"].h_a(y.abs())
        coded = [
            (
                n.gaussian_conditional.compress(y.to(where(n)), idx.to(where(n))),
                n.entropy_bottleneck.compress(z.to(where(n))),
            )
            for n in nets.values()
        ]
        assert coded[0] == coded[1]
