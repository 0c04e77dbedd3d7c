"""Write the golden streams in this folder: stored models, their streams and what they decode to.

Run by hand, from the repository root, only when a format *version* changes on purpose:

    python tests/expected/make_golden.py [--out tests/expected]

``tests/core/test_golden_streams.py`` then checks, on every run, that each stored stream decodes
with its stored model to exactly the stored values, and that coding those values again gives
exactly the stored bytes. So an unintended change to a stream layout, a header, the coding tables'
quantization or a file format fails a test instead of silently making old files unreadable.

What is here (a few tens of KB in all; ``golden.json`` names the format versions each file pins):

- ``lossless-hclt.pt`` (``pc_prior.save``), ``lossless.bin`` (``pc_prior.encode``) and
  ``lossless-symbols.pt``: a tiny HCLT (6 variables, 4 symbols, 4 latent states) fitted by EM on
  structured random data, and 4200 rows of it, so the stream spans two 4096-item blocks.
- ``bottleneck-codec.pt`` (``save_codec``), ``bottleneck-<i>.bin`` (``PCEntropyBottleneck
  .compress``, one string per image) and ``bottleneck-latents.pt``: a tiny random
  ``FactorizedPrior`` (N=4, M=6) whose bottleneck is a circuit fitted on random images, with a
  tail wide enough that the coded latents include escaped symbols.
- ``conditional-codec.pt`` (codec file 2, compact: its tables are rebuilt on load),
  ``conditional-<i>.bin`` (``PCConditional.compress``) and ``conditional-latents.pt`` (y_hat and
  the scale indexes it was coded under): a tiny ``ScaleHyperprior`` (N=4, M=6) with both entropy
  models swapped, the conditional with the three-pass context.
- ``lossless-wide-hclt.pt``, ``lossless-wide.bin``, ``lossless-wide-symbols.pt``: the lossless
  files again with 70 symbols and 1500 rows, which the lossless stream codes in two steps (group,
  then member; version 3).

When a *stream* version changes (``pc_prior.framing`` refuses older stream versions by design),
rerun this script and record the new version in CHANGELOG.md; ``--only PART --keep-models``
rewrites just that part's streams and keeps the stored checkpoints or codec files (and the
versions they pin).
When a *file* version changes and older files are still read (as for codec files), keep these files: they then test the old reader;
write the new version's files with ``--out`` to a new folder if they should be pinned too.
Everything is seeded and fitted with explicit settings, so a rerun on the same versions of torch
and pc-prior writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import pc_prior
from pc_prior import framing
from pc_prior.checkpoint import CHECKPOINT_VERSION
from pc_prior.integrations import fit_prior, save_codec, swap_entropy_model
from pc_prior.integrations.codec_file import CODEC_VERSION
from pc_prior.settings import ConditionalFit

HERE = Path(__file__).resolve().parent
CODEC_NET = {"N": 4, "M": 6}
CONDITIONAL_NET = {"N": 4, "M": 6}


def lossless_data(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 6] symbols in 0..3 with a chain of dependencies (so the learned tree matters)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, 6, dtype=torch.long)
    x[:, 0] = torch.randint(0, 4, (n,), generator=g)
    for d in range(1, 6):
        noise = torch.randint(0, 4, (n,), generator=g)
        keep = torch.rand(n, generator=g) < 0.7
        x[:, d] = torch.where(keep, x[:, d - 1], noise)
    return x


def wide_data(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 6] symbols in 0..69: ``lossless_data`` spread over 70 symbols, so the stream codes
    them in two steps (``pc_prior.coding.symbol_split``) with a padded last group."""
    g = torch.Generator().manual_seed(seed + 100)
    return lossless_data(n, seed) * 20 + torch.randint(0, 10, (n, 6), generator=g)


def _fit_lossless(train: torch.Tensor, num_cats: int) -> pc_prior.HCLT:
    torch.manual_seed(0)
    pc = pc_prior.HCLT.from_data(train, num_cats=num_cats, num_latents=4, seed=0)
    pc_prior.fit_em(
        pc,
        train,
        epochs=2,
        batch_size=500,
        full_batch_epochs=1,
        step_size=(0.5, 0.1),
        pseudocount=0.1,
        progress=False,
    )
    return pc


