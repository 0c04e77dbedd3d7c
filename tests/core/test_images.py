"""pc_prior.images: CompressAI's extension list and padding, image reading, PSNR and MS-SSIM."""

import math
import warnings

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
    _png(tmp_path / "b.png", 40, 50, seed=2)  # cropped to 32x32
    _png(tmp_path / "c.png", 64, 64, seed=3)
    reads = []
    real = load_image
    monkeypatch.setattr("pc_prior.images.load_image", lambda p: reads.append(p.name) or real(p))
    folder = FolderImages(tmp_path, 32, max_images=2)
    assert len(folder) == 2 and reads == []  # sized from the headers, no image loaded
    got = list(folder)
    assert reads == ["a.png", "b.png"]
    assert got[0].shape == (1, 3, 64, 128)
    ref = torch.from_numpy(a[:64, :128]).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(got[0], ref)
    assert torch.equal(got[1], crop_to_multiple(real(tmp_path / "b.png"), 32))
    assert torch.equal(folder[-1], got[1]) and torch.equal(folder[np.int64(0)], got[0])
    assert len(FolderImages(tmp_path, 32)) == 3  # max_images=None: all
    with pytest.raises(InputError, match="max_images must be an integer >= 1"):
        FolderImages(tmp_path, 32, max_images=0)
    with pytest.raises(InputError, match="multiple must be an integer >= 1"):
        FolderImages(tmp_path, 0)
    with pytest.raises(InputError, match="int index"):
        folder[0:1]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        FolderImages(tmp_path / "missing")


def test_folder_images_skip_images_smaller_than_the_multiple_with_a_warning(tmp_path, monkeypatch):
    big = _png(tmp_path / "a.png", 70, 140, seed=1)
    _png(tmp_path / "b.png", 10, 10, seed=2)  # a fit would see ~98% padding: skipped
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "c.png", 63, 200, seed=3)  # one side short: skipped
    _png(tmp_path / "d.png", 64, 64, seed=4)
    reads = []
    real = load_image
    monkeypatch.setattr("pc_prior.images.load_image", lambda p: reads.append(p.name) or real(p))
    with pytest.warns(
        UserWarning,
        match=r"skipped 2 images smaller than 64x64 .*b.png \(10x10\), sub/c.png \(63x200\)",
    ):
        folder = FolderImages(tmp_path, 64)
    assert reads == []  # sizes come from the headers
    assert [p.name for p in folder.files] == ["a.png", "d.png"]
    assert [p.name for p in folder.skipped] == ["b.png", "c.png"]
    got = list(folder)
    assert [tuple(x.shape) for x in got] == [(1, 3, 64, 128), (1, 3, 64, 64)]  # no padding
    assert torch.equal(got[0], torch.from_numpy(big[:64, :128]).permute(2, 0, 1)[None] / 255)
    # max_images counts the images used (the first two large enough); the rest are not opened
    with pytest.warns(
        UserWarning, match=r"skipped 1 image smaller than 64x64 .*: b.png \(10x10\)$"
    ):
        assert [p.name for p in FolderImages(tmp_path, 64, max_images=2).files] == [
            "a.png",
            "d.png",
        ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [p.name for p in FolderImages(tmp_path, 64, max_images=1).files] == ["a.png"]
    only_small = tmp_path / "small"
    only_small.mkdir()
    _png(only_small / "x.png", 10, 10)
    _png(only_small / "y.png", 64, 12)
    with pytest.raises(
        InputError, match=r"all 2 images in .*small are smaller than 64x64 \(x.png \(10x10\), y.png"
    ):
        FolderImages(only_small, 64)
    assert len(FolderImages(only_small, 8)) == 2  # large enough for a smaller multiple
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read .*bad.png as an image"):
        FolderImages(tmp_path, 64)


# Image modes: each file is written with PIL (or by hand, for 16-bit colour PNGs, which PIL does
# not write) and must load as the 8-bit RGB picture it depicts, or raise InputError naming its mode.
_RNG = np.random.default_rng(7)
_GREY = _RNG.integers(0, 256, (9, 11), dtype=np.uint8)
_GREY[-1, :2] = 0, 255  # both ends of the scale
_RGB = _RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
_RGB[-1, 0], _RGB[-1, 1] = 0, 255
_ALPHA = _RNG.integers(0, 256, (9, 11), dtype=np.uint8)
_ALPHA[0, :4] = 0  # fully transparent pixels keep their colour too
_PALETTE = _RNG.integers(0, 256, (16, 3), dtype=np.uint8)
_INDEX = _RNG.integers(0, 16, (9, 11), dtype=np.uint8)


def _grey3(a):
    return np.repeat(a[..., None], 3, axis=-1)


def _png16(path, arr):
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count) of uint16 ``arr``."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[1 if arr.ndim == 2 else arr.shape[2]]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _palette():
    im = Image.frombytes("P", (11, 9), _INDEX.tobytes())
    im.putpalette(_PALETTE.tobytes())
    return im


