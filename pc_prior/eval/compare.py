"""Comparing two RD result files (CompressAI's format): rate savings, BD-rates, a table and a plot."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..images import MS_SSIM_MIN_SIDE
from ..settings import BD_MIN_POINTS

__all__ = [
    "BD_METHODS",
    "Curve",
    "ImageSet",
    "bd_rate",
    "bd_rate_details",
    "check_image_sets",
    "compare",
    "comparison_record",
    "format_comparison",
    "load_curve",
    "ms_ssim_db",
    "plot_rd",
    "rate_savings",
]

BD_METHODS = ("akima", "pchip", "cubic")  #: the interpolations the bjontegaard package offers
BD_MIN_OVERLAP = 0.75  # the bjontegaard package's own default for warning about a small overlap


@dataclass
class ImageSet:
    """The images a results file measured: their count, file names and (when recorded) a digest
    of their pixels (``image_set.sha256`` of ``pc-prior eval``; None in older files)."""

    count: int
    names: list[str]
    sha256: str | None = None

    def describe(self) -> str:
        """One line for messages: the count, the first names and the pixel digest's prefix."""
        head = ", ".join(self.names[:3]) + (", ..." if len(self.names) > 3 else "")
        digest = f"; pixel digest {self.sha256[:12]}" if self.sha256 else ""
        return f"{self.count} image{'s' if self.count != 1 else ''} ({head}{digest})"


@dataclass
class Curve:
    """One codec's RD points (sorted by rate), as read from a results JSON.

    ``ms_ssim`` holds NaN where the file has null (or, from older files, NaN); ``ms_ssim_undefined``
    then says why. ``images`` is None when the file records no image list (CompressAI's files).
    """

    name: str
    bpp: np.ndarray
    psnr: np.ndarray
    ms_ssim: np.ndarray | None
    quality: list[Any]
    model: list[Any]
    ms_ssim_undefined: str | None = None
    images: ImageSet | None = None
    dataset: str | None = None
    source: str = ""


def _floats(res: dict[str, Any], key: str, path: Path) -> np.ndarray:
    """``res[key]`` as floats, null as NaN; anything else than a list of numbers or null is refused."""
    vals = res[key]
    if not isinstance(vals, list):
        raise InputError(
            f"{path}: results[{key!r}] must be a list (one value per RD point), "
            f"not {type(vals).__name__}"
        )
    out = []
    for i, v in enumerate(vals):
        if v is None:
            out.append(math.nan)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(float(v))
        else:
            raise InputError(f"{path}: results[{key!r}][{i}] is {v!r}, not a number or null")
    return np.asarray(out, dtype=float)


def _read_image_set(data: dict[str, Any]) -> ImageSet | None:
    """The file's ``image_set``; from older pc-prior files the names of its per-image rows."""
    s = data.get("image_set")
    if isinstance(s, dict) and isinstance(s.get("names"), list):
        names = [str(n) for n in s["names"]]
        digest = s.get("sha256")
        count = s.get("count")
        return ImageSet(
            count if isinstance(count, int) else len(names),
            names,
            digest if isinstance(digest, str) else None,
        )
    per = data.get("per_image")
    if isinstance(per, dict) and per:
        rows = next(iter(per.values()))
        if (
            isinstance(rows, list)
            and rows
            and all(isinstance(r, dict) and "image" in r for r in rows)
        ):
            return ImageSet(len(rows), [str(r["image"]) for r in rows])
    return None