def _lossless_files(out: Path, stem: str, data, num_cats: int, rows: int, keep_model: bool) -> dict:
    """``<stem>-hclt.pt``, ``<stem>.bin`` and ``<stem>-symbols.pt``; with ``keep_model`` a stored
    model and its symbols are kept and only the stream is written anew (a stream version change
    that leaves the checkpoint format alone: the stored checkpoint then still pins its version)."""
    model, symbols_file = out / f"{stem}-hclt.pt", out / f"{stem}-symbols.pt"
    if keep_model and model.exists() and symbols_file.exists():
        pc = pc_prior.load(model)
        symbols = torch.load(symbols_file, weights_only=True).long()
        checkpoint_version = torch.load(model, weights_only=True)["version"]
    else:
        pc = _fit_lossless(data(2000, seed=0), num_cats)
        symbols = data(rows, seed=1)
        pc_prior.save(pc, model, note="golden stream model")
        torch.save(symbols.to(torch.uint8), symbols_file)
        checkpoint_version = CHECKPOINT_VERSION
    stream = pc_prior.encode(pc, symbols)
    (out / f"{stem}.bin").write_bytes(stream)
    assert torch.equal(pc_prior.decode(pc_prior.load(model), stream), symbols)
    return {"checkpoint_version": checkpoint_version, "rows": len(symbols), "bytes": len(stream)}


def make_lossless(out: Path, keep_models: bool = False) -> dict:
    """A 4-symbol stream (one coding step) and a 70-symbol one (two steps, padded last group)."""
    return {
        "stream": {"magic": framing.LOSSLESS.magic.decode(), "version": framing.LOSSLESS.version},
        **_lossless_files(out, "lossless", lossless_data, 4, 4200, keep_models),
        "wide": _lossless_files(out, "lossless-wide", wide_data, 70, 1500, keep_models),
    }


def make_bottleneck(out: Path) -> dict:
    from compressai.models import FactorizedPrior

    from pc_prior.integrations import load_codec

    torch.manual_seed(0)
    net = FactorizedPrior(**CODEC_NET).eval()
    with torch.no_grad():  # spread the latents over several symbols per channel
        net.g_a[-1].weight.mul_(15.0)
        net.g_a[-1].bias.mul_(15.0)
    swap_entropy_model(net, "entropy_bottleneck")
    g = torch.Generator().manual_seed(0)
    train = [torch.rand(1, 3, 128, 128, generator=g) for _ in range(4)]
    fit_prior(
        net,
        train,
        name="entropy_bottleneck",
        num_latents=3,
        epochs=2,
        full_batch_epochs=1,
        batch_size=128,
        step_size=(0.1, 0.01),
        pseudocount=0.1,
        structure="chow-liu",
        leaves="categorical",
        tail=0.02,
        max_items=None,
        seed=0,
        progress=False,
    )
    net.update(force=True)
    path = save_codec(net, out / "bottleneck-codec.pt", "FactorizedPrior", 1, net_kwargs=CODEC_NET)
    eb = net.entropy_bottleneck
    test = torch.cat([torch.rand(1, 3, 128, 96, generator=g) * 1.5 for _ in range(2)])
    with torch.no_grad():
        y = net.g_a(test)
    strings = eb.compress(y)
    size = tuple(y.shape[-2:])
    latents = eb.decompress(strings, size)
    sym = eb.symbols(latents).permute(0, 2, 3, 1).reshape(-1, eb.channels)
    escaped = int(eb._indices(sym)[2].sum())  # symbols outside their channel's alphabet
    assert escaped > 0, "the golden latents should exercise the escape code"
    for i, s in enumerate(strings):
        (out / f"bottleneck-{i}.bin").write_bytes(s)
    torch.save({"latents": latents, "size": list(size)}, out / "bottleneck-latents.pt")
    again = load_codec(path).entropy_bottleneck
    assert torch.equal(again.decompress(strings, size), latents)
    return {
        "stream": {
            "magic": framing.BOTTLENECK.magic.decode(),
            "version": framing.BOTTLENECK.version,
        },
        "codec_file_version": CODEC_VERSION,
        "net_kwargs": CODEC_NET,
        "strings": len(strings),
        "latent_shape": list(latents.shape),
        "escaped_symbols": escaped,
        "bytes": [len(s) for s in strings],
    }


