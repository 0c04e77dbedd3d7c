"""pc_prior.eval compare / lossless report: BD-rate on known answers, rate savings, plot, bpd table."""

import json

import numpy as np
import pytest

from pc_prior.cli import main
from pc_prior.errors import InputError
from pc_prior.eval.compare import bd_rate, bd_rate_details, compare, load_curve
from pc_prior.eval.lossless_report import lossless_table

BPP = [0.18, 0.29, 0.45, 0.70]
PSNR = [26.0, 27.4, 28.5, 29.9]
MSSSIM = [0.90, 0.925, 0.945, 0.96]


def _write(path, bpp, psnr, msssim, quality=(1, 2, 3, 4), name=None, text=None, **extra):
    res = {
        "psnr-rgb": list(psnr),
        "ms-ssim-rgb": list(msssim),
        "bpp": list(bpp),
        "encoding_time": [0.1] * len(bpp),
        "decoding_time": [0.1] * len(bpp),
    }
    if quality is not None:
        res["quality"] = list(quality[: len(bpp)])
    doc = {"name": name or path.stem, "description": "Inference (ans)", "results": res, **extra}
    path.write_text(text or json.dumps(doc))
    return path


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: bare {name}")

    return json.loads(text, parse_constant=refuse)


def test_bd_rate_known_answers():
    r, d = np.array(BPP), np.array(PSNR)
    assert bd_rate(r, d, 0.9 * r, d) == pytest.approx(-10.0, abs=1e-6)
    assert bd_rate(r, d, 1.25 * r, d) == pytest.approx(25.0, abs=1e-6)
    assert bd_rate(r, d, r, d, method="pchip") == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(bd_rate(r[:1], d[:1], r[:1], d[:1]))
    # points in any order; a curve whose quality falls as the rate rises has no BD-rate
    assert bd_rate(r[::-1], d[::-1], 0.9 * r, d) == pytest.approx(-10.0, abs=1e-6)
    bumpy = d.copy()
    bumpy[1] = bumpy[0] - 1.0
    assert np.isnan(bd_rate(r, d, r, bumpy)) and np.isnan(bd_rate(r, bumpy, r, d))


def test_compare_scaled_rates(tmp_path):
    base = _write(tmp_path / "base.json", BPP, PSNR, MSSSIM)
    # candidate: same reconstructions, 10% fewer bits, points listed in another order
    order = [2, 0, 3, 1]
    cand = _write(
        tmp_path / "cand.json",
        [0.9 * BPP[i] for i in order],
        [PSNR[i] for i in order],
        [MSSSIM[i] for i in order],
        quality=[i + 1 for i in order],
    )
    res = compare(base, cand)
    assert res["bd_rate_psnr"] == pytest.approx(-10.0, abs=1e-6)
    assert res["bd_rate_ms_ssim"] == pytest.approx(-10.0, abs=1e-6)
    assert [r["quality"] for r in res["per_quality"]] == [1, 2, 3, 4]
    for r, b in zip(res["per_quality"], BPP):
        assert r["bpp_base"] == pytest.approx(b) and r["saving_pct"] == pytest.approx(10.0)
        assert r["d_psnr"] == 0.0 and r["d_ms_ssim"] == 0.0


def test_compare_pairs_by_quality_not_position(tmp_path):
    base = _write(tmp_path / "base.json", BPP, PSNR, MSSSIM)
    cand = _write(
        tmp_path / "cand.json",
        [0.5 * BPP[1], 0.8 * BPP[3]],
        [PSNR[1], PSNR[3] + 0.1],
        [MSSSIM[1], MSSSIM[3]],
        quality=[2, 4],
    )
    rows = compare(base, cand)["per_quality"]
    assert [r["quality"] for r in rows] == [2, 4]
    assert [r["saving_pct"] for r in rows] == pytest.approx([50.0, 20.0])
    assert rows[1]["d_psnr"] == pytest.approx(0.1)


def test_compare_cli_table_and_plot(tmp_path, capsys):
    base = _write(tmp_path / "base.json", BPP, PSNR, MSSSIM, quality=None)
    cand = _write(tmp_path / "cand.json", [1.05 * b for b in BPP], PSNR, MSSSIM, quality=None)
    plot, js = tmp_path / "rd.png", tmp_path / "cmp.json"
    assert main(["compare", str(base), str(cand), "--plot", str(plot), "-o", str(js)]) == 0
    out = capsys.readouterr().out
    assert "BD-rate (PSNR-RGB):    +5.00%" in out and "BD-rate (MS-SSIM dB):  +5.00%" in out
    assert "-5.00%" in out  # per-point saving (paired by rank, no qualities in the files)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(js.read_text())["bd_rate_psnr"] == pytest.approx(5.0, abs=1e-6)


def test_compare_errors(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"results": {"bpp": [0.1]}}')
    ok = _write(tmp_path / "ok.json", BPP, PSNR, MSSSIM)
    assert main(["compare", str(ok), str(tmp_path / "missing.json")]) == 1
    assert "results file not found" in capsys.readouterr().err
    assert main(["compare", str(ok), str(tmp_path / "bad.json")]) == 1
    assert "not an RD results file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not an RD results file"):
        load_curve(tmp_path / "bad.json")


