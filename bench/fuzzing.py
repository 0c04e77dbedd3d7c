"""Fuzzing pc-prior's formats and entry points: mutated streams and files must fail with a project
error or decode right; valid inputs must code exactly and invalid ones be refused.

``run_fuzz(cases, seed)`` builds tiny models (lossless HCLTs of 3 and of 70 symbols, the latter
coded in two steps, a ``PCEntropyBottleneck``, a ``PCConditional`` with the three-pass context, a
small CompressAI codec with a PC bottleneck and a hyperprior codec with both PC entropy models and
their default contexts), encodes reference data, and then decodes or loads mutated copies: random
bit flips, every kind of truncation, appended bytes, random bytes, header fields changed *with the
checksum or digest recomputed* (a forged but consistent header; in files, the context buffers
too), strings and files of the other kinds, and a pickle that would run code. Two more targets
draw arguments instead of bytes: ``valid-inputs`` (circuits of 1 to 3 latent states, alphabets on
both sides of the two-step split, empty batches, every latent dtype) must code and decode exactly,
and ``invalid-inputs`` (bool, complex, meta and sparse tensors, NaN, wrong shapes, out-of-range
symbols and indexes, images a codec cannot read, fit arguments out of range) must be refused.
Each case is one of:

- ``rejected``: a ``PCPriorError`` (or ``FileNotFoundError``) was raised;
- ``same``: it decoded, loaded or coded, and gave exactly the reference output;
- ``silent_wrong``: it returned something else without an error (a defect);
- ``foreign_error``: it raised an exception that is not one of the project's (a defect);
- ``refused_valid``: a valid input was refused with a project error (a defect);
- ``accepted_invalid``: an invalid input was taken without an error (a defect);
- ``slow``: it took longer than ``slow_seconds`` (a defect: a hang).

It also records the peak resident memory growth over the run (an allocation over 1 GB would show
there) and whether the code-execution marker was ever created. The test suite runs a few thousand
cases; ``bench/fuzz_formats.py`` runs 100,000 and more. This is a test tool, so it lives in
``bench/``, outside the installed package (it builds a pickle that would run code).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import resource
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from compressai.models.google import get_scale_table

from pc_prior import framing
from pc_prior.errors import PCPriorError
from pc_prior.settings import ConditionalFit

__all__ = ["FuzzReport", "run_fuzz"]


DEFECTS = ("silent_wrong", "foreign_error", "refused_valid", "accepted_invalid", "slow")


@dataclass
class FuzzReport:
    """Counts of outcomes by target and mutation, the slowest case and the peak memory growth."""

    outcomes: Counter = field(default_factory=Counter)  # (target, mutation, outcome) -> count
    slowest_seconds: float = 0.0
    peak_rss_growth_mb: float = 0.0
    code_executed: bool = False
    examples: list[str] = field(default_factory=list)  # the first few defects, described

    @property
    def cases(self) -> int:
        return sum(self.outcomes.values())

    def count(self, outcome: str) -> int:
        return sum(v for (_, _, o), v in self.outcomes.items() if o == outcome)

    @property
    def defects(self) -> int:
        return sum(self.count(o) for o in DEFECTS) + int(self.code_executed)

    def summary(self) -> dict[str, Any]:
        by_target: dict[str, Counter] = {}
        for (t, _, o), v in self.outcomes.items():
            by_target.setdefault(t, Counter())[o] += v
        return {
            "cases": self.cases,
            **{o: self.count(o) for o in ("rejected", "same", *DEFECTS)},
            "code_executed": self.code_executed,
            "slowest_seconds": round(self.slowest_seconds, 3),
            "peak_rss_growth_mb": round(self.peak_rss_growth_mb, 1),
            "by_target": {t: dict(c) for t, c in sorted(by_target.items())},
            "inputs_by_kind": {  # the argument targets' case kinds
                f"{t}/{k}": {o: v for (t2, k2, o), v in self.outcomes.items() if (t2, k2) == (t, k)}
                for t, k in sorted({(t, k) for t, k, _ in self.outcomes if t.endswith("-inputs")})
            },
            "examples": self.examples,
        }


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- byte mutations ------------------------------------------------------------------------------
def _bitflip(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def _append(data: bytes, rng: random.Random) -> bytes:
    return data + bytes(rng.randrange(256) for _ in range(rng.choice((1, 3, 4, 8, 16))))


def _setbyte(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def _field_value(v: int, rng: random.Random) -> int:
    return rng.choice(
        (
            0,
            1,
            2,
            v - 1,
            v + 1,
            2 * v,
            v + 4096,
            2**16,
            2**24,
            2**31,
            2**32 - 1,
            rng.randrange(2**32),
        )
    )


def _forge_header(data: bytes, fmt: framing.Format, rng: random.Random) -> bytes:
    """A consistent header (checksum recomputed) with one field, the fingerprint or the version changed."""
    fp = data[3:7]
    fields, words = framing.unpack(data, fmt, fp)
    payload = words.astype("<u4").tobytes()
    what = rng.randrange(4)
    if what == 0 or not fields:
        fp = bytes(rng.randrange(256) for _ in range(4))
    elif what == 1:
        version = rng.choice((0, 1, fmt.version - 1, fmt.version + 1, 255))
        fmt = framing.Format(fmt.magic, version, fmt.num_fields, fmt.name)
    else:
        i = rng.randrange(len(fields))
        fields = tuple(_field_value(v, rng) if j == i else v for j, v in enumerate(fields))
        fields = tuple(max(0, min(v, framing.MAX_FIELD)) for v in fields)
    return framing.pack(fmt, fp, fields, payload)


_BYTE_MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "bitflip": _bitflip,
    "truncate": _truncate,
    "append": _append,
    "setbyte": _setbyte,
}


# -- targets ---------------------------------------------------------------------------------------
@dataclass
class _Target:
    name: str
    data: list[bytes]  # valid inputs to mutate
    run: Callable[[int, bytes], Any]  # (which reference, mutated bytes) -> output
    same: Callable[[int, Any], bool]  # is this output the reference's?
    fmt: framing.Format | None = None  # for header forging (streams)
    weight: float = 1.0
    # "either": mutated bytes, refused or decoded right; "accept": valid arguments, which must
    # code exactly; "refuse": invalid arguments, which must raise a project error
    expect: str = "either"
    seeded: bool = False  # its bytes only seed the case's own choices (never mutated)
    labels: list[str] | None = None  # seeded: each reference's case kind, for the report


def _stream_targets(g: torch.Generator) -> list[_Target]:
    from pc_prior.coding import decode, encode
    from pc_prior.hclt import HCLT
    from pc_prior.structure import Tree

    def lossless_target(name: str, num_cats: int) -> tuple[_Target, HCLT]:
        pc = HCLT(Tree((1, -1, 1, 0, 0, 2)), num_cats, 4, dtype=torch.float64)
        with torch.no_grad():
            for p in pc.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 1.5)
        xs = [pc.sample(n, generator=g) for n in (1, 7, 40)]
        target = _Target(
            name,
            [encode(pc, x) for x in xs],
            lambda i, d: decode(pc, d),
            lambda i, out: torch.equal(out, xs[i]),
            framing.LOSSLESS,
            weight=3.0,
        )
        return target, pc

    lossless, pc = lossless_target("lossless", 3)
    wide, _ = lossless_target("lossless-wide", 70)  # two-step symbols, a padded last group

    eb, y = _bottleneck(g)
    ys = [y[:1], y[1:2, :, :2, :3]]
    eb_strings = [eb.compress(t)[0] for t in ys]
    eb_out = [eb.decompress([s], t.shape[-2:]) for s, t in zip(eb_strings, ys)]
    bottleneck = _Target(
        "bottleneck",
        eb_strings,
        lambda i, d: eb.decompress([d], ys[i].shape[-2:]),
        lambda i, out: torch.equal(out, eb_out[i]),
        framing.BOTTLENECK,
        weight=3.0,
    )

    gc, sym, idx = _conditional(g)
    gc_strings = [gc.compress(sym[i : i + 1].float(), idx[i : i + 1])[0] for i in range(2)]
    gc_out = [gc.decompress([s], idx[i : i + 1]) for i, s in enumerate(gc_strings)]
    conditional = _Target(
        "conditional",
        gc_strings,
        lambda i, d: gc.decompress([d], idx[i : i + 1]),
        lambda i, out: torch.equal(out, gc_out[i]),
        framing.CONDITIONAL,
        weight=3.0,
    )

    # strings handed to the wrong decoder, and forged latent sizes that match a forged header
    others = [*lossless.data, *eb_strings, *gc_strings]

    kinds = (
        [1] * len(lossless.data) + [2] * len(eb_strings) + [0] * len(gc_strings)
    )  # another kind's decoder

    def wrong_decoder(i: int, d: bytes) -> Any:
        return (
            lambda: decode(pc, d),
            lambda: eb.decompress([d], (2, 3)),
            lambda: gc.decompress([d], idx[:1]),
        )[kinds[i]]()

    cross = _Target("cross-kind", others, wrong_decoder, lambda i, out: False, weight=0.5)

    def forged_size(i: int, d: bytes) -> Any:
        rng = random.Random(d)
        h, w = rng.choice(((1, 1), (16384, 16384), (4096, 1), (3, 64), (2**20, 2**12), (5, 6)))
        _fields, words = framing.unpack(eb_strings[i], framing.BOTTLENECK, eb_strings[i][3:7])
        forged = framing.pack(
            framing.BOTTLENECK, eb_strings[i][3:7], (h, w), words.astype("<u4").tobytes()
        )
        return eb.decompress([forged], (h, w))

    sizes = _Target(
        "bottleneck-forged-size",
        eb_strings,
        forged_size,
        lambda i, out: torch.equal(out, eb_out[i]),
        weight=0.5,
        seeded=True,
    )
    return [lossless, wide, bottleneck, conditional, cross, sizes]


def _bottleneck(
    g: torch.Generator, num_latents: int = 4, context: str | None = "three-pass"
) -> tuple[Any, torch.Tensor]:
    from pc_prior.integrations import PCEntropyBottleneck

    eb = PCEntropyBottleneck(4)
    vals = torch.randn(600, 4, generator=g) * torch.tensor([0.3, 1.0, 3.0, 8.0])
    maps = [vals.view(6, 10, 10, 4).permute(0, 3, 1, 2)]  # the same values, as latent maps
    eb.fit(
        vals if context is None else maps,  # rows have no neighbours: a context needs maps
        num_latents=num_latents,
        context=context,
        epochs=1,
        full_batch_epochs=0,
        batch_size=200,
        structure="chow-liu",  # the fit settings of the README's fuzz run, pinned
        step_size=(0.1, 0.01),
        progress=False,
    )
    eb.eval()
    y = torch.randn(2, 4, 3, 5, generator=g) * torch.tensor([0.3, 1.0, 3.0, 30.0]).view(1, 4, 1, 1)
    return eb, y


def _conditional(g: torch.Generator) -> tuple[Any, torch.Tensor, torch.Tensor]:
    from pc_prior.integrations import PCConditional

    gc = PCConditional(None)
    table = get_scale_table()
    idx = torch.randint(0, len(table), (3, 3, 6, 5), generator=g)
    sym = torch.round(torch.randn(3, 3, 6, 5, generator=g) * table[idx]).long()
    gc.fit(
        list(sym[:, None].unbind(0)),
        list(idx[:, None].unbind(0)),
        num_latents=3,
        context="three-pass",
        steps=5,
        progress=False,
    )
    gc.eval()
    return gc, sym, idx


# -- arguments, not bytes ------------------------------------------------------------------------
def _input_targets(g: torch.Generator) -> list[_Target]:
    """``valid-inputs``: each case draws a valid call (a model from a pool of 1 to 3 latent
    states, alphabets on both sides of the two-step split, 0 to 3 items or images, any latent
    dtype) that must code and decode exactly; ``invalid-inputs``: each draws a call with one thing
    wrong, which must raise ``InputError``."""
    from compressai.models import FactorizedPrior

    from pc_prior import HCLT, decode, encode
    from pc_prior.integrations import fit_prior

    hclts = {
        (k, v): HCLT.from_data(torch.randint(0, v, (300, 5), generator=g), v, k, seed=k)
        for k in (1, 2, 3)
        for v in (3, 70)
    }
    bottlenecks = {
        (k, ctx): _bottleneck(g, k, ctx)[0] for k in (1, 3) for ctx in (None, "three-pass")
    }
    gc, _sym, _idx = _conditional(g)
    table = gc.scale_table

    def latent(rng: random.Random, b: int, c: int) -> torch.Tensor:
        h, w = rng.randint(1, 7), rng.randint(1, 7)
        y = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        return y * rng.choice((0.1, 1.0, 5.0, 40.0))

    def lossless(rng: random.Random) -> bool:
        (_k, v), pc = rng.choice(list(hclts.items()))
        n = rng.choice((0, 1, 2, 5, 50, 300))
        dtype = rng.choice(
            (torch.int16, torch.int32, torch.int64) + ((torch.uint8,) if v < 256 else ())
        )
        x = torch.randint(
            0, v, (n, 5), generator=torch.Generator().manual_seed(rng.randrange(2**31))
        )
        return torch.equal(decode(pc, encode(pc, x.to(dtype))), x)

    def bottleneck(rng: random.Random) -> bool:
        eb = rng.choice(list(bottlenecks.values()))
        y = latent(rng, rng.choice((0, 1, 2, 3)), 4)
        y = y.to(rng.choice((torch.float32, torch.float64, torch.float16, torch.int64)))
        out = eb.decompress(eb.compress(y), y.shape[-2:])
        med = eb._medians().view(1, -1, 1, 1)
        return torch.equal(out, eb.symbols(y).to(med.dtype) + med)

    def conditional(rng: random.Random) -> bool:
        b = rng.choice((0, 1, 2))
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        h, w = rng.randint(1, 7), rng.randint(1, 7)
        idx = torch.randint(0, len(table), (b, 3, h, w), generator=gen)
        sym = torch.round(torch.randn(b, 3, h, w, generator=gen) * table[idx])
        means = torch.randn(b, 3, h, w, generator=gen) if rng.random() < 0.5 else None
        y = sym if means is None else sym + means
        idx = idx.to(rng.choice((torch.int32, torch.int64)))
        out = gc.decompress(gc.compress(y, idx, means), idx, means=means)
        return torch.equal(out, sym if means is None else sym + means)

    net = FactorizedPrior(N=8, M=12).eval()

    def empty_codec(rng: random.Random) -> bool:
        with torch.no_grad():
            enc = net.compress(torch.rand(0, 3, 64, 64))
            return net.decompress(enc["strings"], enc["shape"])["x_hat"].shape == (0, 3, 64, 64)

    valid = {"lossless": lossless, "bottleneck": bottleneck, "conditional": conditional}
    eb = bottlenecks[(3, "three-pass")]
    pc = hclts[(2, 3)]
    rows = torch.randint(0, 3, (50, 5), generator=g)

    def bad_tensor(rng: random.Random, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        kind = rng.choice(("bool", "complex", "meta", "sparse", "wrong-dtype"))
        if kind == "bool":
            return torch.zeros(shape, dtype=torch.bool)
        if kind == "complex":
            return torch.zeros(shape, dtype=torch.complex64)
        if kind == "meta":
            return torch.zeros(shape, dtype=dtype, device="meta")
        if kind == "sparse":
            return torch.zeros(shape, dtype=dtype).to_sparse()
        return torch.zeros(
            shape, dtype=torch.float32 if not dtype.is_floating_point else torch.int64
        )

    def bad_latent(rng: random.Random) -> Any:
        what = rng.choice(("tensor", "nan", "inf", "rank", "channels", "huge", "empty-side"))
        y = latent(rng, 1, 4)
        if what == "tensor":
            y = bad_tensor(rng, tuple(y.shape), torch.float32)
            if y.dtype == torch.int64:  # integer latents are valid: make it wrong otherwise
                y = y.to(torch.bool)
        elif what in ("nan", "inf"):
            y.view(-1)[rng.randrange(y.numel())] = float(what)
        elif what == "rank":
            y = y[0] if rng.random() < 0.5 else y[..., None]
        elif what == "channels":
            y = y[:, : rng.randrange(4)] if rng.random() < 0.5 else torch.cat([y, y], 1)
        elif what == "huge":
            y.view(-1)[0] = 2.0**40
        else:
            y = y[..., :0]
        # an empty side is a latent forward and symbols take (no positions), but not one to code
        call = (
            "compress" if what == "empty-side" else rng.choice(("compress", "forward", "symbols"))
        )
        if call == "compress":
            return eb.compress(y)
        if call == "forward":
            return eb(y, training=False)
        return eb.symbols(y)

    def bad_strings(rng: random.Random) -> Any:
        size = rng.choice(((0, 3), (-1, 2), (2.5, 3), (3,), (1, 2, 3), "3x3", None))
        strings = rng.choice(([b""], b"abc", None, 5))
        return eb.decompress(strings, size) if rng.random() < 0.5 else eb.decompress([], size)

    def bad_conditional(rng: random.Random) -> Any:
        y = torch.round(latent(rng, 1, 3))
        idx = torch.zeros(y.shape, dtype=torch.int64)
        what = rng.choice(("latent", "indexes", "means", "range", "shape", "nan", "float-indexes"))
        means = None
        if what == "latent":
            y = bad_tensor(rng, tuple(y.shape), torch.float32)
            if y.dtype == torch.int64:
                y = y.to(torch.complex64)
        elif what == "indexes":
            idx = bad_tensor(rng, tuple(y.shape), torch.int64)
        elif what == "means":
            means = bad_tensor(rng, tuple(y.shape), torch.float32)
            if means.dtype == torch.int64:  # integer means are valid: make it wrong otherwise
                means = means.to(torch.complex64)
        elif what == "range":
            idx.view(-1)[0] = rng.choice((-1, len(table), 2**40))
        elif what == "shape":
            idx = idx[..., :-1] if idx.shape[-1] > 1 else idx[:, :2]
        elif what == "nan":
            y.view(-1)[0] = float("nan")
        else:
            idx = idx.float()
        return gc.compress(y, idx, means) if rng.random() < 0.7 else gc.decompress([b""], idx)

    def bad_lossless(rng: random.Random) -> Any:
        what = rng.choice(("tensor", "range", "shape"))
        x = rows.clone()
        if what == "tensor":
            x = bad_tensor(rng, tuple(x.shape), torch.int64)
        elif what == "range":
            x.view(-1)[rng.randrange(x.numel())] = rng.choice((-1, 3, 2**40))
        else:
            x = rng.choice((x[:, :-1], x[0], x[None]))
        return encode(pc, x) if rng.random() < 0.7 else pc.log_prob(x)

    def bad_fit(rng: random.Random) -> Any:
        what = rng.choice(
            ("num_bins", "max_samples", "dtype", "no-variables", "no-rows", "num_cats", "latents")
        )
        kw: dict[str, Any] = {}
        x, v, k = rows, 3, 2
        if what in ("num_bins", "max_samples"):
            kw[what] = rng.choice((0, -1, 2.5, "4"))
        elif what == "dtype":
            kw["dtype"] = rng.choice((torch.int64, torch.float16, torch.bool, "float32"))
        elif what == "no-variables":
            x = rows[:, :0]
        elif what == "no-rows":
            x = rows[:0]
        elif what == "num_cats":
            v = rng.choice((0, 1, -3))
        else:
            k = rng.choice((0, -1))
        return HCLT.from_data(x, v, k, **kw)

    def bad_images(rng: random.Random) -> Any:
        x = torch.rand(1, 3, 32, 32)
        what = rng.choice(("gray", "rgba", "255", "nan", "tensor", "empty"))
        images: Any = [x]
        if what == "gray":
            images = [x[:, :1]]
        elif what == "rgba":
            images = [torch.cat([x, x[:, :1]], 1)]
        elif what == "255":
            images = [x * 255]
        elif what == "nan":
            x[0, 0, 0, 0] = float("nan")
        elif what == "tensor":
            images = [bad_tensor(rng, tuple(x.shape), torch.float32)]
        else:
            images = [] if rng.random() < 0.5 else [x[:0]]
        return fit_prior(
            FactorizedPrior(N=8, M=12), images, num_latents=2, epochs=1, progress=False
        )

    invalid = {
        "latent": bad_latent,
        "strings": bad_strings,
        "conditional": bad_conditional,
        "lossless": bad_lossless,
        "hclt-fit": bad_fit,
        "images": bad_images,
    }
    fit_prior(net, [torch.rand(1, 3, 64, 64, generator=g)], num_latents=1, epochs=1, progress=False)
    net.update(force=True)
    valid["empty-codec"] = empty_codec

    def seeded(cases: dict[str, Callable[[random.Random], Any]]) -> Callable[[int, bytes], Any]:
        names = list(cases)
        return lambda i, d: cases[names[i]](random.Random(d))

    return [
        _Target(
            "valid-inputs",
            [k.encode() for k in valid],
            seeded(valid),
            lambda i, out: out is True,
            weight=1.0,
            expect="accept",
            seeded=True,
            labels=list(valid),
        ),
        _Target(
            "invalid-inputs",
            [k.encode() for k in invalid],
            seeded(invalid),
            lambda i, out: False,
            weight=1.0,
            expect="refuse",
            seeded=True,
            labels=list(invalid),
        ),
    ]


def _file_targets(g: torch.Generator, folder: Path, marker: Path) -> list[_Target]:
    from pc_prior.checkpoint import load, save
    from pc_prior.coding import decode, encode
    from pc_prior.files import read_file, write_file
    from pc_prior.hclt import HCLT, GroupedHCLT
    from pc_prior.structure import Tree

    pc = HCLT(Tree((1, -1, 1, 0)), 3, 3)
    x = pc.sample(20, generator=g)
    ref_stream = encode(pc, x)
    save(pc, folder / "ref.pt")
    ckpt = (folder / "ref.pt").read_bytes()
    # the default bottleneck's circuit: leaves of 2 groups of 3 symbols (joint items)
    grouped = GroupedHCLT(Tree((1, -1, 1, 0)), num_symbols=3, num_groups=2, num_latents=3)
    gx = grouped.joint_index(torch.randint(0, 2, (20, 4), generator=g), x)
    g_stream = encode(grouped, gx)
    save(grouped, folder / "grouped.pt")
    gckpt = (folder / "grouped.pt").read_bytes()
    streams, items = (ref_stream, g_stream), (x, gx)

    def load_bytes(d: bytes, name: str) -> Path:
        p = folder / name
        p.write_bytes(d)
        return p

    def run_ckpt(i: int, d: bytes) -> Any:
        return decode(load(load_bytes(d, "case.pt")), streams[i])

    checkpoint = _Target(
        "checkpoint-file",
        [ckpt, gckpt],
        run_ckpt,
        lambda i, out: torch.equal(out, items[i]),
        weight=0.6,
    )

    codec, _xin, enc, ref_hat = _codec()
    from pc_prior.integrations import load_codec, save_codec

    save_codec(codec, folder / "codec.pt", "FactorizedPrior", 1, net_kwargs={"N": 8, "M": 12})
    cbytes = (folder / "codec.pt").read_bytes()

    def codec_target(name: str, data: bytes, strings: dict, ref: torch.Tensor) -> _Target:
        """A codec file, mutated: loaded, it must decode ``strings`` to ``ref`` or be refused."""

        def run(i: int, d: bytes) -> Any:
            net = load_codec(load_bytes(d, f"case-{name}.pt"))
            with torch.no_grad():
                return net.decompress(strings["strings"], strings["shape"])["x_hat"]

        return _Target(name, [data], run, lambda i, out: torch.equal(out, ref), weight=0.4)

    codec_file = codec_target("codec-file", cbytes, enc, ref_hat)

    # a hyperprior codec with both PC entropy models and their default contexts
    hyper, h_enc, h_hat = _hyperprior_codec()
    save_codec(hyper, folder / "hyper.pt", "MeanScaleHyperprior", 1, net_kwargs={"N": 8, "M": 12})
    hbytes = (folder / "hyper.pt").read_bytes()
    codecs = {1: ("codec.pt", enc, "entropy_bottleneck"), 2: ("hyper.pt", h_enc, "")}

    hyper_file = codec_target("hyper-codec-file", hbytes, h_enc, h_hat)

    # consistent files (digest recomputed) with one field changed: must be refused or decode right
    def forged_file(i: int, d: bytes) -> Any:
        rng = random.Random(d)
        if i in (0, 3):
            state, _ = read_file(folder / ("ref.pt", "grouped.pt")[i // 3])
            key = rng.choice(
                ("circuit", "config", "dtype", "parent", "coding_tables", "params", "version")
            )
            if key == "config":  # one of the sizes the circuit is rebuilt with
                sub = rng.choice(sorted(state["config"]))
                state["config"][sub] = _forge_value(state["config"][sub], rng)
            else:
                state[key] = _forge_value(state[key], rng)
            write_file(state, folder / "forged.pt")
            return decode(load(folder / "forged.pt"), streams[i // 3])
        name, ref_enc, module = codecs[i]
        state, _ = read_file(folder / name)
        sd = state["state_dict"]
        pc_keys = [k for k in sd if k.startswith(("entropy_bottleneck", "gaussian_conditional"))]
        # the spatial contexts' buffers half the time: each must be checked on load
        ctx_keys = [k for k in pc_keys if "context" in k or k.rsplit(".", 1)[-1] in _CONTEXT_KEYS]
        keys = ctx_keys if ctx_keys and rng.random() < 0.5 else pc_keys
        key = rng.choice(
            [k for k in keys if module in k] + ["arch", "quality", "pc_modules", "version"]
        )
        if key in sd:
            sd[key] = _forge_value(sd[key], rng)
        else:
            state[key] = _forge_value(state[key], rng)
        write_file(state, folder / "forged-codec.pt")
        with torch.no_grad():
            net = load_codec(folder / "forged-codec.pt")
            return net.decompress(ref_enc["strings"], ref_enc["shape"])["x_hat"]

    forged = _Target(
        "file-forged-fields",
        [ckpt, cbytes, hbytes, gckpt],
        forged_file,
        lambda i, out: torch.equal(out, (x, ref_hat, h_hat, gx)[i]),
        weight=0.4,
        seeded=True,
    )

    class _Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    torch.save(
        {
            "format": "pc-prior/hclt",
            "arch": "bmshj2018-factorized",
            "quality": 1,
            "state_dict": _Evil(),
        },
        buf,
        pickle_module=pickle,
    )
    evil = buf.getvalue()

    def run_other(i: int, d: bytes) -> Any:  # files of the other kind, streams as files, code
        p = load_bytes(d, "other.pt")
        return (lambda: load(p), lambda: load_codec(p))[i % 2]()

    other = _Target(
        "file-other-kind",
        [cbytes, ckpt, evil, evil, ref_stream, ref_stream, hbytes, gckpt],
        run_other,
        lambda i, out: False,
        weight=0.1,
    )
    return [checkpoint, codec_file, hyper_file, forged, other]


# buffers of the entropy models' spatial and state contexts (besides the context modules')
_CONTEXT_KEYS = ("_pc_schedule", "_leaf_edges", "_state_roots")


def _hyperprior_codec() -> tuple[Any, dict, torch.Tensor]:
    """A tiny MeanScaleHyperprior with both PC entropy models and their default contexts; the
    strings of one image and their decode."""
    from compressai.models import MeanScaleHyperprior

    from pc_prior.integrations import fit_prior

    torch.manual_seed(0)
    net = MeanScaleHyperprior(N=8, M=12).eval()
    with torch.no_grad():  # multi-symbol latents from a random-init model
        net.g_a[-1].weight.mul_(15.0)
        net.h_a[-1].weight.mul_(5.0)
    g = torch.Generator().manual_seed(2)
    fit_prior(
        net,
        [torch.rand(1, 3, 64, 64, generator=g) for _ in range(3)],
        name=("entropy_bottleneck", "gaussian_conditional"),
        num_latents=3,
        epochs=1,
        progress=False,
        conditional=ConditionalFit(num_latents=3, steps=20),
    )
    net.update(force=True)
    with torch.no_grad():
        enc = net.compress(torch.rand(1, 3, 64, 64, generator=g))
        ref = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    return net, enc, ref


def _forge_value(v: Any, rng: random.Random) -> Any:
    if isinstance(v, torch.Tensor):
        t = v.clone()
        choice = rng.randrange(5)
        if choice == 0 and t.numel():
            if t.is_floating_point():
                values: tuple[float, ...] = (-1, 0, 2**31 - 1, float("nan"))
            else:  # within the dtype (a uint8 digest cannot hold -1)
                info = torch.iinfo(t.dtype)
                values = tuple(v for v in (-1, 0, 2**30, info.max) if info.min <= v <= info.max)
            t.view(-1)[rng.randrange(t.numel())] = rng.choice(values)
            return t
        if choice == 1 and t.dim():
            return t[:-1] if len(t) > 1 else t.repeat(2, *([1] * (t.dim() - 1)))
        if choice == 2:
            return t.double() if not t.is_floating_point() else t.long()
        if choice == 3:
            return t.neg()
        return t.reshape(-1)
    if isinstance(v, bool) or v is None:
        return rng.choice((0, "x", [1]))
    if isinstance(v, int):
        return rng.choice((0, -1, 2**31, v + 1, "3"))
    if isinstance(v, str):
        return rng.choice(("bogus", "", "float16", "bmshj2018-hyperprior", 5))
    if isinstance(v, list):
        return rng.choice((v[:-1], v + v[:1], [0] * len(v), "abc", [2**40] * len(v)))
    if isinstance(v, dict):
        k = rng.choice(sorted(v)) if v else None
        out = dict(v)
        if k is not None:
            out[k] = _forge_value(out[k], rng)
        return out
    return rng.choice((0, None, "x"))


def _codec() -> tuple[Any, torch.Tensor, dict, torch.Tensor]:
    from compressai.models import FactorizedPrior

    from pc_prior.integrations import fit_prior

    torch.manual_seed(0)
    net = FactorizedPrior(N=8, M=12).eval()
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(1, 3, 32, 32, generator=g) for _ in range(4)]
    fit_prior(
        net,
        images,
        num_latents=3,
        epochs=1,
        full_batch_epochs=0,
        max_items=500,
        structure="chow-liu",  # the fit settings of the README's fuzz run, pinned
        batch_size=1024,
        step_size=(0.1, 0.01),
        progress=False,
    )
    net.update(force=True)
    x = torch.rand(1, 3, 32, 48, generator=g)
    with torch.no_grad():
        enc = net.compress(x)
        ref = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    return net, x, enc, ref


# -- the run ---------------------------------------------------------------------------------------
def run_fuzz(
    cases: int = 3000,
    seed: int = 0,
    slow_seconds: float = 10.0,
    files: bool = True,
    progress: bool = False,
) -> FuzzReport:
    """Run ``cases`` fuzz cases over every format (see the module docstring); returns the report."""
    from pc_prior.progress import progress_bar

    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    report = FuzzReport()
    with tempfile.TemporaryDirectory(prefix="pc-prior-fuzz-") as tmp:
        folder = Path(tmp)
        marker = folder / "code-ran"
        targets = _stream_targets(g) + _input_targets(g)
        if files:
            targets += _file_targets(g, folder, marker)
        for t in targets:  # the unmutated references must decode right, or the run measures nothing
            if (
                t.expect == "either"
                and not t.seeded
                and t.name not in ("cross-kind", "file-other-kind")
            ):
                for i, data in enumerate(t.data):
                    if not t.same(i, t.run(i, data)):
                        raise RuntimeError(
                            f"fuzz target {t.name}: reference {i} does not decode to itself"
                        )
        weights = [t.weight for t in targets]
        rss0 = _rss_mb()
        for _ in progress_bar(range(cases), desc="fuzz", unit="case", disable=not progress):
            t = rng.choices(targets, weights)[0]
            i = rng.randrange(len(t.data))
            data = t.data[i]
            if t.seeded:  # the case's own choices, seeded by eight more bytes
                kind, mutated = t.labels[i] if t.labels else "forged", data + rng.randbytes(8)
            elif t.name in ("cross-kind", "file-other-kind"):
                kind, mutated = "as-is", data
            else:
                kind = rng.choice(list(_BYTE_MUTATIONS) + (["forge"] * 2 if t.fmt else []))
                mutated = (
                    _forge_header(data, t.fmt, rng)
                    if kind == "forge" and t.fmt
                    else _BYTE_MUTATIONS[kind](data, rng)
                )
            start = time.perf_counter()
            try:
                out = t.run(i, mutated)
                if t.expect == "refuse":
                    outcome = "accepted_invalid"
                else:
                    outcome = "same" if t.same(i, out) else "silent_wrong"
            except (PCPriorError, FileNotFoundError) as e:
                outcome = "refused_valid" if t.expect == "accept" else "rejected"
                if outcome == "refused_valid" and len(report.examples) < 10:
                    report.examples.append(f"{t.name}/{kind}: refused: {str(e)[:200]}")
            except Exception as e:
                outcome = "foreign_error"
                if len(report.examples) < 10:
                    report.examples.append(f"{t.name}/{kind}: {type(e).__name__}: {str(e)[:200]}")
            dt = time.perf_counter() - start
            if dt > slow_seconds:
                outcome = "slow"
            if outcome in ("silent_wrong", "accepted_invalid") and len(report.examples) < 10:
                report.examples.append(f"{t.name}/{kind}: {outcome.replace('_', ' ')}")
            report.slowest_seconds = max(report.slowest_seconds, dt)
            report.outcomes[(t.name, kind, outcome)] += 1
        report.peak_rss_growth_mb = _rss_mb() - rss0
        report.code_executed = marker.exists()
    return report
