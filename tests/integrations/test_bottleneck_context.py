"""Spatial context for ``PCEntropyBottleneck``: pass schedules, leaf groups, exact coding."""

import itertools
import math

import pytest
import torch
from compressai.models import FactorizedPrior
from helpers import bottleneck_round_trip, random_images

from pc_prior.continuous import DiscretizedLogisticTree
from pc_prior.errors import InputError
from pc_prior.hclt import GroupedHCLT
from pc_prior.integrations import PCEntropyBottleneck, fit_prior, load_codec, save_codec
from pc_prior.integrations.context import (
    MAGNITUDE_EDGES,
    lattice_masks,
    leaf_groups,
    neighbour_bins,
    num_leaf_groups,
    pass_masks,
)
from pc_prior.structure import Tree

EDGES = torch.tensor(MAGNITUDE_EDGES)


def _maps(n, c=5, h=9, w=11, seed=0):
    """Latent maps whose channels share a smooth spatial field (so neighbours tell something)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        field = torch.nn.functional.avg_pool2d(torch.randn(1, 1, h + 2, w + 2, generator=g), 3, 1)
        own = torch.nn.functional.avg_pool2d(torch.randn(1, c, h + 2, w + 2, generator=g), 3, 1)
        out.append(6 * field + 5 * own + 0.4 * torch.randn(1, c, h, w, generator=g))
    return out


@pytest.mark.parametrize("schedule", [None, "checkerboard", "three-pass", "four-pass"])
@pytest.mark.parametrize("size", [(1, 1), (1, 4), (5, 6), (7, 3)])
def test_pass_masks_partition_and_neighbours_come_first(schedule, size):
    h, w = size
    passes = pass_masks(h, w, schedule)
    total = torch.zeros(h, w, dtype=torch.long)
    done = torch.zeros(h, w, dtype=torch.bool)
    for k, (mask, lattice) in enumerate(passes):
        assert mask.any()
        assert (lattice is None) == (k == 0 or not done.any())
        total += mask.long()
        if lattice is not None:
            sources, targets = lattice_masks(h, w, lattice)
            assert torch.equal(mask, targets)
            assert not (sources & ~done).any()  # every source is coded in an earlier pass
        done |= mask
    assert torch.equal(total, torch.ones(h, w, dtype=torch.long))


def _naive_bins(sym, lattice):
    b, c, h, w = sym.shape
    sources = lattice_masks(h, w, lattice)[0]
    cross, diagonal = [(-1, 0), (1, 0), (0, -1), (0, 1)], [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    offs = {"diagonal": diagonal, "eight": cross + diagonal}.get(lattice, cross)
    edges = [e * (2 if lattice == "eight" else 1) for e in MAGNITUDE_EDGES]
    out = torch.zeros_like(sym)
    for n, ch, i, j in itertools.product(range(b), range(c), range(h), range(w)):
        mag = tot = 0
        for di, dj in offs:
            a, bb = i + di, j + dj
            if 0 <= a < h and 0 <= bb < w and sources[a, bb]:
                mag += abs(int(sym[n, ch, a, bb]))
                tot += int(sym[n, ch, a, bb])
        k = sum(mag >= e for e in edges)
        out[n, ch, i, j] = 0 if k == 0 else 2 * k - 1 + (tot > 0)
    return out


@pytest.mark.parametrize("lattice", ["cross", "diagonal", "cross-even-rows", "eight"])
def test_neighbour_bins_equal_a_naive_loop(lattice):
    sym = torch.randint(-9, 10, (2, 3, 5, 6), generator=torch.Generator().manual_seed(1))
    assert torch.equal(neighbour_bins(sym, lattice, EDGES), _naive_bins(sym, lattice))


@pytest.mark.parametrize("schedule", ["checkerboard", "three-pass", "four-pass"])
def test_leaf_groups_read_only_earlier_passes(schedule):
    g = torch.Generator().manual_seed(2)
    sym = torch.randint(-6, 7, (2, 3, 6, 7), generator=g)
    passes = pass_masks(6, 7, schedule)
    groups = leaf_groups(sym, schedule, EDGES)
    assert int(groups.min()) >= 0 and int(groups.max()) < num_leaf_groups(schedule)
    for k, (mask, _) in enumerate(passes):
        later = torch.zeros(6, 7, dtype=torch.bool)
        for m, _ in passes[k:]:
            later |= m
        other = torch.where(later, torch.randint(-6, 7, sym.shape, generator=g), sym)
        assert torch.equal(leaf_groups(other, schedule, EDGES)[..., mask], groups[..., mask])


def test_grouped_hclt_sums_to_one_in_every_group():
    tree = Tree((-1, 0, 0))
    pc = GroupedHCLT(tree, num_symbols=3, num_groups=2, num_latents=2, dtype=torch.float64)
    with torch.no_grad():
        for p in pc.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64))
    xs = torch.tensor(list(itertools.product(range(3), repeat=3)))
    for groups in itertools.product(range(2), repeat=3):
        g = torch.tensor(groups).expand_as(xs)
        total = pc.log_prob(pc.joint_index(g, xs)).exp().sum()
        assert abs(float(total) - 1.0) < 1e-12


@pytest.mark.parametrize("schedule", ["checkerboard", "three-pass", "four-pass"])
def test_context_bottleneck_round_trip_is_exact_and_matches_its_code_length(schedule):
    train, test = _maps(12), _maps(3, seed=9)
    eb = PCEntropyBottleneck(5)
    plain = PCEntropyBottleneck(5)
    kw = dict(epochs=3, full_batch_epochs=1, progress=False)
    eb.fit(train, num_latents=3, context=schedule, **kw)
    plain.fit(train, num_latents=3, context=None, **kw)
    assert eb.schedule == schedule and isinstance(eb.pc, GroupedHCLT)
    assert eb._pc_emit.dim() == 4 and eb._pc_emit.shape[1] == num_leaf_groups(schedule)
    y = torch.cat(test)
    strings, out, bits, model_bits = bottleneck_round_trip(eb, y)
    # the real bytes are the model's code length up to the coder's overhead
    assert model_bits < bits < model_bits * 1.02 + 8 * 40 * len(strings)
    # the neighbours carry information here: fewer bits than the one-pass circuit
    plain_bits = float(-plain.log_likelihood(plain.symbols(y)).sum()) / math.log(2)
    assert model_bits < plain_bits
    # forward's likelihoods are the same code length
    _, lik = eb(y, training=False)
    assert abs(float(-torch.log2(lik.double()).sum()) - model_bits) < 1e-3 * model_bits
    # a reloaded module decodes the strings; the one-pass circuit refuses them
    again = PCEntropyBottleneck(5)
    again.load_state_dict(eb.state_dict())
    assert again.schedule == schedule
    assert torch.equal(again.decompress(strings, y.shape[-2:]), out)
    with pytest.raises(Exception, match="another model"):
        plain.decompress(strings, y.shape[-2:])


def test_rows_and_logistic_leaves_need_one_pass():
    eb = PCEntropyBottleneck(5)
    rows = torch.randn(100, 5) * 3
    with pytest.raises(InputError, match="rows .* have no neighbours"):
        eb.fit(rows, num_latents=2, context="three-pass", epochs=1, progress=False)
    eb.fit(rows, num_latents=2, context=None, epochs=1, progress=False)
    assert eb.schedule is None and not isinstance(eb.pc, GroupedHCLT)
    with pytest.raises(InputError, match="logistic"):
        eb.fit(_maps(2), num_latents=2, context="checkerboard", leaves="logistic", progress=False)
    eb.fit(_maps(2), num_latents=2, context=None, leaves="logistic", epochs=1, progress=False)
    assert eb.schedule is None and isinstance(eb.pc, DiscretizedLogisticTree)
    with pytest.raises(InputError, match="context"):
        eb.fit(_maps(2), num_latents=2, context="five-pass", progress=False)
    with pytest.raises(InputError, match=r"values\[1\] must be a latent map tensor"):
        eb.fit([_maps(1)[0], _maps(1)[0].numpy()], num_latents=2, progress=False)
    with pytest.raises(InputError, match=r"expected a latent of shape \[B, 5, H, W\]"):
        eb.fit([torch.zeros(1, 4, 3, 3)], num_latents=2, progress=False)
    with pytest.raises(InputError, match="non-empty list of latent maps"):
        eb.fit([], num_latents=2, progress=False)


def test_corrupted_schedule_fails_the_load():
    eb = PCEntropyBottleneck(5)
    eb.fit(
        _maps(4), num_latents=2, context="three-pass", epochs=1, full_batch_epochs=0, progress=False
    )
    sd = eb.state_dict()
    for key, bad in (
        ("_pc_schedule", torch.tensor([7])),
        ("_pc_schedule", torch.tensor([1])),  # checkerboard: fewer groups than the circuit has
        ("_leaf_edges", torch.tensor([3, 2, 1])),
    ):
        other = PCEntropyBottleneck(5)
        with pytest.raises(RuntimeError, match="spatial context|_pc_schedule must be"):
            other.load_state_dict({**sd, key: bad})


def test_fit_prior_with_context_saves_and_reloads(tmp_path):
    torch.manual_seed(0)
    net = FactorizedPrior(N=8, M=12).eval()
    with torch.no_grad():
        net.g_a[-1].weight.mul_(15.0)
    fit_prior(
        net,
        random_images(3, seed=0),
        num_latents=2,
        context="checkerboard",
        epochs=1,
        progress=False,
    )
    assert net.entropy_bottleneck.schedule == "checkerboard"
    net.update()
    x = random_images(1, seed=5)[0]
    out = net.compress(x)
    save_codec(net, tmp_path / "c.pt", "FactorizedPrior", 1, net_kwargs={"N": 8, "M": 12})
    again = load_codec(tmp_path / "c.pt")
    assert again.entropy_bottleneck.schedule == "checkerboard"
    rec = again.decompress(out["strings"], out["shape"])["x_hat"]
    assert torch.equal(rec, net.decompress(out["strings"], out["shape"])["x_hat"])


def test_back_off_pulls_rare_groups_to_the_pooled_leaf():
    pc = GroupedHCLT(Tree((-1, 0)), num_symbols=4, num_groups=3, num_latents=1, dtype=torch.float64)
    counts = torch.zeros(2, 1, 3, 4, dtype=torch.float64)
    counts[:, 0, 0] = torch.tensor([1000.0, 0.0, 0.0, 0.0])  # frequent group: all symbol 0
    counts[:, 0, 1] = torch.tensor([0.0, 0.0, 0.0, 1000.0])  # frequent group: all symbol 3
    # group 2 never seen: it codes like the pooled leaf (half 0, half 3)
    pc.back_off(counts, strength=10.0, pseudocount=0.0)
    p = torch.softmax(pc.emission_logits.detach(), -1)[0, 0]
    torch.testing.assert_close(p.sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(p[2], torch.tensor([0.5, 0.0, 0.0, 0.5], dtype=torch.float64))
    assert float(p[0, 0]) == pytest.approx(1005 / 1010) and float(p[1, 3]) == pytest.approx(
        1005 / 1010
    )


def test_channel_edges_follow_each_channels_activity_and_bin_per_channel():
    from pc_prior.integrations.context import channel_edges

    g = torch.Generator().manual_seed(3)
    maps = [
        torch.randint(-2, 3, (1, 3, 8, 9), generator=g) * torch.tensor([1, 5, 20]).view(1, 3, 1, 1)
    ]
    edges = channel_edges(maps)
    assert edges.shape == (3, len(MAGNITUDE_EDGES)) and int(edges.min()) >= 1
    assert bool((edges.diff(dim=-1) >= 0).all())
    assert bool((edges[2] > edges[0]).any()) and int(edges[2, -1]) > int(edges[1, -1]) > int(
        edges[0, -1]
    )
    sym = maps[0]
    per = neighbour_bins(sym, "cross", edges)
    for ch in range(3):  # per-channel edges bin each channel as that channel's fixed edges would
        ref = neighbour_bins(sym[:, ch : ch + 1], "cross", edges[ch])
        assert torch.equal(per[:, ch : ch + 1], ref)


def test_context_bins_channel_round_trip():
    eb = PCEntropyBottleneck(5)
    eb.fit(
        _maps(6),
        num_latents=2,
        context="three-pass",
        context_bins="channel",
        epochs=1,
        progress=False,
    )
    assert eb._leaf_edges.shape == (5, len(MAGNITUDE_EDGES))
    y = torch.cat(_maps(2, seed=4))
    again = PCEntropyBottleneck(5)
    again.load_state_dict(eb.state_dict())
    out = again.decompress(eb.compress(y), y.shape[-2:])
    assert torch.equal(eb.symbols(out), eb.symbols(y))


def test_lifted_hclt_gives_every_group_the_plain_circuits_probabilities():
    from pc_prior.hclt import HCLT

    pc = HCLT(Tree((-1, 0, 0)), num_cats=3, num_latents=2, dtype=torch.float64)
    with torch.no_grad():
        for p in pc.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64))
    lifted = GroupedHCLT.from_hclt(pc, num_groups=4)
    xs = torch.tensor(list(itertools.product(range(3), repeat=3)))
    ref = pc.log_prob(xs)
    for groups in [(0, 0, 0), (3, 1, 2), (2, 2, 0)]:
        g = torch.tensor(groups).expand_as(xs)
        torch.testing.assert_close(lifted.log_prob(lifted.joint_index(g, xs)), ref)
    with pytest.raises(InputError, match="plain HCLT"):
        GroupedHCLT.from_hclt(lifted, 2)


def test_states_first_keeps_the_one_pass_states_and_learns_groups_on_them():
    train, test = _maps(12), _maps(3, seed=9)
    kw = dict(epochs=3, full_batch_epochs=1, progress=False)
    eb, plain = PCEntropyBottleneck(5), PCEntropyBottleneck(5)
    eb.fit(
        train, num_latents=3, context="three-pass", group_fit="states-first", group_epochs=0, **kw
    )
    plain.fit(train, num_latents=3, context=None, **kw)
    assert isinstance(eb.pc, GroupedHCLT) and eb.schedule == "three-pass"
    # the latent states are exactly the one-pass circuit's; only the leaves see the groups
    assert torch.equal(eb.pc.root_logits, plain.pc.root_logits)
    assert torch.equal(eb.pc.transition_logits, plain.pc.transition_logits)
    y = torch.cat(test)
    strings = eb.compress(y)
    again = PCEntropyBottleneck(5)
    again.load_state_dict(eb.state_dict())
    assert torch.equal(eb.symbols(again.decompress(strings, y.shape[-2:])), eb.symbols(y))
    bits = float(-eb.log_likelihood(eb.symbols(y)).sum())
    assert bits < float(-plain.log_likelihood(plain.symbols(y)).sum())
    with pytest.raises(InputError, match="group_fit"):
        eb.fit(train, num_latents=3, context="three-pass", group_fit="groups-first", progress=False)


def test_group_epochs_continue_the_grouped_circuit_after_the_count_pass(monkeypatch):
    train = _maps(6, seed=5)
    kw = dict(epochs=2, full_batch_epochs=1, progress=False)
    eb, two_step = PCEntropyBottleneck(5), PCEntropyBottleneck(5)
    eb.fit(train, num_latents=3, group_epochs=2, **kw)
    with monkeypatch.context() as m:  # the first fit's end unsnapped: the warm start snaps once
        m.setattr(PCEntropyBottleneck, "snap_leaves", lambda self: None)
        two_step.fit(
            train, num_latents=3, group_epochs=0, **kw
        )  # states first, count pass, back-off
    before = float(-two_step.log_likelihood(torch.cat([two_step.symbols(y) for y in train])).sum())
    # the same as continuing the grouped circuit by two full-batch epochs (a warm start)
    two_step.adapt(train, epochs=0, full_batch_epochs=2, progress=False)
    for name in ("_pc_root", "_pc_trans", "_pc_emit"):
        assert torch.equal(getattr(eb, name), getattr(two_step, name))
    after = float(-eb.log_likelihood(torch.cat([eb.symbols(y) for y in train])).sum())
    assert after < before  # the grouped EM fits the training maps better
    with pytest.raises(InputError, match="group_epochs"):
        eb.fit(train, num_latents=3, group_epochs=-1, progress=False)
