"""Files shipped with the package: the default base codec of ``pc-prior demo`` (see README.md here)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DEFAULT_CODEC = ASSETS / "bmshj2018-factorized-q2.pt"

__all__ = ["ASSETS", "DEFAULT_CODEC"]
