#!/usr/bin/env bash
# Device suite: the CUDA-marked tests and the maintained benches on one device, each step time-boxed.
#
#   bash bench/device_suite.sh [--quick] [--device cuda|cpu] [--out DIR] [--shared DIR]
#                              [--minutes M] [--keep-work]
#
# Steps, in order (each its own process under `timeout`; a step that fails or runs out of time is
# recorded and the later ones still run):
#   environment          Python, torch, the GPU and package versions; fails when --device names
#                        CUDA and torch sees none                          -> environment.json
#   data                 (--quick only) a tiny ../shared look-alike: tests/helpers.py make_shared
#   tests                pytest tests/cuda tests/core/test_device.py with
#                        PC_PRIOR_TEST_DEVICE=DEVICE (cross-device determinism, RD fine-tune),
#                        and without --quick the golden-stream tests   -> tests.xml (JUnit)
#   prior-fit-factorized, prior-fit-hyperprior
#                        pc-prior prior fit of factorized q1 and hyperprior q1 (--conditional) on
#                        BSDS500, on DEVICE (settings' defaults; fewer images and Adam steps)
#   codec-speed-factorized, codec-speed-hyperprior
#                        bench/bench_codec_speed.py --devices DEVICE: base codec against its PC
#                        codec on Kodak                        -> codec-speed-{factorized,hyperprior}.json
#   lossless-fit         pc-prior lossless fit of an MNIST HCLT (one epoch) on DEVICE
#   lossless-bench       bench/bench_lossless.py --device DEVICE: coded bpd, coding speed, an EM
#                        epoch, and pyjuice's where CUDA and pyjuice are  -> lossless.json
#   em-epoch             bench/bench_em_epoch.py --device DEVICE         -> em-epoch.jsonl
#
# Writes under OUT: steps.jsonl (one JSON line per step, written as it ends: step, status
# ok/failed/timeout/skipped, rc, seconds, limit_s, output, reason), suite.log (every step's output)
# and the outputs above: eight files, the most the device tool brings back. Exit code 1 when a step
# failed or timed out, else 0. A step whose input is missing is skipped, naming it. --minutes
# (default 9; --quick 30) bounds the whole run: a step's limit is its own cap or the time left,
# whichever is less, and a step with under 15 s left is skipped. --quick runs every step tiny
# (synthetic data, tiny codecs, few steps) with caps of 10 minutes; CI runs
# `bash bench/device_suite.sh --quick --device cpu --out DIR` (tests/eval/test_device_suite.py).
#
# On the lent GPU machine (no compressai, constriction, bjontegaard or pyjuice there, no network,
# no ../shared): first, here, `bash bench/device_suite_prepare.sh` (wheels and a data subset into
# the ignored .device/), then call the device tool's `run` with exactly:
#
#   command:   PYTHONUNBUFFERED=1 bash bench/device_suite.sh --device cuda --out $OUT --minutes 9
#   carry:     [".device"]
#   timeout_s: 600
#
# Missing packages are installed first from .device/wheels (pip install --no-index --no-deps
# --find-links .device/wheels --target $PC_PRIOR_SITE, default /tmp/pc-prior-site, put on
# PYTHONPATH for this run only; pyjuice not with --quick), and the project with
# `pip install --no-deps -e .` when `import pc_prior` fails outside the repository, as the benches
# import it (or PYTHONPATH=repo when that cannot build offline). Data: .device/shared, else
# ../shared (--shared DIR overrides; --quick builds its own).
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
# the absent modules, in one interpreter (find_spec imports nothing: seconds saved in CI)
absent=$("$PY" -c 'import importlib.util as u, sys
print(" ".join(a for a in sys.argv[1:] if u.find_spec(a.split(":")[0]) is None))' $mods)
missing=()
for pair in $absent; do
    mod=${pair%%:*} pkg=${pair##*:}
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
# pc_prior as the benches see it (bench/*.py run with bench/ first on sys.path, not the repo)
if ! (cd "${TMPDIR:-/tmp}" && "$PY" -c "import pc_prior") >/dev/null 2>&1; then
    echo "device_suite: installing the project (pip install --no-deps -e .)"
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
        || "$PY" -m pip install -q --no-deps -e . >/dev/null 2>&1 \
        || { echo "device_suite: editable install failed; using PYTHONPATH=$PWD"
             export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
fi

# -- arguments ---------------------------------------------------------------------------------
DEVICE=cuda OUT=runs/device-suite SHARED="" MINUTES="" KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) shift ;;
        --device) DEVICE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --shared) SHARED=$2; shift 2 ;;
        --minutes) MINUTES=$2; shift 2 ;;
        --keep-work) KEEP=1; shift ;;
        *) echo "device_suite: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$MINUTES" ] || MINUTES=$([ $quick = 1 ] && echo 30 || echo 9)
