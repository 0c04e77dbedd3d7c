"""Write photos that no default of pc-prior was chosen on into a folder of PNGs.

Issue 14 asks that the bottleneck's defaults, chosen on bsds500/test, give savings on photos
not used for any choice within 3 points of Kodak's. The machine's only network is the package
registries, so the photos come from installed packages: eight from ``skimage.data`` (those of
``pc-prior demo``, which the warm-start schedule of ``experiments/bench_adapt.py`` was chosen on, but
no setting of a fit from scratch) and matplotlib's ``grace_hopper.jpg``.

    python tools/unseen_photos.py runs/data/unseen
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE = (
    "rocket",
    "motorcycle_left",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "astronaut",
    "coffee",
    "chelsea",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    import matplotlib

    from pc_prior.eval.demo import skimage_photo

    args.out.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE:
        Image.fromarray(skimage_photo(name)).save(args.out / f"{name}.png")
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = np.asarray(Image.open(hopper).convert("RGB"))
    Image.fromarray(img).save(args.out / "grace_hopper.png")
    print(f"wrote {len(SKIMAGE) + 1} photos to {args.out}")


if __name__ == "__main__":
    main()
