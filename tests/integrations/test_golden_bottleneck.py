"""Golden ``PCEntropyBottleneck`` strings: a stored codec file and strings that must keep decoding.

Written once by ``tests/expected/make_golden.py`` (see it for what the files hold); they pin the
bottleneck string format and the codec file format named in ``golden.json``. A failure here means
strings or codec files saved before no longer read as they did, or a changed layout kept its
version number: bump the version, record it in CHANGELOG.md, and see the script's docstring.
"""

import json
from pathlib import Path

import torch

from pc_prior import framing
from pc_prior.integrations import PCEntropyBottleneck, load_codec
from pc_prior.integrations.codec_file import CODEC_VERSION

EXPECTED = Path(__file__).resolve().parents[1] / "expected"
GOLDEN = json.loads((EXPECTED / "golden.json").read_text())["bottleneck"]


def _golden() -> tuple[list[bytes], torch.Tensor, tuple[int, int]]:
    strings = [(EXPECTED / f"bottleneck-{i}.bin").read_bytes() for i in range(GOLDEN["strings"])]
    stored = torch.load(EXPECTED / "bottleneck-latents.pt", weights_only=True)
    return strings, stored["latents"], tuple(stored["size"])


def _bottleneck() -> PCEntropyBottleneck:
    eb = load_codec(EXPECTED / "bottleneck-codec.pt").entropy_bottleneck
    assert isinstance(eb, PCEntropyBottleneck) and eb.fitted
    return eb


def test_golden_files_are_the_current_format_versions():
    # Older string versions are refused by design, so the golden strings are the current version.
    assert GOLDEN["stream"] == {"magic": "PB", "version": framing.BOTTLENECK.version}
    assert GOLDEN["codec_file_version"] <= CODEC_VERSION  # older codec files must still load
    stored = torch.load(EXPECTED / "bottleneck-codec.pt", weights_only=True)
    assert (stored["format"], stored["version"]) == ("pc-prior/codec", GOLDEN["codec_file_version"])
    strings, _, _ = _golden()
    head = framing.BOTTLENECK.magic + bytes([framing.BOTTLENECK.version])
    assert all(s[:3] == head for s in strings)
    assert [len(s) for s in strings] == GOLDEN["bytes"]


def test_golden_strings_decode_to_the_stored_latents():
    strings, latents, size = _golden()
    assert list(latents.shape) == GOLDEN["latent_shape"] and size == latents.shape[-2:]
    out = _bottleneck().decompress(strings, size)
    assert out.dtype == latents.dtype and torch.equal(out, latents)


def test_coding_the_stored_latents_gives_the_stored_strings():
    strings, latents, _ = _golden()
    assert _bottleneck().compress(latents) == strings


def test_the_whole_codec_decodes_the_golden_strings():
    strings, latents, size = _golden()
    net = load_codec(EXPECTED / "bottleneck-codec.pt")
    with torch.no_grad():
        x_hat = net.decompress([strings], size)["x_hat"]
        assert torch.equal(net.entropy_bottleneck.decompress(strings, size), latents)
    assert x_hat.shape == (len(strings), 3, 16 * size[0], 16 * size[1])
    assert torch.isfinite(x_hat).all()
