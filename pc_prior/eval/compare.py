"""Comparing two RD result files (CompressAI's format): rate savings, BD-rates, a table and a plot."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Curve",
    "bd_rate",
    "compare",
    "format_comparison",
    "load_curve",
    "ms_ssim_db",
    "plot_rd",
    "rate_savings",
]


@dataclass
class Curve:
    """One codec's RD points (sorted by rate), as read from a results JSON."""

    name: str
    bpp: np.ndarray
    psnr: np.ndarray
    ms_ssim: np.ndarray | None
    quality: list[Any]
    model: list[Any]


def load_curve(path: str | Path, name: str | None = None) -> Curve:
    """Read a CompressAI-format results JSON (``{"name", "results": {"bpp": [...], "psnr-rgb": [...]}}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    res = data.get("results", data) if isinstance(data, dict) else None
    if not isinstance(res, dict) or "bpp" not in res or "psnr-rgb" not in res:
        raise ValueError(
            f"{path} is not an RD results file: it needs results.bpp and results['psnr-rgb']"
        )
    bpp = np.asarray(res["bpp"], dtype=float)
    psnr = np.asarray(res["psnr-rgb"], dtype=float)
    if bpp.shape != psnr.shape or bpp.ndim != 1 or bpp.size == 0:
        raise ValueError(
            f"{path}: results.bpp and results['psnr-rgb'] must be lists of the same non-zero length"
        )
    ms = np.asarray(res["ms-ssim-rgb"], dtype=float) if "ms-ssim-rgb" in res else None
    n = bpp.size
    quality = list(res.get("quality") or [None] * n)
    model = list(res.get("model") or [None] * n)
    order = np.argsort(bpp, kind="stable")
    return Curve(
        name or data.get("name") or path.stem,
        bpp[order],
        psnr[order],
        None if ms is None else ms[order],
        [quality[i] for i in order],
        [model[i] for i in order],
    )


def ms_ssim_db(v: np.ndarray) -> np.ndarray:
    """MS-SSIM in dB, ``-10 log10(1 - v)``, as CompressAI's plots show it."""
    return -10 * np.log10(1 - np.asarray(v, dtype=float))


def bd_rate(
    base_bpp: np.ndarray,
    base_dist: np.ndarray,
    cand_bpp: np.ndarray,
    cand_dist: np.ndarray,
    method: str = "akima",
) -> float:
    """Bjøntegaard-delta rate (percent; negative = candidate saves rate) via the ``bjontegaard`` package.

    Needs at least 2 points per curve whose quality rises with the rate (points in any order);
    NaN when the curves cannot be compared.
    """
    import warnings

    import bjontegaard

    curves = []
    for bpp, dist in ((base_bpp, base_dist), (cand_bpp, cand_dist)):
        bpp, dist = np.asarray(bpp, float), np.asarray(dist, float)
        order = np.argsort(bpp)
        bpp, dist = bpp[order], dist[order]
        # an RD curve whose quality does not rise with the rate has no BD-rate
        if len(bpp) < 2 or not np.isfinite(dist).all() or not (np.diff(dist) > 0).all():
            return float("nan")
        curves.append((bpp, dist))
    (base_bpp, base_dist), (cand_bpp, cand_dist) = curves
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(
                bjontegaard.bd_rate(
                    base_bpp,
                    base_dist,
                    cand_bpp,
                    cand_dist,
                    method=method,
                    require_matching_points=False,
                )
            )
        except (ValueError, AssertionError):  # e.g. curves that do not overlap enough
            return float("nan")


def _pairs(base: Curve, cand: Curve) -> list[tuple[int, int, Any]]:
    """Index pairs of points at the same quality; by rank when qualities are missing and lengths match."""
    bq = {q: i for i, q in enumerate(base.quality) if q is not None}
    cq = {q: i for i, q in enumerate(cand.quality) if q is not None}
    common = sorted(set(bq) & set(cq))
    if common:
        return [(bq[q], cq[q], q) for q in common]
    if len(base.bpp) == len(cand.bpp):
        return [(i, i, f"#{i + 1}") for i in range(len(base.bpp))]
    return []


