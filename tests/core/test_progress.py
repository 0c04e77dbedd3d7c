"""Progress bars suit logs: every few seconds when stderr is not a terminal, tqdm's pace on one."""

import io
import sys

import pytest

import pc_prior.progress as progress
from pc_prior.progress import LOG_INTERVAL, LOG_REFRESH_BATCHES, progress_bar, refresh_rate


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_updates_every_few_seconds(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert not progress.stderr_is_terminal()
    bar = progress_bar(range(1000), desc="x", file=log)
    assert bar.mininterval == LOG_INTERVAL >= 2
    assert list(bar) == list(range(1000))  # still a plain pass over the iterable
    # 1000 fast steps inside one interval: the start and the close, not a line per step.
    assert log.getvalue().count("\r") <= 3
    assert refresh_rate() == LOG_REFRESH_BATCHES


def test_terminal_keeps_tqdm_defaults(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert progress.stderr_is_terminal()
    bar = progress_bar(total=3, file=io.StringIO())
    assert bar.mininterval == 0.1  # tqdm's own default
    bar.close()
    assert refresh_rate() == 1 and refresh_rate(5) == 5


def test_explicit_interval_wins_and_total_only_bars_work(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress_bar(total=4, mininterval=0.5, file=io.StringIO())
    bar.update(4)
    bar.close()
    assert bar.mininterval == 0.5


@pytest.mark.parametrize("stream", [None, "closed", "no-isatty"])
def test_missing_or_odd_stderr_counts_as_not_a_terminal(monkeypatch, stream):
    if stream == "closed":
        stream = io.StringIO()
        stream.close()
    elif stream == "no-isatty":
        stream = object()
    monkeypatch.setattr(sys, "stderr", stream)
    assert not progress.stderr_is_terminal()


def test_every_bar_in_the_package_goes_through_the_helper():
    from pathlib import Path

    root = Path(progress.__file__).parent
    users = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if "tqdm" in p.read_text() and p.name != "progress.py"
    ]
    assert users == []


def test_training_bars_do_not_redraw_per_batch_in_a_log(monkeypatch):
    """The bpd postfix is set every batch but drawn at the bar's interval (tqdm's set_postfix
    redraws at once unless told not to, which wrote one log line per batch)."""
    import torch
    from conftest import random_hclt

    from pc_prior import fit_adam, fit_em

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    pc = random_hclt(parent=(-1, 0, 0), num_cats=3, num_latents=2, seed=0)
    x = pc.sample(400, generator=torch.Generator().manual_seed(0))
    fit_em(pc, x, epochs=2, full_batch_epochs=1, batch_size=4)  # 300 batches
    fit_adam(pc, x, epochs=1, batch_size=4)  # 100 batches
    assert log.getvalue().count("\r") <= 8
