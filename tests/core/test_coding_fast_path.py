"""The batched coding path (chunked probabilities, emission row sums, gathered leaf messages)
against a plain reference of the original algorithm: the same probabilities and bytes, bit for bit."""

import constriction
import numpy as np
import pytest
import torch
from conftest import random_hclt

import pc_prior.coding as coding
from pc_prior import decode, encode
from pc_prior.coding import (
    MESSAGE_BITS,
    IncrementalConditionals,
    coding_tables,
    decode_columns,
    encode_columns,
)

PARENT = (1, -1, 1, 0, 0, 2, 2, 5, 5, 3)


def _renorm_ref(x):
    _, e = torch.frexp(x.amax(-1, keepdim=True))
    return torch.floor(torch.ldexp(x, MESSAGE_BITS - e))


def reference_probabilities(tables, x):
    """The coder's p(x_i | x_<i) [N, D, V] in coding order, as first written: full weights
    per variable, w / w.sum(-1), leaf messages renormed after the gather."""
    n = len(x)
    parent = np.asarray(tables.parent)
    order = IncrementalConditionals(tables, n).order
    pos = np.empty(len(parent), dtype=np.int64)
    pos[order] = np.arange(len(parent))
    last = pos.copy()
    for v in order[::-1]:
        if parent[v] >= 0:
            last[parent[v]] = max(last[parent[v]], last[v])
    outs, insides, probs = {}, {}, []
    for step, i in enumerate(order):
        p = int(parent[i])
        if p < 0:
            out = tables.root.expand(n, -1)
        else:
            out = _renorm_ref(_renorm_ref(outs[p] * insides[p]) @ tables.trans[i])
        w = out @ tables.emit[i]
        probs.append(w / w.sum(-1, keepdim=True))
        outs[i] = out
        insides[i] = _renorm_ref(tables.emit[i].T[x[:, i]])
        s = i
        while s >= 0 and last[s] == step and parent[s] >= 0:
            q = int(parent[s])
            lam = _renorm_ref(insides.pop(s) @ tables.trans[s].T)
            outs.pop(s)
            insides[q] = _renorm_ref(insides[q] * lam)
            s = q
    return order, torch.stack(probs, 1)


def chunked_probabilities(tables, x, chunk):
    inc = IncrementalConditionals(tables, len(x))
    buf = torch.empty(chunk, tables.emit.shape[-1], dtype=torch.float64)
    probs = []
    for i in inc.order:
        col = [
            inc.probabilities(s, min(s + chunk, len(x)), buf).clone()
            for s in range(0, len(x), chunk)
        ]
        probs.append(torch.cat(col))
        inc.observe(x[:, i])
    return inc.order, torch.stack(probs, 1)


@pytest.mark.parametrize("n", [1, 3, 7, 40, 101])  # below and above V, and not multiples of chunks
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_chunked_probabilities_equal_the_reference_bit_for_bit(n, chunk):
    pc = random_hclt(PARENT, num_cats=9, num_latents=6, seed=n)
    tables = coding_tables(pc)
    x = torch.randint(0, 9, (n, len(PARENT)), generator=torch.Generator().manual_seed(chunk))
    order, ref = reference_probabilities(tables, x)
    order2, got = chunked_probabilities(tables, x, chunk)
    assert np.array_equal(order, order2)
    assert torch.equal(got, ref)
    inc = IncrementalConditionals(tables, n)  # the full weights agree too
    for t, i in enumerate(inc.order):
        w = inc.weights()
        assert torch.equal(w / w.sum(-1, keepdim=True), ref[:, t])
        inc.observe(x[:, i])


def test_row_sums_fall_back_to_summing_where_they_could_exceed_2_53():
    pc = random_hclt(PARENT, num_cats=9, num_latents=6)
    tables = coding_tables(pc)
    assert IncrementalConditionals(tables, 5)._emit_sum is not None
    big = coding.CodingTables(
        tables.parent, tables.root, tables.trans, tables.emit.repeat(1, 1, 2**13)
    )
    assert IncrementalConditionals(big, 5)._emit_sum is None  # K * 2**22 * 2**17 * 9 >= 2**53
    x = torch.randint(0, 9, (5, len(PARENT)), generator=torch.Generator().manual_seed(0))
    assert torch.equal(chunked_probabilities(big, x, 2)[1], reference_probabilities(big, x)[1])


@pytest.mark.parametrize("n", [0, 1, 23, 50, 51, 123])
def test_stream_independent_of_chunking_across_blocks(monkeypatch, n):
    pc = random_hclt(PARENT, num_cats=9, num_latents=6, seed=2)
    x = (
        pc.sample(n, generator=torch.Generator().manual_seed(n))
        if n
        else torch.zeros(0, 10, dtype=torch.long)
    )
    monkeypatch.setattr(coding, "BLOCK_ITEMS", 50)  # up to three blocks, the last one partial
    ref = encode(pc, x)
    for chunk in (1, 7, 50, 4096):
        monkeypatch.setattr(coding, "CHUNK_ITEMS", chunk)
        assert encode(pc, x) == ref
        assert torch.equal(decode(pc, ref), x.long())


def test_columns_of_several_strings_with_escapes_independent_of_chunking(monkeypatch):
    pc = random_hclt(PARENT, num_cats=6, num_latents=5, seed=4)
    tables, d, strings, per = coding_tables(pc), len(PARENT), 3, 12
    g = torch.Generator().manual_seed(3)
    rel = torch.randint(-3, 9, (strings * per, d), generator=g)
    alphabet = np.full(d, 5)
    esc = (rel < 0) | (rel >= 5)
    idx = torch.where(esc, 5, rel)

    def run(chunk):
        monkeypatch.setattr(coding, "CHUNK_ITEMS", chunk)
        encs = [constriction.stream.queue.RangeEncoder() for _ in range(strings)]
        inc = IncrementalConditionals(tables, strings * per)
        encode_columns(encs, inc, idx, per, rel.numpy(), esc.numpy(), alphabet)
        words = [e.get_compressed() for e in encs]
        decs = [constriction.stream.queue.RangeDecoder(w) for w in words]
        out = decode_columns(decs, IncrementalConditionals(tables, strings * per), per, 5, alphabet)
        return [w.tobytes() for w in words], out

    ref_words, out = run(4096)
    assert torch.equal(out, rel)
    for chunk in (1, 5, 12, 13):
        words, out = run(chunk)
        assert words == ref_words and torch.equal(out, rel)
