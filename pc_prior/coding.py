"""Exact lossless coding of integer data [N, D] with an HCLT and a range coder (constriction).

Determinism. Encoder and decoder must compute the same probabilities bit for bit, on any device
and thread count. The coding path therefore never uses ordinary floating point: parameters are
quantized once to integers (``CodingTables``, saved with the model) and every message is an
integer vector stored in float64, kept below 2**22 by exact power-of-two rescaling and flooring.
Every product and every sum of a matrix product then stays below 2**53, so float64 represents
each partial sum exactly and the result does not depend on summation order, BLAS kernel, thread
count or device. Probabilities handed to the coder are ``w / w.sum()`` of exact integers: one
correctly rounded IEEE division, identical everywhere.

Incremental conditionals. Variables are coded in the tree's depth-first preorder. When variable
i is coded, nothing in its subtree is known yet, and everything known outside it lies in
subtrees already closed or on the path to the root, so

    p(x_i | x_<i)  ∝  sum_z out_i(z) E_i[z, x_i],   out_i = (out_p ⊙ inside_p) @ T_i,

where inside_p holds p's own leaf and the messages of p's children whose subtrees are complete.
Each node's outside and inside message is computed once: O(D·K² + D·K·V) per item for the whole
sequence, against D full passes for the naive reference (``naive_conditionals``).

Tables are state. ``coding_tables(pc)`` quantizes a circuit once and keeps the integers in the
circuit's own (non-persistent) buffers, so ``.to()``, ``.double()`` and ``.half()`` carry them
unchanged and a loaded checkpoint codes with exactly the tables it was saved with. ``fit_em`` and
``fit_adam`` refresh them; after changing parameters by other means call
``coding_tables(pc, refresh=True)`` (stale tables still round-trip exactly, only less well).

Two-step symbols. The lossless format codes a symbol of a large alphabet (V >= 64) as its group
and then its member within the group (``symbol_split``: groups of B ~ sqrt(V) symbols), each step
from exact integer weights: K (V/B + B) products per item instead of K V, the cost that dominated
decoding MNIST. The member weights of a group sum exactly to the group's weight, so the code length
is the one-step one up to the coder's quantization (measured: +0.0001 bits per pixel on MNIST).

Columns. ``encode_columns`` / ``decode_columns`` are the one range-coding loop of the project:
one variable at a time, batched over every item of every string, with the exact bypass code for
symbols outside a variable's alphabet (``ESCAPE``). The lossless format (``pc_prior.framing``)
codes its items in blocks, each closed by a 32-bit check of its symbols, so a stream whose item
count was tampered with, or that runs out of data, fails within one block instead of decoding
garbage.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np
import torch
from torch import Tensor

from . import framing
from .continuous import DiscretizedLogisticTree
from .errors import BitstreamError, CheckpointError, InputError
from .hclt import HCLT, LatentTreeCircuit, check_symbols
from .structure import Tree

__all__ = [
    "BLOCK_ITEMS",
    "MAX_PARAM",
    "MAX_SYMBOL",
    "CodingTables",
    "IncrementalConditionals",
    "check_decode_limit",
    "check_payload_holds",
    "circuit_tables",
    "coding_tables",
    "decode",
    "decode_check",
    "decode_columns",
    "encode",
    "encode_check",
    "encode_columns",
    "escape_bits",
    "finish_decoding",
    "incremental_conditionals",
    "lowest_argmax",
    "min_item_bits",
    "naive_conditionals",
    "quantize_probs",
    "range_decoders",
]

MESSAGE_BITS = 22  # messages are integers in [0, 2**22)
PARAM_BITS = 22  # parameters are floor(p * 2**22) + 1
#: The largest integer parameter of the coding tables: probability p is ``floor(p * 2**22) + 1``.
MAX_PARAM = 2**PARAM_BITS + 1
MAX_LATENTS = 256  # K * 2**22 * (2**22 + 1) < 2**53 keeps every matrix product exact
MAX_SYMBOLS = 2**24  # V: leaf alphabet bound of the tables (constriction's 24-bit precision)
BLOCK_ITEMS = 4096  #: lossless: items per block, each block closed by a 32-bit check
MAX_DECODE_SYMBOLS = 2**28  # items x variables one decode call may produce (2 GiB of int64)
#: ``|value|`` bound of the bypass code for escaped symbols (bit length <= 33)
MAX_SYMBOL = 2**31 - 1
SPLIT_MIN_SYMBOLS = 64  # lossless: alphabets at least this large are coded in two steps
_LEN_ALPHABET = 34
_SLACK_BITS = 96  # the range coder's termination may save up to about two words
_CODER_PRECISION = 24  # constriction's default range coder: probabilities in units of 2**-24
KIND_HCLT = 1


def _invalid(where: str, msg: str) -> CheckpointError:
    return CheckpointError(f"{where}: {msg}")


@dataclass(frozen=True)
class CodingTables:
    """Integer-quantized parameters of a latent tree (integer values held in float64)."""

    parent: np.ndarray  # [D]
    root: Tensor  # [K]
    trans: Tensor  # [D, K, K], [parent state, child state]
    emit: Tensor  # [D, K, V], or [D, S, K, V]: S tables per variable (per-item leaves)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the tree and the integer tables (shapes included)."""
        h = hashlib.sha256()
        h.update(np.asarray(self.parent, dtype="<i8").tobytes())
        for t in (self.root, self.trans, self.emit):
            h.update(np.asarray(t.shape, dtype="<i8").tobytes())
            h.update(t.detach().cpu().to(torch.int32).numpy().astype("<i4").tobytes())
        return h.digest()

    @property
    def fingerprint(self) -> bytes:
        """The digest's first 8 bytes: what streams carry to name their model."""
        return self.digest[:8]

    def to(self, device: torch.device | str) -> CodingTables:
        """The same tables on ``device`` (the integers move bit for bit)."""
        return CodingTables(
            self.parent, self.root.to(device), self.trans.to(device), self.emit.to(device)
        )

    def state(self) -> dict:
        """Compact, device-free form for checkpoints."""
        return {
            k: getattr(self, k).detach().cpu().to(torch.int32) for k in ("root", "trans", "emit")
        } | {"parent": torch.as_tensor(np.asarray(self.parent), dtype=torch.long)}

    @classmethod
    def from_state(cls, state: Any, where: str = "coding tables") -> CodingTables:
        """Tables from ``state()``'s dict (or integer tensors), validated: see ``validated``."""
        if not isinstance(state, dict) or not {"parent", "root", "trans", "emit"} <= state.keys():
            raise _invalid(where, "needs parent, root, trans and emit")
        return cls.validated(state["parent"], state["root"], state["trans"], state["emit"], where)

    @classmethod
    def validated(
        cls, parent: Any, root: Any, trans: Any, emit: Any, where: str = "coding tables"
    ) -> CodingTables:
        """Check shapes, dtypes, the tree and every entry's range before the tables are trusted.

        ``where`` names the file or module in the ``CheckpointError``.
        """
        for name, t in (("parent", parent), ("root", root), ("trans", trans), ("emit", emit)):
            if (
                not isinstance(t, Tensor)
                or t.dtype.is_floating_point
                or t.dtype.is_complex
                or t.dtype == torch.bool
            ):
                raise _invalid(
                    where,
                    f"{name} must be an integer tensor, got "
                    f"{getattr(t, 'dtype', type(t).__name__)}",
                )
        if parent.dim() != 1 or root.dim() != 1 or trans.dim() != 3 or emit.dim() not in (3, 4):
            raise _invalid(
                where,
                f"table ranks parent {parent.dim()}, root {root.dim()}, trans {trans.dim()}, "
                f"emit {emit.dim()}; expected 1, 1, 3 and 3 or 4",
            )
        d, k = len(parent), len(root)
        if d == 0 or not 1 <= k <= MAX_LATENTS:
            raise _invalid(
                where, f"{d} variables and {k} latent states; expected >= 1 and 1..{MAX_LATENTS}"
            )
        if tuple(trans.shape) != (d, k, k):
            raise _invalid(where, f"trans has shape {tuple(trans.shape)}, expected {(d, k, k)}")
        if emit.shape[0] != d or emit.shape[-2] != k or not 2 <= emit.shape[-1] <= MAX_SYMBOLS:
            raise _invalid(
                where,
                f"emit has shape {tuple(emit.shape)}, expected [{d}, (S,) {k}, V] with V >= 2",
            )
        for name, t in (("root", root), ("trans", trans), ("emit", emit)):
            if t.numel() and (int(t.min()) < 1 or int(t.max()) > MAX_PARAM):
                raise _invalid(
                    where,
                    f"{name} has entries outside 1..{MAX_PARAM} (min {int(t.min())}, "
                    f"max {int(t.max())})",
                )
        try:
            Tree(tuple(int(p) for p in parent.tolist()))
        except ValueError as e:
            raise _invalid(where, f"parent is not a tree: {e}") from e
        return cls(
            parent.cpu().numpy().astype(np.int64), root.double(), trans.double(), emit.double()
        )


