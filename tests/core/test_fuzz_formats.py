"""Fuzzing every format in CI: mutated streams and files are refused with a project error or decode right."""

import pytest
import torch
from helpers import load_bench

from pc_prior import HCLT, BitstreamError, PCPriorError, Tree, decode, encode, framing

run_fuzz = load_bench("fuzzing").run_fuzz  # a test tool: bench/fuzzing.py, not installed


def test_thousands_of_mutated_streams_and_files_fail_safe():
    report = run_fuzz(3000, seed=0)
    summary = report.summary()
    assert report.cases == 3000
    assert report.defects == 0, summary["examples"]
    assert not report.code_executed
    assert report.slowest_seconds < 10.0
    assert report.peak_rss_growth_mb < 1024
    # every target was exercised, and most mutations were caught (not merely harmless)
    for target in (
        "lossless",
        "lossless-wide",
        "bottleneck",
        "conditional",
        "cross-kind",
        "bottleneck-forged-size",
        "checkpoint-file",
        "codec-file",
        "hyper-codec-file",
        "file-forged-fields",
        "file-other-kind",
        "invalid-inputs",
    ):
        assert summary["by_target"][target].get("rejected", 0) > 0, target
    assert summary["by_target"]["valid-inputs"].get("same", 0) > 0
    assert report.count("rejected") > 0.8 * report.cases


def test_every_truncation_and_every_forged_item_count_of_a_lossless_stream():
    g = torch.Generator().manual_seed(0)
    pc = HCLT(Tree((1, -1, 1, 0, 0, 2)), 3, 4, dtype=torch.float64)
    with torch.no_grad():
        for p in pc.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = pc.sample(30, generator=g)
    data = encode(pc, x)
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            decode(pc, data[:cut])
    fp = data[3:7]
    (n, d, v, block), words = framing.unpack(data, framing.LOSSLESS, fp)
    payload = words.astype("<u4").tobytes()
    for forged in (0, 1, n - 1, n + 1, 2 * n, 65536, 2**31, 2**32 - 1):  # checksum recomputed
        with pytest.raises(BitstreamError, match="corrupted|truncated|no items|limit"):
            decode(pc, framing.pack(framing.LOSSLESS, fp, (forged, d, v, block), payload))
    assert torch.equal(decode(pc, framing.pack(framing.LOSSLESS, fp, (n, d, v, block), payload)), x)


def test_old_lossless_streams_name_their_format_version():
    old = b"PCPR" + bytes([1, 1]) + bytes(26)  # the version-1 layout
    pc = HCLT(Tree((-1, 0)), 2, 2)
    with pytest.raises(BitstreamError, match="format version 1, this pc-prior reads version 3"):
        decode(pc, old)


def test_project_errors_are_builtin_errors_too():
    assert issubclass(BitstreamError, PCPriorError) and issubclass(BitstreamError, ValueError)
