"""pc_prior.eval on the project's shared data: the factorized q1 base codec on Kodak crops."""

import math

import pytest
from conftest import shared_path
from PIL import Image

from pc_prior.eval.rd import evaluate_model
from pc_prior.images import list_images
from pc_prior.integrations import resolve_codec


def test_factorized_q1_on_kodak_crops(tmp_path):
    ck = shared_path("models", "bmshj2018-factorized-q1.pt")
    kodak = shared_path("data", "kodak")
    files = list_images(kodak)
    assert len(files) == 24
    for f in files[:2]:  # 384x256 crops (a quarter image each) keep the test fast
        with Image.open(f) as im:
            im.convert("RGB").crop((192, 128, 576, 384)).save(tmp_path / f.name)
    lm = resolve_codec(ck)
    assert (lm.arch, lm.quality, lm.info["lmbda"]) == ("bmshj2018-factorized", 1, 0.0018)
    res = evaluate_model(lm.net, list_images(tmp_path), progress=False)
    m = res["mean"]
    # shared README: 0.177 bpp / 25.99 dB on all of Kodak at q1; crops of two images vary around that
    assert 0.08 < m["bpp"] < 0.4 and 22.0 < m["psnr-rgb"] < 31.0
    assert 0.8 < m["ms-ssim-rgb"] < 1.0
    for r in res["images"]:
        assert r["bpp_estimated"] == pytest.approx(
            r["bpp"], rel=0.02
        )  # trained CDFs: tiny coding overhead
        assert r["bits"] % 8 == 0 and math.isclose(r["bpp"], r["bits"] / (384 * 256))
        assert r["psnr-rgb_forward"] == pytest.approx(r["psnr-rgb"], abs=0.05)
