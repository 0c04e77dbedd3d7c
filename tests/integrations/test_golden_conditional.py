"""Golden ``PCConditional`` strings: a compact codec file (tables rebuilt on load) that must keep decoding.

Written once by ``tests/expected/make_golden.py``. The strings are stored with the scale indexes
they were coded under, so this pins the conditional string format, the three-pass context and
the rebuilt coding tables (``pc_prior.portable``) without depending on the float hyper-decoder.
"""

import json
from pathlib import Path

import torch

from pc_prior import framing
from pc_prior.integrations import PCConditional, load_codec
from pc_prior.integrations.codec_file import CODEC_VERSION

EXPECTED = Path(__file__).resolve().parents[1] / "expected"
GOLDEN = json.loads((EXPECTED / "golden.json").read_text())["conditional"]


def _golden() -> tuple[list[bytes], torch.Tensor, torch.Tensor]:
    strings = [(EXPECTED / f"conditional-{i}.bin").read_bytes() for i in range(GOLDEN["strings"])]
    stored = torch.load(EXPECTED / "conditional-latents.pt", weights_only=True)
    return strings, stored["y_hat"], stored["indexes"].long()


def _conditional() -> PCConditional:
    gc = load_codec(EXPECTED / "conditional-codec.pt").gaussian_conditional
    assert isinstance(gc, PCConditional) and gc.fitted and gc.anchor_context is not None
    return gc


def test_golden_files_are_compact_and_the_current_versions():
    assert GOLDEN["stream"] == {"magic": "PG", "version": framing.CONDITIONAL.version}
    assert GOLDEN["codec_file_version"] <= CODEC_VERSION
    stored = torch.load(EXPECTED / "conditional-codec.pt", weights_only=True)
    assert stored["version"] == GOLDEN["codec_file_version"] == 2
    assert not any(k.endswith("_pc_emit") for k in stored["state_dict"])  # rebuilt on load


def test_golden_strings_decode_and_the_latents_encode_to_them():
    strings, y_hat, indexes = _golden()
    gc = _conditional()
    assert torch.equal(gc.decompress(strings, indexes), y_hat)
    assert gc.compress(y_hat, indexes) == strings
