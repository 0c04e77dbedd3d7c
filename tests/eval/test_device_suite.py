"""bench/device_suite.sh --quick --device cpu: every step runs, ends ok, and writes what it should
(the CUDA-marked tests run on the CPU and pass; every bench's output parses); no time limit is
asserted, and the steps' caps are minutes, so a busy machine cannot fail it. Synthetic data: no
../shared needed."""

import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "bench" / "device_suite.sh"
STEPS = (
    "environment",
    "data",
    "tests",
    "prior-fit-factorized",
    "prior-fit-hyperprior",
    "codec-speed-factorized",
    "codec-speed-hyperprior",
    "lossless-fit",
    "lossless-bench",
    "em-epoch",
)
#: The test modules the suite's tests step runs, each with every test passing on the CPU.
TEST_MODULES = {
    "tests.cuda.test_cuda_coding",
    "tests.cuda.test_cuda_training",
    "tests.core.test_device",
}


def run_suite(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    env = dict(
        os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path), PC_PRIOR_SITE=str(tmp_path / "s")
    )
    proc = subprocess.run(
        ["bash", str(SUITE), "--quick", "--device", "cpu", "--out", str(out), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    return proc, out


def read_steps(out: Path) -> dict[str, dict]:
    lines = (out / "steps.jsonl").read_text().splitlines()
    return {s["step"]: s for s in map(json.loads, lines)}


def test_quick_device_suite_on_cpu(tmp_path):
    proc, out = run_suite(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    steps = read_steps(out)
    assert list(steps) == list(STEPS)
    for name, s in steps.items():
        assert (s["status"], s["rc"], s["reason"]) == ("ok", 0, ""), name
    files = sorted(p.name for p in out.iterdir())
    outputs = {s["output"] for s in steps.values()} - {None}
    assert files == sorted(outputs | {"steps.jsonl", "suite.log"})
    assert len(files) <= 8  # the most files the device tool brings back
    assert all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())

    env = json.loads((out / "environment.json").read_text())
    assert env["device"] == "cpu" and env["torch"]

    suite = ET.parse(out / "tests.xml").getroot().find("testsuite")
    counts = {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] > 0 and counts["failures"] == counts["errors"] == counts["skipped"] == 0
    assert {case.get("classname") for case in suite.iter("testcase")} == TEST_MODULES

    for family in ("factorized", "hyperprior"):
        speed = json.loads((out / f"codec-speed-{family}.json").read_text())
        rows = speed["results"]["cpu"]
        assert rows["baseline"]["model"] == f"bmshj2018-{family}-q1"
        assert rows["candidate"]["model"] == f"pc-{family}-q1"
        for role in ("baseline", "candidate"):
            assert rows[role]["bpp"] > 0
            assert all(math.isfinite(rows[role][k]) for k in ("encode_ms", "decode_ms"))
        assert set(rows["ratio_candidate_over_baseline"]) == {"encode", "decode"}

    lossless = json.loads((out / "lossless.json").read_text())
    assert lossless["round_trip_exact"] is True and lossless["device"] == "cpu"
    assert lossless["num_images"] == 64 and lossless["coded_bytes"] > 0
    assert lossless["bpd_coded"] == lossless["coded_bytes"] * 8 / (64 * 64)
    assert "CUDA" in lossless["pyjuice"]["skipped"]  # pyjuice runs on CUDA only

    em = [json.loads(line) for line in (out / "em-epoch.jsonl").read_text().splitlines()]
    assert [(r["device"], r["threads"]) for r in em] == [("cpu", 1)]
    assert all(r["ours_s_per_batch"] > 0 and r["reference_s_per_batch"] > 0 for r in em)

    log = (out / "suite.log").read_text()
    assert all(f"== {name}: ok" in log for name in STEPS)


def test_a_step_without_time_or_data_is_skipped_with_the_reason(tmp_path):
    # no time left for any step (--minutes 0.05: 3 s, less the 5 s margin); the steps that need
    # the data step's files are skipped for those, the others for the time; nothing is written
    proc, out = run_suite(tmp_path, "--minutes", "0.05")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    steps = read_steps(out)
    assert list(steps) == list(STEPS)
    assert all(s["status"] == "skipped" and s["output"] is None for s in steps.values())
    no_time = {"environment", "data", "tests"}
    for name, s in steps.items():
        want = "no time left in --minutes" if name in no_time else "missing: "
        assert s["reason"].startswith(want), (name, s["reason"])
    assert sorted(p.name for p in out.iterdir()) == ["steps.jsonl", "suite.log"]
