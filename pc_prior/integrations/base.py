"""One base for the PC entropy models: coding-table buffers, their compact storage, fingerprint, errors.

``PCEntropyModel`` is mixed in before the CompressAI class (``PCEntropyBottleneck(PCEntropyModel,
EntropyBottleneck)``, ``PCConditional(PCEntropyModel, GaussianConditional)``). It holds what both
share: the circuit and its table buffers, the not-fitted errors, the fingerprint, buffer resizing
(``resize_buffers``), loading with table rebuild and digest check, the string framing (``FORMAT``,
``_frame``/``_unframe``: ``pc_prior.framing``) and the latent shape check. The subclasses add only
what differs: the circuit they build from a state dict, the tables they compute from it, their
alphabets, symbols and coding schedule.

Tables in memory. ``_pc_root`` [K], ``_pc_trans`` [D, K, K] and ``_pc_emit`` ([D, K, V], or
[D, S, K, V] with one table per scale index) are int32 buffers written by ``update()``: device
moves and casts carry them bit for bit. They are *non-persistent*: a state dict holds the tree
(``_pc_parent``), the circuit's parameters and ``_pc_tables_sha256``, the SHA-256 of the integer
tables, not the tables themselves (for a ``PCConditional`` those are 8-10x the whole codec).

Loading rebuilds the tables from the parameters. They are computed with ``pc_prior.portable``,
whose float64 results are the same bits on every device and thread count, so the rebuilt tables
equal the saved ones; the digest checks it, and a mismatch (a corrupted parameter, or tables
built by another pc-prior) fails the load with ``CheckpointError`` instead of coding with other
tables. State dicts that hold the tables (``_pc_emit`` present: pc-prior 0.1 files, and
``save_codec(..., tables=True)``) load as before: the tables are validated and used as they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, NamedTuple

import constriction
import numpy as np
import torch
from compressai.models.utils import update_registered_buffers
from torch import Tensor, nn

from .. import framing
from .._checks import check_tensor
from ..coding import (
    MAX_SYMBOL,
    CodingTables,
    IncrementalConditionals,
    check_decode_limit,
    check_payload_holds,
    decode_check,
    decode_columns,
    encode_check,
    encode_columns,
    finish_decoding,
    min_item_bits,
    range_decoders,
)
from ..errors import (
    BitstreamError,
    CheckpointError,
    InputError,
    NotFittedError,
    PCPriorError,
    UnsupportedModelError,
)

__all__ = [
    "MAX_TABLE_ENTRIES",
    "NoCdfTables",
    "PCEntropyModel",
    "PassCondition",
    "check_latent",
    "loaded_tables",
    "no_cdf_tables",
    "pass_rows",
    "position_rows",
    "resize_buffers",
    "stored_tables",
    "straight_through",
    "unpack_strings",
]

TABLE_BUFFERS = ("_pc_root", "_pc_trans", "_pc_emit")  # in memory only (rebuilt on load)
DIGEST = "_pc_tables_sha256"
#: Emission-table entries a loaded state dict may ask to rebuild (1 GiB of float64).
MAX_TABLE_ENTRIES = 2**27


def resize_buffers(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, names: Iterable[str]
) -> None:
    """Give ``module``'s buffers ``names`` the shapes of ``state_dict[prefix + name]`` where present,
    with CompressAI's ``update_registered_buffers`` (policy ``"resize"``), so ``load_state_dict``
    can copy into buffers whose size ``update()`` or ``fit`` chose. ``prefix`` is the module's
    state-dict prefix (``"entropy_bottleneck."``, or ``""`` at the top)."""
    present = [n for n in names if prefix + n in state_dict]
    if not present:
        return
    name = prefix[:-1] if prefix else "_"
    entries = {f"{name}.{n}": state_dict[prefix + n] for n in present}
    update_registered_buffers(module, name, present, entries, policy="resize")


def stored_tables(model: torch.nn.Module) -> dict[str, Tensor]:
    """The integer coding tables of every PC entropy model in ``model``, as state-dict entries
    (``save_codec(..., tables=True)`` adds them; loading then uses them instead of rebuilding)."""
    return {
        f"{name}.{buf}" if name else buf: getattr(m, buf)
        for name, m in model.named_modules()
        if isinstance(m, PCEntropyModel) and m._pc_root.numel()
        for buf in TABLE_BUFFERS
    }


def no_cdf_tables(module: Any, attr: str) -> UnsupportedModelError:
    """The error for CompressAI code reading a PC entropy model's CDF tables (``quantized_cdf``, ...).

    A circuit codes through the module's own ``compress``/``decompress``; it has no CompressAI CDF
    tables (the private buffers hold other things). Code that reads them (mbt2018's and cheng2020's
    serial ``compress``, ``RasterScanLatentCodec``) would hand empty tables to CompressAI's C++ coder.
    """
    name = type(module).__name__
    return UnsupportedModelError(
        f"{name}.{attr}: a {name} has no CompressAI CDF tables, it codes with its circuit through its own "
        "compress()/decompress(). The code reading them codes this entropy model with CompressAI's own C++ "
        "coder (serially, e.g. the compress() of mbt2018/cheng2020 models or a RasterScanLatentCodec), which "
        "a PC entropy model cannot serve: keep CompressAI's entropy model there (swap_entropy_model refuses "
        "such models), or use a codec whose compress() calls the entropy model's compress() (FactorizedPrior, "
        "ScaleHyperprior, MeanScaleHyperprior, ...)"
    )


def loaded_tables(
    state_dict: dict[str, Any], prefix: str, error_msgs: list[str]
) -> CodingTables | None:
    """The validated coding tables (``_pc_parent``, ``_pc_root``, ``_pc_trans``, ``_pc_emit``) of a PC
    entropy model's state dict, or None if it has none; a problem goes to ``error_msgs``, so
    ``load_state_dict`` fails naming it instead of coding with tables it should not trust."""
    keys = [prefix + k for k in ("_pc_parent", "_pc_root", "_pc_trans", "_pc_emit")]
    present = [k in state_dict for k in keys]
    if keys[3] not in state_dict or (all(present) and state_dict[keys[3]].numel() == 0):
        return None  # compact: the tables are rebuilt from the parameters (_finish_loading)
    if not all(present):
        error_msgs.append(f"{prefix}: the state dict has only some of the coding tables {keys}")
        return None
    try:
        parent, root, trans, emit = (state_dict[k] for k in keys)
        return CodingTables.validated(parent, root, trans, emit, where=prefix or "state dict")
    except CheckpointError as e:
        error_msgs.append(str(e))
        return None


class NoCdfTables:
    """CompressAI's CDF tables, read only by code that runs its C++ coder: a circuit has none, so
    every such read raises ``UnsupportedModelError`` instead of handing the coder empty tables (a
    segfault). The PC entropy models keep their alphabets in the private ``_offset``/``_cdf_length``."""

    @property
    def quantized_cdf(self) -> Tensor:
        """Raises ``UnsupportedModelError``: a circuit has no CompressAI CDF tables."""
        raise no_cdf_tables(self, "quantized_cdf")

    @property
    def offset(self) -> Tensor:
        """Raises ``UnsupportedModelError``: a circuit has no CompressAI CDF tables."""
        raise no_cdf_tables(self, "offset")

    @property
    def cdf_length(self) -> Tensor:
        """Raises ``UnsupportedModelError``: a circuit has no CompressAI CDF tables."""
        raise no_cdf_tables(self, "cdf_length")

    def _pmf_to_cdf(self, *args: Any, **kwargs: Any) -> Tensor:
        raise no_cdf_tables(self, "_pmf_to_cdf")

    def _check_cdf_size(self) -> None:  # EntropyModel.compress/decompress: the C++ coder's path
        raise no_cdf_tables(self, "_quantized_cdf")


def unpack_strings(
    strings: Any,
    fmt: framing.Format,
    fingerprint: bytes,
    size: tuple[int, int],
    tables: CodingTables,
    channels: int,
) -> list[np.ndarray]:
    """Check every string's header against this model and latent ``size`` (H, W); their payload words.

    Before anything is allocated: the strings are a list of bytes, their headers state ``size``, and
    each payload is long enough for H·W positions under the model (``check_payload_holds``).
    """
    if not isinstance(strings, (list, tuple)):
        raise InputError(f"strings must be a list of bytes, got {type(strings).__name__}")
    h, w = size
    check_decode_limit(len(strings) * h * w, channels, fmt.name)
    item_bits = min_item_bits(tables)

    def check_size(fields: tuple[int, ...]) -> None:
        if fields != (h, w):
            raise BitstreamError(
                f"{fmt.name} bitstream holds a {fields[0]}x{fields[1]} latent, decompress was "
                f"asked for {h}x{w}"
            )

    words = []
    for data in strings:
        _, wd = framing.unpack(data, fmt, fingerprint, check_size)
        check_payload_holds(h * w, item_bits, len(wd), fmt.name)
        words.append(wd)
    return words


def position_rows(t: Tensor) -> Tensor:
    """[B, C, H, W] -> [B*H*W, C]: the items (positions) and variables (channels) the circuits see."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def pass_rows(t: Tensor, mask: Tensor) -> Tensor:
    """[B, C, H, W] at the positions of ``mask`` [H, W] -> rows [B*n, C], image by image (one pass
    of a coding schedule, ``pc_prior.integrations.context.pass_masks``)."""
    return t[..., mask].permute(0, 2, 1).reshape(-1, t.shape[1])


