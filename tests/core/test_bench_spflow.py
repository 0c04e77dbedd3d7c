"""bench/bench_spflow.py: skips cleanly without SPFlow; with it, both libraries' HCLTs are normalized."""

import json
import sys

import pytest
import torch
from helpers import load_bench


def _bench():
    return load_bench("bench_spflow")


def test_skips_without_spflow(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "spflow", None)  # import spflow raises ImportError
    _bench().main([])
    assert "spflow is not installed" in json.loads(capsys.readouterr().out)["skipped"]


def test_normalization_check_tiny():
    pytest.importorskip("spflow")
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 784, generator=g) < 0.3).long()
    res = _bench()._normalization_check(x, levels=2, num_latents=2, batch_size=32)
    assert res["configurations"] == 2**16
    assert abs(res["ours_log_total_probability"]) < 1e-4
    assert abs(res["spflow_log_total_probability"]) < 1e-4