def make_conditional(out: Path) -> dict:
    """A tiny ScaleHyperprior whose ``PCConditional`` (three-pass context) is stored compactly
    (codec file 2: tables rebuilt on load), with y strings and the scale indexes they were coded
    under, so the pin does not depend on the float hyper-decoder."""
    from compressai.models import ScaleHyperprior

    from pc_prior.integrations import load_codec

    torch.manual_seed(0)
    net = ScaleHyperprior(**CONDITIONAL_NET).eval()
    with torch.no_grad():
        net.g_a[-1].weight.mul_(15.0)
        net.g_a[-1].bias.mul_(15.0)
        net.h_a[-1].weight.mul_(5.0)
    net.update(force=True)
    names = ("entropy_bottleneck", "gaussian_conditional")
    swap_entropy_model(net, names)
    g = torch.Generator().manual_seed(1)
    train = [torch.rand(1, 3, 128, 128, generator=g) for _ in range(3)]
    cond = {"num_latents": 3, "steps": 40, "batch_size": 256, "context": "three-pass", "seed": 0}
    fit_prior(
        net,
        train,
        name=names,
        num_latents=3,
        epochs=1,
        progress=False,
        conditional=ConditionalFit(**cond),
    )
    net.update(force=True)
    path = save_codec(
        net, out / "conditional-codec.pt", "ScaleHyperprior", 1, net_kwargs=CONDITIONAL_NET
    )
    gc = net.gaussian_conditional
    test = torch.cat([torch.rand(1, 3, 64, 128, generator=g) for _ in range(2)])
    with torch.no_grad():
        y = net.g_a(test)
        z_hat = net.entropy_bottleneck.decompress(
            net.entropy_bottleneck.compress(net.h_a(y.abs())), (1, 2)
        )
        indexes = gc.build_indexes(net.h_s(z_hat))
    strings = gc.compress(y, indexes)
    y_hat = gc.decompress(strings, indexes)
    for i, s in enumerate(strings):
        (out / f"conditional-{i}.bin").write_bytes(s)
    torch.save({"y_hat": y_hat, "indexes": indexes.to(torch.int16)}, out / "conditional-latents.pt")
    assert torch.equal(load_codec(path).gaussian_conditional.decompress(strings, indexes), y_hat)
    return {
        "stream": {
            "magic": framing.CONDITIONAL.magic.decode(),
            "version": framing.CONDITIONAL.version,
        },
        "codec_file_version": CODEC_VERSION,
        "net_kwargs": CONDITIONAL_NET,
        "strings": len(strings),
        "latent_shape": list(y_hat.shape),
        "bytes": [len(s) for s in strings],
    }


def restring(out: Path, name: str) -> dict:
    """``--keep-models`` for ``bottleneck`` and ``conditional``: code the stored latents with the
    stored codec file again (new strings of the current stream version), keeping the file and the
    codec-file version it pins, so the old file reader stays tested."""
    from pc_prior.integrations import load_codec

    entry = json.loads((out / "golden.json").read_text())[name]
    net = load_codec(out / f"{name}-codec.pt")
    if name == "bottleneck":
        latents = torch.load(out / "bottleneck-latents.pt", weights_only=True)["latents"]
        strings = net.entropy_bottleneck.compress(latents)
        assert torch.equal(net.entropy_bottleneck.decompress(strings, latents.shape[-2:]), latents)
        fmt = framing.BOTTLENECK
    else:
        stored = torch.load(out / "conditional-latents.pt", weights_only=True)
        y_hat, indexes = stored["y_hat"], stored["indexes"].long()
        strings = net.gaussian_conditional.compress(y_hat, indexes)
        assert torch.equal(net.gaussian_conditional.decompress(strings, indexes), y_hat)
        fmt = framing.CONDITIONAL
    for i, s in enumerate(strings):
        (out / f"{name}-{i}.bin").write_bytes(s)
    return entry | {
        "stream": {"magic": fmt.magic.decode(), "version": fmt.version},
        "bytes": [len(s) for s in strings],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument(
        "--only",
        nargs="+",
        choices=("lossless", "bottleneck", "conditional"),
        help="write only these parts; the others keep their files and golden.json entries",
    )
    p.add_argument(
        "--keep-models",
        action="store_true",
        help="keep the stored models (and symbols or latents), write only the streams anew",
    )
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    old = args.out / "golden.json"
    manifest = json.loads(old.read_text()) if old.exists() else {}
    manifest |= {"pc_prior": pc_prior.__version__, "torch": torch.__version__.split("+")[0]}
    makers = {
        "lossless": lambda: make_lossless(args.out, args.keep_models),
        "bottleneck": lambda: (
            restring(args.out, "bottleneck") if args.keep_models else make_bottleneck(args.out)
        ),
        "conditional": lambda: (
            restring(args.out, "conditional") if args.keep_models else make_conditional(args.out)
        ),
    }
    for name in args.only or makers:
        manifest[name] = makers[name]()
    (args.out / "golden.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