def quantize_probs(p: Tensor) -> Tensor:
    """floor(p * 2**PARAM_BITS) + 1: exact elementwise float ops, identical on every device."""
    p = p.detach().double()
    if not torch.isfinite(p).all() or (p.numel() and float(p.min()) < 0):
        raise InputError(
            "the circuit's probabilities contain NaN, infinite or negative values: its parameters "
            "are not finite (check the training run that produced them)"
        )
    return torch.floor(p * 2.0**PARAM_BITS) + 1.0


_TABLE_BUFFERS = ("_tables_root", "_tables_trans", "_tables_emit")


SymbolCircuit = HCLT | DiscretizedLogisticTree  # circuits with one leaf table per variable


def check_symbol_circuit(pc: object, fn: str) -> SymbolCircuit:
    """``pc`` if it codes symbols 0..V-1 with per-variable leaf tables, else ``InputError``."""
    if not isinstance(pc, (HCLT, DiscretizedLogisticTree)):
        raise InputError(
            f"{fn} codes with a circuit of per-variable leaves (HCLT, DiscretizedLogisticTree), "
            f"got {type(pc).__name__}"
        )
    return pc


@torch.no_grad()
def circuit_tables(pc: LatentTreeCircuit, emissions: Callable[[], Tensor]) -> CodingTables:
    """The coder's integer tables of ``pc``: its root and transitions (``coding_root_trans``) and
    the leaf pmfs ``emissions()`` returns ([D, K, V], or [D, S, K, V] per item group), quantized.

    The one place tables are computed from parameters (``coding_tables`` and the entropy models).
    Non-finite parameters raise ``InputError`` naming the parameter before any table is built.
    """
    pc.check_finite()
    root, trans = pc.coding_root_trans()
    parent = np.asarray(pc.tree.parent, dtype=np.int64)
    return CodingTables(parent, *(quantize_probs(t) for t in (root, trans, emissions())))


def coding_tables(pc: LatentTreeCircuit, refresh: bool = False) -> CodingTables:
    """The circuit's quantized tables: computed on first use (or with ``refresh``) and kept in its buffers.

    The buffers are integers, so device moves and dtype casts leave them bit for bit unchanged;
    checkpoints store them, so a model saved on one device codes identically after loading on another.
    """
    if pc.num_latents > MAX_LATENTS:
        raise InputError(
            f"coding supports at most {MAX_LATENTS} latent states, model has {pc.num_latents}"
        )
    root, trans, emit = (getattr(pc, n) for n in _TABLE_BUFFERS)
    if refresh or root.numel() == 0:
        set_coding_tables(pc, circuit_tables(pc, pc.coding_emissions))
        root, trans, emit = (getattr(pc, n) for n in _TABLE_BUFFERS)
    return CodingTables(
        np.asarray(pc.tree.parent, dtype=np.int64), root.double(), trans.double(), emit.double()
    )


