#!/usr/bin/env bash
# Device suite (issue 16): every accelerator check in one time-boxed run; logic in bench/device_suite.py.
#
#   bash bench/device_suite.sh [--quick] [--device cuda|cpu] [--out DIR] [--shared DIR] [--minutes M]
#
# Writes OUT/results.json (one entry per check: status ok/skipped/failed, reason, figures) and
# OUT/suite.log. Exit code 1 when a check failed (the others still ran), 0 otherwise.
#
# On the lent GPU machine (one H200; no compressai, constriction, bjontegaard or pyjuice there, no
# network, no ../shared): first, here, `bash bench/device_suite_prepare.sh` (wheels and a data
# subset into the ignored .device/), then call the device tool's `run` with exactly:
#
#   command:   PYTHONUNBUFFERED=1 bash bench/device_suite.sh --device cuda --out $OUT --minutes 9
#   carry:     [".device"]
#   timeout_s: 600
#
# Missing packages are installed first from .device/wheels (pip install --no-index --no-deps
# --find-links .device/wheels --target $PC_PRIOR_SITE, default /tmp/pc-prior-site, put on
# PYTHONPATH for this run only; pyjuice not with --quick), and the project with
# `pip install --no-deps -e .` when `import pc_prior` fails (or PYTHONPATH=repo when that cannot
# build offline). CI runs
# `bash bench/device_suite.sh --quick --device cpu --out DIR` (tests/eval/test_device_suite.py).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
WHEELS=.device/wheels
SITE=${PC_PRIOR_SITE:-/tmp/pc-prior-site}

quick=0
for a in "$@"; do [ "$a" = --quick ] && quick=1; done
mods="compressai:compressai constriction:constriction bjontegaard:bjontegaard pytorch_msssim:pytorch-msssim"
[ $quick = 1 ] || mods="$mods pyjuice:pyjuice"  # pyjuice only serves the CUDA comparison
missing=()
for pair in $mods; do
    mod=${pair%%:*} pkg=${pair##*:}
    "$PY" -c "import $mod" >/dev/null 2>&1 && continue
    ls "$WHEELS/${pkg//-/_}"-*.whl >/dev/null 2>&1 \
        || { echo "device_suite: $mod is missing and no wheel for it is in $WHEELS"; continue; }
    missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then  # into a folder of its own, never this Python's site-packages
    echo "device_suite: installing ${missing[*]} from $WHEELS into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --find-links "$WHEELS" \
        --target "$SITE" "${missing[@]}" || echo "device_suite: wheel install failed"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import pc_prior" >/dev/null 2>&1; then
    echo "device_suite: installing the project (pip install --no-deps -e .)"
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
        || "$PY" -m pip install -q --no-deps -e . >/dev/null 2>&1 \
        || { echo "device_suite: editable install failed; using PYTHONPATH=$PWD"
             export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
fi
exec "$PY" bench/device_suite.py "$@"
