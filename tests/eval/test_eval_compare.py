"""pc_prior.eval compare / report-lossless: BD-rate on known answers, rate savings, plot, bpd table."""

import json

import numpy as np
import pytest

from pc_prior.cli import main
from pc_prior.eval.compare import bd_rate, compare, load_curve
from pc_prior.eval.lossless_report import lossless_table

BPP = [0.18, 0.29, 0.45, 0.70]
PSNR = [26.0, 27.4, 28.5, 29.9]
MSSSIM = [0.90, 0.925, 0.945, 0.96]


def _write(path, bpp, psnr, msssim, quality=(1, 2, 3, 4), name=None):
    res = {
        "psnr-rgb": list(psnr),
        "ms-ssim-rgb": list(msssim),
        "bpp": list(bpp),
        "encoding_time": [0.1] * len(bpp),
        "decoding_time": [0.1] * len(bpp),
    }
    if quality is not None:
        res["quality"] = list(quality)
    path.write_text(
        json.dumps({"name": name or path.stem, "description": "Inference (ans)", "results": res})
    )
    return path


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
    assert main(["compare", str(base), str(cand), "--plot", str(plot), "--json", str(js)]) == 0
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
                "report-lossless",
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
    assert main(["report-lossless", str(tmp_path / "c.json")]) == 1
    assert "missing bpd_theoretical" in capsys.readouterr().err
    assert main(["report-lossless", str(a), "--reference", "oops"]) == 1
    assert "NAME=BPD" in capsys.readouterr().err
