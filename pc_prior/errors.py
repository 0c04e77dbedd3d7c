"""The project's errors: one base, ``PCPriorError``, and one class per kind of problem.

Every error that bad input can cause (a stream, a file, an argument, a model) is one of these,
with a message that names the problem and, where there is one, the fix. Each also derives from
the built-in exception that CompressAI or torch would raise in its place (``ValueError`` for bad
values and streams, ``TypeError`` for wrong types), so code written against CompressAI's entropy
models keeps catching what it caught before.
"""

from __future__ import annotations

__all__ = [
    "BitstreamError",
    "CheckpointError",
    "InputError",
    "ModelLoadError",
    "NotFittedError",
    "PCPriorError",
    "UnsupportedModelError",
]


class PCPriorError(Exception):
    """Base of every error pc-prior raises on purpose."""


class BitstreamError(PCPriorError, ValueError):
    """A bitstream that cannot be decoded: not ours, another format version or model, truncated, corrupted."""


class CheckpointError(PCPriorError, ValueError):
    """A checkpoint or codec file that is not ours, of another version, corrupted, or inconsistent."""


class InputError(PCPriorError, ValueError, TypeError):
    """An argument of the wrong type, shape, dtype or range (also a ``ValueError`` and a ``TypeError``)."""


class NotFittedError(PCPriorError, ValueError, RuntimeError):
    """An entropy model used before it was fitted, or coded with before ``update()`` wrote its tables."""


class UnsupportedModelError(PCPriorError, TypeError):
    """A CompressAI model (or module) that the PC entropy models cannot serve."""


class ModelLoadError(PCPriorError, ValueError):
    """A model spec that names no loadable codec (unknown name, unreadable file, offline zoo weights)."""
