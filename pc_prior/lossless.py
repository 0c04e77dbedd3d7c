"""``pc-prior lossless fit|bench|compress|decompress|report``: HCLTs on idx-format image sets.

``fit`` learns an HCLT on a training split, ``bench`` measures its bits per dimension and coding
time on the test split, ``compress``/``decompress`` code ``.npy`` integer arrays (the ``.pcnpy``
container below), ``report`` tabulates ``bench`` results beside published numbers. The parsers
follow ``pc_prior.cli``'s grammar (``MODEL``, ``--codec``, ``--data``, ``-o``, ``--limit``).
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from .cli import add_argument, add_deprecated_command, set_command
from .errors import InputError
from .settings import LosslessFit, add_arguments

if TYPE_CHECKING:  # numpy and torch load with a command, not with the parser (fast --help)
    import numpy as np
    import torch

    from .coding import SymbolCircuit

LOSSLESS_OPTIONS = (
    "num_latents",
    "epochs",
    "full_batch_epochs",
    "batch_size",
    "step_size",
    "pseudocount",
    "leaf_smoothing",
    "smoothing_width",
    "num_bins",
    "structure_samples",
    "seed",
)  # the fit_em / HCLT.from_data settings pc-prior lossless fit exposes

_ARRAY_HEAD = struct.Struct("<BII")  # version, meta length, CRC32 of everything before the stream
_ARRAY_DTYPES = ("|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8")
_MAX_META = 4096


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lossless fit|bench|compress|decompress|report`` (and the deprecated ``report-lossless``)."""
    p = sub.add_parser(
        "lossless", help="lossless coding of discrete images with an HCLT (MNIST and alike)"
    )
    g = p.add_subparsers(dest="lossless_command", metavar="ACTION", required=True)

    fit = g.add_parser(
        "fit",
        help="learn an HCLT on the training split of --data and save it",
        description="Learn an HCLT on the training split of the idx images in --data and save "
        "it (-o) after every epoch.",
    )
    _data_args(fit)
    add_argument(
        fit,
        "-o",
        "--output",
        old=("--out",),
        default="runs/lossless/hclt.pt",
        help="checkpoint path, rewritten after every epoch (default: %(default)s)",
    )
    add_arguments(fit, LosslessFit(), LOSSLESS_OPTIONS, flags={"num_latents": "latents"})
    fit.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    fit.add_argument(
        "--valid",
        type=int,
        default=0,
        help="hold out the last N training images for per-epoch validation bpd (choose settings "
        "with it, then refit on all with 0; the test split is never used; default: %(default)s)",
    )
    fit.add_argument("--float64", action="store_true", help="train in float64")
    set_command(fit, _fit)

    bench = g.add_parser(
        "bench",
        help="test-set bits per dimension (theoretical and coded) and coding time; prints JSON",
        description="Code the test split of --data with MODEL and decode it again: bits per "
        "dimension (theoretical and coded) and coding times, as one JSON line.",
    )
    add_argument(
        bench, "model", old=("--model",), help="HCLT checkpoint written by 'pc-prior lossless fit'"
    )
    _data_args(bench)
    bench.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    add_argument(
        bench, "-o", "--output", old=("--out",), default=None, help="also write the JSON here"
    )
    set_command(bench, _bench)

    for name, func, what in (
        ("compress", _compress, ".npy array of shape [N, ...] with symbols in 0..V-1"),
        ("decompress", _decompress, "a file made by 'pc-prior lossless compress'"),
    ):
        c = g.add_parser(
            name,
            help=f"{name} {what}" if name == "decompress" else "compress a .npy integer array",
        )
        c.add_argument("input", metavar="INPUT", help=what)
        add_argument(
            c,
            "--codec",
            old=("--model",),
            required=True,
            help="HCLT checkpoint that codes (written by 'pc-prior lossless fit')",
        )
        add_argument(c, "-o", "--output", old=("OUTPUT",), required=True, help="file to write")
        c.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
        set_command(c, func)

    report = g.add_parser(
        "report",
        help="bpd table of 'pc-prior lossless bench' JSON files beside references",
        description="A Markdown table of 'pc-prior lossless bench -o' files beside published "
        "bits per dimension.",
    )
    _report_args(report)
    old = add_deprecated_command(sub, "report-lossless", "lossless report")
    _report_args(old)


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="JSON files written by 'pc-prior lossless bench -o'")
    p.add_argument(
        "--dataset", default="mnist", help="which reference numbers to show (default: %(default)s)"
    )
    p.add_argument(
        "--label", action="append", default=None, help="row label per file (repeat, in order)"
    )
    p.add_argument(
        "--reference", action="append", default=[], metavar="NAME=BPD", help="extra reference row"
    )
    p.add_argument("-o", "--output", default=None, help="also write the Markdown table here")
    set_command(p, _report)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default=None,
        help="folder with the idx[.gz] files (default: ../shared/data/mnist)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")


