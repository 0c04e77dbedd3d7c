"""One place for progress bars, so that logs stay readable.

On a terminal a bar redraws in place, so frequent updates cost nothing. Redirected to a file (a
cluster job, CI, ``2> log``) every redraw becomes a new line, one per batch. :func:`progress_bar`
picks tqdm's ``mininterval`` by whether stderr is a terminal, and :func:`refresh_rate` does the
same for Lightning's ``TQDMProgressBar``, which counts batches rather than seconds.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

__all__ = [
    "LOG_INTERVAL",
    "LOG_REFRESH_BATCHES",
    "progress_bar",
    "refresh_rate",
    "stderr_is_terminal",
]

T = TypeVar("T")

#: Seconds between bar updates when stderr is not a terminal.
LOG_INTERVAL = 5.0
#: Batches between Lightning bar updates when stderr is not a terminal.
LOG_REFRESH_BATCHES = 50


def stderr_is_terminal() -> bool:
    """Whether ``sys.stderr`` is an interactive terminal (False for files, pipes, or no stderr)."""
    stream = sys.stderr
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable[T] | None = None, **kw: Any) -> tqdm[T]:
    """``tqdm(iterable, **kw)`` that updates every ``LOG_INTERVAL`` s when stderr is not a terminal.

    An explicit ``mininterval`` wins. On a terminal tqdm's own default (0.1 s) is kept. Named so
    as not to clash with the ``progress: bool`` switch of the functions that show bars.
    """
    if "mininterval" not in kw and not stderr_is_terminal():
        kw["mininterval"] = LOG_INTERVAL
    return tqdm(iterable, **kw)


def refresh_rate(interactive: int = 1) -> int:
    """Batches between Lightning ``TQDMProgressBar`` updates: ``interactive`` on a terminal, else
    ``LOG_REFRESH_BATCHES``."""
    return interactive if stderr_is_terminal() else max(interactive, LOG_REFRESH_BATCHES)
