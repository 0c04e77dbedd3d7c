"""pc-prior demo: a tiny end-to-end run (files written, real bytes, identical reconstructions) and its errors."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pc_prior.cli import main
from pc_prior.eval.demo import TEST_PHOTOS, TRAIN_PHOTOS, run_demo, skimage_photo


def _crop(name: str, h: int, w: int, top: int = 0, left: int = 0) -> np.ndarray:
    return np.ascontiguousarray(skimage_photo(name)[top : top + h, left : left + w])


@pytest.fixture(scope="module")
def tiny_codec(tmp_path_factory):
    """A randomly initialized FactorizedPrior(N=8, M=12) with spread latents, saved with save_codec."""
    from compressai.models import FactorizedPrior

    from pc_prior.integrations import save_codec

    torch.manual_seed(0)
    net = FactorizedPrior(N=8, M=12)
    with torch.no_grad():
        net.g_a[-1].weight.mul_(30.0)
        net.g_a[-1].bias.mul_(30.0)
    net.update(force=True)
    p = tmp_path_factory.mktemp("codec") / "tiny.pt"
    save_codec(net.eval(), p, arch="bmshj2018-factorized", quality=1)
    return p


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-data")
    train, test = root / "train", root / "test"
    train.mkdir()
    test.mkdir()
    Image.fromarray(_crop("rocket", 96, 128)).save(train / "rocket.png")
    Image.fromarray(_crop("hubble_deep_field", 80, 96, 300, 300)).save(train / "hubble.png")
    Image.fromarray(_crop("astronaut", 70, 90, 100, 150)).save(
        test / "astronaut.png"
    )  # not multiples of 64
    Image.fromarray(_crop("coffee", 64, 64, 100, 100)).save(test / "coffee.jpg")
    return train, test


@pytest.fixture(scope="module")
def demo_run(tiny_codec, folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    lines = []
    res = run_demo(
        out,
        data=folders[1],
        train_data=folders[0],
        codec=tiny_codec,
        latents=2,
        epochs=1,
        max_items=2000,
        seed=0,
        progress=False,
        log=lines.append,
    )
    return out, res, "\n".join(lines)


def _strict(text: str):
    """Parse JSON as strict parsers do: a bare NaN, Infinity or -Infinity is an error."""

    def refuse(name):
        raise ValueError(f"not strict JSON: bare {name}")

    return json.loads(text, parse_constant=refuse)


def test_demo_writes_table_plot_and_json(demo_run):
    out, res, text = demo_run
    for f in ("table.txt", "demo.png", "demo.json", "base.json", "pc.json", "pc-codec.pt"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = _strict((out / "demo.json").read_text())
    assert summary["reconstructions_identical"] and summary["disjoint"] and summary["augment"]
    # the test images are below 161 px: MS-SSIM null with the reason, no bare NaN in any file
    for r in summary["images"]:
        assert r["ms_ssim"] is None and "below 161 px" in r["ms_ssim_undefined"]
    assert [r["image"] for r in summary["images"]] == ["astronaut.png", "coffee.jpg"]
    assert summary["images"][0]["size"] == "90x70"
    for name in (
        "base.json",
        "pc.json",
    ):  # CompressAI results format, readable by 'pc-prior compare'
        d = _strict((out / name).read_text())
        assert len(d["results"]["bpp"]) == 1 and "psnr-rgb" in d["results"]
        assert d["results"]["ms-ssim-rgb"] == [None] and "161 px" in d["undefined"]["ms-ssim-rgb"]
    table = (out / "table.txt").read_text()
    assert "astronaut.png" in table and "mean of 2" in table and table.strip() in text
    assert "identical (PC vs base, bit for bit): yes (2/2 images)" in text
    assert "disjoint" in text
    m = res["mean"]
    assert m["saving_pct"] == pytest.approx(100 * (1 - m["bpp_pc"] / m["bpp_base"]))
    for r in res["images"]:
        assert r["psnr"] == r["psnr_base"]


def test_demo_bits_are_the_bytes_of_real_strings(demo_run, folders, tiny_codec):
    """Reload the saved PC codec, code the test images again: same byte counts, same reconstruction as the base."""
    from compressai.models import FactorizedPrior

    from pc_prior.images import list_images, load_image, pad_to_multiple
    from pc_prior.integrations import swap_entropy_model

    out, res, _ = demo_run
    ck = torch.load(out / "pc-codec.pt", map_location="cpu")
    assert ck["pc_modules"] == ["entropy_bottleneck"]
    pc = FactorizedPrior(N=8, M=12)
    swap_entropy_model(pc)
    pc.load_state_dict(ck["state_dict"])
    pc.eval()
    base = FactorizedPrior(N=8, M=12)
    base.load_state_dict(torch.load(tiny_codec, map_location="cpu")["state_dict"])
    base.eval()
    with torch.no_grad():
        for path, row in zip(list_images(folders[1]), res["images"]):
            x = load_image(path)
            xp = pad_to_multiple(x, 64)
            e_pc, e_base = pc.compress(xp), base.compress(xp)
            assert row["bits_pc"] == 8 * sum(len(s) for g in e_pc["strings"] for s in g)
            assert row["bits_base"] == 8 * sum(len(s) for g in e_base["strings"] for s in g)
            n = x.shape[2] * x.shape[3]
            assert row["bpp_pc"] == pytest.approx(row["bits_pc"] / n)
            r_pc = pc.decompress(e_pc["strings"], e_pc["shape"])["x_hat"]
            r_base = base.decompress(e_base["strings"], e_base["shape"])["x_hat"]
            assert torch.equal(r_pc, r_base)


def test_demo_cli_errors(tiny_codec, folders, tmp_path, capsys):
    train, test = folders
    common = ["--latents", "2", "--epochs", "1", "--no-progress", "-o", str(tmp_path / "o")]
    assert (
        main(["demo", "--data", str(tmp_path / "missing"), "--codec", str(tiny_codec)] + common)
        == 1
    )
    assert "image folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    assert (
        main(
            [
                "demo",
                "--data",
                str(test),
                "--train-data",
                str(tmp_path / "empty"),
                "--codec",
                str(tiny_codec),
            ]
            + common
        )
        == 1
    )
    assert "no images" in capsys.readouterr().err
    bad = tmp_path / "notacodec.pt"
    bad.write_text("hello")
    assert (
        main(
            ["demo", "--data", str(test), "--train-data", str(train), "--codec", str(bad)] + common
        )
        == 1
    )
    assert "not a readable" in capsys.readouterr().err
    assert main(["demo", "--data", str(test), "--codec", str(tmp_path / "nope.pt")] + common) == 1
    assert "model file not found" in capsys.readouterr().err
    assert (
        main(
            [
                "demo",
                "--data",
                str(test),
                "--train-data",
                str(train),
                "--codec",
                str(tmp_path / "o" / "x.pt"),
                "--latents",
                "0",
            ]
        )
        == 1
    )
    assert "--latents" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written before the inputs were checked


def test_demo_rejects_overlapping_sets_and_swapped_codecs(tiny_codec, folders, tmp_path):
    train, test = folders
    both = tmp_path / "test2"
    both.mkdir()
    Image.open(train / "rocket.png").save(both / "same-picture.bmp")  # same pixels, another file
    with pytest.raises(ValueError, match="disjoint"):
        run_demo(
            tmp_path / "o",
            data=both,
            train_data=train,
            codec=tiny_codec,
            latents=2,
            epochs=1,
            progress=False,
            log=lambda s: None,
        )
    from compressai.models import FactorizedPrior

    from pc_prior.integrations import save_codec, swap_entropy_model

    net = FactorizedPrior(N=8, M=12)
    swap_entropy_model(net)
    swapped = tmp_path / "swapped.pt"
    save_codec(net, swapped, arch="bmshj2018-factorized", quality=1)
    with pytest.raises(ValueError, match="already has a PC entropy model"):
        run_demo(
            tmp_path / "o",
            data=test,
            train_data=train,
            codec=swapped,
            progress=False,
            log=lambda s: None,
        )


def test_default_photos_load_offline_and_are_disjoint():
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    for name in TRAIN_PHOTOS + TEST_PHOTOS:
        a = skimage_photo(name)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 256
    assert not np.array_equal(skimage_photo("motorcycle_left"), skimage_photo("motorcycle_right"))
    with pytest.raises(ValueError, match="no photo"):
        skimage_photo("no_such_photo")


def test_thumbnail_drops_the_centred_padding():
    from compressai.ops import compute_padding

    from pc_prior.eval.demo import _thumbnail

    h, w = 70, 90
    x = torch.rand(1, 3, h, w)
    pad, _ = compute_padding(h, w, min_div=64)
    t = _thumbnail(F.pad(x, pad), h, w)
    assert t.shape == (h, w, 3) and t.dtype == np.uint8
    assert np.array_equal(t, (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    assert max(_thumbnail(torch.rand(1, 3, 512, 768), 512, 768).shape[:2]) == 256