deadline=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 - 5 }')  # in $SECONDS of this shell
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
LOG=$OUT/suite.log STEPS=$OUT/steps.jsonl
: >"$LOG"; : >"$STEPS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pc-prior-suite.XXXXXX")
[ $KEEP = 1 ] || trap 'rm -rf "$WORK"' EXIT
if [ $quick = 1 ]; then
    SHARED=$WORK/shared  # the data step builds it
elif [ -z "$SHARED" ]; then
    SHARED=$([ -d .device/shared ] && echo "$PWD/.device/shared" || echo "$PWD/../shared")
fi
[ -d "$SHARED" ] && SHARED=$(cd "$SHARED" && pwd)
failed=0

say() { echo "$*" | tee -a "$LOG"; }

record() {  # record STEP STATUS RC SECONDS LIMIT OUTPUT REASON: one line of steps.jsonl
    local output=null reason=${7//[\"\\]/\'}
    [ -n "$6" ] && output="\"$6\""
    printf '{"step": "%s", "status": "%s", "rc": %s, "seconds": %s, "limit_s": %s, "output": %s, "reason": "%s"}\n' \
        "$1" "$2" "$3" "$4" "$5" "$output" "$reason" >>"$STEPS"
    say "== $1: $2${7:+ ($7)}"
    [ "$2" = failed ] || [ "$2" = timeout ] && failed=1
    return 0
}

skip() {  # skip STEP REASON
    record "$1" skipped null 0 0 "" "$2"
}

need() {  # need STEP PATH...: skip STEP (and return 1) unless every PATH exists
    local step=$1 p; shift
    for p in "$@"; do
        [ -e "$p" ] || { skip "$step" "missing: $p"; return 1; }
    done
}

step() {  # step NAME CAP [--writes FILE | --stdout FILE] -- CMD...: run CMD under timeout
    local name=$1 cap=$2 writes="" stdout="" rc; shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        case "$1" in
            --writes) writes=$2 ;;
            --stdout) stdout=$2 writes=$2 ;;
        esac
        shift 2
    done
    shift
    local left=$((deadline - SECONDS))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 15 ]; then skip "$name" "no time left in --minutes $MINUTES"; return 1; fi
    local shown="$*"
    say "== $name (limit $limit s): ${shown%%$'\n'*}"  # a script's first line
    local t0=$SECONDS
    if [ -n "$stdout" ]; then  # stdout is the step's output; stderr goes to the log
        { timeout -k 10 "$limit" "$@" 2>&1 >"$OUT/$stdout"; } | tee -a "$LOG"
    else
        timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    fi
    rc=${PIPESTATUS[0]}
    local took=$((SECONDS - t0))
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        record "$name" timeout "$rc" "$took" "$limit" "$writes" "ran past its limit of $limit s"
    elif [ "$rc" != 0 ]; then
        record "$name" failed "$rc" "$took" "$limit" "$writes" "exit code $rc (suite.log)"
    elif [ -n "$writes" ] && [ ! -s "$OUT/$writes" ]; then
        record "$name" failed "$rc" "$took" "$limit" "$writes" "exit code 0, but no $writes written"
    else
        record "$name" ok "$rc" "$took" "$limit" "$writes" ""
    fi
    [ -z "$writes" ] || [ -s "$OUT/$writes" ] || rm -f "$OUT/$writes"  # no empty outputs
    [ "$rc" = 0 ]
}

# -- sizes: --quick tiny, else what fits in about 9 minutes on one GPU -----------------------------
test_files=(tests/cuda tests/core/test_device.py)
if [ $quick = 1 ]; then
    cap=600
    fit_args=(--limit 4 --latents 3 --max-items 500 --epochs 1 --full-batch-epochs 0 --group-epochs 1)
    cond_args=(--cond-latents 3 --cond-steps 5 --cond-max-items 500)
    speed_args=(--images 2 --runs 1 --warmup 0)
    lossless_fit_args=(--latents 4 --epochs 1 --full-batch-epochs 0 --limit 512 --structure-samples 512)
    # --naive-images 0: the naive conditionals' path runs without its 64 passes per image
    lossless_bench_args=(--limit 64 --repeats 1 --naive-images 0 --epoch-images 64 --batch-size 64)
    em_args=(--latents 4 --batch-size 64 --batches 2 --repeats 1 --threads 1)
else
    cap=0  # each step's own cap below
    # and the golden streams, on this machine's Python and torch (CPU): the same bits as CI's
    test_files+=(tests/core/test_golden_streams.py tests/integrations/test_golden_bottleneck.py
        tests/integrations/test_golden_conditional.py)
    fit_args=(--limit 12)  # the settings' defaults on 12 BSDS500 images
    cond_args=(--cond-steps 300)  # of 6000 Adam steps: enough for the tables' and speed's checks
    speed_args=(--images 2 --runs 3 --warmup 1)
    lossless_fit_args=(--latents 32 --epochs 1 --full-batch-epochs 0 --limit 10000)
    lossless_bench_args=(--limit 2000 --repeats 3 --naive-images 5 --epoch-images 10000)
    em_args=(--latents 32 --batches 8 --repeats 3 --threads 1)