def test_compare_says_how_many_points_and_warns_below_four(tmp_path, capsys):
    """Two or three points per curve: the BD-rate is given, with the counts and a warning."""
    r, d = np.array(BPP), np.array(PSNR)
    base = _write(tmp_path / "base.json", BPP[:2], PSNR[:2], MSSSIM[:2])
    cand = _write(tmp_path / "cand.json", [0.9 * b for b in BPP[:2]], PSNR[:2], MSSSIM[:2])
    res = compare(base, cand)
    assert res["points"] == {"baseline": 2, "candidate": 2}
    assert res["bd_rate_psnr"] == pytest.approx(-10.0, abs=1e-6)
    assert res["bd_rate_ms_ssim"] == pytest.approx(-10.0, abs=1e-6)
    assert res["undefined"] == {}
    assert res["warnings"] == [  # one warning, not one per metric
        "BD-rate from 2 baseline and 2 candidate points: it needs at least 4 points per curve "
        "for the akima fit to mean much (through 2 points the fit is a straight line), so treat "
        "it as rough; evaluate each codec at 4 or more qualities"
    ]
    assert main(["compare", str(base), str(cand), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "baseline:  base (2 RD points)" in out and "candidate: cand (2 RD points)" in out
    assert "warning: BD-rate from 2 baseline and 2 candidate points" in out
    assert "BD-rate (PSNR-RGB):    -10.00%" in out

    # 2 against 3 points, which also overlap on only part of their PSNR range
    cand3 = _write(tmp_path / "cand3.json", [0.9 * b for b in BPP[:3]], PSNR[:3], MSSSIM[:3])
    res = compare(base, cand3)
    assert res["points"] == {"baseline": 2, "candidate": 3} and np.isfinite(res["bd_rate_psnr"])
    assert res["warnings"][0].startswith("BD-rate from 2 baseline and 3 candidate points")
    assert (
        "BD-rate (PSNR-RGB): the curves overlap on 56% of their joint PSNR-RGB range only"
        in res["warnings"][1]
    )

    # four points each: no warning
    four = compare(
        _write(tmp_path / "b4.json", BPP, PSNR, MSSSIM),
        _write(tmp_path / "c4.json", BPP, PSNR, MSSSIM),
    )
    assert four["points"] == {"baseline": 4, "candidate": 4} and four["warnings"] == []
    # the cubic fit is no fit below four points: no value, and why
    assert np.isnan(bd_rate(r[:3], d[:3], 0.9 * r[:3], d[:3], method="cubic"))
    details = bd_rate_details(r[:3], d[:3], 0.9 * r, d, method="cubic")
    assert (
        "the baseline curve has 3 points and the cubic fit needs at least 4" in details["undefined"]
    )
    cubic = compare(base, cand, method="cubic")
    assert (
        np.isnan(cubic["bd_rate_psnr"])
        and "use the akima or pchip method" in cubic["undefined"]["bd_rate_psnr"]
    )
    # one point: no value, and why
    one = bd_rate_details(r[:1], d[:1], r, d)
    assert np.isnan(one["value"]) and one["undefined"].startswith("the baseline curve has 1 point;")
    with pytest.raises(InputError, match="unknown BD-rate interpolation 'linear'"):
        compare(base, cand, method="linear")


def test_compare_skips_undefined_ms_ssim_with_its_reason(tmp_path, capsys):
    """MS-SSIM null (or NaN, as older pc-prior files wrote it): no MS-SSIM BD-rate, the PSNR one stays."""
    why = "ms-ssim-rgb undefined for 24 of 24 images: kodim01.png: image side below 161 px (96x64)"
    base = _write(tmp_path / "base.json", BPP, PSNR, [None] * 4, undefined={"ms-ssim-rgb": why})
    cand = _write(tmp_path / "cand.json", [0.9 * b for b in BPP], PSNR, MSSSIM)
    res = compare(base, cand)
    assert res["bd_rate_psnr"] == pytest.approx(-10.0, abs=1e-6)
    assert np.isnan(res["bd_rate_ms_ssim"])
    assert res["undefined"] == {"bd_rate_ms_ssim": f"MS-SSIM undefined (baseline: {why})"}
    assert all("d_ms_ssim" not in r for r in res["per_quality"])
    assert load_curve(base).ms_ssim_undefined == why

    # an older file with a bare NaN still reads, with a generic reason
    old = _write(
        tmp_path / "old.json",
        BPP,
        PSNR,
        [0.0] * 4,
        text=json.dumps(
            {"results": {"bpp": BPP, "psnr-rgb": PSNR, "ms-ssim-rgb": [float("nan")] * 4}}
        ),
    )
    assert "NaN" in old.read_text()
    assert "undefined for images with a side below 161 px" in load_curve(old).ms_ssim_undefined
    assert compare(old, cand)["bd_rate_psnr"] == pytest.approx(-10.0, abs=1e-6)

    js, plot = tmp_path / "cmp.json", tmp_path / "rd.png"
    assert main(["compare", str(base), str(cand), "--output", str(js), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "BD-rate (PSNR-RGB):    -10.00%" in out
    assert f"BD-rate (MS-SSIM dB):  n/a: MS-SSIM undefined (baseline: {why})" in out
    rec = _strict(js.read_text())
    assert rec["bd_rate_ms_ssim"] is None and rec["bd_rate_psnr"] == pytest.approx(-10.0, abs=1e-6)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a rate or a PSNR must be there at every point
    bad = _write(tmp_path / "bad.json", BPP, [26.0, None, 28.5, 29.9], MSSSIM)
    with pytest.raises(InputError, match=r"results\['psnr-rgb'\] has no value at point 2"):
        load_curve(bad)


def _set(names, digest=None):
    return {
        "image_set": {"count": len(names), "names": names, "sha256": digest},
        "dataset": "/data/x",
    }


def test_compare_checks_the_image_sets(tmp_path):
    cand_bpp = [0.9 * b for b in BPP]
    base = _write(tmp_path / "base.json", BPP, PSNR, MSSSIM, **_set(["a.png", "b.png"], "d1"))
    same = _write(tmp_path / "same.json", cand_bpp, PSNR, MSSSIM, **_set(["b.png", "a.png"], "d1"))
    res = compare(base, same)
    assert (
        res["images"]
        == "the same 2 images (a.png, b.png; pixel digest d1) in both files (checked by pixel digests)"
    )
    assert res["warnings"] == []

    other = _write(
        tmp_path / "other.json", cand_bpp, PSNR, MSSSIM, **_set(["a.png", "c.png"], "d2")
    )
    with pytest.raises(InputError, match="measured different images") as e:
        compare(base, other)
    msg = str(e.value)
    assert f"baseline {base}: /data/x, 2 images (a.png, b.png; pixel digest d1)" in msg
    assert f"candidate {other}: /data/x, 2 images (a.png, c.png; pixel digest d2)" in msg
    assert "only in the baseline: b.png; only in the candidate: c.png" in msg
    res = compare(base, other, allow_different_images=True)
    assert res["bd_rate_psnr"] == pytest.approx(-10.0, abs=1e-6)
    assert (
        res["images"].startswith("DIFFERENT") and "measured different images" in res["warnings"][0]
    )

    # older pc-prior files: the names of the per-image rows; CompressAI's files: not checked
    rows = {"m": [{"image": "a.png"}, {"image": "c.png"}]}
    older = _write(tmp_path / "older.json", cand_bpp, PSNR, MSSSIM, per_image=rows)
    assert load_curve(older).images.names == ["a.png", "c.png"]
    with pytest.raises(InputError, match="only in the candidate: c.png"):
        compare(base, older)
    plain = _write(tmp_path / "plain.json", cand_bpp, PSNR, MSSSIM)
    assert (
        compare(base, plain)["images"]
        == f"not checked: {plain} records no image list (written by another tool or an older pc-prior)"
    )


def _bench(path, theo, coded, n=100):
    path.write_text(
        json.dumps(
            {
                "num_images": n,
                "num_dims": 784,
                "bpd_theoretical": theo,
                "bpd_coded": coded,
                "coded_bytes": int(coded * n * 784 / 8),
                "encode_seconds": 0.5,
                "decode_seconds": 0.25,
                "round_trip_exact": True,
            }
        )
    )
    return path


def test_lossless_report(tmp_path, capsys):
    a = _bench(tmp_path / "a.json", 1.30, 1.3065)
    table = lossless_table([a])
    row = next(line for line in table.splitlines() if line.startswith("| a |"))
    assert "| 100 | 1.3000 | 1.3065 |" in row and "+0.50%" in row and "| 5.00 | 2.50 |" in row
    assert (
        "| HCLT (Liu et al., ICLR 2022) | | | | 1.20 |" in table
        and "reference number from the paper" in table
    )

    b = _bench(tmp_path / "b.json", 1.25, 1.26)
    out_md = tmp_path / "t.md"
    assert (
        main(
            [
                "lossless",
                "report",
                str(a),
                str(b),
                "--label",
                "small",
                "--label",
                "large",
                "--reference",
                "my baseline=1.5",
                "--output",
                str(out_md),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "| small |" in out
        and "| large | 100 | 1.2500 | 1.2600 |" in out
        and "| my baseline |" in out
    )
    assert out_md.read_text().strip() == out.strip()

    (tmp_path / "c.json").write_text('{"bpd_coded": 1.0}')
    assert main(["lossless", "report", str(tmp_path / "c.json")]) == 1
    assert "missing bpd_theoretical" in capsys.readouterr().err
    assert main(["lossless", "report", str(a), "--reference", "oops"]) == 1
    assert "NAME=BPD" in capsys.readouterr().err
    # the old name still works for one release, with one warning line naming the new one
    assert main(["report-lossless", str(a), str(b), "--label", "small", "--label", "large"]) == 0
    captured = capsys.readouterr()
    assert "| large | 100 | 1.2500 | 1.2600 |" in captured.out
    assert captured.err == (
        "pc-prior: warning: 'pc-prior report-lossless' is deprecated and goes in the next "
        "release; use 'pc-prior lossless report'\n"
    )
