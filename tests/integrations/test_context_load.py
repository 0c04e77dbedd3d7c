"""Loading checks every buffer of ``PCConditional``'s checkerboard contexts (issue 33, item 4).

A codec file whose context buffers do not fit the model (a ``shift`` row short, a bin edge too
many, a float dtype, values out of range, a ``coef`` per channel of another circuit, an
``inv_scale`` per index of another scale table) used to load and then fail in ``compress`` or
``decompress`` with an ``IndexError`` (or code with meaningless contexts). Each is now refused when
it loads, naming the buffer: ``load_codec`` raises ``CheckpointError`` for a file whose digest
was recomputed, and ``load_state_dict`` fails for the bare state dict. The forged files start from
the golden three-pass codec (``tests/expected``), so no fitting is needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pc_prior import CheckpointError
from pc_prior.files import read_file, write_file
from pc_prior.integrations import PCConditional, load_codec
from pc_prior.integrations.context import (
    COEF_BITS,
    MAX_COEF,
    MAX_EDGE,
    MAX_INV_SCALE,
    CheckerboardContext,
)

EXPECTED = Path(__file__).resolve().parents[1] / "expected"
GC = "gaussian_conditional."
Edit = Callable[[torch.Tensor], torch.Tensor]


def _longer(t: torch.Tensor) -> torch.Tensor:
    """One more entry (row) than ``t``: its last one repeated, so the values stay in range."""
    return torch.cat([t, t[-1:]])


# Each buffer: one row (entry) short, one too many, the wrong dtype, a value out of range.
CASES: dict[str, dict[str, Edit]] = {
    "inv_scale": {
        "short": lambda t: t[:-1],
        "long": _longer,
        "float": lambda t: t.double(),
        "negative": lambda t: t.neg(),
        "too large": lambda t: torch.full_like(t, MAX_INV_SCALE + 1),
        "2-D": lambda t: t[None],
    },
    "channel_edges": {
        "long": _longer,  # a bin more than shift has columns: IndexError in apply before
        "float": lambda t: t.float(),
        "negative": lambda t: t - t.max() - 1,
        "too large": lambda t: torch.cat([t[:-1], t.new_tensor([MAX_EDGE + 1])]),
        "unsorted": lambda t: t.flip(0),
    },
    "total_edges": {
        "long": _longer,
        "float": lambda t: t.float(),
        "negative": lambda t: t - t.max() - 1,
        "unsorted": lambda t: t.flip(0),
    },
    "coef": {
        "short": lambda t: t[:-1],
        "long": _longer,
        "float": lambda t: t.float() / 2**COEF_BITS,
        "too large": lambda t: torch.full_like(t, MAX_COEF + 1),
        "0-D": lambda t: t[0],
    },
    "shift": {
        "short": lambda t: t[:-1],  # a channel's row short: IndexError in apply before
        "long": _longer,
        "column short": lambda t: t[:, :-1],
        "float": lambda t: t.float(),
        "out of range": lambda t: t + 64,  # |shift| beyond the 64-entry scale table
        "bool": lambda t: t > 0,
    },
}
PARAMS = [
    pytest.param(attr, name, how, id=f"{attr}.{name}-{how}")
    for attr in ("context", "anchor_context")
    for name, edits in CASES.items()
    for how in edits
]


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    """The golden codec file's content (a three-pass PCConditional with both contexts)."""
    content, digested = read_file(EXPECTED / "conditional-codec.pt")
    assert digested
    return content


def _conditional_state(content: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k.removeprefix(GC): v for k, v in content["state_dict"].items() if k.startswith(GC)}


