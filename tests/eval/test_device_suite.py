"""bench/device_suite.sh --quick --device cpu: every check present, ok or skipped with a reason,
and every format's round trip exact on the CPU (synthetic data: no ../shared needed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECKS = ("tests", "determinism", "speed", "lossless", "finetune")


def test_quick_device_suite_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = dict(
        os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", PC_PRIOR_SITE=str(tmp_path / "site")
    )
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "device_suite.sh"), "--quick", "--device", "cpu",
         "--out", str(out), "--minutes", "6"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=480, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert (out / "suite.log").is_file()
    assert res["quick"] is True and res["environment"]["device"] == "cpu"
    assert list(res["checks"]) == list(CHECKS)
    for name, r in res["checks"].items():
        assert r["status"] in ("ok", "skipped"), (name, r["reason"])
        assert r["status"] == "ok" or r["reason"], name
        assert r["budget_seconds"] > 0 and r["seconds"] >= 0
    det = res["checks"]["determinism"]
    assert det["status"] == "ok"
    assert det["figures"]["exact_by_format"] == {
        "lossless": True,
        "bottleneck": True,
        "conditional": True,
    }
    lossless = det["figures"]["lossless"]
    assert lossless["cpu_to_cpu_exact"] and lossless["streams_identical"]
    assert det["figures"]["bottleneck"]["x_hat_identical_both_ways"]
    cond = det["figures"]["conditional"]
    assert cond["y_decode_exact_end_to_end"] and cond["scale_indexes_differing"] == 0
    tests = res["checks"]["tests"]["figures"]
    assert tests["counts"].get("passed", 0) > 0 and not tests["counts"].get("failed")
    speed = res["checks"]["speed"]["figures"]
    for pair in ("factorized-q1", "hyperprior-q1"):
        assert speed[pair]["reconstructions_identical"]
        assert speed[pair]["pc"]["encode_ms"] > 0 and speed[pair]["base"]["decode_ms"] > 0
    lossless_check = res["checks"]["lossless"]
    assert lossless_check["status"] == "skipped" and "CUDA" in lossless_check["reason"]
    assert lossless_check["figures"]["ours_epoch_seconds"] > 0
    ft = res["checks"]["finetune"]["figures"]
    assert set(ft["per_quality"]) == {"1", "2"}
    assert all(q["steps"] > 0 for q in ft["per_quality"].values())
    assert ft["decoded_equals_forward"] == {"frozen": 4, "joint": 4}
    for name in ft["results_files"]:
        assert json.loads((out / name).read_text())["results"]["bpp"]
    assert sum(f.stat().st_size for f in out.iterdir()) < 64 * 2**20
