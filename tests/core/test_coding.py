import numpy as np
import pytest
import torch
from conftest import random_hclt, shared_path

from pc_prior import HCLT, BitstreamError, decode, encode, fit_em, framing, load, save
from pc_prior.coding import (
    BLOCK_ITEMS,
    CodingTables,
    IncrementalConditionals,
    coding_tables,
    decode_columns,
    incremental_conditionals,
    min_item_bits,
    naive_conditionals,
    symbol_split,
)

LN2 = np.log(2.0)


def header_size(pc, n):
    return framing.header_bytes((n, pc.num_vars, pc.num_cats, BLOCK_ITEMS))


def check_bits(n):
    return 32 * -(-n // BLOCK_ITEMS)  # each block of items is closed by a 32-bit check


@pytest.mark.parametrize(
    "parent", [(-1,), (1, -1, 1, 0, 0, 2, 2, 5), (-1, 0, 1, 2, 3, 4), (-1, 0, 0, 0, 0, 0)]
)
def test_incremental_conditionals_equal_naive(parent):
    pc = random_hclt(parent, num_cats=5, num_latents=4, seed=len(parent))
    x = pc.sample(200, generator=torch.Generator().manual_seed(1))
    order, inc = incremental_conditionals(pc, x)
    assert sorted(order.tolist()) == list(range(len(parent)))
    naive = naive_conditionals(pc, x, order)
    # fixed-point coding path vs float64 reference: only quantization error remains
    assert torch.allclose(inc, naive, atol=2e-6)


@pytest.mark.parametrize("n", [1, 2, 57])
def test_round_trip_random_data(n):
    pc = random_hclt((1, -1, 1, 0, 0, 2, 2, 5), num_cats=6, num_latents=5)
    x = torch.randint(0, 6, (n, 8), generator=torch.Generator().manual_seed(n))
    assert torch.equal(decode(pc, encode(pc, x)), x)


@pytest.mark.parametrize("value", [0, 5])
def test_round_trip_extreme_symbols(value):
    pc = random_hclt((1, -1, 1, 0, 0, 2, 2, 5), num_cats=6, num_latents=5)
    x = torch.full((4, 8), value)
    assert torch.equal(decode(pc, encode(pc, x)), x)


def test_round_trip_empty_and_small_dtypes():
    pc = random_hclt()
    assert decode(pc, encode(pc, torch.zeros(0, 6, dtype=torch.long))).shape == (0, 6)
    x = torch.randint(0, 3, (9, 6), dtype=torch.uint8)
    assert torch.equal(decode(pc, encode(pc, x)), x.long())


def test_coded_size_close_to_model_nll():
    pc = random_hclt((1, -1, 1, 0, 0, 2, 2, 5), num_cats=6, num_latents=5, seed=3)
    x = pc.sample(3000, generator=torch.Generator().manual_seed(2))
    nll_bits = float(-pc.log_prob(x).detach().sum()) / LN2
    coded_bits = (len(encode(pc, x)) - header_size(pc, len(x))) * 8 - check_bits(len(x))
    assert nll_bits - 64 <= coded_bits <= 1.01 * nll_bits + 64


def test_coding_probabilities_independent_of_threads_and_batching():
    pc = random_hclt((1, -1, 1, 0, 0, 2, 2, 5), num_cats=7, num_latents=16, dtype=torch.float32)
    x = torch.randint(0, 7, (300, 8), generator=torch.Generator().manual_seed(0))
    tables = coding_tables(pc)

    def weights(rows, threads):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            inc = IncrementalConditionals(tables, len(rows))
            out = []
            for i in inc.order:
                out.append(inc.weights())
                inc.observe(rows[:, i])
            return torch.stack(out, 1)
        finally:
            torch.set_num_threads(old)

    full = weights(x, 1)
    assert torch.equal(full, weights(x, 2))
    assert torch.equal(full[:37], weights(x[:37], 2))  # another batch size, other kernels
    assert torch.equal(full[5:6], weights(x[5:6], 1))
    assert (full == full.round()).all() and float(full.max()) < 2.0**53  # exact integers


def test_symbol_split_width():
    assert [symbol_split(v) for v in (2, 63, 64, 70, 256, 257, 2**24)] == [
        0,
        0,
        8,
        16,
        16,
        32,
        4096,
    ]


@pytest.mark.parametrize("num_cats", [64, 70, 256])
def test_two_step_probabilities_multiply_to_the_one_step_conditionals(num_cats):
    pc = random_hclt((1, -1, 1, 0, 0, 2), num_cats=num_cats, num_latents=5, seed=num_cats)
    x = pc.sample(300, generator=torch.Generator().manual_seed(0))
    tables = coding_tables(pc)
    one = IncrementalConditionals(tables, len(x))
    two = IncrementalConditionals(tables, len(x), split=True)
    width = symbol_split(num_cats)
    assert two.width == width and one.width == 0
    for i in one.order:
        w = one.weights()
        p_one = w / w.sum(-1, keepdim=True)
        group = two.group_probabilities()
        member = two.member_probabilities(x[:, i] // width)
        assert group.shape == (len(x), -(-num_cats // width)) and member.shape == (len(x), width)
        torch.testing.assert_close(group.sum(-1), torch.ones(len(x), dtype=torch.float64))
        torch.testing.assert_close(member.sum(-1), torch.ones(len(x), dtype=torch.float64))
        # p(group) * p(member | group) is the one-step probability of each item's symbol
        rows = torch.arange(len(x))
        joint = group[rows, x[:, i] // width] * member[rows, x[:, i] % width]
        torch.testing.assert_close(joint, p_one[rows, x[:, i]], rtol=1e-12, atol=0)
        one.observe(x[:, i])
        two.observe(x[:, i])


@pytest.mark.parametrize("n", [1, 3, 300])
def test_two_step_round_trip_and_size(n):
    pc = random_hclt((1, -1, 1, 0, 0, 2, 2, 5), num_cats=70, num_latents=6, seed=n)
    x = pc.sample(n, generator=torch.Generator().manual_seed(n))
    x[0] = 69  # the padded last group's real members
    data = encode(pc, x)
    assert torch.equal(decode(pc, data), x)
    coded_bits = (len(data) - header_size(pc, n)) * 8 - check_bits(n)
    assert coded_bits >= n * min_item_bits(coding_tables(pc), split=True) - 96
    if n == 300:
        nll_bits = float(-pc.log_prob(x).detach().sum()) / LN2
        assert nll_bits - 64 <= coded_bits <= 1.01 * nll_bits + 64


def test_two_step_decoding_refuses_a_padding_member():
    import constriction

    pc = random_hclt((1, -1, 1, 0), num_cats=70, num_latents=3)
    tables = coding_tables(pc)
    inc = IncrementalConditionals(tables, 2, split=True)
    family = constriction.stream.model.Categorical(perfect=False)
    enc = constriction.stream.queue.RangeEncoder()
    group = torch.full((2,), 4)  # symbols 64..79: 70..79 are padding
    enc.encode(group.int().numpy(), family, inc.group_probabilities().numpy())
    enc.encode(np.array([15, 15], np.int32), family, inc.member_probabilities(group).numpy())
    dec = constriction.stream.queue.RangeDecoder(enc.get_compressed())
    with pytest.raises(BitstreamError, match="outside variable .* alphabet"):
        decode_columns([dec], IncrementalConditionals(tables, 2, split=True), 2)


def test_two_steps_need_shared_tables_and_no_escapes():
    tables = coding_tables(random_hclt(num_cats=70))
    grouped = type(tables)(tables.parent, tables.root, tables.trans, tables.emit[:, None])
    with pytest.raises(ValueError, match="shared emission tables"):
        IncrementalConditionals(grouped, 2, groups=torch.zeros(2, 6, dtype=torch.long), split=True)
    inc = IncrementalConditionals(tables, 2, split=True)
    with pytest.raises(ValueError, match="escapes"):
        decode_columns([], inc, 1, escape=69, alphabet=np.full(6, 69))


def test_tables_are_state_that_survives_moves_and_casts(tmp_path):
    pc = random_hclt(dtype=torch.float32)
    x = pc.sample(40, generator=torch.Generator().manual_seed(0))
    data = encode(pc, x)
    t0 = coding_tables(pc)
    for moved in (
        pc.double(),
        pc.half(),
        pc.float().to("cpu"),
    ):  # casts leave the integer tables alone
        assert torch.equal(coding_tables(moved).emit, t0.emit)
        assert torch.equal(decode(moved, data), x)
    save(pc, tmp_path / "m.pt")
    loaded = load(tmp_path / "m.pt").double()
    assert torch.equal(decode(loaded, data), x)
    fit_em(pc, x, epochs=1, batch_size=25, progress=False)  # training refreshes them
    assert not torch.equal(coding_tables(pc).emit, t0.emit)
    with torch.no_grad():
        pc.emission_logits[..., 0].add_(2.0)  # by hand: stale until refreshed, and still exact
    stale = coding_tables(pc)
    assert torch.equal(decode(pc, encode(pc, x)), x)
    assert not torch.equal(coding_tables(pc, refresh=True).emit, stale.emit)


def test_wrong_model_is_rejected():
    pc, other = random_hclt(seed=0), random_hclt(seed=1)
    data = encode(pc, torch.randint(0, 3, (5, 6)))
    with pytest.raises(BitstreamError, match="another model"):
        decode(other, data)
    bigger = random_hclt((1, -1, 1, 0, 0, 2, 2), num_cats=3)
    with pytest.raises(BitstreamError, match="7"):
        decode(bigger, data)


def test_truncated_and_corrupted_streams_are_rejected():
    pc = random_hclt()
    data = encode(pc, torch.randint(0, 3, (200, 6), generator=torch.Generator().manual_seed(0)))
    with pytest.raises(BitstreamError, match="truncated"):
        decode(pc, data[:10])
    with pytest.raises(BitstreamError, match="truncated|corrupted"):
        decode(pc, data[:-4])
    with pytest.raises(BitstreamError, match="truncated|corrupted"):
        decode(pc, data[:-1])
    bad = bytearray(data)
    bad[-3] ^= 0x10
    with pytest.raises(BitstreamError, match="corrupted"):
        decode(pc, bytes(bad))
    with pytest.raises(BitstreamError, match="not a pc-prior"):
        decode(pc, b"JUNK" + data[4:])
    newer = bytearray(data)
    newer[2] = 99
    with pytest.raises(BitstreamError, match="version 99"):
        decode(pc, bytes(newer))
    with pytest.raises(TypeError, match="bytes"):
        decode(pc, "not bytes")


def test_bad_symbols_are_rejected_before_coding():
    pc = random_hclt()
    with pytest.raises(ValueError, match="out of range"):
        encode(pc, torch.full((2, 6), 3))
    with pytest.raises(TypeError, match="integer"):
        encode(pc, torch.zeros(2, 6))
    with pytest.raises(ValueError, match="shape"):
        encode(pc, torch.zeros(2, 5, dtype=torch.long))


def test_mnist_subset_round_trip():
    from pc_prior.data import load_mnist

    root = shared_path("data", "mnist")
    x = load_mnist(root, "train", limit=600)
    xt = load_mnist(root, "test", limit=100)
    pc = HCLT.from_data(x, 256, 8, max_samples=600)
    fit_em(pc, x, epochs=2, batch_size=200, progress=False)
    data = encode(pc, xt)
    assert torch.equal(decode(pc, data), xt)
    nll_bits = float(-pc.log_prob(xt).detach().sum()) / LN2
    assert (len(data) - header_size(pc, len(xt))) * 8 - check_bits(len(xt)) <= 1.01 * nll_bits


@pytest.mark.parametrize("n", [1, 7, 300])
def test_per_item_tables_equal_each_items_own_tables(n):
    """Per-item emission tables (sorted by table once for all variables) give every item exactly
    the weights of a coder holding only its own tables, and probability slices agree with them."""
    pc = random_hclt((1, -1, 1, 0, 0, 2, 2, 5), num_cats=5, num_latents=4, seed=3)
    t = coding_tables(pc)
    g = torch.Generator().manual_seed(n)
    s = 6  # tables per variable, some used by a single item, some by none
    emit = torch.randint(1, 2**22, (8, s, 4, 5), generator=g).double()
    groups = torch.randint(0, s, (n, 8), generator=g) ** 2 // s  # skewed: low tables crowded
    x = torch.randint(0, 5, (n, 8), generator=g)
    inc = IncrementalConditionals(CodingTables(t.parent, t.root, t.trans, emit), n, groups=groups)
    alone = [
        IncrementalConditionals(
            CodingTables(t.parent, t.root, t.trans, emit[torch.arange(8), groups[m]]), 1
        )
        for m in range(n)
    ]
    buf = torch.empty(n, 5, dtype=torch.float64)
    for i in inc.order:
        w = inc.weights()
        assert inc.weights() is w  # made once per variable
        for m, one in enumerate(alone):
            assert torch.equal(w[m], one.weights()[0])
            one.observe(x[m : m + 1, i])
        half = n // 2
        parts = [inc.probabilities(0, half, buf).clone(), inc.probabilities(half, n, buf).clone()]
        assert torch.equal(torch.cat(parts), w / w.sum(-1, keepdim=True))
        inc.observe(x[:, i])


@pytest.mark.parametrize("num_latents", [1, 2, 3])
@pytest.mark.parametrize("num_cats", [3, 70])  # one-step and two-step symbols (SPLIT_MIN_SYMBOLS)
@pytest.mark.parametrize("n", [2, 150])  # fewer items than symbols, and more (observe's two paths)
def test_coding_leaves_the_tables_untouched(num_latents, num_cats, n):
    # K = 1 once made ``emit[i].T.contiguous()`` a view of the tables, which the in-place
    # renormalisation then overwrote mid-stream: the model refused its own output
    pc = random_hclt((1, -1, 1, 0), num_cats=num_cats, num_latents=num_latents, seed=num_cats)
    x = pc.sample(n, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in coding_tables(pc).state().items()}
    data = encode(pc, x)
    mid = {k: v.clone() for k, v in coding_tables(pc).state().items()}
    assert torch.equal(decode(pc, data), x)
    after = coding_tables(pc).state()
    for k in before:
        assert torch.equal(mid[k], before[k]) and torch.equal(after[k], before[k]), k
