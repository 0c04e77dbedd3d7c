"""``pc_prior.save``/``load`` of a ``GroupedHCLT`` (issue 33, item 6), the circuit of the default
``PCEntropyBottleneck``: it round-trips with identical parameters, coding tables, log-likelihoods
and streams, and a forged checkpoint (digest recomputed) is refused with ``CheckpointError``
before the circuit is built."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pc_prior import CheckpointError, Tree, decode, encode, load, save
from pc_prior.coding import MAX_SYMBOLS
from pc_prior.files import read_file, write_file
from pc_prior.hclt import GroupedHCLT
from pc_prior.integrations import PCEntropyBottleneck

PARENT = (1, -1, 1, 0, 0, 2)


def _grouped(dtype: torch.dtype = torch.float32, seed: int = 0) -> GroupedHCLT:
    """A tiny GroupedHCLT (6 variables, 2 groups of 3 symbols, K=4) with spread parameters."""
    g = torch.Generator().manual_seed(seed)
    pc = GroupedHCLT(Tree(PARENT), num_symbols=3, num_groups=2, num_latents=4, dtype=dtype)
    with torch.no_grad():
        for p in pc.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 1.5)
    return pc


def _items(pc: GroupedHCLT, n: int = 60, seed: int = 1) -> torch.Tensor:
    """Joint items ``group * num_symbols + symbol`` [n, D]."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, pc.num_groups, (n, pc.num_vars), generator=g)
    symbols = torch.randint(0, pc.num_symbols, (n, pc.num_vars), generator=g)
    return pc.joint_index(groups, symbols)


def _assert_same_circuit(a: GroupedHCLT, b: Any) -> None:
    assert type(b) is GroupedHCLT and b.config() == a.config()
    assert b.tree.parent == a.tree.parent
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sb[k].dtype == sa[k].dtype and torch.equal(sb[k], sa[k]), k
    assert torch.equal(b.group_coding_emissions(), a.group_coding_emissions())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grouped_hclt_round_trips(tmp_path, dtype):
    pc = _grouped(dtype)
    x = _items(pc)
    data = encode(pc, x)
    save(pc, tmp_path / "g.pt", note="grouped")
    back = load(tmp_path / "g.pt")
    _assert_same_circuit(pc, back)
    assert back.metadata == {"note": "grouped"}
    assert torch.equal(back.log_prob(x), pc.log_prob(x))
    assert torch.equal(back.conditionals(x[:8]), pc.conditionals(x[:8]))
    for name in ("_tables_root", "_tables_trans", "_tables_emit"):  # the saved tables, as coded
        assert torch.equal(getattr(back, name), getattr(pc, name)), name
    assert encode(back, x) == data
    assert torch.equal(decode(back, data), x)


def test_the_default_bottlenecks_circuit_round_trips(tmp_path):
    """The fitted circuit of a PCEntropyBottleneck with a spatial context is a GroupedHCLT: it
    saves and loads on its own, with the same per-group tables the bottleneck codes with."""
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(1, 4, 8, 8, generator=g) * 3 for _ in range(3)]
    eb = PCEntropyBottleneck(4)
    eb.fit(maps, num_latents=2, context="three-pass", epochs=1, full_batch_epochs=1, progress=False)
    assert isinstance(eb.pc, GroupedHCLT)
    save(eb.pc, tmp_path / "eb.pt")
    back = load(tmp_path / "eb.pt")
    _assert_same_circuit(eb.pc, back)
    rows = eb._leaf_indices(eb.symbols(maps[0]))[0]
    assert torch.equal(back.log_prob(rows), eb.pc.log_prob(rows))


def _forge(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    save(_grouped(), tmp_path / "g.pt")
    content, _ = read_file(tmp_path / "g.pt")
    edit(content)
    return write_file(content, tmp_path / "forged.pt")  # a consistent file: digest recomputed


def _config(**change: int) -> Callable[[dict[str, Any]], None]:
    return lambda c: c.__setitem__("config", {**c["config"], **change})


@pytest.mark.parametrize(
    "edit, message",
    [
        (_config(num_groups=3), "params.emission_logits"),  # one group more than stored
        (_config(num_groups=1), "params.emission_logits"),
        (_config(num_symbols=2), "params.emission_logits"),
        (_config(num_groups=0), "config num_groups = 0"),
        (_config(num_symbols=1), "config num_symbols = 1"),
        (_config(num_groups=True), "config num_groups = True"),
        # each size plausible, their joint alphabet not: refused before anything is built
        (_config(num_groups=MAX_SYMBOLS // 2, num_symbols=3), r"num_groups \* num_symbols"),
        # as large as the coder allows: built on the meta device only, then refused by shape
        (_config(num_groups=MAX_SYMBOLS // 2, num_symbols=2), "params.emission_logits"),
        (lambda c: c.__setitem__("config", {"num_cats": 6, "num_latents": 4}), "config has keys"),
        (lambda c: c.__setitem__("circuit", "HCLT"), "config has keys"),
        (lambda c: c.__setitem__("coding_tables", None), "coding_tables"),
        (
            lambda c: c["coding_tables"].__setitem__("emit", c["coding_tables"]["emit"][..., :-1]),
            "coding_tables: coding tables do not fit",
        ),
        (
            lambda c: c["params"].__setitem__(
                "emission_logits", c["params"]["emission_logits"][:, :, :1]
            ),
            "params.emission_logits",
        ),
    ],
)
def test_a_forged_grouped_checkpoint_is_refused(tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load(_forge(tmp_path, edit))