def rate_savings(base: Curve, cand: Curve) -> list[dict[str, Any]]:
    """Per quality: both rates, saving ``1 - cand/base`` (percent) and the change in PSNR and MS-SSIM.

    When the candidate keeps the base codec's transforms (a new entropy model), reconstructions are
    identical and ``d_psnr`` is 0: the saving is then a saving at fixed reconstruction.
    """
    rows = []
    for i, j, q in _pairs(base, cand):
        row = {
            "quality": q,
            "bpp_base": float(base.bpp[i]),
            "bpp_cand": float(cand.bpp[j]),
            "saving_pct": 100.0 * (1.0 - cand.bpp[j] / base.bpp[i]),
            "psnr_base": float(base.psnr[i]),
            "d_psnr": float(cand.psnr[j] - base.psnr[i]),
        }
        if base.ms_ssim is not None and cand.ms_ssim is not None:
            row["d_ms_ssim"] = float(cand.ms_ssim[j] - base.ms_ssim[i])
        rows.append(row)
    return rows


def compare(base_path: str | Path, cand_path: str | Path, method: str = "akima") -> dict[str, Any]:
    """Rate savings per quality and BD-rates (PSNR, MS-SSIM in dB) of ``cand_path`` against ``base_path``."""
    base, cand = load_curve(base_path), load_curve(cand_path)
    out: dict[str, Any] = {
        "baseline": base.name,
        "candidate": cand.name,
        "per_quality": rate_savings(base, cand),
        "bd_rate_psnr": bd_rate(base.bpp, base.psnr, cand.bpp, cand.psnr, method),
    }
    if base.ms_ssim is not None and cand.ms_ssim is not None:
        out["bd_rate_ms_ssim"] = bd_rate(
            base.bpp, ms_ssim_db(base.ms_ssim), cand.bpp, ms_ssim_db(cand.ms_ssim), method
        )
    else:
        out["bd_rate_ms_ssim"] = float("nan")
    out["_curves"] = (base, cand)
    return out


def _f(v: float, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def format_comparison(res: dict[str, Any]) -> str:
    """A plain-text table of :func:`compare`'s result."""
    lines = [
        f"baseline:  {res['baseline']}",
        f"candidate: {res['candidate']}",
        "",
        f"{'quality':>8} {'bpp base':>9} {'bpp cand':>9} {'saving':>8} {'PSNR base':>10} {'dPSNR':>7}"
        f" {'dMS-SSIM':>9}",
    ]
    for r in res["per_quality"]:
        lines.append(
            f"{r['quality']!s:>8} {r['bpp_base']:9.4f} {r['bpp_cand']:9.4f} {r['saving_pct']:7.2f}%"
            f" {r['psnr_base']:10.3f} {r['d_psnr']:+7.3f} {_f(r.get('d_ms_ssim'), '+9.5f'):>9}"
        )
    if not res["per_quality"]:
        lines.append("   (no points at matching qualities)")
    lines += [
        "",
        f"BD-rate (PSNR-RGB):    {_f(res['bd_rate_psnr'], '+.2f')}%",
        f"BD-rate (MS-SSIM dB):  {_f(res['bd_rate_ms_ssim'], '+.2f')}%",
        "(negative = the candidate needs less rate for the same quality)",
    ]
    return "\n".join(lines)


def plot_rd(base: Curve, cand: Curve, output: str | Path, title: str | None = None) -> Path:
    """Save a PNG with PSNR-RGB (and MS-SSIM dB when both have it) against bpp for both curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("PSNR-RGB [dB]", lambda c: c.psnr)]
    if base.ms_ssim is not None and cand.ms_ssim is not None:
        panels.append(("MS-SSIM-RGB [dB]", lambda c: ms_ssim_db(c.ms_ssim)))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (label, get) in zip(axes[0], panels):
        for c, style in ((base, "o-"), (cand, "s--")):
            ax.plot(c.bpp, get(c), style, linewidth=1, markersize=4, label=c.name)
        ax.set_xlabel("Bit-rate [bpp]")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.4)
        ax.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=150)
    plt.close(fig)
    return output