fi
cap_of() { [ $cap = 0 ] && echo "$1" || echo $cap; }  # cap_of SECONDS: a step's cap

say "device suite: device $DEVICE, --minutes $MINUTES, quick $quick, data $SHARED, $(date -u +%FT%TZ)"
MODELS=$SHARED/models DATA=$SHARED/data
PRIOR=("$PY" -m pc_prior.cli prior fit --device "$DEVICE")

read -r -d '' ENVIRONMENT <<'EOF'
"""The machine and the packages this run uses; fails when the device it names is not there."""
import importlib.metadata as md
import json
import os
import platform
import sys

import torch

device = sys.argv[1]
env = {"device": device, "python": platform.python_version(), "torch": torch.__version__}
env |= {"cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
if torch.cuda.is_available():
    env["gpu"] = torch.cuda.get_device_name(0)
for pkg in ("pc-prior", "compressai", "constriction", "pyjuice", "pytest", "pytorch-lightning"):
    try:
        env[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
        env[pkg] = None
json.dump(env, sys.stdout, indent=1)
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit(f"--device {device}, but torch sees no CUDA GPU")
EOF
step environment "$(cap_of 60)" --stdout environment.json -- "$PY" -c "$ENVIRONMENT" "$DEVICE"

if [ $quick = 1 ]; then
    step data "$(cap_of 60)" -- "$PY" -c \
        "import sys; sys.path.insert(0, 'tests'); from helpers import make_shared; make_shared(sys.argv[1])" \
        "$SHARED"
fi

step tests "$(cap_of 180)" --writes tests.xml -- env PC_PRIOR_TEST_DEVICE="$DEVICE" \
    "$PY" -m pytest -q -p no:cacheprovider --junitxml "$OUT/tests.xml" "${test_files[@]}"

if need prior-fit-factorized "$MODELS/bmshj2018-factorized-q1.pt" "$DATA/bsds500/train"; then
    step prior-fit-factorized "$(cap_of 90)" -- "${PRIOR[@]}" "$MODELS/bmshj2018-factorized-q1.pt" \
        --data "$DATA/bsds500/train" -o "$WORK/pc-factorized-q1.pt" "${fit_args[@]}"
fi
if need prior-fit-hyperprior "$MODELS/bmshj2018-hyperprior-q1.pt" "$DATA/bsds500/train"; then
    step prior-fit-hyperprior "$(cap_of 120)" -- "${PRIOR[@]}" "$MODELS/bmshj2018-hyperprior-q1.pt" \
        --data "$DATA/bsds500/train" -o "$WORK/pc-hyperprior-q1.pt" "${fit_args[@]}" \
        --conditional "${cond_args[@]}"
fi
for family in factorized hyperprior; do
    if need "codec-speed-$family" "$WORK/pc-$family-q1.pt" "$DATA/kodak"; then
        step "codec-speed-$family" "$(cap_of 90)" --writes "codec-speed-$family.json" -- \
            "$PY" bench/bench_codec_speed.py --baseline "$MODELS/bmshj2018-$family-q1.pt" \
            --candidate "$WORK/pc-$family-q1.pt" --data "$DATA/kodak" --devices "$DEVICE" \
            "${speed_args[@]}" --json "$OUT/codec-speed-$family.json"
    fi
done

if need lossless-fit "$DATA/mnist"; then
    step lossless-fit "$(cap_of 90)" -- "$PY" -m pc_prior.cli lossless fit --data "$DATA/mnist" \
        --device "$DEVICE" -o "$WORK/hclt.pt" "${lossless_fit_args[@]}"
fi
if need lossless-bench "$WORK/hclt.pt"; then
    step lossless-bench "$(cap_of 150)" --stdout lossless.json -- "$PY" bench/bench_lossless.py \
        --model "$WORK/hclt.pt" --data "$DATA/mnist" --device "$DEVICE" "${lossless_bench_args[@]}"
fi
if need em-epoch "$DATA/mnist"; then
    step em-epoch "$(cap_of 45)" --stdout em-epoch.jsonl -- "$PY" bench/bench_em_epoch.py \
        --data "$DATA/mnist" --device "$DEVICE" "${em_args[@]}"
fi

say "device suite done in $SECONDS s: $(awk -F'"' '{ printf "%s %s, ", $4, $8 }' "$STEPS" | sed 's/, $//')"
if [ "$(stat -c %s "$LOG")" -gt $((15 * 1048576)) ]; then  # the device tool returns files to 16 MiB
    tail -c $((15 * 1048576)) "$LOG" >"$WORK/log" && mv "$WORK/log" "$LOG"
fi
exit $failed
