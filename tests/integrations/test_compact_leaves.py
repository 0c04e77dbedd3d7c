"""A fitted bottleneck's categorical leaves end the fit on the grid they are stored on (one byte per
live entry in a codec file), so the model that codes is the one the file holds: a reload decodes
bit for bit, and a forged or truncated level vector is refused naming it."""

import pytest
import torch
from compressai.models import FactorizedPrior
from helpers import random_images

from pc_prior import CheckpointError
from pc_prior.files import read_file, write_file
from pc_prior.integrations import PCEntropyBottleneck, fit_prior, load_codec, save_codec
from pc_prior.integrations.bottleneck_state import LEAF_LEVELS, LEAF_STEP, LEVELS_KEY

KEY = "entropy_bottleneck." + LEVELS_KEY
KW = {"N": 8, "M": 12}


def _maps(n: int, c: int = 5, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.3, 6.0, c).view(1, c, 1, 1)
    return [torch.randn(1, c, 10, 12, generator=g) * scale for _ in range(n)]


def _dead(eb: PCEntropyBottleneck, shape: torch.Size) -> torch.Tensor:
    v = shape[-1]
    pos = torch.arange(v)
    dead = (pos >= eb._cdf_length.long()[:, None]) & (pos < v - 1)
    return dead.view(len(dead), *([1] * (len(shape) - 2)), v).expand(shape)


@pytest.mark.parametrize("context", [None, "three-pass"])
def test_a_fit_ends_with_leaves_on_the_stored_grid(context):
    eb = PCEntropyBottleneck(5)
    eb.fit(_maps(4), num_latents=3, context=context, epochs=1, full_batch_epochs=1, progress=False)
    logits = eb.pc.emission_logits.detach().double()
    level = -logits / LEAF_STEP
    assert torch.equal(level, level.round())
    assert float(level.min()) >= 0 and float(level.max()) <= LEAF_LEVELS - 1
    dead = _dead(eb, logits.shape)
    assert dead.any() and bool((level[dead] == LEAF_LEVELS - 1).all())  # never coded: the floor
    assert bool((level[~dead] < LEAF_LEVELS - 1).any())


@pytest.fixture(scope="module")
def codec_file(tmp_path_factory):
    net = FactorizedPrior(N=8, M=12).eval()
    with torch.no_grad():  # multi-symbol latents from a random-init model
        net.g_a[-1].weight.mul_(40.0)
    fit_prior(net, random_images(3), num_latents=3, epochs=1, progress=False)
    net.update(force=True)
    x = random_images(1, seed=5)[0]
    with torch.no_grad():
        enc = net.compress(x)
        ref = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    path = save_codec(
        net, tmp_path_factory.mktemp("c") / "codec.pt", "FactorizedPrior", 1, net_kwargs=KW
    )
    return path, net, x, enc, ref


def test_codec_files_store_one_byte_per_live_leaf_entry_and_decode_exactly(codec_file):
    path, net, x, enc, ref = codec_file
    content, digested = read_file(path)
    sd = content["state_dict"]
    assert digested and "entropy_bottleneck.pc.emission_logits" not in sd
    logits = net.entropy_bottleneck.pc.emission_logits
    live = ~_dead(net.entropy_bottleneck, logits.shape)
    assert sd[KEY].dtype == torch.uint8 and len(sd[KEY]) == int(live.sum()) < logits.numel()
    back = load_codec(path)
    assert torch.equal(back.entropy_bottleneck.pc.emission_logits, logits)
    with torch.no_grad():
        assert torch.equal(back.decompress(enc["strings"], enc["shape"])["x_hat"], ref)
        assert back.compress(x)["strings"] == enc["strings"]


def test_leaves_trained_off_the_grid_are_stored_as_they_are(codec_file, tmp_path):
    path0, _, x, _, _ = codec_file
    net = load_codec(path0)
    with torch.no_grad():
        net.entropy_bottleneck.pc.emission_logits.add_(0.01)  # as training after the fit would
    net.update(force=True)
    path = save_codec(net, tmp_path / "trained.pt", "FactorizedPrior", 1, net_kwargs=KW)
    sd = read_file(path)[0]["state_dict"]
    assert KEY not in sd and "entropy_bottleneck.pc.emission_logits" in sd
    back = load_codec(path)
    with torch.no_grad():
        assert back.compress(x)["strings"] == net.compress(x)["strings"]


@pytest.mark.parametrize(
    "forge, match",
    [
        (lambda sd: sd.__setitem__(KEY, sd[KEY][:-1]), "levels, the circuit's live"),
        (lambda sd: sd.__setitem__(KEY, torch.cat([sd[KEY], sd[KEY][:1]])), "live leaf entries"),
        (lambda sd: sd.__setitem__(KEY, sd[KEY].long()), "uint8"),
        (lambda sd: sd.__setitem__(KEY, sd[KEY][None]), "uint8"),
        (
            lambda sd: sd.__setitem__(
                "entropy_bottleneck.pc.emission_logits", torch.zeros(3, dtype=torch.float16)
            ),
            "in place of",
        ),
        (lambda sd: sd.pop("entropy_bottleneck._cdf_length"), "_cdf_length"),
    ],
)
def test_forged_leaf_levels_are_refused_naming_them(codec_file, tmp_path, forge, match):
    content, _ = read_file(codec_file[0])
    forge(content["state_dict"])
    with pytest.raises(CheckpointError, match=match):
        load_codec(write_file(content, tmp_path / "forged.pt"))


def test_a_codec_files_state_dict_loads_as_it_is(codec_file):
    """torch.load + load_state_dict (as CompressAI's tools and user scripts do) unpack the leaves."""
    from pc_prior.integrations import swap_entropy_model

    path, _, _, enc, ref = codec_file
    state = torch.load(path, weights_only=True)["state_dict"]
    assert KEY in state
    other = FactorizedPrior(**KW).eval()
    swap_entropy_model(other)
    other.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    with torch.no_grad():
        assert torch.equal(other.decompress(enc["strings"], enc["shape"])["x_hat"], ref)
