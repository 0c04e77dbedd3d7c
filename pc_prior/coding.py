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
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

import constriction
import numpy as np
import torch
from torch import Tensor

from .errors import BitstreamError
from .hclt import HCLT, check_symbols

__all__ = [
    "CodingTables", "coding_tables", "IncrementalConditionals", "incremental_conditionals",
    "naive_conditionals", "encode", "decode", "BitstreamError", "FORMAT_VERSION",
]

MESSAGE_BITS = 22  # messages are integers in [0, 2**22)
PARAM_BITS = 22  # parameters are floor(p * 2**22) + 1
MAX_LATENTS = 256  # K * 2**22 * (2**22 + 1) < 2**53 keeps every matrix product exact
MAGIC = b"PCPR"
FORMAT_VERSION = 1
KIND_HCLT = 1
_HEADER = struct.Struct("<4sBB8sIIII")  # magic, version, kind, fingerprint, N, D, V, crc32


@dataclass(frozen=True)
class CodingTables:
    """Integer-quantized parameters of a latent tree (integer values held in float64)."""

    parent: np.ndarray  # [D]
    root: Tensor  # [K]
    trans: Tensor  # [D, K, K], [parent state, child state]
    emit: Tensor  # [D, K, V]

    @property
    def fingerprint(self) -> bytes:
        h = hashlib.sha256()
        h.update(np.asarray(self.parent, dtype="<i8").tobytes())
        for t in (self.root, self.trans, self.emit):
            h.update(np.asarray(t.shape, dtype="<i8").tobytes())
            h.update(t.detach().cpu().to(torch.int32).numpy().astype("<i4").tobytes())
        return h.digest()[:8]

    def to(self, device: torch.device | str) -> "CodingTables":
        return CodingTables(self.parent, self.root.to(device), self.trans.to(device), self.emit.to(device))

    def state(self) -> dict:
        """Compact, device-free form for checkpoints."""
        return {k: getattr(self, k).detach().cpu().to(torch.int32) for k in ("root", "trans", "emit")} | {
            "parent": torch.as_tensor(self.parent)
        }

    @classmethod
    def from_state(cls, state: dict) -> "CodingTables":
        return cls(
            np.asarray(state["parent"]), *(state[k].to(torch.float64) for k in ("root", "trans", "emit"))
        )


def quantize_probs(p: Tensor) -> Tensor:
    """floor(p * 2**PARAM_BITS) + 1: exact elementwise float ops, identical on every device."""
    return torch.floor(p.detach().double() * 2.0**PARAM_BITS) + 1.0


def _params_key(pc: HCLT) -> tuple:
    return tuple((p.data_ptr(), p._version, p.device.type) for p in pc.parameters())


def coding_tables(pc: HCLT) -> CodingTables:
    """The model's quantized tables, computed on first use and cached until its parameters change.

    Checkpoints store these tables, so a model saved on one device codes identically after
    loading on another.
    """
    cached = getattr(pc, "_coding_tables", None)
    if cached is not None and getattr(pc, "_coding_key", None) == _params_key(pc):
        return cached
    if pc.num_latents > MAX_LATENTS:
        raise ValueError(f"coding supports at most {MAX_LATENTS} latent states, model has {pc.num_latents}")
    with torch.no_grad():
        tables = CodingTables(
            np.asarray(pc.tree.parent, dtype=np.int64),
            quantize_probs(pc.log_root().exp()),
            quantize_probs(pc.log_transitions().exp()),
            quantize_probs(pc.log_emissions().exp()),
        )
    set_coding_tables(pc, tables)
    return tables


def set_coding_tables(pc: HCLT, tables: CodingTables) -> None:
    pc._coding_tables = tables
    pc._coding_key = _params_key(pc)


def _renorm(x: Tensor) -> Tensor:
    """Scale each row by a power of two so its max lies in [2**(B-1), 2**B), then floor. Exact."""
    _, e = torch.frexp(x.amax(-1, keepdim=True))  # max < 2**e
    return torch.floor(torch.ldexp(x, MESSAGE_BITS - e))