def load_curve(path: str | Path, name: str | None = None) -> Curve:
    """Read a CompressAI-format results JSON (``{"name", "results": {"bpp": [...], "psnr-rgb": [...]}}``).

    Rates and PSNRs must be numbers at every point; MS-SSIM may be null (undefined, the reason in
    the file's ``undefined``) or, in files of older pc-prior versions, NaN. The image list comes from
    ``image_set`` or, in older files, from the per-image rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_text())  # lenient: older pc-prior files hold a bare NaN
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e}") from e
    res = data.get("results", data) if isinstance(data, dict) else None
    if not isinstance(res, dict) or "bpp" not in res or "psnr-rgb" not in res:
        raise InputError(
            f"{path} is not an RD results file: it needs results.bpp and results['psnr-rgb']"
        )
    assert isinstance(data, dict)
    bpp, psnr = _floats(res, "bpp", path), _floats(res, "psnr-rgb", path)
    if bpp.shape != psnr.shape or bpp.size == 0:
        raise InputError(
            f"{path}: results.bpp and results['psnr-rgb'] must be lists of the same non-zero length"
        )
    for key, arr in (("bpp", bpp), ("psnr-rgb", psnr)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise InputError(
                f"{path}: results[{key!r}] has no value at point {bad[0] + 1} "
                f"({res[key][bad[0]]}); every RD point needs a rate and a PSNR: evaluate that "
                "model again with 'pc-prior eval'"
            )
    ms, ms_why = None, None
    if "ms-ssim-rgb" in res:
        ms = _floats(res, "ms-ssim-rgb", path)
        if ms.shape != bpp.shape:
            raise InputError(
                f"{path}: results['ms-ssim-rgb'] has {ms.size} values for {bpp.size} RD points"
            )
        if not np.isfinite(ms).all():
            why = data.get("undefined")
            why = why.get("ms-ssim-rgb") if isinstance(why, dict) else None
            ms_why = (
                str(why)
                if why
                else f"results['ms-ssim-rgb'] is null or NaN in {path.name} (MS-SSIM is undefined "
                f"for images with a side below {MS_SSIM_MIN_SIDE} px)"
            )
    n = bpp.size
    quality = list(res.get("quality") or [None] * n)
    model = list(res.get("model") or [None] * n)
    order = np.argsort(bpp, kind="stable")
    dataset = data.get("dataset")
    return Curve(
        name or data.get("name") or path.stem,
        bpp[order],
        psnr[order],
        None if ms is None else ms[order],
        [quality[i] for i in order],
        [model[i] for i in order],
        ms_ssim_undefined=ms_why,
        images=_read_image_set(data),
        dataset=str(dataset) if dataset is not None else None,
        source=str(path),
    )


def ms_ssim_db(v: np.ndarray) -> np.ndarray:
    """MS-SSIM in dB, ``-10 log10(1 - v)``, as CompressAI's plots show it."""
    return -10 * np.log10(1 - np.asarray(v, dtype=float))


def _check_method(method: str) -> None:
    if method not in BD_METHODS:
        raise InputError(
            f"unknown BD-rate interpolation {method!r}: use one of {', '.join(BD_METHODS)}"
        )


