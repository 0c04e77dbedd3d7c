"""``PCEntropyBottleneck``: a drop-in for CompressAI's ``EntropyBottleneck`` backed by an HCLT.

What is modelled. A latent ``y`` [B, C, H, W] is rounded around per-channel medians (as
CompressAI does), giving integer symbols. The circuit models the *joint* of the C channels at one
spatial position (D = C variables); all positions of all images are i.i.d. items of that joint,
so coding is one loop over the C variables, batched over every position of every image.

Alphabets. Each channel has a contiguous alphabet ``lo_c .. lo_c + n_c - 1`` learned from data;
the circuit's categorical leaves have ``V = max(n_c) + 1`` symbols, the last being ESCAPE. A
symbol outside its channel's alphabet is coded as ESCAPE by the circuit, followed by an exact
Elias-gamma style bypass code of its value (side, bit length, raw bits), so nothing is clipped.

Determinism. Compression uses only the integer tables in registered buffers (``_pc_root``,
``_pc_trans``, ``_pc_emit``, ``_pc_parent``, plus ``_offset``/``_cdf_length`` for the alphabets),
written by ``update()`` like CompressAI's CDF tables, and ``pc_prior.coding``'s exact integer
conditionals; a saved and reloaded state dict therefore decodes bit-exactly on any device.

Rate in ``forward``. The joint log-probability of a position is spread evenly over its C
channels (likelihood_c = p(position)^(1/C)), so ``-sum(log2 likelihoods)`` is exactly the
model's code length, which is all CompressAI's rate term uses.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import constriction
import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck
from torch import Tensor

from ..coding import BitstreamError, CodingTables, IncrementalConditionals, coding_tables
from ..hclt import HCLT
from ..structure import Tree
from ..training import fit_em
from . import bitstream
from .leaves import DiscretizedLogisticTree

__all__ = ["PCEntropyBottleneck", "MAGIC", "FORMAT_VERSION"]

MAGIC = b"PB"
FORMAT_VERSION = 2  # 2: compact header (pc_prior.integrations.bitstream)
MAX_SYMBOL = 2**31 - 1  # |symbol| bound of the bypass code (bit length <= 33)
_LEN_ALPHABET = 34
LN2 = math.log(2.0)


# -- bypass (escape) code -----------------------------------------------------------------------
def _bit_lengths(v: np.ndarray) -> np.ndarray:
    """floor(log2(v)) for int64 v >= 1, exactly (no float log)."""
    return (v[:, None] >= (np.int64(1) << np.arange(1, _LEN_ALPHABET, dtype=np.int64))).sum(1)


def _escape_split(rel: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Side (1 above the alphabet, 0 below) and magnitude e >= 0 of out-of-alphabet symbols."""
    above = rel >= n
    return above.astype(np.int32), np.where(above, rel - n, -1 - rel)


def _encode_escapes(enc: Any, rel: np.ndarray, n: np.ndarray) -> None:
    side, e = _escape_split(rel, n)
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
            enc.encode(chunk.astype(np.int32), constriction.stream.model.Uniform(),
                       (np.int64(1) << b[sel]).astype(np.int32))


def _decode_escapes(dec: Any, n: np.ndarray) -> np.ndarray:
    m = len(n)
    side = dec.decode(constriction.stream.model.Uniform(2), m).astype(np.int64)
    nbits = dec.decode(constriction.stream.model.Uniform(_LEN_ALPHABET), m).astype(np.int64)
    r = np.zeros(m, dtype=np.int64)
    for shift in (0, 16):
        b = np.clip(nbits - shift, 0, 16)
        sel = b > 0
        if sel.any():
            chunk = dec.decode(constriction.stream.model.Uniform(), (np.int64(1) << b[sel]).astype(np.int32))
            r[sel] |= chunk.astype(np.int64) << shift
    e = (np.int64(1) << nbits) + r - 1
    return np.where(side == 1, n + e, -1 - e)