def check_latent(owner: str, x: Any, channels: int, what: str = "latent") -> None:
    """Raise ``InputError`` unless ``x`` is a dense 4-D tensor [B, channels, H, W] of real values
    (integers or floats; ``pc_prior._checks.check_tensor``), never broadcast.

    The PC entropy models code image latents: one item per spatial position (H, W), the channels
    its variables. Other ranks (CompressAI's entropy models take 0 to 5 spatial dimensions) or
    another channel count would broadcast against the per-channel medians into a wrong shape.
    """
    check_tensor(f"{owner}: the {what}", x, "real", f"[B, {channels}, H, W]")
    shape = tuple(x.shape)
    if x.dim() != 4:
        raise InputError(
            f"{owner}: expected a {what} of shape [B, {channels}, H, W], got {shape} ({x.dim()}-D; "
            "only 4-D image latents [B, C, H, W] are supported)"
        )
    if shape[1] != channels:
        raise InputError(
            f"{owner}: expected a {what} of shape [B, {channels}, H, W], got {shape} ({shape[1]} "
            f"channels, the model has {channels})"
        )


class PassCondition(NamedTuple):
    """What one pass of a coding schedule codes its positions under (each None when unused)."""

    groups: Tensor | None = None  #: rows [B*n, C]: leaf groups (context groups, scale indexes)
    roots: Tensor | None = None  #: rows [B*n, K]: root weights (a state context's priors)
    means: Tensor | None = None  #: rows [B*n, C]: integer means, subtracted before coding


