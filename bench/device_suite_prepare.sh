#!/usr/bin/env bash
# Prepare a device-suite run (bench/device_suite.sh): run HERE, before calling the device tool.
#
#   bash bench/device_suite_prepare.sh [--shared DIR] [--kodak N] [--bsds N] [--mnist-train N] [--mnist-test N]
#
# The GPU machine has Python 3.12 and torch but no compressai, constriction, bjontegaard or
# pyjuice, no network, and no ../shared. This fills the ignored folder .device/ (which the run
# carries) with:
#   .device/wheels/  cp312 x86-64 wheels (pip download --no-deps --only-binary=:all:) of compressai,
#                    constriction, bjontegaard, pytorch-msssim (compressai imports it; not there) and
#                    pyjuice (pure Python; triton, numba, networkx are there)
#   .device/shared/  a subset of ../shared in its layout: models/bmshj2018-factorized-q1.pt and
#                    bmshj2018-hyperprior-q1.pt (whole: 17 MB of the 64 MiB), data/kodak (first N
#                    images, default 8 of 24), data/bsds500/train (first N, default 32 of 200),
#                    data/mnist (the first 30,000 training and 5,000 test images, re-gzipped idx)
# and prints what would travel (tracked + untracked-not-ignored files + .device), failing above
# 60 MiB (the limit is 64 MiB). Then, in the device tool:
#
#   run(command="PYTHONUNBUFFERED=1 bash bench/device_suite.sh --device cuda --out $OUT --minutes 9",
#       carry=[".device"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=../shared KODAK=8 BSDS=32 MNIST_TRAIN=30000 MNIST_TEST=5000
while [ $# -gt 0 ]; do
    case "$1" in
        --shared) SHARED=$2; shift 2 ;;
        --kodak) KODAK=$2; shift 2 ;;
        --bsds) BSDS=$2; shift 2 ;;
        --mnist-train) MNIST_TRAIN=$2; shift 2 ;;
        --mnist-test) MNIST_TEST=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
DEST=.device
LIMIT_MIB=60
mkdir -p "$DEST/wheels"

# -- wheels for the device's Python 3.12 (one version of each) ---------------------------------
for spec in compressai==1.2.8 constriction==0.5.0 bjontegaard==1.3.0 pytorch-msssim==1.0.0 pyjuice==2.6.3; do
    name=${spec%%==*}
    if ls "$DEST/wheels/${name//-/_}"-*.whl >/dev/null 2>&1; then continue; fi
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$DEST/wheels" "$spec" 2>&1 | { grep -v "^WARNING: Location" || true; }
    ls "$DEST/wheels/${name//-/_}"-*.whl >/dev/null 2>&1 \
        || echo "no cp312 x86-64 wheel for $spec (the suite reports it missing)"
done

# -- data and codecs, in ../shared's layout ------------------------------------------------------
[ -d "$SHARED" ] || { echo "$SHARED not found: pass --shared DIR" >&2; exit 1; }
rm -rf "$DEST/shared"
mkdir -p "$DEST/shared/models" "$DEST/shared/data/kodak" "$DEST/shared/data/bsds500/train" \
    "$DEST/shared/data/mnist"
# the two codecs the suite fits PC priors into (prior-fit-*, codec-speed-*)
cp "$SHARED/models/bmshj2018-factorized-q1.pt" "$SHARED/models/bmshj2018-hyperprior-q1.pt" \
    "$DEST/shared/models/"
ls "$SHARED/data/kodak" | grep -i '\.png$' | sort | head -n "$KODAK" \
    | while read -r f; do cp "$SHARED/data/kodak/$f" "$DEST/shared/data/kodak/"; done
ls "$SHARED/data/bsds500/train" | sort | head -n "$BSDS" \
    | while read -r f; do cp "$SHARED/data/bsds500/train/$f" "$DEST/shared/data/bsds500/train/"; done
"$PY" - "$SHARED/data/mnist" "$DEST/shared/data/mnist" "$MNIST_TRAIN" "$MNIST_TEST" <<'EOF'
"""The first N images of each MNIST split, as gzipped idx files (the loader's format)."""
import gzip
import struct
import sys
from pathlib import Path

src, dst, n_train, n_test = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for stem, n in (("train-images-idx3-ubyte", n_train), ("t10k-images-idx3-ubyte", n_test)):
    path = src / (stem + ".gz")
    data = gzip.open(path).read() if path.exists() else (src / stem).read_bytes()
    magic, count, rows, cols = struct.unpack(">IIII", data[:16])
    n = min(n, count)
    body = data[16 : 16 + n * rows * cols]
    with gzip.open(dst / (stem + ".gz"), "wb", compresslevel=9) as f:
        f.write(struct.pack(">IIII", magic, n, rows, cols) + body)
    print(f"mnist {stem}: {n} of {count} images")
EOF

# -- what travels --------------------------------------------------------------------------------
git check-ignore -q "$DEST" || { echo "$DEST is not ignored by git: add /.device/ to .gitignore" >&2; exit 1; }
# (a tracked file deleted in the working tree does not travel: stat skips it)
tree_bytes=$(git ls-files -z -co --exclude-standard \
    | { xargs -0 -r stat -c %s 2>/dev/null || true; } | awk '{s+=$1} END {print s+0}')
dev_bytes=$(du -sb "$DEST" | cut -f1)
for part in wheels shared/models shared/data/kodak shared/data/bsds500 shared/data/mnist; do
    printf '  %-22s %6.1f MiB\n' "$DEST/$part" "$(du -sb "$DEST/$part" | awk '{print $1 / 1048576}')"
done
total=$((tree_bytes + dev_bytes))
awk -v t="$tree_bytes" -v d="$dev_bytes" -v s="$total" \
    'BEGIN { printf "travels: working tree %.1f MiB + .device %.1f MiB = %.1f MiB (limit 64 MiB)\n", t/1048576, d/1048576, s/1048576 }'
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "over $LIMIT_MIB MiB: use fewer images (--kodak, --bsds, --mnist-train)" >&2
    exit 1
fi
echo 'device run: run(command="PYTHONUNBUFFERED=1 bash bench/device_suite.sh --device cuda --out $OUT --minutes 9", carry=[".device"], timeout_s=600)'
