"""The state context: a later pass's prior over latent states, chosen by its decoded neighbours'
states (``state_ids``), coded exactly with per-item roots (``IncrementalConditionals``)."""

import itertools
import math

import pytest
import torch
from conftest import random_hclt
from helpers import bottleneck_round_trip

from pc_prior.coding import CodingTables, IncrementalConditionals, coding_tables
from pc_prior.errors import InputError
from pc_prior.integrations import PCEntropyBottleneck
from pc_prior.integrations.context import lattice_masks, num_state_ids, pass_masks, state_ids

CROSS = [(-1, 0), (1, 0), (0, -1), (0, 1)]
DIAGONAL = [(-1, -1), (-1, 1), (1, -1), (1, 1)]


def _maps(n, c=5, h=10, w=12, seed=0):
    """Latent maps with regions of two regimes (calm, busy), a few positions across, so a
    position's neighbours tell which regime (latent state) it is in."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        coarse = torch.rand(1, 1, h // 3 + 1, w // 3 + 1, generator=g) > 0.5
        busy = torch.nn.functional.interpolate(coarse.float(), size=(h, w))
        out.append(torch.randn(1, c, h, w, generator=g) * (0.4 + 4 * busy))
    return out


def _naive_ids(states, schedule, lattice, k):
    b, h, w = states.shape
    per_pass = 1 + 4 * k
    if lattice is None:
        return torch.zeros_like(states)
    j = 1 + ("diagonal", "cross").index(lattice) if schedule == "three-pass" else 1
    sources = lattice_masks(h, w, lattice)[0]
    offs = {"diagonal": DIAGONAL, "eight": CROSS + DIAGONAL}.get(lattice, CROSS)
    out = torch.zeros_like(states)
    for n, i, jj in itertools.product(range(b), range(h), range(w)):
        seen = [
            int(states[n, i + di, jj + dj])
            for di, dj in offs
            if 0 <= i + di < h and 0 <= jj + dj < w and sources[i + di, jj + dj]
        ]
        if not seen:
            out[n, i, jj] = j * per_pass
            continue
        top = max(seen.count(s) for s in range(k))
        mode = min(s for s in range(k) if seen.count(s) == top)
        out[n, i, jj] = j * per_pass + 1 + 4 * mode + min(top, 4) - 1
    return out


@pytest.mark.parametrize("schedule", ["checkerboard", "three-pass"])
def test_state_ids_equal_a_naive_loop_and_read_only_earlier_passes(schedule):
    g = torch.Generator().manual_seed(3)
    k = 3  # few states: ties are common, and go to the lowest state
    states = torch.randint(0, k, (2, 6, 7), generator=g)
    passes = pass_masks(6, 7, schedule)
    for p, (mask, lattice) in enumerate(passes):
        ids = state_ids(states, schedule, lattice, k)
        assert torch.equal(ids[:, mask], _naive_ids(states, schedule, lattice, k)[:, mask])
        assert int(ids.min()) >= 0 and int(ids.max()) < num_state_ids(schedule, k)
        later = torch.zeros(6, 7, dtype=torch.bool)
        for m, _ in passes[p:]:
            later |= m
        other = torch.where(later, torch.randint(0, k, states.shape, generator=g), states)
        assert torch.equal(state_ids(other, schedule, lattice, k)[:, mask], ids[:, mask])


def test_per_item_roots_give_each_item_the_conditionals_of_its_own_root():
    pc = random_hclt((1, -1, 1, 0, 0, 2), num_cats=4, num_latents=3, seed=2)
    t = coding_tables(pc)
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 4, (5, 6), generator=g)
    roots = torch.randint(1, 2**22, (5, 3), generator=g).double()
    inc = IncrementalConditionals(t, 5, roots=roots)
    alone = [
        IncrementalConditionals(CodingTables(t.parent, roots[n], t.trans, t.emit), 1)
        for n in range(5)
    ]
    for i in inc.order:
        w = inc.weights()
        for n, one in enumerate(alone):
            assert torch.equal(w[n], one.weights()[0])
            one.observe(x[n : n + 1, i])
        inc.observe(x[:, i])
    # the root states: the most probable root state under the tables' own root prior
    leaf = pc.leaf_log_probs(x)
    m = pc.upward(leaf, keep=True)[1][0][0]
    assert torch.equal(inc.root_states(), (m + pc.log_root()).argmax(-1))
    with pytest.raises(ValueError, match="roots must have shape"):
        IncrementalConditionals(t, 5, roots=roots[:4])
    with pytest.raises(ValueError, match="integer weights"):
        IncrementalConditionals(t, 5, roots=roots * 0)
    with pytest.raises(RuntimeError, match="every variable observed"):
        IncrementalConditionals(t, 5, roots=roots).root_states()


def _fit(state_context="neighbours", seed=0):
    eb = PCEntropyBottleneck(5)
    kw = dict(epochs=3, full_batch_epochs=1, progress=False, seed=seed)
    eb.fit(_maps(12), num_latents=3, context="three-pass", state_context=state_context, **kw)
    return eb


def test_state_context_round_trip_is_exact_and_saves_rate():
    eb, plain = _fit(), _fit(state_context=None)
    assert eb.state_context == "neighbours" and plain.state_context is None
    assert tuple(eb._state_roots.shape) == (num_state_ids("three-pass", 3), 3)
    assert plain._state_roots.numel() == 0
    y = torch.cat(_maps(3, seed=9))
    strings, _, bits, model_bits = bottleneck_round_trip(eb, y)
    # the real bytes are the model's code length (exact states vs float ones) plus overhead
    assert model_bits < bits < model_bits * 1.02 + 8 * 40 * len(strings)
    # the neighbours' states tell the regime: fewer bits than the same circuit without it
    plain_bits = float(-plain.log_likelihood(plain.symbols(y)).sum()) / math.log(2)
    assert model_bits < plain_bits
    # another model's strings: the fingerprint covers the state priors
    with pytest.raises(Exception, match="another model"):
        plain.decompress(strings, y.shape[-2:])


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (4, 1), (7, 9)])
def test_state_context_round_trip_on_small_and_odd_sizes(size):
    eb = _fit()
    y = torch.randn(2, 5, *size, generator=torch.Generator().manual_seed(1)) * 3
    out = eb.decompress(eb.compress(y), size)
    med = eb._medians().view(1, -1, 1, 1)
    assert torch.equal(out, torch.round(y - med) + med)


def test_state_priors_reload_and_are_checked_on_load():
    eb = _fit()
    y = torch.cat(_maps(2, seed=7))
    strings = eb.compress(y)
    sd = eb.state_dict()
    again = PCEntropyBottleneck(5)
    again.load_state_dict(sd)
    assert again.state_context == "neighbours"
    assert torch.equal(
        again.decompress(strings, y.shape[-2:]), eb.decompress(strings, y.shape[-2:])
    )
    roots = sd["_state_roots"]
    for bad in (roots[:-1], roots * 0, roots.double(), roots[:, :2]):
        with pytest.raises(RuntimeError, match="_state_roots"):
            PCEntropyBottleneck(5).load_state_dict({**sd, "_state_roots": bad})
    # a state dict without it (written before the state context) loads without one
    plain = _fit(state_context=None)
    old = {k: v for k, v in plain.state_dict().items() if k != "_state_roots"}
    loaded = PCEntropyBottleneck(5)
    loaded.load_state_dict(old)
    assert loaded.state_context is None
    assert torch.equal(
        loaded.decompress(plain.compress(y), y.shape[-2:]),
        plain.decompress(plain.compress(y), y.shape[-2:]),
    )


def test_state_context_needs_a_grouped_fit_and_a_known_value():
    eb = PCEntropyBottleneck(5)
    eb.fit(
        _maps(3), num_latents=2, context=None, epochs=1, progress=False
    )  # one pass: no neighbours
    assert eb.state_context is None
    eb.fit(torch.randn(50, 5) * 3, num_latents=2, context=None, epochs=1, progress=False)
    assert eb.state_context is None
    with pytest.raises(InputError, match="state_context"):
        eb.fit(_maps(3), num_latents=2, state_context="diagonal", progress=False)


def test_warm_start_refits_the_state_priors():
    eb = _fit()
    before = eb._state_roots.clone()
    eb.adapt(_maps(6, seed=11), epochs=1, full_batch_epochs=0, progress=False)
    assert eb.state_context == "neighbours" and not torch.equal(eb._state_roots, before)
    y = torch.cat(_maps(1, seed=12))
    med = eb._medians().view(1, -1, 1, 1)
    assert torch.equal(eb.decompress(eb.compress(y), y.shape[-2:]), torch.round(y - med) + med)


def test_state_epochs_refit_the_circuit_under_the_state_priors():
    eb = PCEntropyBottleneck(5)
    kw = dict(epochs=3, full_batch_epochs=1, progress=False, context="three-pass")
    eb.fit(_maps(12), num_latents=3, state_epochs=1, **kw)
    once = _fit()
    assert not torch.equal(eb.pc.emission_logits, once.pc.emission_logits)
    assert not torch.equal(eb._state_roots, once._state_roots)
    y = torch.cat(_maps(2, seed=9))
    _, _, bits, model_bits = bottleneck_round_trip(eb, y)
    assert model_bits < bits < model_bits * 1.02 + 8 * 40 * 2
    with pytest.raises(InputError, match="state_epochs"):
        eb.fit(_maps(3), num_latents=2, state_epochs=-1, progress=False)