def _escape_bits(rel: Tensor, n: Tensor) -> Tensor:
    """Bypass code length in bits of out-of-alphabet symbols (same layout as ``_encode_escapes``)."""
    e = torch.where(rel >= n, rel - n, -1 - rel)
    nbits = torch.floor(torch.log2((e + 1).double()))
    return 1.0 + math.log2(_LEN_ALPHABET) + nbits


def _categorical() -> Any:
    return constriction.stream.model.Categorical(perfect=False)


def _probabilities(w: Tensor) -> np.ndarray:
    return (w / w.sum(-1, keepdim=True)).cpu().numpy()


def encode_symbols(encoders: list[Any], inc: IncrementalConditionals, idx: Tensor, rel: np.ndarray,
                   esc: np.ndarray, items_per_string: int, alphabet: np.ndarray) -> None:
    """Range-encode the items of every string, one variable at a time in ``inc.order``.

    String j (``encoders[j]``) takes items ``j*items_per_string ..``; ``idx`` [N, D] are the coded
    symbols (ESCAPE for values outside variable i's ``0 .. alphabet[i] - 1``), ``rel`` [N, D] the
    alphabet-relative values and ``esc`` [N, D] the escape mask; an escaped value is followed by
    its exact bypass code. The counterpart of ``decode_symbols``.
    """
    p = items_per_string
    idx_np = idx.cpu().numpy().astype(np.int32)
    family = _categorical()
    for i in inc.order:
        probs = _probabilities(inc.weights())
        for j, enc in enumerate(encoders):
            sl = slice(j * p, (j + 1) * p)
            enc.encode(np.ascontiguousarray(idx_np[sl, i]), family, probs[sl])
            e = esc[sl, i]
            if e.any():
                _encode_escapes(enc, rel[sl, i][e], np.full(int(e.sum()), alphabet[i]))
        inc.observe(idx[:, i])


def range_decoders(words: list[np.ndarray]) -> list[Any]:
    """One constriction range decoder per string's payload words."""
    return [constriction.stream.queue.RangeDecoder(wd) for wd in words]


def finish_decoding(decoders: list[Any]) -> None:
    """Raise ``BitstreamError`` if a string holds data beyond what was decoded."""
    for dec in decoders:
        if dec.maybe_exhausted() is False:
            raise BitstreamError("bitstream has trailing data beyond what the model decodes")


def decode_symbols(decoders: list[Any], inc: IncrementalConditionals, items_per_string: int,
                   escape: int, alphabet: np.ndarray) -> Tensor:
    """Range-decode the items of every string, one variable at a time in ``inc.order``.

    String j (``decoders[j]``) holds items ``j*items_per_string ..``; variable i's symbol
    ``escape`` is followed by the exact bypass code of a value outside ``0 .. alphabet[i] - 1``.
    Returns the alphabet-relative values [B * items_per_string, D] (int64). Impossible or
    inconsistent data raise ``BitstreamError`` (call ``finish_decoding`` once every pass is
    decoded). This is the one decoding loop of the integrations' entropy models.
    """
    p = items_per_string
    n = len(decoders) * p
    rel = torch.empty(n, len(alphabet), dtype=torch.long)
    family = _categorical()
    try:
        for i in inc.order:
            probs = _probabilities(inc.weights())
            col = np.empty(n, dtype=np.int64)
            val = np.empty(n, dtype=np.int64)
            for j, dec in enumerate(decoders):
                sl = slice(j * p, (j + 1) * p)
                col[sl] = dec.decode(family, probs[sl])
                val[sl] = col[sl]
                e = col[sl] == escape
                if ((col[sl] >= alphabet[i]) & ~e).any():
                    raise BitstreamError(f"bitstream decodes to a symbol outside variable {i}'s alphabet")
                if e.any():
                    val[sl][e] = _decode_escapes(dec, np.full(int(e.sum()), alphabet[i]))
            rel[:, i] = torch.from_numpy(val)
            inc.observe(torch.from_numpy(col))
    except BitstreamError:
        raise
    except Exception as err:  # the range decoder rejects impossible data
        raise BitstreamError(f"bitstream could not be decoded: {err}") from err
    return rel


