"""bench/bench_lossless_classical.py on tiny synthetic idx images: every classical codec's files
decode to their images bit for bit, the JSON has its fields, and a codec imagecodecs lacks (or
imagecodecs itself) is reported unavailable instead of crashing."""

import json
import sys

import pytest
from helpers import load_bench, make_mnist

ARGS = ["--limit", "6", "--per-image", "3", "--repeats", "2", "--latents", "2"]
ARGS += ["--choose-images", "8"]


def _bench():
    return load_bench("bench_lossless_classical")


def _run(tmp_path, *extra):
    data = make_mnist(tmp_path / "idx", n_train=32, n_test=8)  # 8x8 images
    out = tmp_path / "res.json"
    md = tmp_path / "res.md"
    argv = ["--data", str(data), *ARGS, "--json", str(out), "--markdown", str(md), *extra]
    rc = _bench().main(argv)
    return rc, json.loads(out.read_text()), md.read_text()


def test_every_codec_round_trips_and_the_json_has_its_fields(tmp_path):
    pytest.importorskip(
        "imagecodecs", reason="imagecodecs is a bench extra: pip install -e .[bench]"
    )
    rc, res, md = _run(tmp_path)
    assert rc == 0
    assert res["data"] | {"folder": None} == {
        "folder": None,
        "split": "test",
        "limit": 6,
        "every": 1,
        "images": 6,
        "height": 8,
        "width": 8,
        "dims_per_image": 64,
        "levels": 256,
    }
    assert res["threads"] == 1 and res["machine"]["imagecodecs"]
    assert res["settings_chosen_on"] == "the first 8 images of the training split"
    assert res["pc"]["num_latents"] == 2 and res["pc"]["bpd_theoretical"] > 0
    set_, per = res["modes"]["set"], res["modes"]["per_image"]
    assert set_["images"] == 6 and per["images"] == 3
    assert set_["mosaic_shape"] == [16, 24]  # 3 columns, 2 rows of 8x8
    for mode, m in (("set", set_), ("per_image", per)):
        assert set(m["codecs"]) == {"pc", "png", "webp", "jpegls", "jpeg2k", "jpegxl"}
        pc = m["codecs"]["pc"]
        assert pc["round_trip_exact"] and pc["bpd"] > 0
        for key, r in m["codecs"].items():
            if r["status"] == "unavailable":  # a wheel built without that codec
                assert r["reason"]
                continue
            assert r["status"] == "ok", (mode, key, r)
            assert r["round_trip_exact"] is True
            assert r["bpd"] == pytest.approx(8 * r["bytes"] / (m["images"] * 64))
            assert len(r["encode_seconds_runs"]) == (2 if mode == "set" else 1)
            assert r["encode_seconds"] > 0 and r["decode_seconds"] > 0
            if key != "pc":
                assert r["bpd_over_pc"] == pytest.approx(r["bpd"] / pc["bpd"])
                assert r["encode_time_over_pc"] > 0 and r["decode_time_over_pc"] > 0
                assert r["settings"]
            if mode == "per_image":
                assert len(r["file_bytes"]) == 3 and sum(r["file_bytes"]) == r["bytes"]
                b = r["bpd_per_image"]
                assert b["min"] <= b["median"] <= b["max"]
    png = set_["codecs"]["png"]  # several candidates: chosen on the training images
    assert len(png["candidates_bytes_on_training_images"]) == 6
    assert "| PC coder (HCLT) |" in md and "**per_image**" in md


def test_without_imagecodecs_every_classical_codec_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # import imagecodecs raises ImportError
    rc, res, md = _run(tmp_path, "--per-image", "0", "--every", "2")
    assert rc == 0 and list(res["modes"]) == ["set"]
    assert (
        res["data"]["images"] == 3 and res["modes"]["set"]["images"] == 3
    )  # 6 test images, every 2nd
    rows = res["modes"]["set"]["codecs"]
    assert rows["pc"]["round_trip_exact"]
    for key in ("png", "webp", "jpegls", "jpeg2k", "jpegxl"):
        assert rows[key]["status"] == "unavailable"
        assert "imagecodecs is not installed" in rows[key]["reason"]
    assert "unavailable: imagecodecs is not installed" in md


def test_a_codec_missing_from_imagecodecs_is_unavailable(tmp_path, monkeypatch):
    ic = pytest.importorskip("imagecodecs", reason="imagecodecs is a bench extra")

    class Missing:
        available = False

    monkeypatch.setattr(ic, "JPEGXL", Missing)
    rc, res, _ = _run(tmp_path, "--per-image", "0", "--codecs", "png", "jpegxl")
    rows = res["modes"]["set"]["codecs"]
    assert rc == 0 and set(rows) == {"pc", "png", "jpegxl"}
    assert rows["jpegxl"]["status"] == "unavailable" and "JPEGXL" in rows["jpegxl"]["reason"]
    assert rows["png"]["status"] == "ok"


def test_mosaic_layout():
    np = pytest.importorskip("numpy")
    imgs = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    m = _bench().mosaic(imgs)
    assert m.shape == (2 * 2, 3 * 3)  # ceil(sqrt(5)) = 3 columns, 2 rows
    assert (m[0:2, 3:6] == imgs[1]).all() and (m[2:4, 3:6] == imgs[4]).all()
    assert (m[2:4, 6:9] == 0).all()  # the unused cell
