"""Size and load time of a PC codec file against its base codec file, and bit-exact decoding after a reload.

    OMP_NUM_THREADS=1 python bench/codec_file_size.py [--quality 1] [--images 4] [--runs 3]

Takes the shared base hyperprior (``../shared/models/bmshj2018-hyperprior-qN.pt``), swaps in
``PCEntropyBottleneck`` + ``PCConditional`` with the default circuit sizes (``pc_prior.settings``)
and fits them briefly on a few BSDS500 train photos (the file's size does not depend on how long
the circuit was trained), then saves it compactly (the default) and with its tables
(``save_codec(..., tables=True)``). Reports bytes, the ratio to the base file, median load time
of ``load_codec`` over ``--runs`` loads next to the base codec's, and checks that the reloaded
codec decodes a photo's strings bit-exactly and encodes it to the same bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pc_prior.images import FolderImages
from pc_prior.integrations import fit_prior, load_codec, save_codec

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def timed_load(path: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        load_codec(path)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", type=int, default=1)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    base = SHARED / "models" / f"bmshj2018-hyperprior-q{args.quality}.pt"
    net = load_codec(base)
    images = list(FolderImages(SHARED / "data" / "bsds500" / "train", max_images=args.images))
    fit_prior(
        net,
        images,
        name=("entropy_bottleneck", "gaussian_conditional"),
        epochs=1,
        progress=False,
        conditional={"steps": 20},
    )
    net.update(force=True)
    x = images[0]
    with torch.no_grad():
        enc = net.compress(x)
        dec = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    out = {"base": {"path": str(base), "bytes": base.stat().st_size}}
    out["base"]["load_s"] = timed_load(base, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        for name, tables in (("compact", False), ("with_tables", True)):
            path = save_codec(
                net, Path(tmp) / f"{name}.pt", "bmshj2018-hyperprior", args.quality, tables=tables
            )
            fresh = load_codec(path)
            with torch.no_grad():
                exact = torch.equal(
                    fresh.decompress(enc["strings"], enc["shape"])["x_hat"], dec
                ) and (fresh.compress(x)["strings"] == enc["strings"])
            out[name] = {
                "bytes": path.stat().st_size,
                "ratio_to_base": path.stat().st_size / out["base"]["bytes"],
                "load_s": timed_load(path, args.runs),
                "bit_exact_after_reload": exact,
            }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
