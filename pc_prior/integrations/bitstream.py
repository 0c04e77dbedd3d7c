"""The header in front of every string of the integrations' entropy models.

It is paid once per string (per image and entropy model), which at low rates is a visible part
of the file (25 bytes were 0.3% of a 0.15 bpp Kodak image), so it is kept small while still
naming every way a string can be wrong:

    magic (2 bytes) | format version (1) | model fingerprint (4) | H, W (LEB128 varints) | CRC32 (4) | payload

A string of another entropy model, another format version, another fit or another latent size,
and a truncated or corrupted one, each fail with a ``BitstreamError`` that says which.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np

from ..coding import BitstreamError, verified_payload

__all__ = ["FINGERPRINT_BYTES", "header_bytes", "pack", "unpack"]

FINGERPRINT_BYTES = 4
_FIXED = struct.Struct("<2sB4s")  # magic, version, fingerprint


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte, v = v & 0x7F, v >> 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 28:
            raise BitstreamError(f"bitstream truncated: {len(data)} bytes end inside the header")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def header_bytes(size: tuple[int, int]) -> int:
    """Length of the header of a string for a latent of spatial size (H, W)."""
    return _FIXED.size + len(_varint(size[0])) + len(_varint(size[1])) + 4


def pack(magic: bytes, version: int, fingerprint: bytes, size: tuple[int, int], payload: bytes) -> bytes:
    """Header + payload; ``size`` is the latent's (H, W), ``fingerprint`` the model's (truncated)."""
    head = _FIXED.pack(magic, version, fingerprint[:FINGERPRINT_BYTES]) + _varint(size[0]) + _varint(size[1])
    return head + struct.pack("<I", zlib.crc32(payload)) + payload


def unpack(data: Any, magic: bytes, version: int, fingerprint: bytes, size: tuple[int, int], name: str) -> np.ndarray:
    """Check ``data``'s header against this model and latent size; the payload as uint32 words."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"each string must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _FIXED.size:
        raise BitstreamError(f"bitstream truncated: {len(data)} bytes, shorter than the {name} header")
    smagic, sversion, sfp = _FIXED.unpack_from(data)
    if smagic != magic:
        raise BitstreamError(f"not a {name} bitstream (bad magic bytes)")
    if sversion != version:
        raise BitstreamError(f"{name} bitstream format version {sversion}, this pc-prior reads version {version}")
    if sfp != fingerprint[:FINGERPRINT_BYTES]:
        raise BitstreamError("bitstream was made by another model or another fit (fingerprint mismatch)")
    h, pos = _read_varint(data, _FIXED.size)
    w, pos = _read_varint(data, pos)
    if (h, w) != tuple(size):
        raise BitstreamError(f"bitstream holds a {h}x{w} latent, decompress was asked for {size[0]}x{size[1]}")
    if len(data) < pos + 4:
        raise BitstreamError(f"bitstream truncated: {len(data)} bytes end inside the header")
    (crc,) = struct.unpack_from("<I", data, pos)
    payload = verified_payload(data, pos + 4, crc)
    return np.frombuffer(payload, dtype="<u4").astype(np.uint32)