def straight_through(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` forward, ``surrogate``'s gradient backward: the training-mode rate of the PC
    entropy models is the coder's (the code length of the rounded latents, contexts included),
    trained through the gradient of a smooth relaxation of it."""
    return surrogate + (value - surrogate).detach()


class PCEntropyModel(NoCdfTables):
    """The state every PC entropy model shares: circuit, table buffers, fingerprint, compact storage.

    Subclasses call ``_init_tables`` in ``__init__``, implement ``_compute_tables`` (the integer
    tables of the fitted circuit) and ``_tables_entries`` (how many emission entries a loaded
    state dict would rebuild, checked before any allocation), and end their
    ``_load_from_state_dict`` with ``_finish_loading``.
    """

    FORMAT: framing.Format  # each subclass's strings: magic, version, header fields
    pc: Any
    _pc_parent: Tensor
    _pc_root: Tensor
    _pc_trans: Tensor
    _pc_emit: Tensor
    _pc_tables_sha256: Tensor
    _offset: Tensor

    def _init_tables(self, emit_dims: int) -> None:
        self.pc = None
        reg = self.register_buffer  # type: ignore[attr-defined]
        reg("_pc_parent", torch.zeros(0, dtype=torch.long))
        reg(DIGEST, torch.zeros(0, dtype=torch.uint8))
        reg("_pc_root", torch.zeros(0, dtype=torch.int32), persistent=False)
        reg("_pc_trans", torch.zeros(0, 0, 0, dtype=torch.int32), persistent=False)
        reg("_pc_emit", torch.zeros((0,) * emit_dims, dtype=torch.int32), persistent=False)
        self._pending_load: tuple | None = None
        self._tables_source: bytes | None = None  # _params_digest() the tables were built from
        self._tables_cache: tuple | None = None  # _require_tables: (watched tensors, tables, fp)
        # Tables are rebuilt once the circuit (a child module) has its parameters: after loading.
        self.register_load_state_dict_post_hook(PCEntropyModel._after_load)  # type: ignore[attr-defined]

    # -- state ----------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        """Whether the module holds a circuit (fitted, or loaded with a state dict)."""
        return self.pc is not None

    def untrained_parameters(self) -> list[nn.Parameter]:
        """The circuit's parameters that the coded rate (and so the training-mode rate) does not
        depend on under the fitted contexts: training leaves them as they are. None by default."""
        return []

    def _require_fitted(self) -> Any:
        if self.pc is None:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit_prior(model, ...) or .fit(...)"
            )
        return self.pc

    def _coding_tables(self) -> CodingTables:
        """The tables in the buffers (``NotFittedError`` if ``update()`` has not written them)."""
        if self._pc_root.numel() == 0 or self._offset.numel() == 0:
            raise NotFittedError(
                f"{type(self).__name__} has no coding tables: call update() (or model.update()) first"
            )
        return CodingTables(
            self._pc_parent.cpu().numpy(),
            self._pc_root.double(),
            self._pc_trans.double(),
            self._pc_emit.double(),
        )

    def _fingerprint(self, tables: CodingTables) -> bytes:
        """8 bytes naming this model in its strings: the tables and whatever else the coder reads
        (``_fingerprint_tensors``)."""
        h = hashlib.sha256(tables.fingerprint)
        for t in self._fingerprint_tensors():
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.digest()[:8]

    def _require_tables(self) -> tuple[CodingTables, bytes]:
        """The tables in the buffers and this model's fingerprint, cached while the same tensors
        (held here, so none can be freed and another take its place) are unchanged in place.
        Tables updated under ``torch.inference_mode`` have no version counter: rebuilt each call."""
        watched: tuple[Tensor, ...] = (
            self._pc_parent,
            self._pc_root,
            self._pc_trans,
            self._pc_emit,
        )
        watched += self._coded_state()
        if any(t.is_inference() for t in watched):  # updated under torch.inference_mode
            # (Lightning's validate): no version counters to watch, so no cache
            tables = self._coding_tables()
            return tables, self._fingerprint(tables)
        versions = tuple(t._version for t in watched)
        cache = self._tables_cache
        if (
            cache is None
            or len(cache[0]) != len(watched)
            or any(a is not b for a, b in zip(cache[0], watched))
            or cache[1] != versions
        ):
            tables = self._coding_tables()
            cache = self._tables_cache = (watched, versions, tables, self._fingerprint(tables))
        return cache[2], cache[3]

    def _frame(self, fingerprint: bytes, size: tuple[int, int], encoder: Any) -> bytes:
        """One string: this model's header (``FORMAT``, fingerprint, latent size) and the coder's words."""
        words = encoder.get_compressed().astype("<u4").tobytes()
        return framing.pack(self.FORMAT, fingerprint, size, words)

    def _unframe(
        self,
        strings: Any,
        fingerprint: bytes,
        size: tuple[int, int],
        tables: CodingTables,
        channels: int,
    ) -> list[np.ndarray]:
        """Every string's payload words, headers checked (``unpack_strings``)."""
        return unpack_strings(strings, self.FORMAT, fingerprint, size, tables, channels)

    # -- what each subclass adds ------------------------------------------------------------------
    def _compute_tables(self) -> CodingTables:
        """The integer coding tables of the fitted circuit."""
        raise NotImplementedError

    def _tables_entries(self) -> int:
        """How many emission entries a loaded state dict would rebuild (checked before allocating)."""
        raise NotImplementedError

    def _coded_state(self) -> tuple[Tensor, ...]:
        """The tensors besides the tables that the coder reads (their change re-fingerprints)."""
        raise NotImplementedError

    def _fingerprint_tensors(self) -> tuple[Tensor, ...]:
        """What the fingerprint hashes besides the tables (in the dtypes the strings were made with)."""
        raise NotImplementedError

    def _passes(self, h: int, w: int, device: torch.device) -> list[tuple[Tensor, str | None]]:
        """The coding schedule: each pass's positions [H, W] (bool) and lattice."""
        raise NotImplementedError

    def _alphabet(self, channels: int) -> tuple[Tensor, np.ndarray]:
        """Each channel's lowest directly coded symbol [C] (long, on the module's device) and
        alphabet size [C] (int64); the circuit's last leaf symbol is ESCAPE."""
        raise NotImplementedError

    def _pass_condition(
        self, k: int, mask: Tensor, lattice: str | None, symbols: Tensor, states: Tensor, side: Any
    ) -> PassCondition:
        """What pass ``k``'s positions are coded under, from ``symbols`` [B, C, H, W] (only the
        earlier passes' positions may be read: the decoder knows no others yet), the exact root
        states of the earlier passes, and the model's side input (a conditional's indexes)."""
        raise NotImplementedError

    # -- coding ---------------------------------------------------------------------------------
    def _encode_symbols(self, symbols: Tensor, side: Any = None) -> list[bytes]:
        """One string per batch item for integer ``symbols`` [B, C, H, W] (none for B = 0): the
        schedule's passes in order, each one loop over the channels batched over all its positions
        and images (``encode_columns``), closed by a CRC-32 of the item's symbols."""
        tables, fp = self._require_tables()
        b, c, h, w = symbols.shape
        if h * w == 0:
            raise InputError(f"cannot code an empty latent of spatial size {h}x{w}")
        if b == 0:  # as CompressAI's entropy models: no items, no strings
            return []
        dev, escape = tables.root.device, tables.emit.shape[-1] - 1
        lo, n_np = self._alphabet(c)
        n = torch.as_tensor(n_np, device=symbols.device)
        lo = lo.to(symbols.device)
        encs = [constriction.stream.queue.RangeEncoder() for _ in range(b)]
        states = torch.zeros(b, h, w, dtype=torch.long, device=symbols.device)
        for k, (mask, lattice) in enumerate(self._passes(h, w, symbols.device)):
            cond = self._pass_condition(k, mask, lattice, symbols, states, side)
            items = int(mask.sum())
            values = pass_rows(symbols, mask)
            if cond.means is not None:
                values = values - cond.means
                if values.numel() and int(values.abs().max()) > MAX_SYMBOL:
                    raise InputError(f"latent symbols exceed the coder's range |s| <= {MAX_SYMBOL}")
            rel = values - lo
            esc = (rel < 0) | (rel >= n)
            idx = torch.where(esc, torch.full_like(rel, escape), rel)
            inc = IncrementalConditionals(
                tables, b * items, dev, groups=cond.groups, roots=cond.roots
            )
            encode_columns(encs, inc, idx, items, rel.cpu().numpy(), esc.cpu().numpy(), n_np)
            if cond.roots is not None:
                states[:, mask] = inc.root_states().to(states.device).view(b, items)
        sym = symbols.cpu().numpy()
        for j, enc in enumerate(encs):
            encode_check(enc, sym[j])
        return [self._frame(fp, (h, w), enc) for enc in encs]

    def _decode_symbols(
        self, strings: Any, size: tuple[int, int], channels: int, side: Any = None
    ) -> Tensor:
        """``_encode_symbols``' strings back into the symbols [B, C, H, W] (long, on the module's
        device), every header checked before anything is allocated (``unpack_strings``), the same
        passes and conditions in the same order, each item's CRC-32 checked at its end."""
        tables, fp = self._require_tables()
        words = self._unframe(strings, fp, size, tables, channels)
        b, c, (h, w) = len(strings), channels, size
        at = self._offset.device
        if b == 0:  # no strings, as the encoder gives for an empty batch: an empty latent
            return torch.zeros(0, c, h, w, dtype=torch.long, device=at)
        dev, escape = tables.root.device, tables.emit.shape[-1] - 1
        lo, n_np = self._alphabet(c)
        lo = lo.to(at)
        decs = range_decoders(words)
        symbols = torch.zeros(b, c, h, w, dtype=torch.long, device=at)
        states = torch.zeros(b, h, w, dtype=torch.long, device=at)
        for k, (mask, lattice) in enumerate(self._passes(h, w, at)):
            cond = self._pass_condition(k, mask, lattice, symbols, states, side)
            items = int(mask.sum())
            inc = IncrementalConditionals(
                tables, b * items, dev, groups=cond.groups, roots=cond.roots
            )
            values = decode_columns(decs, inc, items, escape, n_np, self.FORMAT.name).to(at) + lo
            if cond.means is not None:
                values = values + cond.means
            symbols[..., mask] = values.view(b, items, c).permute(0, 2, 1)
            if cond.roots is not None:
                states[:, mask] = inc.root_states().to(at).view(b, items)
        sym = symbols.cpu().numpy()
        for j, dec in enumerate(decs):
            decode_check(dec, sym[j], f"{self.FORMAT.name} bitstream {j}")
        finish_decoding(decs, self.FORMAT.name)
        return symbols

    def _params_digest(self) -> bytes:
        """SHA-256 of what the tables are computed from: the circuit's state and the alphabet."""
        h = hashlib.sha256()
        state = dict(self.pc.state_dict()) if self.pc is not None else {}
        state["_offset"] = self._offset
        table = getattr(self, "scale_table", None)
        if isinstance(table, Tensor):
            state["scale_table"] = table
        for k in sorted(state):
            t = state[k].detach().cpu().contiguous()
            h.update(k.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(
                t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes()
            )
        return h.digest()

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        """Compact (parameters and the tables' digest), unless the parameters changed since the
        tables were built (training after ``update()``) or the tables were loaded as stored: then
        the tables themselves are saved too, so the file codes exactly as this module does."""
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        if self._pc_root.numel() and self._tables_source != self._params_digest():
            for name in TABLE_BUFFERS:
                buf = getattr(self, name)
                destination[prefix + name] = buf if keep_vars else buf.detach()

    def _set_tables(self, tables: CodingTables, built_here: bool = True) -> None:
        """Write ``tables`` (and their digest) into the buffers, on the module's device;
        ``built_here``: computed from the current parameters (else loaded as stored)."""
        self._tables_source = self._params_digest() if built_here else None
        dev = self._pc_parent.device
        self._pc_parent = torch.as_tensor(np.asarray(tables.parent), dtype=torch.long, device=dev)
        self._pc_root = tables.root.to(dev, torch.int32)
        self._pc_trans = tables.trans.to(dev, torch.int32)
        self._pc_emit = tables.emit.to(dev, torch.int32)
        digest = np.frombuffer(tables.digest, dtype=np.uint8).copy()
        self._pc_tables_sha256 = torch.from_numpy(digest).to(dev)

    # -- loading --------------------------------------------------------------------------------
    def _resize_for(self, state_dict: dict[str, Any], prefix: str, names: tuple[str, ...]) -> None:
        """``resize_buffers`` for ``names``, the tree and the digest."""
        resize_buffers(self, state_dict, prefix, (*names, "_pc_parent", DIGEST))  # type: ignore[arg-type]

    def _finish_loading(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        stored: CodingTables | None,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """End of ``_load_from_state_dict``: read the stored tables' keys here (not nn.Module) and
        leave the rest for ``_after_load``, which runs once the circuit's parameters are loaded."""
        for name in TABLE_BUFFERS:
            if prefix + name in unexpected_keys:
                unexpected_keys.remove(prefix + name)
        if stored is not None and prefix + DIGEST in missing_keys:  # stored tables need no digest
            missing_keys.remove(prefix + DIGEST)
        self._pending_load = (state_dict, prefix, stored, error_msgs)

    @staticmethod
    def _after_load(module: Any, _incompatible: Any) -> None:
        pending, module._pending_load = module._pending_load, None
        if pending is not None:
            module._tables_after_load(*pending)

    def _tables_after_load(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        stored: CodingTables | None,
        error_msgs: list[str],
    ) -> None:
        """Take the stored tables, or rebuild them from the loaded parameters and check the digest;
        a problem goes to ``error_msgs``, so ``load_state_dict`` raises naming it."""
        if any(m.startswith(prefix) for m in error_msgs) or self.pc is None:
            return
        if stored is not None:
            self._set_tables(stored, built_here=False)
            return
        want = state_dict.get(prefix + DIGEST)
        if want is None or want.numel() != 32:
            error_msgs.append(
                f"{prefix}: the state dict has circuit parameters but neither coding tables nor "
                f"their digest {prefix}{DIGEST}: save the model with pc-prior's save_codec"
            )
            return
        entries = self._tables_entries()
        if entries > MAX_TABLE_ENTRIES:
            error_msgs.append(
                f"{prefix}: the state dict asks for {entries} coding-table entries, more than the "
                f"plausible {MAX_TABLE_ENTRIES} (corrupted alphabet or scale table?)"
            )
            return
        try:
            tables = self._compute_tables()
        except (PCPriorError, ValueError) as e:
            error_msgs.append(f"{prefix}: cannot rebuild the coding tables: {e}")
            return
        if tables.digest != bytes(want.cpu().to(torch.uint8).tolist()):
            error_msgs.append(
                f"{prefix}: the coding tables rebuilt from the saved parameters differ from the ones "
                "the model was saved with (SHA-256 mismatch): the parameters are corrupted, or the "
                "file was written by a pc-prior that builds other tables; re-save it with "
                "save_codec(..., tables=True) where it was made"
            )
            return
        self._set_tables(tables)
