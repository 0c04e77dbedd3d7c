"""Golden lossless stream: a stored HCLT and stream that must keep decoding, bit for bit.

The files in ``tests/expected`` were written once by ``tests/expected/make_golden.py``; they pin
the lossless stream format and the HCLT checkpoint format named in ``golden.json``. A failure
here means old streams or checkpoints no longer read as they did, or a changed layout kept its
version number: bump the version, record it in CHANGELOG.md, and rerun the script (its docstring).
"""

import json
from pathlib import Path

import torch

from pc_prior import decode, encode, framing, load
from pc_prior.checkpoint import CHECKPOINT_VERSION

EXPECTED = Path(__file__).resolve().parents[1] / "expected"
GOLDEN = json.loads((EXPECTED / "golden.json").read_text())["lossless"]


def _golden() -> tuple[torch.Tensor, bytes]:
    symbols = torch.load(EXPECTED / "lossless-symbols.pt", weights_only=True).long()
    return symbols, (EXPECTED / "lossless.bin").read_bytes()


def test_golden_files_are_the_current_format_versions():
    # Older stream versions are refused by design, so the golden stream is the current version.
    assert GOLDEN["stream"] == {"magic": "PL", "version": framing.LOSSLESS.version}
    assert GOLDEN["checkpoint_version"] <= CHECKPOINT_VERSION  # older checkpoints must still load
    _, stream = _golden()
    assert stream[:3] == framing.LOSSLESS.magic + bytes([framing.LOSSLESS.version])
    assert len(stream) == GOLDEN["bytes"]


def test_golden_stream_decodes_to_the_stored_symbols():
    symbols, stream = _golden()
    pc = load(EXPECTED / "lossless-hclt.pt")
    assert pc.metadata["note"] == "golden stream model"
    assert symbols.shape == (GOLDEN["rows"], pc.num_vars)
    assert len(symbols) > 4096  # spans two of the stream's checked blocks
    out = decode(pc, stream)
    assert out.dtype == torch.long and torch.equal(out, symbols)


def test_coding_the_stored_symbols_gives_the_stored_bytes():
    symbols, stream = _golden()
    assert encode(load(EXPECTED / "lossless-hclt.pt"), symbols) == stream


def test_golden_two_step_stream_decodes_and_reencodes():
    wide = GOLDEN["wide"]
    symbols = torch.load(EXPECTED / "lossless-wide-symbols.pt", weights_only=True).long()
    stream = (EXPECTED / "lossless-wide.bin").read_bytes()
    pc = load(EXPECTED / "lossless-wide-hclt.pt")
    assert pc.num_cats >= 64 and symbols.shape == (wide["rows"], pc.num_vars)
    assert int(symbols.max()) >= 64  # the padded last group is exercised
    assert stream[:3] == framing.LOSSLESS.magic + bytes([framing.LOSSLESS.version])
    assert len(stream) == wide["bytes"]
    assert torch.equal(decode(pc, stream), symbols)
    assert encode(pc, symbols) == stream


def test_golden_files_stay_small():
    total = sum(p.stat().st_size for p in EXPECTED.iterdir() if p.is_file())
    assert total < 200_000
