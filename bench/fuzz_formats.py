"""Fuzz every pc-prior format with many mutated streams and files; print (and save) the counts.

    OMP_NUM_THREADS=1 python bench/fuzz_formats.py --cases 100000 --out runs/fuzz/fuzz.json

Targets, mutations and outcomes are described in ``bench/fuzzing.py``. A defect is a case that
decoded to a different output without an error (``silent_wrong``), raised an exception that is
not a project error (``foreign_error``) or took more than 10 s (``slow``), or a code-execution
marker created by a pickled payload. The script exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from fuzzing import run_fuzz  # bench/fuzzing.py, beside this script


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    report = run_fuzz(args.cases, seed=args.seed, progress=True)
    summary = {
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        **report.summary(),
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 1 if report.defects else 0


if __name__ == "__main__":
    raise SystemExit(main())
