"""Files shipped with the package: the default base codec of ``pc-prior demo`` (see README.md here)."""

from pathlib import Path

#: The folder of the shipped files (this package's own directory).
ASSETS = Path(__file__).resolve().parent
#: The base codec of ``pc-prior demo``: CompressAI's ``bmshj2018-factorized`` at quality 2, trained
#: by the project on BSDS500 (``README.md`` in this folder says how, and how good it is).
DEFAULT_CODEC = ASSETS / "bmshj2018-factorized-q2.pt"

__all__ = ["ASSETS", "DEFAULT_CODEC"]
