"""fit_prior on large image sources: a DataLoader is streamed once and a uniform sample of at most
``max_images`` images is kept (bounded memory), a large folder or sequence is sampled the same way,
and a source no larger than ``max_images`` fits exactly as before."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from compressai.models import MeanScaleHyperprior
from helpers import make_pngs, random_images, tiny_codec
from torch.utils.data import DataLoader

from pc_prior import InputError
from pc_prior.images import FolderImages
from pc_prior.integrations import PCConditional, PCEntropyBottleneck, collect_latents, fit_prior

FAST = {"num_latents": 2, "epochs": 1, "full_batch_epochs": 1, "group_epochs": 1}


def captured_maps(monkeypatch) -> list:
    """Replace the bottleneck's fit by one that records the latent maps it is given."""
    got: list = []

    def fake_fit(self, values, settings=None, *, progress=True, **fields):
        got.append(values)
        return []

    monkeypatch.setattr(PCEntropyBottleneck, "fit", fake_fit)
    return got


def test_a_dataloader_fits_as_the_list_of_its_images():
    images = random_images(6)
    a, b = tiny_codec(), tiny_codec()
    fit_prior(a, images, progress=False, **FAST)
    loader = DataLoader(torch.cat(images), batch_size=1)  # streamed (batched convolutions
    # would round differently: the latents, not the stream, would differ)
    fit_prior(b, loader, progress=False, **FAST)
    for (name, p), q in zip(a.entropy_bottleneck.state_dict().items(),
                            b.entropy_bottleneck.state_dict().values()):  # fmt: skip
        assert torch.equal(p, q), name


def test_a_stream_keeps_a_uniform_sample_of_max_images(monkeypatch):
    images = random_images(7)
    net = tiny_codec()
    latents = [collect_latents(net, [x]) for x in images]  # each image's rows
    got = captured_maps(monkeypatch)
    chosen: Counter[int] = Counter()
    for seed in range(60):
        model = tiny_codec()
        stream = (torch.cat(images[i : i + 3]) for i in range(0, 7, 3))  # a generator: unsized
        fit_prior(model, stream, max_images=3, seed=seed, progress=False, **FAST)
        maps = got.pop()
        assert len(maps) == 3 and all(m.shape[0] == 1 for m in maps)  # 3 images kept, one by one
        for m in maps:
            rows = m.permute(0, 2, 3, 1).reshape(-1, m.shape[1])
            # batched convolutions round differently from single ones: nearest image
            (hit,) = [i for i, r in enumerate(latents) if torch.allclose(r, rows, atol=1e-3)]
            chosen[hit] += 1
    # each image is kept with probability 3/7 (60 draws: 25.7 expected; 4.5 sigma is ±17)
    assert set(chosen) == set(range(7)) and all(9 <= c <= 43 for c in chosen.values())


def test_a_large_folder_or_sequence_is_sampled_uniformly(tmp_path, monkeypatch):
    make_pngs(tmp_path / "f", 6)
    assert [p.name for p in FolderImages(tmp_path / "f", 32, 2).files] == ["img00.png", "img01.png"]
    picks = {tuple(p.name for p in FolderImages(tmp_path / "f", 32, 2, seed=s).files)
             for s in range(20)}  # fmt: skip
    assert len(picks) > 3 and all(list(p) == sorted(p) for p in picks)
    assert len(FolderImages(tmp_path / "f", 32, 6, seed=0).files) == 6  # no larger than: all
    got = captured_maps(monkeypatch)
    fit_prior(tiny_codec(), tmp_path / "f", max_images=2, progress=False, **FAST)
    assert len(got.pop()) == 2
    fit_prior(tiny_codec(), random_images(5), max_images=4, progress=False, **FAST)
    assert len(got.pop()) == 4


def test_a_stream_fits_both_entropy_models_of_a_hyperprior():
    model = tiny_codec(MeanScaleHyperprior)
    loader = DataLoader(torch.cat(random_images(5)), batch_size=2)
    fit_prior(
        model,
        loader,
        name=("entropy_bottleneck", "gaussian_conditional"),
        conditional=PCConditional.check_settings(num_latents=2, steps=10),
        max_images=3,
        progress=False,
        **FAST,
    )
    assert model.entropy_bottleneck.fitted and model.gaussian_conditional.fitted


def test_bad_streams_are_clear_errors():
    with pytest.raises(InputError, match="images is empty"):
        fit_prior(tiny_codec(), iter([]), progress=False, **FAST)
    with pytest.raises(InputError, match="images batch 1"):
        fit_prior(tiny_codec(), iter([torch.rand(1, 3, 64, 64), torch.rand(3, 64, 64)]),
                  progress=False, **FAST)  # fmt: skip