def set_coding_tables(pc: LatentTreeCircuit, tables: CodingTables) -> None:
    """Store ``tables`` (checked against the circuit's shapes) in the circuit's buffers."""
    d, k = pc.num_vars, pc.num_latents
    v = getattr(pc, "num_cats", tables.emit.shape[-1])
    if (
        tuple(tables.parent) != tuple(pc.tree.parent)
        or tuple(tables.root.shape) != (k,)
        or tuple(tables.trans.shape) != (d, k, k)
        or tuple(tables.emit.shape) != (d, k, v)
    ):
        raise CheckpointError(
            f"coding tables do not fit the circuit (D={d}, K={k}, V={v}): root "
            f"{tuple(tables.root.shape)}, trans {tuple(tables.trans.shape)}, emit "
            f"{tuple(tables.emit.shape)}, or another tree"
        )
    dev = pc.root_logits.device
    for name, t in zip(_TABLE_BUFFERS, (tables.root, tables.trans, tables.emit)):
        setattr(pc, name, t.to(dev, torch.int32))


def symbol_split(v: int) -> int:
    """Group width B when symbols 0..v-1 are coded in two steps, else 0 (``SPLIT_MIN_SYMBOLS``).

    A symbol s is coded as its group s // B (one of ceil(v / B)) and then its member s % B, each
    from exact integer weights, so the code length is that of one step up to the coder's
    quantization. B is the power of two nearest above sqrt(v): both steps together need about
    2 sqrt(v) weights per item instead of v, which is what the coder's cost grows with.
    """
    return 0 if v < SPLIT_MIN_SYMBOLS else 1 << ((v - 1).bit_length() + 1) // 2


