"""One header discipline for every bitstream pc-prior writes, and the table of their formats.

Every stream is

    magic (2 bytes) | format version (1) | model fingerprint (4) | fields (LEB128 varints) | CRC32 (4) | payload

where the CRC32 covers *everything*: magic, version, fingerprint, every field and the payload, so
one flipped bit anywhere is caught before any decoding starts. The payload is the range coder's
32-bit words. ``unpack`` checks, in this order and before anything is allocated: the type, the
magic, the format version, that each field is a well-formed varint below 2**32, the checksum, and
the fingerprint; the caller then checks the fields for plausibility against its model and the
payload length (``pc_prior.coding.min_item_bits`` gives a lower bound on the bits one item costs).

The header is paid once per string (per image and entropy model), and at low rates it is a
visible part of the file (25 bytes were 0.3% of a 0.15 bpp Kodak image), so it stays compact.

Formats (``FORMATS``): each has its own magic, so a string of one kind is never read as another.
Older versions are refused with an error that names both versions (CHANGELOG.md lists them).

The file formats are tabled here too (``FILE_FORMATS``): the ``format`` key and version a
checkpoint or codec file carries and the versions this pc-prior reads, and the ``.pcnpy``
container's magic and version. This module is the one place a magic or a version is written.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BitstreamError, InputError

__all__ = [
    "ARRAY_CONTAINER",
    "BOTTLENECK",
    "CHECKPOINT_FILE",
    "CODEC_FILE",
    "CONDITIONAL",
    "FILE_FORMATS",
    "FINGERPRINT_BYTES",
    "FORMATS",
    "LOSSLESS",
    "FileFormat",
    "Format",
    "header_bytes",
    "pack",
    "unpack",
]

#: Bytes of the model fingerprint that every stream header carries.
FINGERPRINT_BYTES = 4
MAX_FIELD = 2**32 - 1
_FIXED = struct.Struct("<2sB4s")  # magic, version, fingerprint
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Format:
    """A bitstream format: its magic bytes, current version, number of header fields and name."""

    magic: bytes
    version: int
    num_fields: int
    name: str


#: Lossless streams (``encode``/``decode``). Fields: N items, D variables, V symbols, block size;
#: version 3 codes alphabets of 64+ symbols in two steps.
LOSSLESS = Format(b"PL", 3, 4, "pc-prior lossless")
#: ``PCEntropyBottleneck`` strings. Fields: latent H, W; version 4: the payload ends with a CRC-32
#: of the string's symbols.
BOTTLENECK = Format(b"PB", 4, 2, "PCEntropyBottleneck")
#: ``PCConditional`` strings, framed as ``BOTTLENECK``'s.
CONDITIONAL = Format(b"PG", 4, 2, "PCConditional")
#: The stream formats by magic bytes.
FORMATS = {f.magic: f for f in (LOSSLESS, BOTTLENECK, CONDITIONAL)}


@dataclass(frozen=True)
class FileFormat:
    """A file format: the key (its ``format`` field, or a binary container's magic, ASCII), the
    version written, the versions read and a name for messages."""

    key: str
    version: int
    readable: tuple[int, ...]
    name: str


CHECKPOINT_FILE = FileFormat("pc-prior/hclt", 3, (2, 3), "pc-prior circuit checkpoint")
"""``pc_prior.save``: 3 names any circuit (kind + config); 2 held HCLTs only (still read)."""
CODEC_FILE = FileFormat("pc-prior/codec", 3, (1, 2, 3), "codec file")
"""``save_codec``: 3 stores a bottleneck's fitted categorical leaves as one byte per live entry;
2 stores PC tables as a digest and rebuilds them; 1 stored them (both still read)."""
ARRAY_CONTAINER = FileFormat("PCNPY", 2, (2,), ".pcnpy container")
"""``pc-prior lossless compress``: 2 puts the header (magic, version, meta) under a CRC32."""
#: The file formats: circuit checkpoints, codec files and the ``.pcnpy`` container.
FILE_FORMATS = (CHECKPOINT_FILE, CODEC_FILE, ARRAY_CONTAINER)

# Streams of earlier layouts, recognised only to name their version in the error.
_LEGACY = {b"PCPR": (LOSSLESS, 4)}  # lossless version 1: 4-byte magic, version byte at offset 4


def _varint(v: int) -> bytes:
    if not 0 <= v <= MAX_FIELD:
        raise InputError(f"header field {v} is outside 0..{MAX_FIELD}")
    out = bytearray()
    while True:
        byte, v = v & 0x7F, v >> 7
        out.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _read_varint(data: bytes, pos: int, name: str) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise BitstreamError(
                f"{name} bitstream truncated: {len(data)} bytes end inside the header"
            )
        if shift > 28:
            raise BitstreamError(
                f"{name} bitstream corrupted: a header field is longer than 5 bytes"
            )
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            if value > MAX_FIELD:
                raise BitstreamError(f"{name} bitstream corrupted: a header field exceeds 2**32")
            return value, pos


def header_bytes(fields: tuple[int, ...]) -> int:
    """Length of the header of a string with these field values."""
    return _FIXED.size + sum(len(_varint(v)) for v in fields) + _CRC.size


def pack(fmt: Format, fingerprint: bytes, fields: tuple[int, ...], payload: bytes) -> bytes:
    """Header + payload; ``fingerprint`` is the model's (truncated to ``FINGERPRINT_BYTES``)."""
    if len(fields) != fmt.num_fields:
        raise InputError(f"{fmt.name} headers have {fmt.num_fields} fields, got {len(fields)}")
    head = _FIXED.pack(fmt.magic, fmt.version, fingerprint[:FINGERPRINT_BYTES]) + b"".join(
        map(_varint, fields)
    )
    return head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + payload


def unpack(
    data: Any,
    fmt: Format,
    fingerprint: bytes,
    check_fields: Callable[[tuple[int, ...]], None] | None = None,
) -> tuple[tuple[int, ...], np.ndarray]:
    """Check ``data``'s header and checksum against ``fmt`` and the model; (fields, payload words uint32).

    ``check_fields(fields)`` runs after the checksum and before the fingerprint, so a stream for
    another size or alphabet is reported as such rather than as another model's.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"each string must be bytes, got {type(data).__name__}")
    data = bytes(data)
    name = fmt.name
    for magic, (legacy, at) in _LEGACY.items():
        if legacy is fmt and data[: len(magic)] == magic and len(data) > at:
            raise BitstreamError(
                f"{name} bitstream format version {data[at]}, this pc-prior reads version "
                f"{fmt.version} (see CHANGELOG.md)"
            )
    if len(data) < _FIXED.size:
        raise BitstreamError(
            f"{name} bitstream truncated: {len(data)} bytes, shorter than its header"
        )
    smagic, sversion, sfp = _FIXED.unpack_from(data)
    if smagic != fmt.magic:
        other = FORMATS.get(smagic)
        what = (
            f"a {other.name} bitstream"
            if other is not None
            else "not a pc-prior bitstream (bad magic bytes)"
        )
        raise BitstreamError(f"expected a {name} bitstream, got {what}")
    if sversion != fmt.version:
        raise BitstreamError(
            f"{name} bitstream format version {sversion}, this pc-prior reads version "
            f"{fmt.version} (see CHANGELOG.md), or the stream is corrupted"
        )
    pos, fields = _FIXED.size, []
    for _ in range(fmt.num_fields):
        v, pos = _read_varint(data, pos, name)
        fields.append(v)
    if len(data) < pos + _CRC.size:
        raise BitstreamError(f"{name} bitstream truncated: {len(data)} bytes end inside the header")
    (crc,) = _CRC.unpack_from(data, pos)
    payload = data[pos + _CRC.size :]
    if zlib.crc32(payload, zlib.crc32(data[:pos])) != crc:
        raise BitstreamError(f"{name} bitstream corrupted or truncated: checksum mismatch")
    if len(payload) % 4:
        raise BitstreamError(
            f"{name} bitstream corrupted: payload is not a whole number of 32-bit words"
        )
    if check_fields is not None:
        check_fields(tuple(fields))
    if sfp != fingerprint[:FINGERPRINT_BYTES]:
        raise BitstreamError(
            f"{name} bitstream was made by another model or another fit (fingerprint mismatch)"
        )
    return tuple(fields), np.frombuffer(payload, dtype="<u4").astype(np.uint32)
