"""fit_prior's images: a folder's images too small for ``multiple`` are skipped (never padded into
the fit), a folder of only such images is refused before the codec is touched, and tensors are
used as given."""

import numpy as np
import pytest
import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.models import FactorizedPrior
from PIL import Image

from pc_prior import InputError
from pc_prior.integrations import PCEntropyBottleneck, fit_prior


def _codec() -> FactorizedPrior:
    torch.manual_seed(0)
    model = FactorizedPrior(N=8, M=12).eval()
    with torch.no_grad():  # multi-symbol latents from a random-init model
        model.g_a[-1].weight.mul_(40.0)
        model.g_a[-1].bias.mul_(40.0)
    return model


def _png(path, h, w, seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _seen(model):
    """The shapes of the images the codec is run on, in order."""
    shapes: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    return shapes


def test_fit_prior_skips_folder_images_smaller_than_the_multiple(tmp_path):
    _png(tmp_path / "big.png", 70, 130, seed=1)
    _png(tmp_path / "tiny.png", 10, 10, seed=2)  # padded to 64x64 it would be 98% padding
    model = _codec()
    seen = _seen(model)
    with pytest.warns(
        UserWarning, match=r"skipped 1 image smaller than 64x64 .*tiny.png \(10x10\)"
    ):
        fit_prior(model, tmp_path, num_latents=2, epochs=1, progress=False)
    assert seen == [(1, 3, 64, 128)]  # the big image, cropped; the tiny one never reaches the codec
    assert isinstance(model.entropy_bottleneck, PCEntropyBottleneck)


def test_fit_prior_refuses_a_folder_of_only_small_images_before_touching_the_codec(tmp_path):
    _png(tmp_path / "a.png", 10, 10)
    _png(tmp_path / "b.png", 63, 300)
    model = _codec()
    model.g_s[0].weight.requires_grad_(False)
    with pytest.raises(InputError, match=r"all 2 images in .* are smaller than 64x64 .*a.png"):
        fit_prior(model, tmp_path, num_latents=2, epochs=1, progress=False)
    assert type(model.entropy_bottleneck) is EntropyBottleneck  # not swapped
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["g_s.0.weight"]
    # a smaller multiple (a factorized codec needs 16) takes them
    seen = _seen(model)
    fit_prior(model, tmp_path, multiple=8, num_latents=2, epochs=1, progress=False)
    assert seen == [(1, 3, 8, 8), (1, 3, 56, 296)]


def test_fit_prior_uses_tensors_as_given(tmp_path):
    model = _codec()
    seen = _seen(model)
    x = torch.rand(1, 3, 32, 48)  # smaller than multiple=64: neither padded nor refused
    fit_prior(model, [x], num_latents=2, epochs=1, progress=False)
    assert seen == [(1, 3, 32, 48)]
