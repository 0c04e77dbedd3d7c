import numpy as np
import pytest
import torch
from conftest import random_hclt, shared_path

from pc_prior import HCLT, BitstreamError, decode, encode, fit_em, framing, load, save
from pc_prior.coding import (
    BLOCK_ITEMS,
    IncrementalConditionals,
    coding_tables,
    incremental_conditionals,
    naive_conditionals,
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
