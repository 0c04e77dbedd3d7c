"""Size and load time of PC codec files against their base codec files, and bit-exact decoding after a reload.

    pc-prior prior fit ../shared/models/bmshj2018-factorized-q2.pt --data ../shared/data/bsds500/train -o runs/pc/factorized-q2.pt
    pc-prior prior fit ../shared/models/bmshj2018-hyperprior-q1.pt --data ../shared/data/bsds500/train --conditional -o runs/pc/hyperprior-q1.pt
    OMP_NUM_THREADS=1 python bench/codec_file_size.py runs/pc/*.pt [--runs 3] [--json runs/pc/sizes.json]

Each argument is a PC codec file (``save_codec``: compact, the default); its base is the shared
codec of the same architecture and quality (``--base-dir``). Reports bytes, the ratio to the base
file, the median ``load_codec`` time over ``--runs`` loads next to the base codec's, and checks
that a second, fresh load decodes the first load's strings of a BSDS500 test photo bit-exactly
and codes the photo to the same bytes (the file, not the process, holds the model). The file's
size depends on the fit's alphabets, so measure files fitted with the defaults on the full
training folder, as above.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from pc_prior.files import read_file
from pc_prior.images import FolderImages
from pc_prior.integrations import load_codec

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def timed_load(path: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        load_codec(path)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(path: Path, base_dir: Path, image: torch.Tensor, runs: int) -> dict:
    content, _ = read_file(path)
    base = base_dir / f"{content['arch']}-q{content['quality']}.pt"
    first, second = load_codec(path), load_codec(path)
    with torch.no_grad():
        enc = first.compress(image)
        dec = first.decompress(enc["strings"], enc["shape"])["x_hat"]
        exact = torch.equal(second.decompress(enc["strings"], enc["shape"])["x_hat"], dec) and (
            second.compress(image)["strings"] == enc["strings"]
        )
    return {
        "file": str(path),
        "base": str(base),
        "pc_modules": content.get("pc_modules", []),
        "bytes": path.stat().st_size,
        "base_bytes": base.stat().st_size,
        "ratio_to_base": path.stat().st_size / base.stat().st_size,
        "load_s": timed_load(path, runs),
        "base_load_s": timed_load(base, runs),
        "bit_exact_after_reload": exact,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("codecs", nargs="+", type=Path, help="PC codec files")
    ap.add_argument("--base-dir", type=Path, default=SHARED / "models")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    image = FolderImages(SHARED / "data" / "bsds500" / "test", max_images=1)[0]
    rows = [measure(p, args.base_dir, image, args.runs) for p in args.codecs]
    print("| file | bytes | base bytes | vs. base | load s (base) | bit-exact after reload |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {Path(r['file']).name} | {r['bytes']:,} | {r['base_bytes']:,} | "
            f"{r['ratio_to_base']:.2f}x | {r['load_s']:.2f} ({r['base_load_s']:.2f}) | "
            f"{'yes' if r['bit_exact_after_reload'] else 'NO'} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