def min_item_bits(tables: CodingTables, split: bool = False) -> float:
    """A lower bound on the code length in bits of one item (all D variables) under these tables.

    Every conditional the coder uses is a mixture over latent states of emission rows, so no
    symbol of variable i is more probable than the largest entry of its rows (relative to the row
    sum), and constriction's quantization gives each of the other V-1 symbols at least one unit.
    With ``split`` (symbols coded as group and member, ``symbol_split``) each step adds at most
    (V+1) units to the true probability, and the larger step's other symbols still take one unit
    each. Decoders compare ``items * min_item_bits`` with the payload before allocating anything.
    """
    emit = tables.emit
    v = emit.shape[-1]
    pmax = (
        (emit.amax(-1) / emit.sum(-1)).reshape(emit.shape[0], -1).amax(-1).double()
    )  # [D]; max(e)/s = max(e/s)
    unit = 2.0**-_CODER_PRECISION
    width = symbol_split(v) if split else 0
    steps, others = (2, max(width, -(-v // width)) - 1) if width else (1, v - 1)
    p = torch.minimum(pmax + steps * (v + 1) * unit, torch.full_like(pmax, 1.0 - others * unit))
    return float(-torch.log2(p).sum())


def check_decode_limit(items: int, num_vars: int, name: str) -> None:
    """Refuse a call that would decode more than ``MAX_DECODE_SYMBOLS`` symbols."""
    if items * num_vars > MAX_DECODE_SYMBOLS:
        raise BitstreamError(
            f"{name} bitstream claims {items} items of {num_vars} symbols, over the decoder's "
            f"limit of {MAX_DECODE_SYMBOLS} symbols per call (pc_prior.coding.MAX_DECODE_SYMBOLS)"
        )


def check_payload_holds(items: int, item_bits: float, payload_words: int, name: str) -> None:
    """Refuse a stream whose payload is too short for ``items`` items of at least ``item_bits`` bits
    each (``min_item_bits``, computed once per call)."""
    if items * item_bits > 32 * payload_words + _SLACK_BITS:
        raise BitstreamError(
            f"{name} bitstream corrupted: {items} items cannot fit in a payload of "
            f"{4 * payload_words} bytes under this model"
        )


def lowest_argmax(x: Tensor, dim: int) -> Tensor:
    """Index of the maximum of exact values ``x`` along ``dim``, ties to the lowest index, on
    every device: no reliance on a kernel's tie rule (the coder's states must agree bit for bit)."""
    k = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = k
    rank = (k - torch.arange(k, device=x.device)).view(shape)
    top = x == x.amax(dim, keepdim=True)
    return k - (top.long() * rank).amax(dim)


def _renorm(x: Tensor) -> Tensor:
    """Scale each row by a power of two so its max lies in [2**(B-1), 2**B), then floor. Exact.

    The scale 2**(B-e) is made once per row (``ldexp`` of ones, [N, 1]) and multiplied in: a
    product with a power of two is exact, so this equals ``floor(ldexp(x, B - e))`` bit for bit
    at a fraction of its cost (torch's ldexp raises 2 to a power per element).

    In place: every caller passes a fresh temporary (a product or a gather), and reusing it
    spares the allocator a fresh [N, K] buffer per message (fewer page faults, steadier time).
    """
    m = x.amax(-1, keepdim=True)
    _, e = torch.frexp(m)  # max < 2**e
    return x.mul_(torch.ldexp(torch.ones_like(m), MESSAGE_BITS - e)).floor_()


def _table_runs(groups: Tensor, num_tables: int) -> tuple[Tensor, list[list[tuple[int, int]]]]:
    """Items sorted by table for every variable at once: ``order`` [N, D] (each column's items
    grouped by their table, stable) and per variable the runs ``(table, count)`` in that order.

    One sort and one count for all D variables instead of a unique, argsort and bincount per
    variable: the per-item path's bookkeeping is then a column lookup.
    """
    d = groups.shape[1]
    order = torch.argsort(groups, dim=0, stable=True)
    key = groups + num_tables * torch.arange(d, device=groups.device)
    counts = torch.bincount(key.reshape(-1), minlength=d * num_tables).view(d, num_tables)
    runs = [[(t, c) for t, c in enumerate(row) if c] for row in counts.tolist()]
    return order, runs


class IncrementalConditionals:
    """Step-by-step conditionals p(x_i | x_<i) in the tree's preorder, batched over N items.

    Call ``weights()`` for the next variable's integer weights [N, V], then ``observe(values)``
    with that variable's values; ``order`` lists the variables in coding order.

    Per-item leaves: with emission tables of shape [D, S, K, V] (S tables per variable),
    ``groups`` [N, D] picks table ``groups[n, i]`` for item n's variable i (conditional entropy
    models, whose leaves depend on side information). The arithmetic stays exact: each weight is
    a sum of K products of integers below 2**22 and 2**22 + 1, as with shared tables.

    Two-step symbols: with ``split`` (shared tables only) and an alphabet of at least
    ``SPLIT_MIN_SYMBOLS``, ``width`` is the group width B of ``symbol_split`` and a column is coded
    as ``group_probabilities()`` then ``member_probabilities(group)``: K(V/B + B) products per item
    instead of K V. Both come from exact integer weights (the member weights of a group sum to the
    group's weight exactly), so their product is the one-step conditional up to rounding.

    Per-item roots: ``roots`` [N, K] (integer weights in 1..MAX_PARAM, as the tables' root)
    replaces the root prior item by item (a prior over the latent states chosen from side
    information); after the last variable, ``root_states()`` gives each item's most probable
    root state, exactly.
    """

    def __init__(
        self,
        tables: CodingTables,
        n: int,
        device: torch.device | str = "cpu",
        groups: Tensor | None = None,
        split: bool = False,
        roots: Tensor | None = None,
    ) -> None:
        self.t = tables.to(device)
        self.n = n
        k = tables.root.shape[0]
        if roots is not None:
            if tuple(roots.shape) != (n, k):
                raise ValueError(f"roots must have shape [{n}, {k}], got {tuple(roots.shape)}")
            roots = roots.to(self.t.root.device, self.t.root.dtype)
            if roots.numel() and (
                float(roots.min()) < 1
                or float(roots.max()) > MAX_PARAM
                or not torch.equal(roots, roots.floor())
            ):
                raise ValueError(f"roots must be integer weights in 1..{MAX_PARAM}")
        self._roots = roots
        if (tables.emit.dim() == 4) != (groups is not None):
            raise ValueError(
                "groups [N, D] are needed exactly when the emission tables are [D, S, K, V]"
            )
        if split and groups is not None:
            raise ValueError("two-step symbols (split) need shared emission tables [D, K, V]")
        self.width = symbol_split(tables.emit.shape[-1]) if split else 0
        if self.width:
            d, k, v = self.t.emit.shape
            g = -(-v // self.width)
            padded = torch.nn.functional.pad(self.t.emit, (0, g * self.width - v))
            padded = padded.view(d, k, g, self.width)
            self._group_emit = padded.sum(-1)  # [D, K, G], exact integer sums
            self._member_emit = padded.permute(0, 2, 1, 3).contiguous()  # [D, G, K, B]
            self._group_w: Tensor | None = None
        if groups is not None:
            if tuple(groups.shape) != (n, tables.emit.shape[0]):
                raise ValueError(
                    f"groups must have shape [{n}, {tables.emit.shape[0]}], got {tuple(groups.shape)}"
                )
            groups = groups.to(self.t.emit.device).long()
            if groups.numel() and (
                int(groups.min()) < 0 or int(groups.max()) >= tables.emit.shape[1]
            ):
                raise ValueError(f"groups must lie in 0..{tables.emit.shape[1] - 1}")
        self.groups = groups
        self._by_table: tuple[Tensor, list[list[tuple[int, int]]]] | None = None
        if groups is not None:
            self._by_table = _table_runs(groups, tables.emit.shape[1])
        self._weights: Tensor | None = None  # per-item tables: this step's weights, made once
        # [child state, parent state]: ``x @ trans_t[i].T`` runs faster than ``x @ trans[i]`` in
        # MKL's float64 kernels, with the same exact integer result
        self._trans_t = self.t.trans.transpose(1, 2).contiguous()
        parent = np.asarray(tables.parent)
        d = len(parent)
        tree_roots = np.flatnonzero(parent < 0)
        children: list[list[int]] = [[] for _ in range(d)]
        for i, p in enumerate(parent):
            if p >= 0:
                children[p].append(i)
        order, stack = [], [int(tree_roots[0])]
        while stack:
            v = stack.pop()
            order.append(v)
            stack.extend(reversed(children[v]))
        self.order = np.asarray(order, dtype=np.int64)
        pos = np.empty(d, dtype=np.int64)
        pos[self.order] = np.arange(d)
        # last preorder position inside each node's subtree
        last = pos.copy()
        for v in self.order[::-1]:
            if parent[v] >= 0:
                last[parent[v]] = max(last[parent[v]], last[v])
        self.parent, self.last = parent, last
        self.step = 0
        self._out: dict[int, Tensor] = {}
        self._inside: dict[int, Tensor] = {}
        self._pending: Tensor | None = None
        self._free: list[Tensor] = []  # consumed [N, K] messages, reused by ``_buffer``
        # Row sums of the weights as one matrix-vector product with the emission tables' row sums
        # (out @ emit.sum(-1)): exact, hence equal to w.sum(-1), whenever every partial sum stays
        # below 2**53 (messages and root entries are at most MAX_PARAM). Otherwise sum w itself.
        self._emit_sum: Tensor | None = None
        if groups is None:
            esum = self.t.emit.sum(-1)  # [D, K], exact: each row sum is below 2**53
            k = self.t.emit.shape[-2]
            if esum.numel() and k * MAX_PARAM * float(esum.max()) < 2.0**53:
                self._emit_sum = esum

    def _message(self) -> Tensor:
        """The next variable's outside message out_i [N, K] (or [1, K] at the root), computed once."""
        if self._pending is None:
            i = int(self.order[self.step])
            p = int(self.parent[i])
            if p < 0:
                self._pending = self.t.root[None] if self._roots is None else self._roots
            else:
                ctx = _renorm(torch.mul(self._out[p], self._inside[p], out=self._buffer()))
                out = torch.mm(ctx, self._trans_t[i].T, out=self._buffer())
                self._recycle(ctx)
                self._pending = _renorm(out)
        return self._pending

    def _buffer(self) -> Tensor:
        """An [N, K] float64 buffer: one of the consumed messages if any, else a new one.

        Messages come and go by the thousand; reusing their memory keeps the allocator from
        returning it to the system and faulting it back in (a steady share of coding time).
        """
        if self._free:
            return self._free.pop()
        k = self.t.root.shape[0]
        return torch.empty(self.n, k, dtype=self.t.root.dtype, device=self.t.root.device)

    def _recycle(self, t: Tensor) -> None:
        """Hand a consumed [N, K] message back to ``_buffer`` (never the tables' root row, nor the
        caller's per-item ``roots``: buffers are overwritten in place)."""
        if t.shape == (self.n, self.t.root.shape[0]) and t.data_ptr() not in (
            self.t.root.data_ptr(),
            -1 if self._roots is None else self._roots.data_ptr(),
        ):
            self._free.append(t)

    def probabilities(self, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        """``w / w.sum(-1)`` of items ``start .. stop - 1`` of the next variable, [stop - start, V].

        The coder's probabilities, bit for bit those of ``weights()`` (one correctly rounded
        division of exact integers), computed for a slice of the items so that a column can be
        coded in cache-sized pieces; ``out`` (float64, contiguous, at least that many rows) is
        reused instead of allocating. Call ``observe`` once the whole column is coded.
        """
        i = int(self.order[self.step])
        if self.groups is not None:  # per-item tables: the general path
            w = self.weights()[start:stop]  # made once per variable, however many slices
            return torch.div(
                w, w.sum(-1, keepdim=True), out=out[: stop - start] if out is not None else None
            )
        msg = self._message()
        msg = msg if len(msg) == 1 else msg[start:stop]
        emit = self.t.emit[i]
        rows = stop - start
        if out is None:
            out = torch.empty(rows, emit.shape[-1], dtype=emit.dtype, device=emit.device)
        w = out[:rows]
        if len(msg) == 1:  # the root: the same row for every item
            w.copy_((msg @ emit).expand(rows, -1))
        else:
            torch.mm(msg, emit, out=w)
        if self._emit_sum is not None:
            s = (msg @ self._emit_sum[i])[:, None]
        else:
            s = w.sum(-1, keepdim=True)
        return torch.div(w, s, out=w)

    def group_probabilities(self) -> Tensor:
        """Probabilities [N, G] of the next variable's symbol group (``width`` symbols each)."""
        i = int(self.order[self.step])
        msg = self._message()
        w = (msg @ self._group_emit[i]).expand(self.n, -1)
        self._group_w = w
        # G exact integers: their sum is exact under the same bound as ``_emit_sum``
        return w / w.sum(-1, keepdim=True)

    def member_probabilities(self, group: Tensor) -> Tensor:
        """Probabilities [N, B] of the next variable's symbol within each item's ``group`` [N].

        One matrix product per group on the items sorted by group (at most 2 sqrt(V) of them),
        each item's row divided by its group's weight from ``group_probabilities``.
        """
        assert self._group_w is not None, "member_probabilities() must follow group_probabilities()"
        i = int(self.order[self.step])
        msg, member = self._message(), self._member_emit[i]  # [N or 1, K], [G, K, B]
        group = group.to(member.device).long()
        order, runs = _table_runs(group[:, None], len(member))
        w = self._products_by_table(msg, member, group, order[:, 0], runs[0])
        s = self._group_w.gather(1, group[:, None])
        self._group_w = None
        return w.div_(s)

    def weights(self) -> Tensor:
        """Integer weights [N, V] (exact, float64) of the next variable's conditional."""
        i = int(self.order[self.step])
        msg = self._message()
        if self.groups is None:
            return msg.expand(self.n, -1) @ self.t.emit[i]
        # One matrix product per distinct table: far faster than a batched product over items,
        # and exact all the same (integer sums below 2**53 do not depend on the kernel).
        if self._weights is None:
            self._weights = self._table_weights(i, msg)
        return self._weights

    def _table_weights(self, i: int, msg: Tensor) -> Tensor:
        """Weights [N, V] of variable i under per-item tables from its message ``msg``, with the
        items sorted by table once for all variables (``_table_runs``)."""
        assert self._by_table is not None and self.groups is not None
        order, runs = self._by_table
        return self._products_by_table(msg, self.t.emit[i], self.groups[:, i], order[:, i], runs[i])

    def _products_by_table(
        self,
        msg: Tensor,
        tables: Tensor,
        table_of: Tensor,
        order: Tensor,
        runs: list[tuple[int, int]],
    ) -> Tensor:
        """Each item's message row times its own table: ``msg[n] @ tables[table_of[n]]``, [N, V].

        ``msg`` is [N, K], or [1, K] for a prior shared by every item (then one row per table,
        and each item takes its table's). Otherwise the items in ``order`` (sorted by table, in
        ``runs`` of ``(table, count)``) get one matrix product per table in use, written in place.
        Exact for any kernel: integer sums below 2**53.
        """
        if len(msg) == 1:
            return (msg @ tables)[:, 0][table_of]
        if len(runs) == 1:
            return msg @ tables[runs[0][0]]
        rows = torch.index_select(msg, 0, order, out=self._buffer())
        w = torch.empty(self.n, tables.shape[-1], dtype=msg.dtype, device=msg.device)
        start = 0
        for table, count in runs:
            torch.mm(rows[start : start + count], tables[table], out=w[start : start + count])
            start += count
        self._recycle(rows)
        return torch.empty_like(w).index_copy_(0, order, w)

    def observe(self, values: Tensor) -> None:
        """Record the values [N] of the variable whose weights were just returned."""
        i = int(self.order[self.step])
        assert self._pending is not None, "observe() must follow weights() or probabilities()"
        self._out[i] = self._pending
        self._pending = self._weights = None
        values = values.to(self.t.emit.device).long()
        if self.groups is not None:
            self._inside[i] = _renorm(self.t.emit[i][self.groups[:, i], :, values])  # [N, K]
        elif self.n >= self.t.emit.shape[-1]:
            # _renorm and matrix products work row by row, so computing a message for each of
            # the V symbols and then picking each item's row is the same as picking first: V*K
            # work instead of N*K (a row gather from a row-major table, into a reused buffer)
            # a copy, always: with K = 1 ``.T.contiguous()`` is a view of the model's own table,
            # and _renorm works in place (the coder would rewrite its tables mid-stream)
            table = _renorm(self.t.emit[i].T.clone(memory_format=torch.contiguous_format))
            p = int(self.parent[i])
            if self.last[i] == self.step and p >= 0:  # a leaf: its message to the parent at once
                table = _renorm(table @ self.t.trans[i].T)
                lam = torch.index_select(table, 0, values, out=self._buffer())
                self._recycle(self._out.pop(i))
                _renorm(self._inside[p].mul_(lam))  # inside messages are owned: in place
                self._recycle(lam)
                self._close(p)
                return
            self._inside[i] = torch.index_select(table, 0, values, out=self._buffer())
        else:
            self._inside[i] = _renorm(self.t.emit[i].T[values])
        self._close(i)

    def root_states(self) -> Tensor:
        """Each item's most probable root state [N] (int64) given all its variables, under the
        tables' own root prior: the argmax of exact integers (the root's evidence message times
        the root weights, both below 2**23, so their product is exact), ties to the lowest state.
        Call it after the last ``observe``."""
        if self.step != len(self.order):
            raise RuntimeError("root_states() needs every variable observed first")
        root = int(self.order[0])
        return lowest_argmax(self._inside[root] * self.t.root, -1)  # exact integer products

    def _close(self, s: int) -> None:
        """Close every subtree that ends at this step from ``s`` up, deepest first, passing its
        message to its parent; then advance to the next variable."""
        while s >= 0 and self.last[s] == self.step and self.parent[s] >= 0:
            p = int(self.parent[s])
            inside = self._inside.pop(s)
            lam = _renorm(torch.mm(inside, self.t.trans[s].T, out=self._buffer()))
            self._recycle(inside)
            self._recycle(self._out.pop(s))
            _renorm(self._inside[p].mul_(lam))
            self._recycle(lam)
            s = p
        self.step += 1


CHUNK_ITEMS = 1024  # items whose probabilities are computed and coded at once (cache-sized)


def _chunks(strings: int, items_per_string: int) -> list[tuple[int, int, int]]:
    """(string, start, stop) pieces of every string's items, in coding order."""
    p = items_per_string
    return [
        (j, s, min(s + CHUNK_ITEMS, (j + 1) * p))
        for j in range(strings)
        for s in range(j * p, (j + 1) * p, CHUNK_ITEMS)
    ]


def _probability_buffer(inc: IncrementalConditionals) -> Tensor:
    emit = inc.t.emit
    return torch.empty(
        min(inc.n, CHUNK_ITEMS), emit.shape[-1], dtype=emit.dtype, device=emit.device
    )


def _numpy(t: Tensor) -> np.ndarray:
    """``t`` as a numpy array: a view on CPU, a copy from another device."""
    return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()


def incremental_conditionals(pc: SymbolCircuit, x: Tensor) -> tuple[np.ndarray, Tensor]:
    """Coding order and the coder's probabilities p(x_i | x_<i): [N, D, V] in that order."""
    x = check_symbols(x, pc.num_vars, pc.num_cats)
    tables = coding_tables(pc)
    inc = IncrementalConditionals(tables, len(x), tables.root.device)
    probs = []
    for i in inc.order:
        probs.append(inc.weights())
        inc.observe(x[:, i])
    w = torch.stack(probs, 1)
    return inc.order, w / w.sum(-1, keepdim=True)


def naive_conditionals(pc: HCLT, x: Tensor, order: np.ndarray) -> Tensor:
    """Reference: p(x_i | x_<i) by one full inside/outside pass per variable, [N, D, V] in ``order``."""
    x = check_symbols(x, pc.num_vars, pc.num_cats)
    d = pc.num_vars
    pos = torch.empty(d, dtype=torch.long)
    pos[torch.as_tensor(order)] = torch.arange(d)
    out = []
    with torch.no_grad():
        for t, i in enumerate(order):
            missing = (pos >= t).expand_as(x)  # x_i itself and everything after it
            out.append(pc.conditionals(x, missing)[:, i].exp())
    return torch.stack(out, 1)


# -- the column loop and the bypass (escape) code ---------------------------------------------
def _categorical() -> Any:
    return constriction.stream.model.Categorical(perfect=False)


def _bit_lengths(v: np.ndarray) -> np.ndarray:
    """floor(log2(v)) for int64 v >= 1, exactly (no float log)."""
    return (v[:, None] >= (np.int64(1) << np.arange(1, _LEN_ALPHABET, dtype=np.int64))).sum(1)


def _encode_escapes(enc: Any, rel: np.ndarray, n: np.ndarray) -> None:
    above = rel >= n
    side, e = above.astype(np.int32), np.where(above, rel - n, -1 - rel)
    v = e + 1
    nbits = _bit_lengths(v)
    r = v - (np.int64(1) << nbits)
    enc.encode(side, constriction.stream.model.Uniform(2))
    enc.encode(nbits.astype(np.int32), constriction.stream.model.Uniform(_LEN_ALPHABET))
    for shift in (0, 16):
        b = np.clip(nbits - shift, 0, 16)
        sel = b > 0
        if sel.any():
            chunk = (r[sel] >> shift) & ((np.int64(1) << b[sel]) - 1)
            enc.encode(
                chunk.astype(np.int32),
                constriction.stream.model.Uniform(),
                (np.int64(1) << b[sel]).astype(np.int32),
            )


def _decode_escapes(dec: Any, n: np.ndarray) -> np.ndarray:
    m = len(n)
    side = dec.decode(constriction.stream.model.Uniform(2), m).astype(np.int64)
    nbits = dec.decode(constriction.stream.model.Uniform(_LEN_ALPHABET), m).astype(np.int64)
    r = np.zeros(m, dtype=np.int64)
    for shift in (0, 16):
        b = np.clip(nbits - shift, 0, 16)
        sel = b > 0
        if sel.any():
            chunk = dec.decode(
                constriction.stream.model.Uniform(), (np.int64(1) << b[sel]).astype(np.int32)
            )
            r[sel] |= chunk.astype(np.int64) << shift
    e = (np.int64(1) << nbits) + r - 1
    return np.where(side == 1, n + e, -1 - e)


def escape_bits(rel: Tensor, n: Tensor) -> Tensor:
    """Bypass code length in bits of out-of-alphabet symbols (same layout as the escape encoder)."""
    e = torch.where(rel >= n, rel - n, -1 - rel)
    nbits = torch.floor(torch.log2((e + 1).double()))
    return 1.0 + math.log2(_LEN_ALPHABET) + nbits


def _column_plan(
    inc: IncrementalConditionals, strings: int, items_per_string: int, escapes: bool
) -> tuple[Tensor | None, list[tuple[int, int, int]]]:
    """The probability buffer and string chunks of one-step columns (none for two-step ones,
    which code every string's column at once); two-step symbols take no escapes."""
    if not inc.width:
        return _probability_buffer(inc), _chunks(strings, items_per_string)
    if escapes:
        raise ValueError("escapes cannot be combined with two-step symbols (split)")
    return None, []


def encode_columns(
    encoders: list[Any],
    inc: IncrementalConditionals,
    idx: Tensor,
    items_per_string: int,
    rel: np.ndarray | None = None,
    esc: np.ndarray | None = None,
    alphabet: np.ndarray | None = None,
) -> None:
    """Range-encode the items of every string, one variable at a time in ``inc.order``.

    String j (``encoders[j]``) takes items ``j*items_per_string ..``; ``idx`` [N, D] are the coded
    symbols. With ``esc`` [N, D] (the escape mask), ``rel`` [N, D] (alphabet-relative values) and
    ``alphabet`` [D], an escaped value is followed by its exact bypass code. The counterpart of
    ``decode_columns``.
    """
    p = items_per_string
    buf, chunks = _column_plan(inc, len(encoders), p, esc is not None)
    # coding order: columns of idx, each contiguous
    cols = np.ascontiguousarray(idx.cpu().numpy().astype(np.int32).T)
    idx_t = idx.to(inc.t.emit.device).long().T
    family = _categorical()
    for i in inc.order:
        if inc.width:  # two steps: every string's groups, then its members
            group = _numpy(inc.group_probabilities())
            member = _numpy(inc.member_probabilities(idx_t[i] // inc.width))
            for j, enc in enumerate(encoders):
                sl = slice(j * p, (j + 1) * p)
                enc.encode(cols[i, sl] // inc.width, family, group[sl])
                enc.encode(cols[i, sl] % inc.width, family, member[sl])
            inc.observe(idx_t[i])
            continue
        for j, start, stop in chunks:
            probs = _numpy(inc.probabilities(start, stop, buf))
            encoders[j].encode(cols[i, start:stop], family, probs)
            if esc is not None and stop == (j + 1) * p:  # string j's column is complete
                sl = slice(j * p, stop)
                e = esc[sl, i]
                if e.any():
                    _encode_escapes(
                        encoders[j],
                        rel[sl, i][e],  # type: ignore[index]
                        np.full(int(e.sum()), alphabet[i]),  # type: ignore[index]
                    )
        inc.observe(idx_t[i])


@contextmanager
def decoding(name: str) -> Iterator[None]:
    """Turn whatever the range decoder raises on impossible data into a ``BitstreamError``."""
    try:
        yield
    except BitstreamError:
        raise
    except Exception as err:  # constriction raises AssertionError / ValueError on invalid data
        raise BitstreamError(f"{name} bitstream could not be decoded (corrupted?): {err}") from err


def range_decoders(words: list[np.ndarray]) -> list[Any]:
    """One constriction range decoder per string's payload words."""
    return [constriction.stream.queue.RangeDecoder(wd) for wd in words]


def finish_decoding(decoders: list[Any], name: str = "pc-prior") -> None:
    """Raise ``BitstreamError`` if a string holds data beyond what was decoded."""
    for dec in decoders:
        if dec.maybe_exhausted() is False:
            raise BitstreamError(
                f"{name} bitstream has trailing data beyond what the model decodes (corrupted?)"
            )


def _decode_split_column(
    decoders: list[Any],
    inc: IncrementalConditionals,
    items_per_string: int,
    i: int,
    family: Any,
    name: str,
) -> np.ndarray:
    """Variable i's values of every string, coded in two steps (group, then member)."""
    p, n = items_per_string, inc.n
    group_probs = _numpy(inc.group_probabilities())
    group = np.empty(n, dtype=np.int64)
    for j, dec in enumerate(decoders):
        group[j * p : (j + 1) * p] = dec.decode(family, group_probs[j * p : (j + 1) * p])
    member_probs = _numpy(inc.member_probabilities(torch.from_numpy(group)))
    col = group * inc.width
    for j, dec in enumerate(decoders):
        col[j * p : (j + 1) * p] += dec.decode(family, member_probs[j * p : (j + 1) * p])
    if n and int(col.max()) >= inc.t.emit.shape[-1]:  # a padding member of the last group
        raise BitstreamError(
            f"{name} bitstream decodes to a symbol outside variable {i}'s alphabet (corrupted?)"
        )
    return col


def decode_columns(
    decoders: list[Any],
    inc: IncrementalConditionals,
    items_per_string: int,
    escape: int | None = None,
    alphabet: np.ndarray | None = None,
    name: str = "pc-prior",
) -> Tensor:
    """Range-decode the items of every string, one variable at a time in ``inc.order``.

    String j (``decoders[j]``) holds items ``j*items_per_string ..``. With ``escape`` and
    ``alphabet``, variable i's symbol ``escape`` is followed by the exact bypass code of a value
    outside ``0 .. alphabet[i] - 1``. Returns the (alphabet-relative) values [B * items_per_string, D]
    (int64). Impossible or inconsistent data raise ``BitstreamError``; call ``finish_decoding``
    once everything is decoded.
    """
    p = items_per_string
    n = len(decoders) * p
    d = len(inc.order)
    rel = torch.empty(d, n, dtype=torch.long)  # by column, transposed at the end
    family = _categorical()
    buf, chunks = _column_plan(inc, len(decoders), p, escape is not None)
    with decoding(name):
        for i in inc.order:
            if inc.width:
                rel[i] = torch.from_numpy(_decode_split_column(decoders, inc, p, i, family, name))
                inc.observe(rel[i])
                continue
            col = np.empty(n, dtype=np.int64)
            val = col if escape is None else np.empty(n, dtype=np.int64)
            for j, start, stop in chunks:
                dec = decoders[j]
                probs = _numpy(inc.probabilities(start, stop, buf))
                col[start:stop] = dec.decode(family, probs)
                if escape is None or stop < (j + 1) * p:
                    continue
                sl = slice(j * p, stop)  # string j's column is complete
                val[sl] = col[sl]
                e = col[sl] == escape
                if ((col[sl] >= alphabet[i]) & ~e).any():  # type: ignore[index]
                    raise BitstreamError(
                        f"{name} bitstream decodes to a symbol outside variable {i}'s alphabet"
                    )
                if e.any():
                    val[sl][e] = _decode_escapes(dec, np.full(int(e.sum()), alphabet[i]))  # type: ignore[index]
            rel[i] = torch.from_numpy(val)
            inc.observe(torch.from_numpy(col))
    return rel.T.contiguous()


# -- the lossless format ------------------------------------------------------------------------
def _block_check(x: np.ndarray) -> tuple[int, int]:
    crc = zlib.crc32(np.ascontiguousarray(x, dtype="<i4").tobytes())
    return crc & 0xFFFF, crc >> 16


_HALF = constriction.stream.model.Uniform(2**16)


def encode_check(encoder: Any, values: np.ndarray) -> None:
    """Close a run of coded ``values`` (integers below 2**31 in magnitude) with their CRC-32, as two
    uniform 16-bit symbols: 32 bits that ``decode_check`` compares with what it decoded."""
    encoder.encode(np.array(_block_check(values), dtype=np.int32), _HALF)


def decode_check(decoder: Any, values: np.ndarray, what: str) -> None:
    """Read ``encode_check``'s CRC-32 and raise ``BitstreamError`` naming ``what`` unless it is that
    of the decoded ``values``: a stream decoded under the wrong size, a forged header or a changed
    payload gives other values, which no range decoder notices by itself (it decodes any bits)."""
    got = tuple(int(c) for c in decoder.decode(_HALF, 2))
    if got != _block_check(values):
        raise BitstreamError(f"{what} corrupted or truncated: its check does not match")


def encode(pc: SymbolCircuit, x: Tensor) -> bytes:
    """Losslessly encode integer data [N, D] (symbols 0..V-1) into bytes (``pc_prior.framing.LOSSLESS``)."""
    check_symbol_circuit(pc, "encode")
    x = check_symbols(x, pc.num_vars, pc.num_cats)
    tables = coding_tables(pc)
    n = len(x)
    enc = constriction.stream.queue.RangeEncoder()
    xs = x.cpu().numpy().astype(np.int32)
    for s in range(0, n, BLOCK_ITEMS):
        block = x[s : s + BLOCK_ITEMS].to(tables.root.device)
        inc = IncrementalConditionals(tables, len(block), tables.root.device, split=True)
        encode_columns([enc], inc, block, len(block))
        encode_check(enc, xs[s : s + BLOCK_ITEMS])
    payload = enc.get_compressed().astype("<u4").tobytes()
    return framing.pack(
        framing.LOSSLESS, tables.fingerprint, (n, pc.num_vars, pc.num_cats, BLOCK_ITEMS), payload
    )


def decode(pc: SymbolCircuit, data: bytes) -> Tensor:
    """Decode bytes made by ``encode`` with the same model back to LongTensor [N, D].

    Every header field is checked before anything is allocated; each block's check must match,
    so a stream of another model, a tampered item count or a payload that runs out raise
    ``BitstreamError`` instead of returning wrong data.
    """
    check_symbol_circuit(pc, "decode")
    tables = coding_tables(pc)
    name = framing.LOSSLESS.name

    def check_fields(fields: tuple[int, ...]) -> None:
        _, d, v, block = fields
        if (d, v) != (pc.num_vars, pc.num_cats):
            raise BitstreamError(
                f"{name} bitstream holds data of {d} variables with {v} symbols; "
                f"this model has {pc.num_vars} and {pc.num_cats}"
            )
        if block != BLOCK_ITEMS:
            raise BitstreamError(
                f"{name} bitstream has blocks of {block} items; this format has {BLOCK_ITEMS}"
            )

    (n, d, _, block), words = framing.unpack(
        data, framing.LOSSLESS, tables.fingerprint, check_fields
    )
    check_decode_limit(n, d, name)
    check_payload_holds(n, min_item_bits(tables, split=True), len(words), name)
    if n == 0:
        if len(words):
            raise BitstreamError(f"{name} bitstream holds no items but has a payload (corrupted?)")
        return torch.empty(0, d, dtype=torch.long)
    if 32 * -(-n // block) > 32 * len(words) + _SLACK_BITS:
        raise BitstreamError(
            f"{name} bitstream corrupted: {n} items need more block checks than the payload holds"
        )
    dec = constriction.stream.queue.RangeDecoder(words)
    parts = []
    with decoding(name):
        for s in range(0, n, block):
            m = min(block, n - s)
            inc = IncrementalConditionals(tables, m, tables.root.device, split=True)
            vals = decode_columns([dec], inc, m, name=name)
            decode_check(dec, vals.numpy(), f"{name} bitstream (block of items {s}..{s + m - 1})")
            parts.append(vals)
    finish_decoding([dec], name)
    return torch.cat(parts)
