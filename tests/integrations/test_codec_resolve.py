"""pc_prior.integrations.resolve_codec: one resolver for codec files, plain state dicts and zoo names."""

import urllib.error

import pytest
import torch
from compressai.models import FactorizedPrior

from pc_prior.errors import CheckpointError, InputError, ModelLoadError
from pc_prior.integrations import (
    PCEntropyBottleneck,
    fit_prior,
    resolve_codec,
    save_codec,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = FactorizedPrior(N=8, M=12)
    net.update(force=True)
    return net.eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_codec_file_names_its_own_arch(tiny, tmp_path):
    path = save_codec(
        tiny, tmp_path / "c.pt", "FactorizedPrior", 2, net_kwargs={"N": 8, "M": 12}, lmbda=0.01
    )
    rc = resolve_codec(path, arch="bmshj2018-hyperprior")  # a file naming its arch keeps it
    assert (rc.name, rc.arch, rc.quality, rc.source) == ("c", "FactorizedPrior", 2, str(path))
    assert rc.info["lmbda"] == 0.01 and rc.info["pc_modules"] == []
    assert not rc.net.training and _same_weights(rc.net, tiny)


def test_pc_codec_file_comes_back_with_its_circuit(tmp_path):
    torch.manual_seed(1)
    net = FactorizedPrior(N=8, M=12).eval()
    x = torch.rand(1, 3, 64, 64)
    fit_prior(net, [x], num_latents=2, epochs=1, full_batch_epochs=0, progress=False)
    net.update(force=True)
    path = save_codec(net, tmp_path / "pc.pt", "FactorizedPrior", 1, net_kwargs={"N": 8, "M": 12})
    rc = resolve_codec(str(path))
    assert isinstance(rc.net.entropy_bottleneck, PCEntropyBottleneck)
    assert rc.info["pc_modules"] == ["entropy_bottleneck"]
    with pytest.raises(InputError, match=r"already has a PC entropy model \(entropy_bottleneck\)"):
        resolve_codec(path, base_only=True)  # what the demo asks for: a base codec
    with torch.no_grad():
        enc = net.compress(x)
        assert enc["strings"] == rc.net.compress(x)["strings"]
        assert torch.equal(
            rc.net.decompress(enc["strings"], enc["shape"])["x_hat"],
            net.decompress(enc["strings"], enc["shape"])["x_hat"],
        )


@pytest.mark.parametrize("layout", ["plain", "state_dict", "network"])
def test_state_dict_needs_an_arch_and_loads_with_it(tiny, tmp_path, layout):
    sd = tiny.state_dict()
    obj = sd if layout == "plain" else {"epoch": 3, layout: sd}
    path = tmp_path / f"{layout}.pth"
    torch.save(obj, path)
    with pytest.raises(ModelLoadError, match="does not name its architecture.*--arch"):
        resolve_codec(path)
    with pytest.raises(ModelLoadError, match="unknown architecture 'nope'"):
        resolve_codec(path, arch="nope")
    rc = resolve_codec(path, arch="bmshj2018-factorized")
    assert (rc.arch, rc.quality, rc.name) == ("bmshj2018-factorized", None, layout)
    assert _same_weights(rc.net, tiny) and not rc.net.training
    with pytest.raises(ModelLoadError, match="does not fit architecture bmshj2018-hyperprior"):
        resolve_codec(path, arch="bmshj2018-hyperprior")


def test_files_that_are_no_codec(tmp_path):
    torch.save({"format": "pc-prior/hclt", "x": torch.zeros(1)}, tmp_path / "h.pt")
    with pytest.raises(ModelLoadError, match="HCLT .*lossless"):
        resolve_codec(tmp_path / "h.pt")
    torch.save({"a": 1}, tmp_path / "x.pt")
    with pytest.raises(ModelLoadError, match="neither a codec file .* nor a state dict"):
        resolve_codec(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        resolve_codec(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        resolve_codec(tmp_path / "missing.pt")
    with pytest.raises(ModelLoadError, match="is a directory"):
        resolve_codec(tmp_path)
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-codec:q3'"):
        resolve_codec("no-such-codec:q3")


def test_zoo_spec_offline_names_the_local_file_alternative(monkeypatch):
    import compressai.zoo.image as zoo_image

    seen = []

    def offline(url, *args, **kwargs):  # the zoo's only way out to the network
        seen.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(zoo_image, "load_state_dict_from_url", offline)
    with pytest.raises(ModelLoadError) as e:
        resolve_codec("bmshj2018-factorized:q2")
    msg = str(e.value)
    assert "could not get pretrained weights for bmshj2018-factorized:q2 (metric mse)" in msg
    assert "network access; offline, pass a local checkpoint file" in msg
    assert "bmshj2018-factorized-q2.pt" in msg
    assert len(seen) == 1  # it did try the zoo, through the patched function only
    with pytest.raises(ModelLoadError, match="bmshj2018-factorized:9"):
        resolve_codec("bmshj2018-factorized:9")  # no such quality: refused before any download
    assert len(seen) == 1