def _forge(golden: dict[str, Any], tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the golden file with ``edit`` applied to its state dict, digest recomputed."""
    content = {**golden, "state_dict": dict(golden["state_dict"])}
    edit(content["state_dict"])
    return write_file(content, tmp_path / "forged.pt")


def test_the_golden_codec_still_loads_and_codes(golden):
    """The checks refuse nothing a fitted model holds."""
    stored = torch.load(EXPECTED / "conditional-latents.pt", weights_only=True)
    gc = PCConditional(None)
    gc.load_state_dict(_conditional_state(golden))
    y_hat, idx = stored["y_hat"], stored["indexes"].long()
    assert torch.equal(gc.decompress(gc.compress(y_hat, idx), idx), y_hat)


@pytest.mark.parametrize("attr, name, how", PARAMS)
def test_a_context_buffer_that_does_not_fit_is_refused_on_load(golden, tmp_path, attr, name, how):
    key = f"{GC}{attr}.{name}"
    edit = CASES[name][how]
    path = _forge(golden, tmp_path, lambda sd: sd.__setitem__(key, edit(sd[key])))
    with pytest.raises(CheckpointError, match=re.escape(key)):
        load_codec(path)
    state = _conditional_state(golden)
    state[f"{attr}.{name}"] = edit(state[f"{attr}.{name}"])
    with pytest.raises(RuntimeError, match=re.escape(f"{attr}.{name}")):
        PCConditional(None).load_state_dict(state)


@pytest.mark.parametrize("attr", ["context", "anchor_context"])
def test_a_context_of_another_circuit_is_refused(golden, tmp_path, attr):
    """Consistent within itself (coef and shift both a channel short), but not the circuit's."""
    at = f"{GC}{attr}."

    def edit(sd: dict) -> None:
        sd[at + "coef"], sd[at + "shift"] = sd[at + "coef"][:-1], sd[at + "shift"][:-1]

    with pytest.raises(CheckpointError, match=re.escape(at + "coef") + ".*6 channels"):
        load_codec(_forge(golden, tmp_path, edit))


def test_an_anchor_context_without_the_cross_context_is_refused(golden, tmp_path):
    """Three passes decode the last with both contexts: alone, decompress called None before."""

    def edit(sd: dict) -> None:
        for k in [k for k in sd if k.startswith(GC + "context.")]:
            del sd[k]

    with pytest.raises(CheckpointError, match="anchor_context comes without"):
        load_codec(_forge(golden, tmp_path, edit))


def test_a_context_missing_a_buffer_is_refused_naming_it(golden):
    state = _conditional_state(golden)
    del state["context.inv_scale"]  # a KeyError inside load_state_dict before
    with pytest.raises(RuntimeError, match=r"context lacks context\.inv_scale"):
        PCConditional(None).load_state_dict(state)


def _context(shift: torch.Tensor | None = None) -> CheckerboardContext:
    ctx = CheckerboardContext(3, torch.tensor([0.5, 1.0, 2.0, 4.0]), channel_bins=3, total_bins=2)
    ctx.channel_edges = torch.tensor([1, 70000])
    ctx.total_edges = torch.tensor([50000])
    ctx.coef = torch.tensor([0, 2048, -4096])
    ctx.shift = torch.zeros(3, 3, 2, dtype=torch.long) if shift is None else shift
    return ctx


def test_a_bare_context_checks_its_own_buffers():
    """Loaded on its own (no owner), a context still checks its buffers against each other."""
    good = _context()
    CheckerboardContext(3, torch.ones(4)).load_state_dict(good.state_dict())
    for key, bad in (
        ("shift", good.shift[:, :2]),  # a channel bin short: IndexError in apply before
        ("shift", torch.full((3, 3, 2), 4)),  # beyond the 4-entry scale table
        ("channel_edges", torch.tensor([1, 70000, 90000])),
        ("coef", torch.tensor([0.0, 0.5, -1.0])),
    ):
        with pytest.raises(RuntimeError, match=f"{key} "):
            CheckerboardContext(3, torch.ones(4)).load_state_dict({**good.state_dict(), key: bad})


def test_fit_keeps_shifts_within_the_scale_table_so_its_state_reloads():
    """A shift beyond the table's end reaches the same clamped index: fit stops there (the load
    check's bound), where it used to return -max_shift for cells that want the smallest scale."""
    g = torch.Generator().manual_seed(0)
    table = torch.tensor([0.5, 1.0, 2.0, 4.0])
    u = torch.zeros(2, 3, 6, 6, dtype=torch.long)  # all zero: the smallest scale codes it best
    maps = [(u, torch.randint(0, 4, u.shape, generator=g))]
    ctx = CheckerboardContext(3, table, channel_bins=2, total_bins=2)
    ctx.fit(maps, table, max_shift=12)
    assert int(ctx.shift.min()) == -(len(table) - 1)
    again = CheckerboardContext(3, table, channel_bins=2, total_bins=2)
    again.load_state_dict(ctx.state_dict())
    assert torch.equal(again(*maps[0])[0], ctx(*maps[0])[0])


def test_construction_and_fit_refuse_what_loading_would():
    with pytest.raises(ValueError, match="scale_table"):
        CheckerboardContext(3, torch.tensor([1e-6, 1.0]))  # 1/σ beyond Q16's MAX_INV_SCALE
    ctx = CheckerboardContext(3, torch.ones(4))
    maps = [(torch.ones(1, 3, 4, 4, dtype=torch.long), torch.zeros(1, 3, 4, 4, dtype=torch.long))]
    with pytest.raises(ValueError, match="coef_grid"):  # |coef| > MAX_COEF: refused on load
        ctx.fit(maps, torch.ones(4), coef_grid=torch.tensor([0.0, 5000.0]))


# -- the bottleneck's own context buffers ----------------------------------------------------------
BOTTLENECK_CASES: dict[str, dict[str, Edit]] = {
    "_pc_schedule": {
        "out of range": lambda t: t + 9,
        "complex": lambda t: t.to(torch.complex64),
        "bool": lambda t: t > 0,
    },
    "_leaf_edges": {
        "bool": lambda t: t > 0,
        "complex": lambda t: t.to(torch.complex64),
        "too large": lambda t: torch.full_like(t, 2**62),
    },
    "_state_roots": {"bool": lambda t: t > 0, "complex": lambda t: t.to(torch.complex64)},
    "quantiles": {
        "nan": lambda t: torch.full_like(t, float("nan")),
        "inf": lambda t: torch.full_like(t, float("inf")),
        "huge": lambda t: torch.full_like(t, 1e30),
    },
    "_offset": {"beyond the coder": lambda t: torch.full_like(t, -(2**31) + 2)},
}


@pytest.fixture(scope="module")
def bottleneck_state() -> dict[str, torch.Tensor]:
    from pc_prior.integrations import PCEntropyBottleneck

    g = torch.Generator().manual_seed(0)
    eb = PCEntropyBottleneck(4)
    scale = torch.tensor([0.3, 1.0, 3.0, 8.0]).view(1, 4, 1, 1)
    maps = [torch.randn(1, 4, 10, 12, generator=g) * scale for _ in range(4)]  # maps: contexts
    eb.fit(maps, num_latents=2, epochs=1, full_batch_epochs=0, batch_size=200, progress=False)
    eb.update(force=True)
    assert eb.schedule is not None and eb.state_context is not None  # the defaults
    return eb.state_dict()


@pytest.mark.parametrize(
    "name, how",
    [pytest.param(n, h, id=f"{n}-{h}") for n, edits in BOTTLENECK_CASES.items() for h in edits],
)
def test_a_bottleneck_buffer_out_of_its_range_is_refused_on_load(bottleneck_state, name, how):
    from pc_prior.integrations import PCEntropyBottleneck

    PCEntropyBottleneck(4).load_state_dict(bottleneck_state)  # the unforged state loads
    state = dict(bottleneck_state)
    state[name] = BOTTLENECK_CASES[name][how](state[name])
    with pytest.raises(RuntimeError, match=re.escape(name)):
        PCEntropyBottleneck(4).load_state_dict(state)
