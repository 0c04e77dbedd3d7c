"""pc_prior.eval: real bit counting, CompressAI JSON schema, timing runs, model spec errors."""

import json
import math
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pc_prior.cli import main
from pc_prior.errors import InputError, ModelLoadError
from pc_prior.eval.rd import (
    count_bytes,
    distinct_labels,
    evaluate_image,
    evaluate_model,
    refuse_repeats,
    results_json,
)
from pc_prior.images import list_images, load_image
from pc_prior.integrations import resolve_codec


@pytest.fixture(scope="module")
def tiny_net():
    from compressai.models import FactorizedPrior

    torch.manual_seed(0)
    net = FactorizedPrior(N=8, M=12)
    net.update(force=True)
    return net.eval()


def _skimage(name: str, h: int, w: int) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    return np.ascontiguousarray(img[:h, :w, :3])


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    Image.fromarray(_skimage("astronaut", 150, 170)).save(
        d / "a.png"
    )  # not multiples of 64: padding
    (d / "sub").mkdir()
    Image.fromarray(_skimage("chelsea", 192, 192)).save(d / "sub" / "b.png")
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_net, tmp_path_factory):
    p = tmp_path_factory.mktemp("ck") / "tiny.pth"
    torch.save(
        {"epoch": 3, "state_dict": tiny_net.state_dict()}, p
    )  # CompressAI training-checkpoint layout
    return p


def test_count_bytes_nested():
    assert count_bytes([[b"ab", b"c"], [[b"defg"], []], (b"",)]) == 7
    with pytest.raises(TypeError, match="nested lists of bytes"):
        count_bytes([["abc"]])


def test_counted_bits_are_all_string_bytes(tiny_net, image_dir):
    from compressai.ops import compute_padding

    x = load_image(image_dir / "a.png")
    assert x.shape == (1, 3, 150, 170)
    row = evaluate_image(tiny_net, x)
    pad, _ = compute_padding(150, 170, min_div=64)
    with torch.no_grad():
        enc = tiny_net.compress(F.pad(x, pad))
    nbytes = sum(len(s) for group in enc["strings"] for s in group)
    assert nbytes > 0
    assert row["bits"] == 8 * nbytes
    assert row["bpp"] == pytest.approx(8 * nbytes / (150 * 170))
    # the forward's likelihoods estimate the same rate (coder overhead is small, a few bytes)
    assert row["bpp_estimated"] == pytest.approx(row["bpp"], rel=0.1)
    assert math.isfinite(row["psnr-rgb"]) and 0 < row["psnr-rgb"] < 60
    assert math.isnan(row["ms-ssim-rgb"])  # MS-SSIM needs sides > 160
    assert row["encoding_time"] > 0 and row["decoding_time"] > 0
    assert row["group_bpp"] == [pytest.approx(row["bpp"])]  # a factorized codec: one group (y)
    assert row["decoded_equals_forward"] is True


def test_evaluate_model_means_and_rows(tiny_net, image_dir):
    files = list_images(image_dir)
    assert [f.name for f in files] == ["a.png", "b.png"]
    res = evaluate_model(tiny_net, files, progress=False)
    assert [r["image"] for r in res["images"]] == ["a.png", "b.png"]
    for k in ("bpp", "psnr-rgb", "bits", "encoding_time"):
        assert res["mean"][k] == pytest.approx(sum(r[k] for r in res["images"]) / 2)
    assert 0 < res["images"][1]["ms-ssim-rgb"] <= 1  # 192x192: MS-SSIM defined