class PCEntropyBottleneck(EntropyBottleneck):
    """Entropy bottleneck whose prior is a hidden Chow-Liu tree over the channels at a position.

    Same interface as ``EntropyBottleneck`` (``forward``, ``compress``, ``decompress``,
    ``update``, ``loss``), so CompressAI models use it unchanged. Fit it with ``fit`` (or
    ``pc_prior.integrations.fit_prior``), then ``update()`` (``fit`` does) before coding.
    ``quantization`` selects the training-mode rounding: ``"noise"`` (uniform noise on the
    output, CompressAI's default) or ``"ste"`` (straight-through rounding).
    """

    def __init__(self, channels: int, *args: Any, quantization: str = "noise", **kwargs: Any) -> None:
        super().__init__(channels, *args, **kwargs)
        if quantization not in ("noise", "ste"):
            raise ValueError(f'quantization must be "noise" or "ste", got {quantization!r}')
        self.quantization = quantization
        # The circuit replaces the factorized density; only ``quantiles`` (medians) is kept.
        del self.matrices, self.biases, self.factors
        self.pc: HCLT | DiscretizedLogisticTree | None = None
        self.register_buffer("_pc_parent", torch.zeros(0, dtype=torch.long))
        self.register_buffer("_pc_root", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("_pc_trans", torch.zeros(0, 0, 0, dtype=torch.int32))
        self.register_buffer("_pc_emit", torch.zeros(0, 0, 0, dtype=torch.int32))

    # -- state ----------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.pc is not None

    @property
    def num_symbols(self) -> int:
        """V: the circuit's leaf alphabet size (largest channel alphabet + ESCAPE)."""
        if self.pc is None:
            raise RuntimeError("PCEntropyBottleneck is not fitted: call fit_prior(model, ...) or .fit(values)")
        return self.pc.num_cats

    def _medians(self) -> Tensor:
        return self.quantiles[:, 0, 1].detach()

    def _require_fitted(self) -> HCLT | DiscretizedLogisticTree:
        if self.pc is None:
            raise RuntimeError("PCEntropyBottleneck is not fitted: call fit_prior(model, ...) or .fit(values)")
        return self.pc

    def _require_tables(self) -> CodingTables:
        if self._pc_root.numel() == 0 or self._offset.numel() == 0:
            raise RuntimeError("PCEntropyBottleneck has no coding tables: call update() (or model.update()) first")
        return CodingTables(
            self._pc_parent.cpu().numpy(), self._pc_root.double(), self._pc_trans.double(), self._pc_emit.double()
        )

    def _fingerprint(self, tables: CodingTables) -> bytes:
        h = hashlib.sha256(tables.fingerprint)
        for t in (self._offset.to(torch.int32), self._cdf_length.to(torch.int32), self._medians().float()):
            h.update(t.cpu().contiguous().numpy().tobytes())
        return h.digest()[:8]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # noqa: ANN001
        """Resize the circuit's buffers and rebuild the circuit to the shapes being loaded."""
        for name in ("_pc_parent", "_pc_root", "_pc_trans", "_pc_emit", "_offset", "_cdf_length", "_quantized_cdf"):
            key = prefix + name
            if key in state_dict:
                buf = getattr(self, name)
                setattr(self, name, torch.empty(state_dict[key].shape, dtype=buf.dtype, device=buf.device))
        for key, cls in (("pc.emission_logits", HCLT), ("pc.loc", DiscretizedLogisticTree)):
            if prefix + key not in state_dict or prefix + "_pc_emit" not in state_dict:
                continue
            parent = state_dict[prefix + "_pc_parent"]
            d, k, v = state_dict[prefix + "_pc_emit"].shape
            dt = state_dict[prefix + "pc.transition_logits"].dtype
            if len(parent) != d:
                error_msgs.append(f"{prefix}_pc_parent has {len(parent)} entries, the circuit has {d} variables")
            else:
                self.pc = cls(Tree(tuple(int(p) for p in parent)), v, k, dtype=dt).to(self.quantiles.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # -- fitting --------------------------------------------------------------------------------
    def symbols(self, y: Tensor) -> Tensor:
        """Integer symbols round(y - median) [B, C, H, W] (int64), checked finite and in range."""
        if y.dim() != 4 or y.shape[1] != self.channels:
            raise ValueError(f"expected a latent of shape [B, {self.channels}, H, W], got {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError("latent contains NaN or infinite values")
        s = torch.round(y.detach() - self._medians().view(1, -1, 1, 1))
        if s.numel() and float(s.abs().max()) > MAX_SYMBOL:
            raise ValueError(f"latent symbols exceed the coder's range |s| <= {MAX_SYMBOL}")
        return s.long()

    def _indices(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Leaf indices (ESCAPE = V-1), alphabet-relative values and the escape mask; s [..., C]."""
        lo, n = self._offset.long(), self._cdf_length.long()
        rel = s - lo
        esc = (rel < 0) | (rel >= n)
        return torch.where(esc, torch.full_like(rel, self.num_symbols - 1), rel), rel, esc

    def fit(
        self, values: Tensor, num_latents: int = 16, *, tail: float = 1e-4, max_alphabet: int = 64,
        max_items: int | None = 60000, epochs: int = 4, batch_size: int = 1024, full_batch_epochs: int = 1,
        step_size: float | tuple[float, float] = (0.1, 0.01), pseudocount: float = 0.1,
        structure: str = "chow-liu", leaves: str = "categorical", finetune_steps: int = 300,
        lr: float = 0.01, seed: int = 0, progress: bool = True,
    ) -> list[dict]:
        """Learn alphabets, structure and parameters from latent values [N, C] (one row per position).

        Alphabets cover the [tail, 1 - tail] quantiles of each channel's symbols (at most
        ``max_alphabet`` symbols); everything else is escaped. ``max_items`` random positions are
        used for structure learning and EM (None: all). ``structure``: ``"chow-liu"`` (learned
        tree) or ``"star"`` (every channel a child of the highest-variance one: a generalized
        mixture of K factorized models). ``leaves="logistic"`` then converts the categorical
        leaves to discretized logistics (``DiscretizedLogisticTree``) and refines the whole
        circuit by Adam on noisy values for ``finetune_steps`` steps; use it for joint
        fine-tuning with the codec. Ends with ``update(force=True)``.
        """
        if leaves not in ("categorical", "logistic"):
            raise ValueError(f'leaves must be "categorical" or "logistic", got {leaves!r}')
        if structure not in ("chow-liu", "star"):
            raise ValueError(f'structure must be "chow-liu" or "star", got {structure!r}')
        if values.dim() != 2 or values.shape[1] != self.channels:
            raise ValueError(f"values must have shape [N, {self.channels}], got {tuple(values.shape)}")
        if len(values) == 0:
            raise ValueError("values is empty: no latent positions to fit on")
        dev = self.quantiles.device
        s = self.symbols(values.to(dev).T[None, :, :, None])[0, :, :, 0].T  # [N, C]
        g = torch.Generator().manual_seed(seed)
        if max_items is not None and len(s) > max_items:
            s = s[torch.randperm(len(s), generator=g)[:max_items].to(dev)]
        srt = s.sort(0).values  # per-channel order statistics (torch.quantile caps input size)
        lo = srt[int(math.floor(tail * (len(s) - 1)))]
        hi = srt[int(math.ceil((1.0 - tail) * (len(s) - 1)))]
        width = hi - lo + 1
        over = width > max_alphabet  # keep the central max_alphabet symbols around the median 0
        lo = torch.where(over, torch.clamp(lo, min=-(max_alphabet // 2)), lo)
        lo = torch.where(over, torch.minimum(lo, hi - max_alphabet + 1), lo)
        n = torch.minimum(hi - lo + 1, torch.full_like(hi, max_alphabet))
        self._offset = lo.to(torch.int32)
        self._cdf_length = n.to(torch.int32)
        self._quantized_cdf = torch.zeros(self.channels, 0, dtype=torch.int32, device=dev)
        v = int(n.max()) + 1
        self.pc = None  # num_symbols comes from the new circuit below
        rel = s - lo
        esc = (rel < 0) | (rel >= n)
        idx = torch.where(esc, torch.full_like(rel, v - 1), rel)
        if structure == "star":
            hub = int(idx.double().var(0).argmax()) if len(idx) > 1 else 0
            pc = HCLT(Tree(tuple(-1 if i == hub else hub for i in range(self.channels))), v, num_latents)
            pc.init_params(idx.cpu(), seed=seed)
            pc = pc.to(dev)
        else:
            pc = HCLT.from_data(idx.cpu(), v, num_latents, seed=seed).to(dev)
        hist = fit_em(pc, idx, epochs=epochs, batch_size=batch_size, full_batch_epochs=full_batch_epochs,
                      step_size=step_size, pseudocount=pseudocount, seed=seed, progress=progress)
        if leaves == "logistic":
            pc = DiscretizedLogisticTree.from_hclt(pc, lo, n)
            u = values.to(dev) - self._medians()
            opt = torch.optim.Adam(pc.parameters(), lr=lr)
            for step in range(finetune_steps):
                rows = u[torch.randint(len(u), (batch_size,), generator=g).to(dev)]
                rows = rows + (torch.rand(rows.shape, generator=g, dtype=rows.dtype) - 0.5).to(dev)
                loss = -pc.log_prob_values(rows).mean() / (self.channels * LN2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            hist.append({"epoch": len(hist) + 1, "mode": "adam-logistic", "train_bpd": float(loss)})
        self.pc = pc
        self.update(force=True)
        return hist

    # -- CompressAI interface -------------------------------------------------------------------
    def update(self, force: bool = False, update_quantiles: bool = False) -> bool:
        """Write the circuit's integer coding tables into the buffers; False if present and not forced."""
        if self._pc_root.numel() > 0 and not force:
            return False
        pc = self._require_fitted()
        t = coding_tables(pc)
        dev = self.quantiles.device
        self._pc_parent = torch.as_tensor(np.asarray(t.parent), dtype=torch.long, device=dev)
        self._pc_root = t.root.to(dev, torch.int32)
        self._pc_trans = t.trans.to(dev, torch.int32)
        self._pc_emit = t.emit.to(dev, torch.int32)
        with torch.no_grad():  # quantiles describe the coded support, as in CompressAI
            m = self._medians()
            self.quantiles[:, 0, 0] = m + self._offset.to(m.dtype) - 0.5
            self.quantiles[:, 0, 2] = m + (self._offset + self._cdf_length).to(m.dtype) - 0.5
        return True

    def loss(self) -> Tensor:
        """Aux loss: L1 distance of the outer quantiles from the alphabet's edges (0 once in sync).

        The circuit needs no auxiliary training; the loss keeps ``quantiles`` (which CompressAI
        aux optimizers train) describing the directly coded support. Medians are left alone.
        """
        if self._offset.numel() == 0:
            return (self.quantiles[:, 0, [0, 2]] - self.quantiles[:, 0, [0, 2]].detach()).abs().sum()
        m = self._medians()
        target = torch.stack([m + self._offset - 0.5, m + self._offset + self._cdf_length - 0.5], -1)
        return (self.quantiles[:, 0, [0, 2]] - target).abs().sum()

    def log_likelihood(self, s: Tensor) -> Tensor:
        """Code length model: log p of each position's symbols s [B, C, H, W] in nats, [B, H, W]."""
        pc = self._require_fitted()
        b, c, h, w = s.shape
        rows = s.permute(0, 2, 3, 1).reshape(-1, c)
        idx, rel, esc = self._indices(rows)
        leaf = pc.log_emissions().transpose(1, 2)[torch.arange(c, device=idx.device), idx]  # [N, C, K]
        logp = pc.upward(leaf)[0]
        bits = torch.where(esc, _escape_bits(rel, self._cdf_length.long()), 0.0).sum(-1)
        return (logp - bits.to(logp.dtype) * LN2).view(b, h, w)

    def forward(self, x: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        """(x_hat, likelihoods [B, C, H, W]); the product over channels is p(position)."""
        if training is None:
            training = self.training
        med = self._medians().view(1, -1, 1, 1).to(x.dtype)
        rounded = torch.round(x - med) + med
        if not training:
            out = rounded
        elif self.quantization == "noise":
            out = x + torch.empty_like(x).uniform_(-0.5, 0.5)
        else:
            out = x + (rounded - x).detach()
        if training and isinstance(self.pc, DiscretizedLogisticTree):  # smooth in x: the rate trains g_a
            b, c, h, w = out.shape
            u = (out - med).permute(0, 2, 3, 1).reshape(-1, c)
            logp = self.pc.log_prob_values(u).view(b, h, w)
        else:
            logp = self.log_likelihood(self.symbols(out))
        lik = torch.exp(logp / self.channels)[:, None].expand(-1, self.channels, -1, -1)
        return out, lik.to(x.dtype)

    def compress(self, x: Tensor) -> list[bytes]:
        """One bitstream per batch item for the latent x [B, C, H, W]."""
        tables = self._require_tables()
        s = self.symbols(x)
        b, c, h, w = s.shape
        if h * w == 0:
            raise ValueError(f"cannot code an empty latent of spatial size {h}x{w}")
        p = h * w
        idx, rel, esc = self._indices(s.permute(0, 2, 3, 1).reshape(-1, c))
        dev = tables.root.device
        inc = IncrementalConditionals(tables, b * p, dev)
        n_np = self._cdf_length.cpu().numpy().astype(np.int64)
        encs = [constriction.stream.queue.RangeEncoder() for _ in range(b)]
        encode_symbols(encs, inc, idx, rel.cpu().numpy(), esc.cpu().numpy(), p, n_np)
        fp = self._fingerprint(tables)
        out = []
        for enc in encs:
            out.append(bitstream.pack(MAGIC, FORMAT_VERSION, fp, (h, w), enc.get_compressed().astype("<u4").tobytes()))
        return out

    def decompress(self, strings: list[bytes], size: tuple[int, ...] | torch.Size) -> Tensor:
        """Decode ``compress``'s strings into the dequantized latent [B, C, H, W] (float32)."""
        if not isinstance(strings, (list, tuple)):
            raise TypeError(f"strings must be a list of bytes, got {type(strings).__name__}")
        size = tuple(int(v) for v in size)
        if len(size) != 2:
            raise ValueError(f"size must be the latent's (H, W), got {size}")
        tables = self._require_tables()
        fp = self._fingerprint(tables)
        words = [bitstream.unpack(d, MAGIC, FORMAT_VERSION, fp, size, "PCEntropyBottleneck") for d in strings]
        b, c, (h, w) = len(strings), self.channels, size
        p = h * w
        dev = tables.root.device
        v = tables.emit.shape[-1]
        n_np = self._cdf_length.cpu().numpy().astype(np.int64)
        decs = range_decoders(words)
        rel = decode_symbols(decs, IncrementalConditionals(tables, b * p, dev), p, v - 1, n_np)
        finish_decoding(decs)
        s = rel.to(self._offset.device) + self._offset.long()
        # Fresh standard-stride output: convolutions pick kernels by stride, and a channels-last
        # view (even of 1x1 latents) would make the synthesis differ from the forward pass.
        out = torch.empty(b, c, h, w, dtype=torch.float32, device=self._offset.device)
        out.copy_(s.view(b, h, w, c).permute(0, 3, 1, 2))
        return out.add_(self._medians().float().view(1, -1, 1, 1))