def bd_rate_details(
    base_bpp: np.ndarray,
    base_dist: np.ndarray,
    cand_bpp: np.ndarray,
    cand_dist: np.ndarray,
    method: str = "akima",
    *,
    label: str = "quality",
) -> dict[str, Any]:
    """Bjøntegaard-delta rate with its caveats: ``{"value", "undefined", "warnings"}``.

    ``value``: percent (negative = the candidate saves rate), NaN when undefined; ``undefined``: why
    not (fewer than 2 points on a curve, fewer than ``BD_MIN_POINTS`` for the ``cubic`` fit, whose
    polynomial fewer points leave undetermined, a quality that does not rise with the rate or is
    undefined, curves that do not overlap), else None; ``warnings``: what makes a value rough
    (fewer than ``BD_MIN_POINTS`` points on a curve, less than ``BD_MIN_OVERLAP`` overlap).
    ``label`` names the quality axis in these texts. Points may come in any order.
    """
    import warnings

    import bjontegaard

    _check_method(method)

    def undefined(why: str) -> dict[str, Any]:
        return {"value": math.nan, "undefined": why, "warnings": []}

    curves = []
    for who, bpp, dist in (("baseline", base_bpp, base_dist), ("candidate", cand_bpp, cand_dist)):
        bpp, dist = np.asarray(bpp, float), np.asarray(dist, float)
        order = np.argsort(bpp, kind="stable")
        bpp, dist = bpp[order], dist[order]
        n = len(bpp)
        if n < 2:
            return undefined(
                f"the {who} curve has {n} point{'' if n == 1 else 's'}; a BD-rate needs at least 2 "
                f"per curve ({BD_MIN_POINTS} to mean much)"
            )
        if method == "cubic" and n < BD_MIN_POINTS:
            return undefined(
                f"the {who} curve has {n} points and the cubic fit needs at least {BD_MIN_POINTS} "
                "(with fewer its polynomial is not determined): use the akima or pchip method, or "
                "evaluate more qualities"
            )
        if not np.isfinite(dist).all():
            return undefined(f"the {who} curve's {label} is undefined at some points")
        if not (np.isfinite(bpp).all() and (bpp > 0).all()):
            return undefined(f"the {who} curve has a rate that is not a positive number")
        # an RD curve whose quality does not rise with the rate has no BD-rate
        if not (np.diff(dist) > 0).all():
            return undefined(
                f"the {who} curve's {label} does not rise with the rate "
                f"({', '.join(f'{d:.4g}' for d in dist)} at rising bpp)"
            )
        curves.append((bpp, dist))
    (base_bpp, base_dist), (cand_bpp, cand_dist) = curves
    lo, hi = max(base_dist[0], cand_dist[0]), min(base_dist[-1], cand_dist[-1])
    span = max(base_dist[-1], cand_dist[-1]) - min(base_dist[0], cand_dist[0])
    overlap = max(hi - lo, 0.0) / span
    if overlap <= 0:
        return undefined(
            f"the curves do not overlap in {label} (baseline {base_dist[0]:.4g} to "
            f"{base_dist[-1]:.4g}, candidate {cand_dist[0]:.4g} to {cand_dist[-1]:.4g})"
        )
    notes = []
    nb, nc = len(base_bpp), len(cand_bpp)
    if min(nb, nc) < BD_MIN_POINTS:
        fit = "a straight line" if min(nb, nc) == 2 else "a curve through 3 points"
        notes.append(
            f"BD-rate from {nb} baseline and {nc} candidate points: it needs at least "
            f"{BD_MIN_POINTS} points per curve for the {method} fit to mean much (through "
            f"{min(nb, nc)} points the fit is {fit}), so treat it as rough; evaluate each codec at "
            f"{BD_MIN_POINTS} or more qualities"
        )
    if overlap < BD_MIN_OVERLAP:
        notes.append(
            f"BD-rate ({label}): the curves overlap on {100 * overlap:.0f}% of their joint "
            f"{label} range only; the BD-rate averages over that part alone"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = float(
                bjontegaard.bd_rate(
                    base_bpp,
                    base_dist,
                    cand_bpp,
                    cand_dist,
                    method=method,
                    require_matching_points=False,
                )
            )
        except (ValueError, AssertionError) as e:
            return undefined(f"the bjontegaard package could not compute it: {e}")
    if not math.isfinite(value):
        return undefined("the bjontegaard package found no finite BD-rate for these curves")
    return {"value": value, "undefined": None, "warnings": notes}


def bd_rate(
    base_bpp: np.ndarray,
    base_dist: np.ndarray,
    cand_bpp: np.ndarray,
    cand_dist: np.ndarray,
    method: str = "akima",
) -> float:
    """Bjøntegaard-delta rate (percent; negative = candidate saves rate) via the ``bjontegaard`` package.

    Needs at least 2 points per curve (4 for ``cubic``; fewer than 4 make it rough) whose quality
    rises with the rate (points in any order); NaN when the curves cannot be compared.
    :func:`bd_rate_details` also says why and what makes the value rough.
    """
    return float(bd_rate_details(base_bpp, base_dist, cand_bpp, cand_dist, method)["value"])


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
    identical and ``d_psnr`` is 0: the saving is then a saving at fixed reconstruction. ``d_ms_ssim``
    is left out where either MS-SSIM is missing or undefined.
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
            d = float(cand.ms_ssim[j] - base.ms_ssim[i])
            if math.isfinite(d):
                row["d_ms_ssim"] = d
        rows.append(row)
    return rows


def _measured_on(c: Curve) -> str:
    assert c.images is not None
    return f"{c.source}: " + (f"{c.dataset}, " if c.dataset else "") + c.images.describe()


def check_image_sets(
    base: Curve, cand: Curve, allow_different: bool = False
) -> tuple[str, list[str]]:
    """Whether both curves were measured on the same images: (a line saying so, warnings).

    By pixel digest where both files record one, else by file names; files that record no image
    list (CompressAI's, say) are not checked. Different images raise ``InputError`` naming both sets,
    unless ``allow_different``, which turns it into a warning.
    """
    b, c = base.images, cand.images
    if b is None or c is None:
        missing = [x.source for x, s in ((base, b), (cand, c)) if s is None]
        return (
            f"not checked: {' and '.join(missing)} record{'s' if len(missing) == 1 else ''} no "
            "image list (written by another tool or an older pc-prior)",
            [],
        )
    by_pixels = b.sha256 is not None and c.sha256 is not None
    same = b.sha256 == c.sha256 if by_pixels else sorted(b.names) == sorted(c.names)
    how = "pixel digests" if by_pixels else "file names only (no pixel digest in both files)"
    if same:
        return f"the same {b.describe()} in both files (checked by {how})", []
    only_b = sorted(set(b.names) - set(c.names))
    only_c = sorted(set(c.names) - set(b.names))
    if only_b or only_c:
        detail = (
            f"only in the baseline: {', '.join(only_b[:5]) or 'none'}"
            f"{' ...' if len(only_b) > 5 else ''}; only in the candidate: "
            f"{', '.join(only_c[:5]) or 'none'}{' ...' if len(only_c) > 5 else ''}"
        )
    else:
        detail = "the file names match but the pixels differ (other crops, sizes or versions)"
    msg = (
        f"the two results files measured different images: baseline {_measured_on(base)}; "
        f"candidate {_measured_on(cand)}; {detail}"
    )
    if not allow_different:
        raise InputError(
            msg + ". Rate savings and BD-rates across different images measure the images, not "
            "the codecs: evaluate both codecs on the same images ('pc-prior eval' with the same "
            "--data and --limit), or pass --allow-different-images to compare them anyway"
        )
    return "DIFFERENT (compared anyway: --allow-different-images)", [msg]


def compare(
    base_path: str | Path,
    cand_path: str | Path,
    method: str = "akima",
    *,
    allow_different_images: bool = False,
) -> dict[str, Any]:
    """Rate savings per quality and BD-rates (PSNR, MS-SSIM in dB) of ``cand_path`` against ``base_path``.

    Also ``points`` (per curve), ``images`` (whether both measured the same images:
    :func:`check_image_sets`, which refuses different ones unless ``allow_different_images``),
    ``undefined`` (for each BD-rate that is NaN, why) and ``warnings`` (what makes the result rough
    or doubtful: fewer than ``BD_MIN_POINTS`` points per curve, a small overlap, other images).
    """
    _check_method(method)
    base, cand = load_curve(base_path), load_curve(cand_path)
    images, notes = check_image_sets(base, cand, allow_different_images)
    out: dict[str, Any] = {
        "baseline": base.name,
        "candidate": cand.name,
        "points": {"baseline": int(base.bpp.size), "candidate": int(cand.bpp.size)},
        "images": images,
        "per_quality": rate_savings(base, cand),
    }
    undefined: dict[str, str] = {}
    results = {
        "bd_rate_psnr": bd_rate_details(
            base.bpp, base.psnr, cand.bpp, cand.psnr, method, label="PSNR-RGB"
        )
    }
    if base.ms_ssim is None or cand.ms_ssim is None:
        files = [c.source for c in (base, cand) if c.ms_ssim is None]
        results["bd_rate_ms_ssim"] = {
            "value": math.nan,
            "undefined": f"no MS-SSIM results in {' and '.join(files)}",
            "warnings": [],
        }
    elif base.ms_ssim_undefined or cand.ms_ssim_undefined:
        why = [
            f"{who}: {c.ms_ssim_undefined}"
            for who, c in (("baseline", base), ("candidate", cand))
            if c.ms_ssim_undefined
        ]
        results["bd_rate_ms_ssim"] = {
            "value": math.nan,
            "undefined": "MS-SSIM undefined (" + "; ".join(why) + ")",
            "warnings": [],
        }
    else:
        results["bd_rate_ms_ssim"] = bd_rate_details(
            base.bpp,
            ms_ssim_db(base.ms_ssim),
            cand.bpp,
            ms_ssim_db(cand.ms_ssim),
            method,
            label="MS-SSIM dB",
        )
    for key, r in results.items():
        out[key] = r["value"]
        if r["undefined"]:
            undefined[key] = r["undefined"]
        notes += [w for w in r["warnings"] if w not in notes]
    out["undefined"] = undefined
    out["warnings"] = notes
    out["_curves"] = (base, cand)
    return out


def _f(v: float, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _points(res: dict[str, Any], who: str) -> str:
    n = res.get("points", {}).get(who)
    return "" if n is None else f" ({n} RD point{'' if n == 1 else 's'})"


def format_comparison(res: dict[str, Any]) -> str:
    """A plain-text table of :func:`compare`'s result, with its points, images and warnings."""
    lines = [
        f"baseline:  {res['baseline']}{_points(res, 'baseline')}",
        f"candidate: {res['candidate']}{_points(res, 'candidate')}",
    ]
    if res.get("images"):
        lines.append(f"images:    {res['images']}")
    lines += [
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
    undefined = res.get("undefined", {})
    lines.append("")
    for key, label in (("bd_rate_psnr", "PSNR-RGB"), ("bd_rate_ms_ssim", "MS-SSIM dB")):
        head = f"BD-rate ({label}):".ljust(22)
        if key in undefined:
            lines.append(f"{head} n/a: {undefined[key]}")
        else:
            lines.append(f"{head} {_f(res[key], '+.2f')}%")
    lines.append("(negative = the candidate needs less rate for the same quality)")
    lines += [f"warning: {w}" for w in res.get("warnings", [])]
    return "\n".join(lines)


def comparison_record(res: dict[str, Any]) -> dict[str, Any]:
    """:func:`compare`'s result for strict JSON: without the curves, each undefined BD-rate null
    (its reason stays in ``undefined``)."""
    undefined = res.get("undefined", {})
    return {k: (None if k in undefined else v) for k, v in res.items() if not k.startswith("_")}


def plot_rd(base: Curve, cand: Curve, output: str | Path, title: str | None = None) -> Path:
    """Save a PNG with PSNR-RGB (and MS-SSIM dB when both define it) against bpp for both curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("PSNR-RGB [dB]", lambda c: c.psnr)]
    if (
        base.ms_ssim is not None
        and cand.ms_ssim is not None
        and not (base.ms_ssim_undefined or cand.ms_ssim_undefined)
    ):
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