def test_eval_cli_json_read_by_compressai_plot(tiny_ckpt, image_dir, tmp_path, capsys):
    from compressai.utils.plot.__main__ import main as plot_main
    from compressai.utils.plot.__main__ import parse_json_file

    torch.manual_seed(1)
    from compressai.models import FactorizedPrior

    other = FactorizedPrior(N=8, M=12)
    other.update(force=True)
    ck2 = tmp_path / "plain.pth"
    torch.save(other.state_dict(), ck2)  # plain state dict
    out = tmp_path / "res" / "tiny.json"
    rc = main(
        [
            "eval",
            str(tiny_ckpt),
            str(ck2),
            "--arch",
            "bmshj2018-factorized",
            "--data",
            str(image_dir),
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    res = data["results"]
    assert data["name"] == "bmshj2018-factorized" and data["description"].startswith("Inference (")
    assert res["model"] == ["tiny", "plain"] and len(res["bpp"]) == 2
    assert data["num_images"] == 2 and set(data["per_image"]) == {"tiny", "plain"}
    rows = data["per_image"]["tiny"]
    assert res["bits"][0] == pytest.approx(sum(r["bits"] for r in rows) / 2)

    parsed = parse_json_file(out, "psnr")
    assert parsed["xs"] == res["bpp"] and list(parsed["ys"]) == res["psnr-rgb"]
    png = tmp_path / "plot.png"
    plot_main(["-f", str(out), "-o", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _err(argv, capsys) -> str:
    assert main(argv) == 1
    return capsys.readouterr().err


def test_eval_errors(tmp_path, tiny_ckpt, image_dir, capsys):
    assert "image folder not found" in _err(
        ["eval", str(tiny_ckpt), "--data", str(tmp_path / "nope")], capsys
    )
    (tmp_path / "empty").mkdir()
    assert "no images" in _err(["eval", str(tiny_ckpt), "--data", str(tmp_path / "empty")], capsys)
    err = _err(["eval", "no-such-codec:q3", "--data", str(image_dir)], capsys)
    assert "unknown model 'no-such-codec:q3'" in err
    assert "model file not found" in _err(
        ["eval", str(tmp_path / "x.pt"), "--data", str(image_dir)], capsys
    )
    assert "--arch" in _err(["eval", str(tiny_ckpt), "--data", str(image_dir)], capsys)
    assert "is a directory" in _err(["eval", str(image_dir), "--data", str(image_dir)], capsys)
    err = _err(["eval", str(tiny_ckpt), "--arch", "nope", "--data", str(image_dir)], capsys)
    assert "unknown architecture 'nope'" in err


def test_zoo_offline_is_a_clear_error(monkeypatch, image_dir, capsys):
    import compressai.zoo.image as zoo_image

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(zoo_image, "load_state_dict_from_url", offline)
    with pytest.raises(ModelLoadError, match="network access.*local checkpoint"):
        resolve_codec("bmshj2018-factorized:q2")
    err = _err(["eval", "bmshj2018-factorized:q2", "--data", str(image_dir)], capsys)
    assert "could not get pretrained weights for bmshj2018-factorized:q2" in err


def test_hclt_checkpoint_is_not_a_codec(tmp_path):
    from conftest import random_hclt

    from pc_prior import save

    p = tmp_path / "hclt.pt"
    save(random_hclt(), p)
    with pytest.raises(ModelLoadError, match="HCLT .*lossless"):
        resolve_codec(p)
    torch.save({"format": "pc-prior/unknown-codec", "x": torch.zeros(1)}, tmp_path / "u.pt")
    with pytest.raises(ModelLoadError, match="not an image codec file"):
        resolve_codec(tmp_path / "u.pt")


def test_timed_runs_measure_the_same_rate(tiny_net, image_dir):
    """What bench/bench_codec_speed.py times: runs and warmup change the timing, not the bits."""
    x = load_image(image_dir / "sub" / "b.png")
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_net

        def compress(self, x):
            calls.append("c")
            return self.net.compress(x)

        def decompress(self, strings, shape):
            calls.append("d")
            return self.net.decompress(strings, shape)

        def forward(self, x):
            return self.net(x)

    r = evaluate_image(Counting(), x, runs=3, warmup=1)
    assert calls == ["c"] * 4 + ["d"] * 4
    assert r["encoding_time"] > 0 and r["decoding_time"] > 0
    once = evaluate_image(tiny_net, x)
    assert r["bits"] == once["bits"] and r["x_hat_sha256"] == once["x_hat_sha256"]
    with pytest.raises(ValueError, match="runs must be an integer >= 1"):
        evaluate_image(tiny_net, x, runs=0)
    res = evaluate_model(tiny_net, [image_dir / "sub" / "b.png"], progress=False, runs=2)
    assert res["mean"]["bits"] == once["bits"]
    assert "x_hat_sha256" not in res["mean"] and "decoded_equals_forward" not in res["mean"]


def test_pc_codec_file_is_evaluated_with_its_circuit(image_dir, tmp_path):
    """A codec saved by integrations.save_codec loads with its PC bottleneck and codes for real."""
    from compressai.zoo import image_models

    from pc_prior.integrations import PCEntropyBottleneck, fit_prior, save_codec

    torch.manual_seed(1)
    net = image_models["bmshj2018-factorized"](quality=1).eval()
    imgs = [torch.rand(1, 3, 64, 96) for _ in range(2)]
    fit_prior(net, imgs, num_latents=2, epochs=1, full_batch_epochs=0, progress=False)
    path = tmp_path / "pc.pt"
    save_codec(net, path, "bmshj2018-factorized", 1)
    loaded = resolve_codec(path)
    assert isinstance(loaded.net.entropy_bottleneck, PCEntropyBottleneck)
    assert loaded.arch == "bmshj2018-factorized" and loaded.quality == 1
    files = list_images(image_dir)
    res = evaluate_model(loaded.net, files, progress=False)
    ref = evaluate_model(net, files, progress=False)
    assert [r["bits"] for r in res["images"]] == [r["bits"] for r in ref["images"]]
    assert [r["psnr-rgb"] for r in res["images"]] == [r["psnr-rgb"] for r in ref["images"]]
    assert [r["x_hat_sha256"] for r in res["images"]] == [r["x_hat_sha256"] for r in ref["images"]]
    assert all(r["decoded_equals_forward"] for r in res["images"])


def _strict(text: str):
    """Parse JSON as strict parsers do: a bare NaN, Infinity or -Infinity is an error."""

    def refuse(name):
        raise ValueError(f"not strict JSON: bare {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def plain_ckpt(tmp_path_factory):
    """A second FactorizedPrior(N=8, M=12), as a plain state dict (needs --arch)."""
    from compressai.models import FactorizedPrior

    torch.manual_seed(1)
    other = FactorizedPrior(N=8, M=12)
    other.update(force=True)
    p = tmp_path_factory.mktemp("plain") / "plain.pth"
    torch.save(other.state_dict(), p)
    return p


def _eval_json(ckpts, data, out, capsys, *extra) -> dict:
    argv = ["eval", *map(str, ckpts), "--arch", "bmshj2018-factorized", "--data", str(data)]
    assert main(argv + ["--output", str(out), "--no-progress", *extra]) == 0, capsys.readouterr()
    capsys.readouterr()
    return _strict(out.read_text())


def test_distinct_labels_tell_same_named_files_apart():
    names = ["a-frozen", "a-frozen", "base", "a-frozen"]
    sources = ["runs/q1/a-frozen.pt", "runs/q2/a-frozen.pt", "x/base.pt", "old/q1/a-frozen.pt"]
    # the shortest path tail that tells each one apart; a name nobody shares stays
    assert distinct_labels(names, sources) == [
        "runs/q1/a-frozen",
        "q2/a-frozen",
        "base",
        "old/q1/a-frozen",
    ]
    assert distinct_labels(["m", "m"], ["d/m.pt", "d/m.pth"]) == ["d/m.pt", "d/m.pth"]
    assert distinct_labels(["tiny"], ["t/tiny.pth"]) == ["tiny"]
    with pytest.raises(InputError, match=r"d/m.pt is given twice"):
        distinct_labels(["m", "m"], ["d/m.pt", "d/m.pt"])


def test_results_json_refuses_labels_that_would_drop_rows():
    run = {"model": "m", "quality": 1, "mean": {}, "images": []}
    with pytest.raises(ValueError, match="labels repeat"):
        results_json([run, dict(run)], name="c")


def test_eval_keeps_every_same_named_models_rows(image_dir, tmp_path, capsys):
    """Two runs' ``a.pth`` (q1/, q2/): both keep their per-image rows, under distinct labels."""
    from compressai.models import FactorizedPrior

    paths = []
    for seed, q in enumerate(("q1", "q2")):
        torch.manual_seed(seed)  # two different codecs, so their rows differ
        net = FactorizedPrior(N=8, M=12)
        net.update(force=True)
        (tmp_path / q).mkdir()
        paths.append(tmp_path / q / "a.pth")
        torch.save(net.state_dict(), paths[-1])
    data = _eval_json(paths, image_dir, tmp_path / "r.json", capsys)
    labels = ["q1/a", "q2/a"]
    assert data["results"]["model"] == labels and set(data["per_image"]) == set(labels)
    bits = [[r["bits"] for r in data["per_image"][label]] for label in labels]
    assert bits[0] != bits[1]
    for i in range(2):
        assert sum(bits[i]) / len(bits[i]) == pytest.approx(data["results"]["bits"][i])
    argv = ["eval", str(paths[0]), str(paths[0]), "--arch", "bmshj2018-factorized"]
    assert "is given twice" in _err(argv + ["--data", str(image_dir)], capsys)


def test_eval_refuses_a_repeated_model_before_loading_any(image_dir, tmp_path, capsys, monkeypatch):
    """The same file twice, spelled two ways, is refused before it is read (it is no codec at all,
    so loading it first would fail with another error)."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "m.pt").write_bytes(b"not a codec")
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "d/m.pt", str(tmp_path / "d" / ".." / "d" / "m.pt"), "--data", str(image_dir)]
    assert "is given twice" in _err(argv, capsys)
    with pytest.raises(InputError, match="zoo-x:q1 is given twice"):
        refuse_repeats(["zoo-x:q1", "zoo-x:q1"])
    refuse_repeats(["zoo-x:q1", "zoo-x:q2", "d/m.pt"])  # distinct: no error


def test_results_json_below_161_px_is_strict_with_reasons(tiny_ckpt, plain_ckpt, tmp_path, capsys):
    """MS-SSIM is undefined below 161 px: null with the reason, never a bare NaN; compare reads it."""
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(_skimage("coffee", 64, 80)).save(small / "c.png")
    out = tmp_path / "small.json"
    data = _eval_json([tiny_ckpt, plain_ckpt], small, out, capsys)  # strict parse: no NaN
    res = data["results"]
    assert res["ms-ssim-rgb"] == [None, None]
    assert all(math.isfinite(v) for v in res["psnr-rgb"] + res["bpp"])
    assert data["undefined"]["ms-ssim-rgb"] == (
        "ms-ssim-rgb undefined for 1 of 1 images: c.png: image side below 161 px (80x64)"
    )
    for rows in data["per_image"].values():
        assert rows[0]["ms-ssim-rgb"] is None
        assert rows[0]["undefined"] == {"ms-ssim-rgb": "image side below 161 px (80x64)"}
    # printed to stdout (no --output): strict as well
    argv = ["eval", str(tiny_ckpt), "--arch", "bmshj2018-factorized", "--data", str(small)]
    assert main(argv + ["--no-progress"]) == 0
    assert _strict(capsys.readouterr().out)["results"]["ms-ssim-rgb"] == [None]

    js = tmp_path / "cmp.json"
    assert main(["compare", str(out), str(out), "--no-plot", "-o", str(js)]) == 0
    text = capsys.readouterr().out
    assert "BD-rate (MS-SSIM dB):  n/a: MS-SSIM undefined (baseline: ms-ssim-rgb undefined" in text
    assert "image side below 161 px (80x64)" in text
    cmp = _strict(js.read_text())
    assert cmp["bd_rate_ms_ssim"] is None and "161 px" in cmp["undefined"]["bd_rate_ms_ssim"]
    assert cmp["points"] == {"baseline": 2, "candidate": 2}
    assert [set(r) & {"d_ms_ssim"} for r in cmp["per_quality"]] == [set(), set()]
    assert [r["saving_pct"] for r in cmp["per_quality"]] == [0.0, 0.0]


def test_dumps_json_refuses_nan_naming_where(tmp_path):
    from pathlib import Path

    from pc_prior.errors import InputError
    from pc_prior.eval.rd import dumps_json, write_json

    ok = {"a": np.float32(0.5), "b": (1, np.int64(2)), "p": Path("x/y"), "n": None}
    assert _strict(dumps_json(ok)) == {"a": 0.5, "b": [1, 2], "p": "x/y", "n": None}
    with pytest.raises(InputError, match=r"cannot write nan at results\.psnr\[1\] as JSON"):
        dumps_json({"results": {"psnr": [1.0, float("nan")]}})
    with pytest.raises(InputError, match=r"inf at x\[0\]\.y"):
        write_json(tmp_path / "bad.json", {"x": [{"y": np.float64("inf")}]})
    assert not (tmp_path / "bad.json").exists()  # nothing half-written


def test_results_record_the_image_set_and_compare_refuses_other_images(
    tiny_ckpt, plain_ckpt, image_dir, tmp_path, capsys
):
    both = _eval_json([tiny_ckpt, plain_ckpt], image_dir, tmp_path / "both.json", capsys)
    s = both["image_set"]
    assert s["count"] == 2 and s["names"] == ["a.png", "b.png"] and len(s["sha256"]) == 64
    rows = both["per_image"]["tiny"]
    assert [len(r["image_sha256"]) for r in rows] == [64, 64]

    # the same pictures under other names and formats, listed in another order: the same set
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    Image.open(image_dir / "a.png").save(renamed / "z.bmp")
    Image.open(image_dir / "sub" / "b.png").save(renamed / "y.png")
    same = _eval_json([tiny_ckpt, plain_ckpt], renamed, tmp_path / "renamed.json", capsys)
    assert same["image_set"]["sha256"] == s["sha256"]
    assert (
        main(["compare", str(tmp_path / "both.json"), str(tmp_path / "renamed.json"), "--no-plot"])
        == 0
    )
    assert "images:    the same 2 images (" in capsys.readouterr().out

    # one image fewer: refused, naming both sets and the fix
    _eval_json([tiny_ckpt, plain_ckpt], image_dir, tmp_path / "one.json", capsys, "--limit", "1")
    argv = ["compare", str(tmp_path / "both.json"), str(tmp_path / "one.json"), "--no-plot"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "measured different images" in err
    assert f"baseline {tmp_path / 'both.json'}: {image_dir}, 2 images (a.png, b.png;" in err
    assert f"candidate {tmp_path / 'one.json'}: {image_dir}, 1 image (a.png;" in err
    assert "only in the baseline: b.png; only in the candidate: none" in err
    assert "same --data and --limit" in err and "--allow-different-images" in err
    assert main(argv + ["--allow-different-images"]) == 0
    out = capsys.readouterr().out
    assert "images:    DIFFERENT (compared anyway" in out
    assert "warning: the two results files measured different images" in out

    # the same names, other pixels (a crop): refused too
    cropped = tmp_path / "cropped"
    (cropped / "sub").mkdir(parents=True)
    Image.fromarray(_skimage("astronaut", 150, 160)).save(cropped / "a.png")
    Image.open(image_dir / "sub" / "b.png").save(cropped / "sub" / "b.png")
    _eval_json([tiny_ckpt, plain_ckpt], cropped, tmp_path / "cropped.json", capsys)
    assert main(["compare", str(tmp_path / "both.json"), str(tmp_path / "cropped.json")]) == 1
    assert "the file names match but the pixels differ" in capsys.readouterr().err


def _codec_file(net, path, arch, **extra):
    from pc_prior.integrations import save_codec

    net.update(force=True)
    return save_codec(net.eval(), path, arch=arch, quality=1, **extra)


def test_eval_refuses_codecs_of_different_curves(tiny_net, image_dir, tmp_path, capsys):
    """A factorized and a hyperprior codec (or a base and a PC codec) make no one RD curve."""
    from compressai.models import FactorizedPrior, ScaleHyperprior

    from pc_prior.integrations import fit_prior

    torch.manual_seed(0)
    fact = _codec_file(FactorizedPrior(N=8, M=12), tmp_path / "fact.pt", "bmshj2018-factorized")
    hyper = _codec_file(ScaleHyperprior(N=8, M=12), tmp_path / "hyper.pt", "bmshj2018-hyperprior")
    out = tmp_path / "mixed.json"
    argv = ["eval", str(fact), str(hyper), "--data", str(image_dir), "--output", str(out)]
    assert main(argv + ["--no-progress"]) == 1
    err = capsys.readouterr().err
    assert (
        f"belong to 2 different RD curves (bmshj2018-factorized: {fact}; "
        f"bmshj2018-hyperprior: {hyper})" in err
    )
    assert "run 'pc-prior eval' once per curve, each with its own --output" in err
    assert not out.exists()

    # the same architecture, its own entropy model and a PC prior: two curves as well
    tiny = {"net_kwargs": {"N": 8, "M": 12}}
    base = _codec_file(tiny_net, tmp_path / "base.pt", "FactorizedPrior", **tiny)
    pc_net = FactorizedPrior(N=8, M=12)
    pc_net.load_state_dict(tiny_net.state_dict())
    fit_prior(pc_net, [torch.rand(1, 3, 64, 64)], num_latents=2, epochs=1, progress=False)
    pc = _codec_file(pc_net, tmp_path / "pc.pt", "FactorizedPrior", **tiny)
    assert main(["eval", str(base), str(pc), "--data", str(image_dir), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"(FactorizedPrior: {base}; FactorizedPrior + PC prior: {pc})" in err

    # codecs of one curve: named after it
    assert (
        main(["eval", str(pc), "--data", str(image_dir), "--output", str(out), "--no-progress"])
        == 0
    )
    assert _strict(out.read_text())["name"] == "FactorizedPrior + PC prior"
