"""Tables of ``pc-prior lossless bench`` results beside reference numbers from the literature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["REFERENCE_BPD", "load_bench", "lossless_table"]

#: Published bits per dimension by dataset, as (label, bpd, note) rows beside which
#: ``lossless_table`` prints the measured ones; reference numbers from the paper, not reproduced
#: here: A. Liu, S. Mandt, G. Van den Broeck, "Lossless Compression with Probabilistic Circuits",
#: ICLR 2022.
REFERENCE_BPD: dict[str, list[tuple[str, float, str]]] = {
    "mnist": [("HCLT (Liu et al., ICLR 2022)", 1.20, "reference number from the paper")],
}

_REQUIRED = ("bpd_theoretical", "bpd_coded", "encode_seconds", "decode_seconds", "num_images")


def load_bench(path: str | Path) -> dict[str, Any]:
    """Read one ``lossless bench`` JSON object, checking it has the keys the report needs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lossless bench result not found: {path}")
    text = path.read_text().strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        # 'lossless bench' prints one JSON line; tolerate log lines before it in a captured stdout
        obj = None
        for line in reversed(text.splitlines()):
            try:
                obj = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
        if obj is None:
            raise InputError(f"{path} does not contain a JSON object") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected one JSON object, got {type(obj).__name__}")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise InputError(
            f"{path} is not a 'pc-prior lossless bench' result: missing {', '.join(missing)}"
        )
    return obj


def lossless_table(
    paths: list[str | Path],
    dataset: str = "mnist",
    labels: list[str] | None = None,
    extra_references: list[tuple[str, float]] | None = None,
) -> str:
    """A Markdown table: bpd (theoretical, coded), coding overhead and ms/image per run, then reference rows."""
    if not paths:
        raise InputError("give at least one 'lossless bench' JSON file")
    if labels is not None and len(labels) != len(paths):
        raise InputError(f"{len(labels)} labels for {len(paths)} files")
    lines = [
        "| model | images | bpd (theoretical) | bpd (coded) | bpd (reference) | overhead | encode ms/img "
        "| decode ms/img | source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(paths):
        r = load_bench(p)
        n = max(int(r["num_images"]), 1)
        name = labels[i] if labels else Path(p).stem
        over = (
            100.0 * (r["bpd_coded"] / r["bpd_theoretical"] - 1.0)
            if r["bpd_theoretical"]
            else float("nan")
        )
        lines.append(
            f"| {name} | {r['num_images']} | {r['bpd_theoretical']:.4f} | {r['bpd_coded']:.4f} | "
            f"| {over:+.2f}% | {1000 * r['encode_seconds'] / n:.2f} | {1000 * r['decode_seconds'] / n:.2f} "
            f"| measured ({Path(p).name}) |"
        )
    refs = [(n, v, s) for n, v, s in REFERENCE_BPD.get(dataset.lower(), [])]
    refs += [(n, v, "reference given by the user") for n, v in (extra_references or [])]
    for name, bpd, src in refs:
        lines.append(f"| {name} | | | | {bpd:.2f} | | | | {src} |")
    if dataset.lower() not in REFERENCE_BPD and not extra_references:
        lines.append(
            f"\n(no reference numbers stored for dataset {dataset!r}; add some with --reference NAME=BPD)"
        )
    return "\n".join(lines)
