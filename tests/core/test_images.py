"""pc_prior.images: CompressAI's extension list and padding, image reading, PSNR and MS-SSIM."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pc_prior.errors import InputError
from pc_prior.images import (
    IMG_EXTENSIONS,
    FolderImages,
    compute_metrics,
    crop_padding,
    crop_to_multiple,
    list_images,
    load_image,
    ms_ssim,
    pad_to_multiple,
    psnr,
)


def _png(path, h=20, w=30, seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")
    return arr


def test_extension_list_is_compressai_s():
    from compressai.utils.eval_model.__main__ import IMG_EXTENSIONS as COMPRESSAI

    assert set(IMG_EXTENSIONS) == set(COMPRESSAI)


def test_list_images_any_case_sorted_and_recursion(tmp_path):
    _png(tmp_path / "b.png")
    _png(tmp_path / "A.PNG")
    _png(tmp_path / "c.JPeG")  # PIL writes PNG bytes; the name is what is listed
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "dir.png").mkdir()  # a folder named like an image is no image
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "d.webp")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["A.PNG", "b.png", "c.JPeG", "sub/d.webp"]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["A.PNG", "b.png", "c.JPeG"]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_images(tmp_path / "missing")
    with pytest.raises(InputError, match="got a file"):
        list_images(tmp_path / "b.png")
    only_below = tmp_path / "only_below"
    (only_below / "deeper").mkdir(parents=True)
    _png(only_below / "deeper" / "y.png")
    assert [p.name for p in list_images(only_below)] == ["y.png"]
    with pytest.raises(
        InputError, match=r"no images \(.jpg.*\) found in .*subfolders not searched"
    ):
        list_images(only_below, recursive=False)


def test_load_image_is_float_rgb_in_unit_range(tmp_path):
    arr = _png(tmp_path / "a.png", 17, 23)
    x = load_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 17, 23) and x.dtype == torch.float32
    assert np.array_equal((x * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy(), arr)
    Image.fromarray(arr[..., 0]).save(tmp_path / "grey.png")  # one channel: read as RGB
    g = load_image(tmp_path / "grey.png")
    assert g.shape == (1, 3, 17, 23) and torch.equal(g[:, 0], g[:, 2])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read .*bad.png as an image"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize(("h", "w"), [(150, 170), (64, 64), (1, 129), (65, 63)])
def test_padding_is_centred_as_compressai_and_crop_undoes_it(h, w):
    from compressai.ops import compute_padding

    x = torch.rand(2, 3, h, w)
    xp = pad_to_multiple(x, 64)
    pad, unpad = compute_padding(h, w, min_div=64)
    assert torch.equal(xp, F.pad(x, pad))  # CompressAI's eval_model padding, exactly
    assert xp.shape[-2] % 64 == 0 and xp.shape[-1] % 64 == 0
    assert torch.equal(crop_padding(xp, (h, w)), x)
    assert torch.equal(crop_padding(xp, (h, w)), F.pad(xp, unpad))
    if (h, w) == (150, 170):  # 42 rows / 22 columns added, split evenly: not all at the bottom
        assert (xp[..., :21, :] == 0).all() and (xp[..., -21:, :] == 0).all()
        assert (xp[..., :, :11] == 0).all() and (xp[..., :, -11:] == 0).all()
    with pytest.raises(InputError, match="cannot crop"):
        crop_padding(x, (h + 1, w))


def test_crop_to_multiple_keeps_the_top_left_and_pads_small_images():
    x = torch.rand(1, 3, 100, 150)
    c = crop_to_multiple(x, 32)
    assert torch.equal(c, x[..., :96, :128])
    small = torch.rand(1, 3, 20, 100)
    assert torch.equal(crop_to_multiple(small, 32), pad_to_multiple(small, 32))
    with pytest.raises(InputError, match="multiple must be an integer >= 1"):
        crop_to_multiple(x, 0)


def test_folder_images_reads_lazily_in_list_order_cropped(tmp_path, monkeypatch):
    a = _png(tmp_path / "a.png", 70, 140, seed=1)
    _png(
        tmp_path / "b.png", 40, 50, seed=2
    )  # smaller than the multiple: padded, as crop_to_multiple does
    _png(tmp_path / "c.png", 64, 64, seed=3)
    reads = []
    real = load_image
    monkeypatch.setattr("pc_prior.images.load_image", lambda p: reads.append(p.name) or real(p))
    folder = FolderImages(tmp_path, 32, max_images=2)
    assert len(folder) == 2 and reads == []  # sized without reading a file
    got = list(folder)
    assert reads == ["a.png", "b.png"]
    assert got[0].shape == (1, 3, 64, 128)
    ref = torch.from_numpy(a[:64, :128]).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(got[0], ref)
    assert torch.equal(got[1], crop_to_multiple(real(tmp_path / "b.png"), 32))
    assert torch.equal(folder[-1], got[1]) and torch.equal(folder[np.int64(0)], got[0])
    assert len(FolderImages(tmp_path)) == 3  # max_images=None: all
    with pytest.raises(InputError, match="max_images must be an integer >= 1"):
        FolderImages(tmp_path, 32, max_images=0)
    with pytest.raises(InputError, match="multiple must be an integer >= 1"):
        FolderImages(tmp_path, 0)
    with pytest.raises(InputError, match="int index"):
        folder[0:1]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        FolderImages(tmp_path / "missing")


def test_psnr_by_hand_and_of_identical_images():
    a = torch.tensor([[0.0, 0.5], [1.0, 0.25]], dtype=torch.float64)
    b = torch.tensor([[0.1, 0.5], [0.8, 0.25]], dtype=torch.float64)
    mse = (0.1**2 + 0.2**2) / 4
    assert float(psnr(a, b)) == pytest.approx(10 * math.log10(1 / mse), abs=1e-9)
    assert float(psnr(a.float(), b.float())) == pytest.approx(10 * math.log10(1 / mse), abs=1e-5)
    assert float(psnr(a * 255, b * 255, 255)) == pytest.approx(10 * math.log10(1 / mse), abs=1e-4)
    assert psnr(a, a).dtype == torch.float64 and math.isinf(float(psnr(a, a)))
    with pytest.raises(InputError, match="one shape"):
        psnr(a, b[:1])


def test_ms_ssim_sanity():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 192, 200, generator=g)
    assert float(ms_ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    slight = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert 1.0 > float(ms_ssim(x, slight)) > float(ms_ssim(x, noisy)) > 0.0
    y = slight.clone().requires_grad_(True)
    ms_ssim(x, y).backward()  # usable as a training loss
    assert y.grad is not None and torch.isfinite(y.grad).all()
    with pytest.raises(InputError, match="at least 161 pixels"):
        ms_ssim(x[..., :160, :], x[..., :160, :])


def test_compute_metrics_rounds_to_8_bits_and_nan_for_small_images():
    x = torch.rand(1, 3, 170, 180)
    tiny = x + 0.4 / 255  # rounds back to the same 8-bit values almost everywhere
    m = compute_metrics(x, tiny)
    ref = (x * 255).round()
    assert m["psnr-rgb"] == pytest.approx(float(psnr(ref, (tiny * 255).clamp(0, 255).round(), 255)))
    assert 0.99 < m["ms-ssim-rgb"] <= 1.0
    assert math.isnan(compute_metrics(x[..., :100, :], x[..., :100, :])["ms-ssim-rgb"])
