"""Peak memory of ``fit_prior`` against the size of the image folder (issue 31, item 3).

``fit_prior`` keeps the latents of at most ``max_images`` images (``ImageFit.max_images``): a
larger folder gives a uniform random sample of them (only those are read), a DataLoader is
streamed once through the codec and a reservoir keeps the sample. This bench fits the default
prior into a codec on folders of N crops (N = ``--sizes``) three ways, each in a fresh process
whose peak resident memory (``ru_maxrss``) is read:

- ``folder``: ``fit_prior(net, folder, max_images=M)``;
- ``stream``: ``fit_prior(net, DataLoader(folder), max_images=M)``, every image through the codec;
- ``all``: ``fit_prior(net, folder, max_images=None)``, every image's latents kept (what
  ``fit_prior`` did before the cap; memory grows with N).

The folder of N images links the 400 bsds500 photos (train and test, 481x321) over and over
(``--size S`` writes random SxS crops of them instead): about 0.46 MB of bottleneck latents per
photo for a factorized q1 codec (192 channels, float32), so "all" needs about 0.46 GB per
thousand images for the latents alone, and its fit works on all of their positions.

    OMP_NUM_THREADS=2 python bench/bench_fit_memory.py --sizes 200 400 800 1600 --max-images 200 \\
        --ways stream all --all-up-to 800 --out docs/results/fit-memory/factorized-q1.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def child(codec: str, folder: str, way: str, max_images: int) -> None:
    """Fit in this process; print one JSON line: peak RSS (MiB) before and after, seconds."""
    import torch
    from torch.utils.data import DataLoader

    from pc_prior.images import FolderImages
    from pc_prior.integrations import fit_prior, load_codec

    torch.manual_seed(0)
    net = load_codec(codec)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    if way == "stream":
        images = FolderImages(folder, 64)
        source = DataLoader(images, batch_size=1, num_workers=0)  # [1, 3, H, W] batches
        fit_prior(net, (x[0] for x in source), max_images=max_images, progress=False)
    else:
        fit_prior(net, folder, max_images=None if way == "all" else max_images, progress=False)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rss_before_mib": before, "peak_rss_mib": peak, "seconds": seconds}))


def make_folder(root: Path, n: int, size: int) -> Path:
    """``n`` images: links to the bsds500 photos, over and over (``size`` 0), or random ``size``²
    crops of them, as PNGs (seeded)."""
    import torch
    from PIL import Image

    from pc_prior.images import list_images

    folder = root / f"images-{n}"
    folder.mkdir(parents=True)
    photos = list_images(SHARED / "data" / "bsds500")
    if size == 0:
        for k in range(n):
            photo = photos[k % len(photos)]
            (folder / f"{k:05d}{photo.suffix}").symlink_to(photo.resolve())
        return folder
    g = torch.Generator().manual_seed(0)
    cache: dict[int, Image.Image] = {}
    for k in range(n):
        i = k % len(photos)
        im = cache.setdefault(i, Image.open(photos[i]).convert("RGB"))
        w, h = im.size
        top = int(torch.randint(0, h - size + 1, (), generator=g))
        left = int(torch.randint(0, w - size + 1, (), generator=g))
        im.crop((left, top, left + size, top + size)).save(folder / f"{k:05d}.png")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codec", default=str(SHARED / "models" / "bmshj2018-factorized-q1.pt"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--max-images", type=int, default=250)
    ap.add_argument("--size", type=int, default=0, help="side of crops (0: whole photos)")
    ap.add_argument("--ways", nargs="+", default=["folder", "stream", "all"])
    ap.add_argument("--all-up-to", type=int, help="run 'all' only on folders up to this size")
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--child", nargs=4, metavar=("CODEC", "FOLDER", "WAY", "MAX"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.child:
        codec, folder, way, m = args.child
        child(codec, folder, way, int(m))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = make_folder(Path(tmp), n, args.size)
            for way in args.ways:
                if way == "all" and args.all_up_to is not None and n > args.all_up_to:
                    continue
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    args.codec,
                    str(folder),
                    way,
                    str(args.max_images),
                ]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                row = {"images": n, "way": way, **json.loads(out.strip().splitlines()[-1])}
                rows.append(row)
                print(
                    f"{n:6d} images  {way:6s}  peak {row['peak_rss_mib']:7.0f} MiB "
                    f"(after loading {row['rss_before_mib']:5.0f})  {row['seconds']:6.1f} s",
                    flush=True,
                )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in vars(args).items() if k not in ("out", "child")}
        args.out.write_text(json.dumps({"args": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