def _i16b_tiff(path):
    # Big-endian 16-bit TIFF, opened as mode I;16B. Expected values come from the file's own
    # bytes (PIL's in-memory I;16B images swap bytes), so this checks the decoding independently.
    Image.frombytes("I;16B", (11, 9), (_GREY.astype("<u2") * 257).tobytes()).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16B"
        offset, count = im.tag_v2[273][0], im.tag_v2[279][0]
    data = np.frombuffer(path.read_bytes()[offset : offset + count], ">u2").reshape(9, 11)
    return _grey3(((data.astype(np.int64) + 128) // 257).astype(np.uint8))


def _to16(a, offset=0):
    """8-bit ``a`` as 16 bits (v * 257, the exact inverse of v / 257), plus ``offset``."""
    return np.clip(a.astype(np.int64) * 257 + offset, 0, 65535).astype(np.uint16)


def _write_case(case, path):
    """Write the file of ``case``; return (name, expected 8-bit RGB or None, tolerance in levels)."""
    g16 = _to16(_GREY)
    if case == "1":
        Image.fromarray(_GREY > 127).save(path / "a.png")
        return "a.png", _grey3(np.where(_GREY > 127, 255, 0).astype(np.uint8)), 0
    if case == "L":
        Image.fromarray(_GREY).save(path / "a.png")
        return "a.png", _grey3(_GREY), 0
    if case == "L-16bit-png":  # mode I;16
        Image.fromarray(g16).save(path / "a.png")
        return "a.png", _grey3(_GREY), 0
    if case == "L-16bit-tiff":  # mode I;16, little-endian
        Image.fromarray(g16).save(path / "a.tif")
        return "a.tif", _grey3(_GREY), 0
    if case == "L-16bit-tiff-big-endian":  # mode I;16B
        return "a.tif", _i16b_tiff(path / "a.tif"), 0
    if case == "L-16bit-pgm":  # mode I (Pillow's mode for PGM with maxval > 255)
        Image.fromarray(g16).save(path / "a.pgm")
        return "a.pgm", _grey3(_GREY), 0
    if case == "I-32bit-tiff-16bit-values":
        Image.fromarray(g16.astype(np.int32)).save(path / "a.tif")
        return "a.tif", _grey3(_GREY), 0
    if case == "I-32bit-tiff-negative":
        Image.fromarray(g16.astype(np.int32) - 1000).save(path / "a.tif")
        return "a.tif", None, 0
    if case == "I-32bit-tiff-beyond-16bit":
        Image.fromarray(g16.astype(np.int32) * 3).save(path / "a.tif")
        return "a.tif", None, 0
    if case == "F":
        Image.fromarray(_GREY.astype(np.float32) / 255).save(path / "a.tif")
        return "a.tif", None, 0
    if case == "LA":
        Image.merge("LA", [Image.fromarray(_GREY), Image.fromarray(_ALPHA)]).save(path / "a.png")
        return "a.png", _grey3(_GREY), 0  # alpha dropped
    if case == "LA-16bit":  # Pillow opens it as RGBA, keeping the high bytes
        _png16(path / "a.png", np.dstack([_to16(_GREY, 100), _to16(_ALPHA)]))
        return "a.png", _grey3(_GREY), 1
    if case == "P":
        _palette().save(path / "a.png")
        return "a.png", _PALETTE[_INDEX], 0
    if case == "P-transparent-index":
        _palette().save(path / "a.png", transparency=3)
        return "a.png", _PALETTE[_INDEX], 0  # the palette colour, transparency dropped
    if case == "P-transparency-table":
        _palette().save(path / "a.png", transparency=bytes(range(0, 256, 16)))
        return "a.png", _PALETTE[_INDEX], 0
    if case == "PA":
        im = Image.merge("PA", [_palette(), Image.fromarray(_ALPHA)])
        im.putpalette(_PALETTE.tobytes())
        im.save(path / "a.tif")
        return "a.tif", _PALETTE[_INDEX], 0
    if case == "RGB":
        Image.fromarray(_RGB).save(path / "a.png")
        return "a.png", _RGB, 0
    if case == "RGB-16bit":  # Pillow keeps the high bytes: within one level of v / 257
        _png16(path / "a.png", _to16(_RGB, 100))
        return "a.png", _RGB, 1
    if case == "RGBA":
        Image.fromarray(np.dstack([_RGB, _ALPHA])).save(path / "a.png")
        return "a.png", _RGB, 0
    if case == "RGBA-16bit":
        _png16(path / "a.png", _to16(np.dstack([_RGB, _ALPHA])))
        return "a.png", _RGB, 0
    if case == "CMYK":  # Pillow's RGB -> CMYK -> RGB is exact
        Image.fromarray(_RGB).convert("CMYK").save(path / "a.tif")
        return "a.tif", _RGB, 0
    if case == "YCbCr":
        im = Image.fromarray(_RGB).convert("YCbCr")
        im.save(path / "a.tif")
        want = np.asarray(im.convert("RGB"))
        assert np.abs(want.astype(int) - _RGB).max() <= 3  # what it depicts: the picture
        return "a.tif", want, 0
    raise AssertionError(case)


_MODE_CASES = {  # case -> the mode PIL opens it as
    "1": "1",
    "L": "L",
    "L-16bit-png": "I;16",
    "L-16bit-tiff": "I;16",
    "L-16bit-tiff-big-endian": "I;16B",
    "L-16bit-pgm": "I",
    "I-32bit-tiff-16bit-values": "I",
    "I-32bit-tiff-negative": "I",
    "I-32bit-tiff-beyond-16bit": "I",
    "F": "F",
    "LA": "LA",
    "LA-16bit": "RGBA",
    "P": "P",
    "P-transparent-index": "P",
    "P-transparency-table": "P",
    "PA": "PA",
    "RGB": "RGB",
    "RGB-16bit": "RGB",
    "RGBA": "RGBA",
    "RGBA-16bit": "RGBA",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
}


@pytest.mark.parametrize("case", list(_MODE_CASES))
def test_load_image_reads_every_mode_as_what_it_depicts_or_refuses_naming_it(case, tmp_path):
    name, want, tol = _write_case(case, tmp_path)
    mode = _MODE_CASES[case]
    with Image.open(tmp_path / name) as im:
        assert im.mode == mode  # the case covers the mode it names
    if want is None:
        with pytest.raises(InputError, match=rf"cannot read .*{name}: .*\(mode {mode}\).*save it"):
            load_image(tmp_path / name)
        return
    x = load_image(tmp_path / name)
    assert x.shape == (1, 3, 9, 11) and x.dtype == torch.float32
    levels = x * 255
    assert torch.equal(levels, levels.round())  # 8-bit values
    got = levels.round().to(torch.int64)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - want.astype(np.int64)).max() <= tol


def test_16bit_grey_noise_loads_as_its_8bit_original_not_white(tmp_path):
    noise = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "8.png")
    jitter = np.random.default_rng(4).integers(-128, 129, noise.shape)  # still rounds to noise
    v16 = np.clip(noise.astype(np.int64) * 257 + jitter, 0, 65535).astype(np.uint16)
    Image.fromarray(v16).save(tmp_path / "16.png")
    Image.fromarray(noise.astype(np.uint16) << 8).save(tmp_path / "16-shifted.png")
    x8 = load_image(tmp_path / "8.png")
    assert float(x8.mean()) == pytest.approx(0.5, abs=0.02)
    assert torch.equal(load_image(tmp_path / "16.png"), x8)
    assert float((load_image(tmp_path / "16-shifted.png") - x8).abs().max()) <= 1 / 255 + 1e-7


def test_load_image_ignores_the_exif_orientation(tmp_path):
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.fromarray(_RGB).save(tmp_path / "a.png", exif=exif)
    with Image.open(tmp_path / "a.png") as im:  # the tag is there: a viewer would turn it
        assert im.getexif()[0x0112] == 6 and ImageOps.exif_transpose(im).size == (9, 11)
    x = load_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 9, 11)  # as stored, as CompressAI reads it
    assert np.array_equal((x * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy(), _RGB)


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