def _report(args: argparse.Namespace) -> int:
    from .eval.lossless_report import lossless_table

    refs = []
    for spec in args.reference:
        name, sep, val = spec.rpartition("=")
        try:
            refs.append((name, float(val)))
        except ValueError:
            sep = ""
        if not sep or not name:
            raise InputError(f"--reference expects NAME=BPD, e.g. 'my model=1.25', got {spec!r}")
    if args.label is not None and len(args.label) != len(args.results):
        raise InputError(
            f"{len(args.label)} --label for {len(args.results)} results files: give one per file"
        )
    table = lossless_table(
        args.results, dataset=args.dataset, labels=args.label, extra_references=refs
    )
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


def _fit(args: argparse.Namespace) -> int:
    import torch

    from . import HCLT, fit_em, save
    from .data import load_mnist
    from .devices import resolve_device
    from .fitting import bits_per_dim

    resolve_device(args.device)  # before the data are read and the structure learned
    torch.manual_seed(args.seed)
    x = load_mnist(args.data, "train", args.limit)
    if not 0 <= args.valid < len(x):
        raise InputError(
            f"--valid {args.valid} must be at least 0 and leave training images "
            f"({len(x)} training images)"
        )
    x, xv = (x[: len(x) - args.valid], x[len(x) - args.valid :]) if args.valid else (x, None)
    num_cats = 256 if int(x.max()) < 256 else int(x.max()) + 1
    dtype = torch.float64 if args.float64 else torch.float32
    t0 = time.perf_counter()
    pc = HCLT.from_data(
        x,
        num_cats,
        args.num_latents,
        num_bins=args.num_bins,
        max_samples=args.structure_samples,
        dtype=dtype,
        seed=args.seed,
    )
    t_struct = time.perf_counter() - t0
    pc.to(args.device)
    print(
        f"structure: {pc.num_vars} variables, tree height {pc.tree.height}, {t_struct:.1f}s",
        flush=True,
    )
    run_args = {k: v for k, v in vars(args).items() if k != "func" and not k.startswith("_")}
    history: list[dict] = []

    def checkpoint(
        epoch: int, rec: dict
    ) -> None:  # after every epoch, so an interrupted fit keeps its progress
        history.append(rec)
        save(
            pc,
            args.output,
            history=history,
            train_seconds=time.perf_counter() - t0,
            structure_seconds=t_struct,
            num_train=len(x),
            args=run_args,
        )

    t0 = time.perf_counter()
    hist = fit_em(
        pc,
        x,
        epochs=args.epochs,
        batch_size=args.batch_size,
        step_size=tuple(args.step_size),
        pseudocount=args.pseudocount,
        leaf_smoothing=args.leaf_smoothing,
        smoothing_width=args.smoothing_width,
        full_batch_epochs=args.full_batch_epochs,
        x_valid=xv,
        seed=args.seed,
        callback=checkpoint,
    )
    t_train = time.perf_counter() - t0
    line = {
        "checkpoint": str(args.output),
        "train_seconds": round(t_train, 1),
        "seconds_per_epoch": round(t_train / max(len(hist), 1), 2),
        "final_train_bpd": hist[-1]["train_bpd"],
    }
    if xv is not None:
        line["valid_bpd"] = bits_per_dim(pc, xv)
    print(json.dumps(line))
    return 0


def lossless_bench(pc, x: torch.Tensor) -> dict:
    """Theoretical and coded bits per dimension of ``x`` under ``pc``, and coding times."""
    import torch

    from . import decode, encode
    from .fitting import bits_per_dim

    n, d = x.shape
    bpd_theory = bits_per_dim(pc, x)
    t0 = time.perf_counter()
    data = encode(pc, x)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    y = decode(pc, data)
    t_dec = time.perf_counter() - t0
    if not torch.equal(y, x.cpu()):
        raise RuntimeError("round trip failed: decoded data differ from the input")
    return {
        "num_images": n,
        "num_dims": d,
        "bpd_theoretical": bpd_theory,
        "bpd_coded": len(data) * 8 / (n * d),
        "coded_bytes": len(data),
        "encode_seconds": t_enc,
        "decode_seconds": t_dec,
        "round_trip_exact": True,
        "device": str(pc.root_logits.device),
        "threads": torch.get_num_threads(),
    }


def _load_symbol_circuit(path: str, device: str) -> SymbolCircuit:
    """The HCLT at ``path`` onto ``device``, refused unless it codes symbols with per-variable
    leaves."""
    from . import load
    from .coding import check_symbol_circuit

    return check_symbol_circuit(load(path, map_location=device), "pc-prior lossless")