class IncrementalConditionals:
    """Step-by-step conditionals p(x_i | x_<i) in the tree's preorder, batched over N items.

    Call ``weights()`` for the next variable's integer weights [N, V], then ``observe(values)``
    with that variable's values; ``order`` lists the variables in coding order.

    Per-item leaves: with emission tables of shape [D, S, K, V] (S tables per variable),
    ``groups`` [N, D] picks table ``groups[n, i]`` for item n's variable i (conditional entropy
    models, whose leaves depend on side information). The arithmetic stays exact: each weight is
    a sum of K products of integers below 2**22 and 2**22 + 1, as with shared tables.
    """

    def __init__(self, tables: CodingTables, n: int, device: torch.device | str = "cpu",
                 groups: Tensor | None = None) -> None:
        self.t = tables.to(device)
        self.n = n
        if (tables.emit.dim() == 4) != (groups is not None):
            raise ValueError("groups [N, D] are needed exactly when the emission tables are [D, S, K, V]")
        if groups is not None:
            if tuple(groups.shape) != (n, tables.emit.shape[0]):
                raise ValueError(f"groups must have shape [{n}, {tables.emit.shape[0]}], got {tuple(groups.shape)}")
            groups = groups.to(self.t.emit.device).long()
            if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= tables.emit.shape[1]):
                raise ValueError(f"groups must lie in 0..{tables.emit.shape[1] - 1}")
        self.groups = groups
        parent = np.asarray(tables.parent)
        d = len(parent)
        roots = np.flatnonzero(parent < 0)
        children: list[list[int]] = [[] for _ in range(d)]
        for i, p in enumerate(parent):
            if p >= 0:
                children[p].append(i)
        order, stack = [], [int(roots[0])]
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

    def weights(self) -> Tensor:
        """Integer weights [N, V] (exact, float64) of the next variable's conditional."""
        i = int(self.order[self.step])
        p = int(self.parent[i])
        if p < 0:
            out = self.t.root.expand(self.n, -1)
        else:
            ctx = _renorm(self._out[p] * self._inside[p])
            out = _renorm(ctx @ self.t.trans[i])
        self._pending = out
        if self.groups is None:
            return out @ self.t.emit[i]
        # One matrix product per distinct table: far faster than a batched product over items,
        # and exact all the same (integer sums below 2**53 do not depend on the kernel).
        g = self.groups[:, i]
        vals, inv = torch.unique(g, return_inverse=True)
        if len(vals) == 1:
            return out @ self.t.emit[i, int(vals[0])]
        order = torch.argsort(inv)
        pieces = out.expand(self.n, -1)[order].split(torch.bincount(inv).tolist())
        res = torch.empty(self.n, self.t.emit.shape[-1], dtype=out.dtype, device=out.device)
        res[order] = torch.cat([p @ self.t.emit[i, v] for v, p in zip(vals.tolist(), pieces)])
        return res

    def observe(self, values: Tensor) -> None:
        """Record the values [N] of the variable whose weights were just returned."""
        i = int(self.order[self.step])
        self._out[i] = self._pending
        values = values.to(self.t.emit.device).long()
        if self.groups is None:
            leaf = self.t.emit[i].T[values]
        else:
            leaf = self.t.emit[i][self.groups[:, i], :, values]  # [N, K]
        self._inside[i] = _renorm(leaf)
        # close every subtree that ends here, deepest first, passing its message to its parent
        s = i
        while s >= 0 and self.last[s] == self.step and self.parent[s] >= 0:
            p = int(self.parent[s])
            lam = _renorm(self._inside.pop(s) @ self.t.trans[s].T)
            self._out.pop(s)
            self._inside[p] = _renorm(self._inside[p] * lam)
            s = p
        self.step += 1


def _probabilities(w: Tensor) -> np.ndarray:
    return (w / w.sum(-1, keepdim=True)).cpu().numpy()


def incremental_conditionals(pc: HCLT, x: Tensor) -> tuple[np.ndarray, Tensor]:
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


def _model_family():
    return constriction.stream.model.Categorical(perfect=False)


def encode(pc: HCLT, x: Tensor) -> bytes:
    """Losslessly encode integer data [N, D] (symbols 0..V-1) into bytes."""
    x = check_symbols(x, pc.num_vars, pc.num_cats)
    tables = coding_tables(pc)
    n = len(x)
    enc = constriction.stream.queue.RangeEncoder()
    family = _model_family()
    if n:
        inc = IncrementalConditionals(tables, n, tables.root.device)
        xs = x.numpy().astype(np.int32) if x.device.type == "cpu" else x.cpu().numpy().astype(np.int32)
        for i in inc.order:
            enc.encode(np.ascontiguousarray(xs[:, i]), family, _probabilities(inc.weights()))
            inc.observe(x[:, i])
    payload = enc.get_compressed().astype("<u4").tobytes()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, KIND_HCLT, tables.fingerprint, n, pc.num_vars,
                          pc.num_cats, zlib.crc32(payload))
    return header + payload


def read_header(data: bytes) -> dict:
    """Parse and check a bitstream header; raises BitstreamError with the reason."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise BitstreamError(f"bitstream truncated: {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, version, kind, fp, n, d, v, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BitstreamError("not a pc-prior bitstream (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise BitstreamError(f"bitstream format version {version}, this pc-prior reads version {FORMAT_VERSION}")
    if kind != KIND_HCLT:
        raise BitstreamError(f"bitstream kind {kind} is not lossless HCLT data")
    payload = verified_payload(data, _HEADER.size, crc)
    return {"fingerprint": fp, "num_items": n, "num_vars": d, "num_cats": v, "payload": payload}


def verified_payload(data: bytes, header_size: int, crc: int) -> bytes:
    """The range coder's payload after a header: whole 32-bit words whose CRC32 is ``crc``."""
    payload = data[header_size:]
    if len(payload) % 4:
        raise BitstreamError("bitstream truncated or padded: payload is not a whole number of 32-bit words")
    if zlib.crc32(payload) != crc:
        raise BitstreamError("bitstream corrupted or truncated: payload checksum mismatch")
    return payload


def decode(pc: HCLT, data: bytes) -> Tensor:
    """Decode bytes made by ``encode`` with the same model back to LongTensor [N, D]."""
    h = read_header(data)
    tables = coding_tables(pc)
    if (h["num_vars"], h["num_cats"]) != (pc.num_vars, pc.num_cats):
        raise BitstreamError(
            f"bitstream holds data of {h['num_vars']} variables with {h['num_cats']} symbols; "
            f"this model has {pc.num_vars} and {pc.num_cats}"
        )
    if h["fingerprint"] != tables.fingerprint:
        raise BitstreamError("bitstream was made by another model (fingerprint mismatch)")
    n = h["num_items"]
    x = torch.empty(n, pc.num_vars, dtype=torch.long)
    if n == 0:
        return x
    words = np.frombuffer(h["payload"], dtype="<u4").astype(np.uint32)
    dec = constriction.stream.queue.RangeDecoder(words)
    family = _model_family()
    inc = IncrementalConditionals(tables, n, tables.root.device)
    for i in inc.order:
        vals = torch.from_numpy(dec.decode(family, _probabilities(inc.weights())).astype(np.int64))
        x[:, i] = vals
        inc.observe(vals)
    if dec.maybe_exhausted() is False:
        raise BitstreamError("bitstream has trailing data beyond what the model decodes")
    return x
