"""Fuzzing pc-prior's formats: mutated streams and files must fail with a project error or decode right.

``run_fuzz(cases, seed)`` builds tiny models (lossless HCLTs of 3 and of 70 symbols, the latter
coded in two steps, a ``PCEntropyBottleneck``, a
``PCConditional`` with the three-pass context, and a small CompressAI codec with a PC bottleneck),
encodes reference data, and then decodes or loads mutated copies: random bit flips, every kind of
truncation, appended bytes, random bytes, header fields changed *with the checksum or digest
recomputed* (a forged but consistent header), strings and files of the other kinds, and a pickle
that would run code. Each case is one of:

- ``rejected``: a ``PCPriorError`` (or ``FileNotFoundError``) was raised;
- ``same``: it decoded or loaded, and gave exactly the reference output;
- ``silent_wrong``: it returned something else without an error (a defect);
- ``foreign_error``: it raised an exception that is not one of the project's (a defect);
- ``slow``: it took longer than ``slow_seconds`` (a defect: a hang).

It also records the peak resident memory growth over the run (an allocation over 1 GB would show
there) and whether the code-execution marker was ever created. The test suite runs a few thousand
cases; ``bench/fuzz_formats.py`` runs 100,000 and more.
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

from . import framing
from .errors import PCPriorError

__all__ = ["FuzzReport", "run_fuzz"]


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
        return sum(self.count(o) for o in ("silent_wrong", "foreign_error", "slow")) + int(
            self.code_executed
        )

    def summary(self) -> dict[str, Any]:
        by_target: dict[str, Counter] = {}
        for (t, _, o), v in self.outcomes.items():
            by_target.setdefault(t, Counter())[o] += v
        return {
            "cases": self.cases,
            **{
                o: self.count(o)
                for o in ("rejected", "same", "silent_wrong", "foreign_error", "slow")
            },
            "code_executed": self.code_executed,
            "slowest_seconds": round(self.slowest_seconds, 3),
            "peak_rss_growth_mb": round(self.peak_rss_growth_mb, 1),
            "by_target": {t: dict(c) for t, c in sorted(by_target.items())},
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


def _stream_targets(g: torch.Generator) -> list[_Target]:
    from .coding import decode, encode
    from .hclt import HCLT
    from .structure import Tree

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
    )
    return [lossless, wide, bottleneck, conditional, cross, sizes]


def _bottleneck(g: torch.Generator) -> tuple[Any, torch.Tensor]:
    from .integrations import PCEntropyBottleneck

    eb = PCEntropyBottleneck(4)
    vals = torch.randn(600, 4, generator=g) * torch.tensor([0.3, 1.0, 3.0, 8.0])
    eb.fit(
        vals,
        4,
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
    from .integrations import PCConditional

    gc = PCConditional(None)
    table = gc._scale_table_or_default()
    idx = torch.randint(0, len(table), (3, 3, 6, 5), generator=g)
    sym = torch.round(torch.randn(3, 3, 6, 5, generator=g) * table[idx]).long()
    gc.fit(
        list(sym[:, None].unbind(0)),
        list(idx[:, None].unbind(0)),
        3,
        context="three-pass",
        steps=5,
        progress=False,
    )
    gc.eval()
    return gc, sym, idx


def _file_targets(g: torch.Generator, folder: Path, marker: Path) -> list[_Target]:
    from .checkpoint import load, save
    from .coding import decode, encode
    from .files import read_file, write_file
    from .hclt import HCLT
    from .structure import Tree

    pc = HCLT(Tree((1, -1, 1, 0)), 3, 3)
    x = pc.sample(20, generator=g)
    ref_stream = encode(pc, x)
    save(pc, folder / "ref.pt")
    ckpt = (folder / "ref.pt").read_bytes()

    def load_bytes(d: bytes, name: str) -> Path:
        p = folder / name
        p.write_bytes(d)
        return p

    def run_ckpt(i: int, d: bytes) -> Any:
        return decode(load(load_bytes(d, "case.pt")), ref_stream)

    checkpoint = _Target(
        "checkpoint-file", [ckpt], run_ckpt, lambda i, out: torch.equal(out, x), weight=0.6
    )

    codec, _xin, enc, ref_hat = _codec()
    from .integrations import load_codec, save_codec

    save_codec(codec, folder / "codec.pt", "FactorizedPrior", 1, net_kwargs={"N": 8, "M": 12})
    cbytes = (folder / "codec.pt").read_bytes()

    def run_codec(i: int, d: bytes) -> Any:
        net = load_codec(load_bytes(d, "case-codec.pt"))
        with torch.no_grad():
            return net.decompress(enc["strings"], enc["shape"])["x_hat"]

    codec_file = _Target(
        "codec-file", [cbytes], run_codec, lambda i, out: torch.equal(out, ref_hat), weight=0.4
    )

    # consistent files (digest recomputed) with one field changed: must be refused or decode right
    def forged_file(i: int, d: bytes) -> Any:
        rng = random.Random(d)
        if i == 0:
            state, _ = read_file(folder / "ref.pt")
            key = rng.choice(
                ("circuit", "config", "dtype", "parent", "coding_tables", "params", "version")
            )
            if key == "config":  # one of the sizes the circuit is rebuilt with
                sub = rng.choice(sorted(state["config"]))
                state["config"][sub] = _forge_value(state["config"][sub], rng)
            else:
                state[key] = _forge_value(state[key], rng)
            write_file(state, folder / "forged.pt")
            return decode(load(folder / "forged.pt"), ref_stream)
        state, _ = read_file(folder / "codec.pt")
        sd = state["state_dict"]
        key = rng.choice(
            [k for k in sd if "entropy_bottleneck" in k]
            + ["arch", "quality", "pc_modules", "version"]
        )
        if key in sd:
            sd[key] = _forge_value(sd[key], rng)
        else:
            state[key] = _forge_value(state[key], rng)
        write_file(state, folder / "forged-codec.pt")
        with torch.no_grad():
            return load_codec(folder / "forged-codec.pt").decompress(enc["strings"], enc["shape"])[
                "x_hat"
            ]

    forged = _Target(
        "file-forged-fields",
        [ckpt, cbytes],
        forged_file,
        lambda i, out: torch.equal(out, x if i == 0 else ref_hat),
        weight=0.4,
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
        [cbytes, ckpt, evil, evil, ref_stream, ref_stream],
        run_other,
        lambda i, out: False,
        weight=0.1,
    )
    return [checkpoint, codec_file, forged, other]


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

    from .integrations import fit_prior

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
    from .progress import progress_bar

    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    report = FuzzReport()
    with tempfile.TemporaryDirectory(prefix="pc-prior-fuzz-") as tmp:
        folder = Path(tmp)
        marker = folder / "code-ran"
        targets = _stream_targets(g) + (_file_targets(g, folder, marker) if files else [])
        for t in (
            targets
        ):  # the unmutated references must decode right, or the run would measure nothing
            if t.name in (
                "lossless",
                "lossless-wide",
                "bottleneck",
                "conditional",
                "checkpoint-file",
                "codec-file",
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
            kinds = list(_BYTE_MUTATIONS) + (["forge"] * 2 if t.fmt is not None else [])
            kind = (
                "as-is"
                if t.name
                in ("cross-kind", "bottleneck-forged-size", "file-forged-fields", "file-other-kind")
                else rng.choice(kinds)
            )
            mutated = (
                data
                if kind == "as-is"
                else (
                    _forge_header(data, t.fmt, rng)
                    if kind == "forge"
                    else _BYTE_MUTATIONS[kind](data, rng)
                )
            )
            if kind == "as-is" and t.name in ("bottleneck-forged-size", "file-forged-fields"):
                mutated = data + rng.randbytes(8)  # a seed for the case's own choices
            start = time.perf_counter()
            try:
                out = t.run(i, mutated)
                outcome = "same" if t.same(i, out) else "silent_wrong"
            except (PCPriorError, FileNotFoundError):
                outcome = "rejected"
            except Exception as e:
                outcome = "foreign_error"
                if len(report.examples) < 10:
                    report.examples.append(f"{t.name}/{kind}: {type(e).__name__}: {str(e)[:200]}")
            dt = time.perf_counter() - start
            if dt > slow_seconds:
                outcome = "slow"
            if outcome == "silent_wrong" and len(report.examples) < 10:
                report.examples.append(
                    f"{t.name}/{kind}: decoded without error to a different output"
                )
            report.slowest_seconds = max(report.slowest_seconds, dt)
            report.outcomes[(t.name, kind, outcome)] += 1
        report.peak_rss_growth_mb = _rss_mb() - rss0
        report.code_executed = marker.exists()
    return report