def _bench(args: argparse.Namespace) -> int:

    from .data import load_mnist
    from .devices import resolve_device

    resolve_device(args.device)
    pc = _load_symbol_circuit(args.model, args.device)
    x = load_mnist(args.data, "test", args.limit)
    res = lossless_bench(pc, x) | {"model": str(args.model)}
    text = json.dumps(res)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    return 0


def pack_array_container(arr: np.ndarray, stream: bytes) -> bytes:
    """The ``.pcnpy`` file: magic, version, the array's shape and dtype (JSON) under a CRC32, then the stream."""

    from .framing import ARRAY_CONTAINER

    meta = json.dumps({"shape": list(arr.shape), "dtype": arr.dtype.str}).encode()
    head = ARRAY_CONTAINER.key.encode() + struct.pack("<BI", ARRAY_CONTAINER.version, len(meta))
    return head + struct.pack("<I", zlib.crc32(meta, zlib.crc32(head))) + meta + stream


def unpack_array_container(
    raw: bytes, name: str = "input"
) -> tuple[tuple[int, ...], np.dtype, bytes]:
    """(shape, dtype, stream) of a ``.pcnpy`` file, every header field checked."""
    import numpy as np

    from .errors import BitstreamError
    from .framing import ARRAY_CONTAINER

    n = len(ARRAY_CONTAINER.key.encode())
    if len(raw) < n + _ARRAY_HEAD.size or raw[:n] != ARRAY_CONTAINER.key.encode():
        raise BitstreamError(
            f"{name} is not a file made by 'pc-prior lossless compress' (bad magic or too short)"
        )
    version, mlen, crc = _ARRAY_HEAD.unpack_from(raw, n)
    if version != ARRAY_CONTAINER.version:
        raise BitstreamError(
            f"{name} has container version {version}, this pc-prior reads {ARRAY_CONTAINER.version} "
            "(see CHANGELOG.md)"
        )
    start = n + _ARRAY_HEAD.size
    if mlen > _MAX_META or len(raw) < start + mlen:
        raise BitstreamError(f"{name}: corrupted or truncated container header")
    meta_raw = raw[start : start + mlen]
    if zlib.crc32(meta_raw, zlib.crc32(raw[: n + 5])) != crc:
        raise BitstreamError(f"{name}: container header corrupted (checksum mismatch)")
    try:
        meta = json.loads(meta_raw)
        shape = tuple(meta["shape"])
        dtype = meta["dtype"]
    except (ValueError, KeyError, TypeError) as e:
        raise BitstreamError(f"{name}: corrupted container header") from e
    if (
        dtype not in _ARRAY_DTYPES
        or not shape
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)
    ):
        raise BitstreamError(
            f"{name}: container holds an unsupported array ({dtype!r}, shape {shape})"
        )
    return shape, np.dtype(dtype), raw[start + mlen :]


def _compress(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from . import encode
    from .devices import resolve_device
    from .errors import InputError

    resolve_device(args.device)  # --device: before anything is read
    pc = _load_symbol_circuit(args.codec, args.device)
    arr = np.load(args.input, allow_pickle=False)
    if (
        arr.ndim < 1
        or not np.issubdtype(arr.dtype, np.integer)
        or arr.dtype.str not in _ARRAY_DTYPES
    ):
        raise InputError(
            f"{args.input} must hold an integer array of shape [N, ...], got {arr.dtype} {arr.shape}"
        )
    flat = arr.reshape(len(arr), -1)
    if flat.shape[1] != pc.num_vars:
        raise InputError(
            f"{args.input}: each item has {flat.shape[1]} values, the model expects {pc.num_vars}"
        )
    stream = encode(pc, torch.from_numpy(flat.astype(np.int64)))
    Path(args.output).write_bytes(pack_array_container(arr, stream))
    print(
        json.dumps(
            {
                "input_bytes": arr.nbytes,
                "output_bytes": Path(args.output).stat().st_size,
                "bits_per_dim": Path(args.output).stat().st_size * 8 / max(flat.size, 1),
            }
        )
    )
    return 0


def _decompress(args: argparse.Namespace) -> int:
    import numpy as np

    from . import decode
    from .devices import resolve_device
    from .errors import BitstreamError

    resolve_device(args.device)  # --device: before the container is read
    shape, dtype, stream = unpack_array_container(Path(args.input).read_bytes(), str(args.input))
    pc = _load_symbol_circuit(args.codec, args.device)
    x = decode(pc, stream)
    if shape[0] != len(x) or math.prod(shape) != x.numel():
        raise BitstreamError(
            f"{args.input}: the container's shape {shape} does not match the {tuple(x.shape)} "
            "decoded items"
        )
    if x.numel() and int(x.max()) > np.iinfo(dtype).max:
        raise BitstreamError(
            f"{args.input}: decoded values do not fit the container's dtype {dtype}"
        )
    np.save(args.output, x.numpy().astype(dtype).reshape(shape))
    return 0
