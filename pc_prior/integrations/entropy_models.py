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

from .. import framing
from .._checks import check_choice, check_int, check_real, check_step_size, fit_keywords
from ..coding import (
    MAX_SYMBOL,
    CodingTables,
    IncrementalConditionals,
    check_decode_limit,
    check_payload_holds,
    coding_tables,
    decode_columns,
    encode_columns,
    escape_bits,
    finish_decoding,
    min_item_bits,
    range_decoders,
)
from ..errors import (
    BitstreamError,
    CheckpointError,
    InputError,
    NotFittedError,
    UnsupportedModelError,
)
from ..hclt import HCLT
from ..structure import Tree
from ..training import fit_em
from .leaves import DiscretizedLogisticTree

__all__ = ["PCEntropyBottleneck"]

FORMAT = framing.BOTTLENECK  # magic, version and header fields of this model's strings
STRUCTURES = ("chow-liu", "star")  # circuit structures over the channels
LN2 = math.log(2.0)


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


def check_latent_shape(owner: str, x: Any, channels: int, what: str = "latent") -> None:
    """Raise ``InputError`` unless ``x`` is a 4-D tensor [B, channels, H, W] (never broadcast).

    The PC entropy models code image latents: one item per spatial position (H, W), the channels
    its variables. Other ranks (CompressAI's entropy models take 0 to 5 spatial dimensions) or
    another channel count would broadcast against the per-channel medians into a wrong shape.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(
            f"{owner}: expected a {what} tensor of shape [B, {channels}, H, W], got {type(x).__name__}"
        )
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


def _check_size(size: Any) -> tuple[int, int]:
    """A latent size (H, W): a sequence (tuple, list, ``torch.Size``) of two positive integers."""
    if not isinstance(size, (tuple, list, torch.Size)):
        raise InputError(
            f"size must be the latent's (H, W), a sequence of two positive integers, "
            f"got {type(size).__name__} {size!r}"
        )
    if len(size) != 2:
        raise InputError(
            f"size must be the latent's (H, W), two positive integers, got {len(size)} values {tuple(size)}"
        )
    return check_int("size[0] (H)", size[0], 1), check_int("size[1] (W)", size[1], 1)  # type: ignore[return-value]


def loaded_tables(
    state_dict: dict[str, Any], prefix: str, error_msgs: list[str]
) -> CodingTables | None:
    """The validated coding tables (``_pc_parent``, ``_pc_root``, ``_pc_trans``, ``_pc_emit``) of a PC
    entropy model's state dict, or None if it has none; a problem goes to ``error_msgs``, so
    ``load_state_dict`` fails naming it instead of coding with tables it should not trust."""
    keys = [prefix + k for k in ("_pc_parent", "_pc_root", "_pc_trans", "_pc_emit")]
    present = [k in state_dict for k in keys]
    if not any(present) or (all(present) and state_dict[keys[3]].numel() == 0):
        return None
    if not all(present):
        error_msgs.append(f"{prefix}: the state dict has only some of the coding tables {keys}")
        return None
    try:
        return CodingTables.validated(*(state_dict[k] for k in keys), where=prefix or "state dict")
    except CheckpointError as e:
        error_msgs.append(str(e))
        return None


class NoCdfTables:
    """CompressAI's CDF tables, read only by code that runs its C++ coder: a circuit has none, so
    every such read raises ``UnsupportedModelError`` instead of handing the coder empty tables (a
    segfault). The PC entropy models keep their alphabets in the private ``_offset``/``_cdf_length``."""

    @property
    def quantized_cdf(self) -> Tensor:
        raise no_cdf_tables(self, "quantized_cdf")

    @property
    def offset(self) -> Tensor:
        raise no_cdf_tables(self, "offset")

    @property
    def cdf_length(self) -> Tensor:
        raise no_cdf_tables(self, "cdf_length")

    def _pmf_to_cdf(self, *args: Any, **kwargs: Any) -> Tensor:
        raise no_cdf_tables(self, "_pmf_to_cdf")

    def _check_cdf_size(self) -> None:  # EntropyModel.compress/decompress: the C++ coder's path
        raise no_cdf_tables(self, "_quantized_cdf")


class PCEntropyBottleneck(NoCdfTables, EntropyBottleneck):
    """Entropy bottleneck whose prior is a hidden Chow-Liu tree over the channels at a position.

    Same interface as ``EntropyBottleneck`` (``forward``, ``compress``, ``decompress``,
    ``update``, ``loss``), so CompressAI models use it unchanged. Fit it with ``fit`` (or
    ``pc_prior.integrations.fit_prior``), then ``update()`` (``fit`` does) before coding.
    ``quantization`` selects the training-mode rounding: ``"noise"`` (uniform noise on the
    output, CompressAI's default) or ``"ste"`` (straight-through rounding).
    """

    def __init__(
        self, channels: int, *args: Any, quantization: str = "noise", **kwargs: Any
    ) -> None:
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
        return self._require_fitted().num_cats

    def _medians(self) -> Tensor:
        return self.quantiles[:, 0, 1].detach()

    def _require_fitted(self) -> HCLT | DiscretizedLogisticTree:
        if self.pc is None:
            raise NotFittedError(
                "PCEntropyBottleneck is not fitted: call fit_prior(model, ...) or .fit(values)"
            )
        return self.pc

    def _require_tables(self) -> CodingTables:
        if self._pc_root.numel() == 0 or self._offset.numel() == 0:
            raise NotFittedError(
                "PCEntropyBottleneck has no coding tables: call update() (or model.update()) first"
            )
        return CodingTables(
            self._pc_parent.cpu().numpy(),
            self._pc_root.double(),
            self._pc_trans.double(),
            self._pc_emit.double(),
        )

    def _fingerprint(self, tables: CodingTables) -> bytes:
        h = hashlib.sha256(tables.fingerprint)
        for t in (
            self._offset.to(torch.int32),
            self._cdf_length.to(torch.int32),
            self._medians().float(),
        ):
            h.update(t.cpu().contiguous().numpy().tobytes())
        return h.digest()[:8]

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """Validate the coding tables being loaded, then resize the buffers and rebuild the circuit."""
        tables = loaded_tables(state_dict, prefix, error_msgs)
        if tables is not None:
            d, _, v = tables.emit.shape
            off, n = state_dict.get(prefix + "_offset"), state_dict.get(prefix + "_cdf_length")
            if (
                d != self.channels
                or off is None
                or n is None
                or tuple(off.shape) != (d,)
                or tuple(n.shape) != (d,)
                or off.dtype.is_floating_point
                or n.dtype.is_floating_point
            ):
                error_msgs.append(
                    f"{prefix}: the coding tables are for {d} channels, the alphabets (_offset, "
                    f"_cdf_length) must be integer vectors of {self.channels}"
                )
                return
            if int(n.min()) < 1 or int(n.max()) > v - 1 or int(off.abs().max()) > MAX_SYMBOL:
                error_msgs.append(
                    f"{prefix}_cdf_length must lie in 1..{v - 1} and |_offset| <= {MAX_SYMBOL}"
                )
                return
        elif any(m.startswith(prefix) for m in error_msgs):
            return
        for name in (
            "_pc_parent",
            "_pc_root",
            "_pc_trans",
            "_pc_emit",
            "_offset",
            "_cdf_length",
            "_quantized_cdf",
        ):
            key = prefix + name
            if key in state_dict:
                buf = getattr(self, name)
                setattr(
                    self,
                    name,
                    torch.empty(state_dict[key].shape, dtype=buf.dtype, device=buf.device),
                )
        for key, cls in (("pc.emission_logits", HCLT), ("pc.loc", DiscretizedLogisticTree)):
            if prefix + key not in state_dict or prefix + "_pc_emit" not in state_dict:
                continue
            parent = state_dict[prefix + "_pc_parent"]
            d, k, v = state_dict[prefix + "_pc_emit"].shape
            dt = state_dict[prefix + "pc.transition_logits"].dtype
            if len(parent) != d:
                error_msgs.append(
                    f"{prefix}_pc_parent has {len(parent)} entries, the circuit has {d} variables"
                )
            else:
                self.pc = cls(Tree(tuple(int(p) for p in parent)), v, k, dtype=dt).to(
                    self.quantiles.device
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # -- fitting --------------------------------------------------------------------------------
    def _check_latent(self, y: Any) -> None:
        """``InputError`` unless y is [B, channels, H, W]: the one shape check of every entry point."""
        check_latent_shape(type(self).__name__, y, self.channels)

    def symbols(self, y: Tensor) -> Tensor:
        """Integer symbols round(y - median) [B, C, H, W] (int64), checked finite and in range."""
        self._check_latent(y)
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

    @classmethod
    def check_fit_args(cls, **kwargs: Any) -> dict[str, Any]:
        """Check keyword arguments of ``fit`` without any data: names, types and ranges.

        Returns every keyword argument of ``fit`` (defaults filled in, numbers as int/float);
        raises ``InputError`` naming the first bad one. ``fit`` and ``fit_prior`` call it first,
        so a bad argument fails before latents are collected or a structure is learned.
        """
        a = fit_keywords(cls, cls.fit, ("values",), kwargs)
        check_choice("leaves", a["leaves"], ("categorical", "logistic"))
        check_choice("structure", a["structure"], STRUCTURES)
        a["num_latents"] = check_int("num_latents", a["num_latents"], 1)
        a["tail"] = check_real("tail", a["tail"], 0.0, 0.5, high_open=True)
        a["max_alphabet"] = check_int("max_alphabet", a["max_alphabet"], 1)
        a["max_items"] = check_int("max_items", a["max_items"], 1, allow_none=True)
        a["epochs"] = check_int("epochs", a["epochs"], 0)
        a["batch_size"] = check_int("batch_size", a["batch_size"], 1)
        a["full_batch_epochs"] = check_int("full_batch_epochs", a["full_batch_epochs"], 0)
        a["step_size"] = check_step_size(a["step_size"])
        a["pseudocount"] = check_real("pseudocount", a["pseudocount"], 0.0)
        a["finetune_steps"] = check_int("finetune_steps", a["finetune_steps"], 0)
        a["lr"] = check_real("lr", a["lr"], 0.0, low_open=True)
        a["seed"] = check_int("seed", a["seed"])
        return a

    def fit(
        self,
        values: Tensor,
        num_latents: int = 16,
        *,
        tail: float = 1e-4,
        max_alphabet: int = 64,
        max_items: int | None = 60000,
        epochs: int = 4,
        batch_size: int = 1024,
        full_batch_epochs: int = 1,
        step_size: float | tuple[float, float] = (0.1, 0.01),
        pseudocount: float = 0.1,
        structure: str = "chow-liu",
        leaves: str = "categorical",
        finetune_steps: int = 300,
        lr: float = 0.01,
        seed: int = 0,
        progress: bool = True,
    ) -> list[dict]:
        """Learn alphabets, structure and parameters from latent values [N, C] (one row per position).

        Alphabets cover the [tail, 1 - tail] quantiles of each channel's symbols (at most
        ``max_alphabet`` symbols); everything else is escaped. ``max_items`` random positions are
        used for structure learning and EM (None: all). ``structure``: ``"chow-liu"`` (learned
        tree) or ``"star"`` (every channel a child of the highest-variance one: a generalized
        mixture of K factorized models). ``leaves="logistic"`` then converts the categorical
        leaves to discretized logistics (``DiscretizedLogisticTree``) and refines the whole
        circuit by Adam on noisy values for ``finetune_steps`` steps; use it for joint
        fine-tuning with the codec. Ends with ``update(force=True)``. Bad arguments raise
        ``InputError`` before any work (``check_fit_args``).
        """
        a = self.check_fit_args(
            **{k: v for k, v in locals().items() if k not in ("self", "values", "__class__")}
        )
        max_items, tail, lr, step_size, pseudocount = (
            a["max_items"],
            a["tail"],
            a["lr"],
            a["step_size"],
            a["pseudocount"],
        )
        if not isinstance(values, Tensor):
            raise InputError(
                f"values must be a torch.Tensor of shape [N, {self.channels}], got {type(values).__name__}"
            )
        if values.dim() != 2 or values.shape[1] != self.channels:
            raise InputError(
                f"values must have shape [N, {self.channels}], got {tuple(values.shape)}"
            )
        if len(values) == 0:
            raise InputError("values is empty: no latent positions to fit on")
        dev = self.quantiles.device
        s = self.symbols(values.to(dev).T[None, :, :, None])[0, :, :, 0].T  # [N, C]
        g = torch.Generator().manual_seed(seed)
        if max_items is not None and len(s) > max_items:
            s = s[torch.randperm(len(s), generator=g)[:max_items].to(dev)]
        srt = s.sort(0).values  # per-channel order statistics (torch.quantile caps input size)
        lo = srt[math.floor(tail * (len(s) - 1))]
        hi = srt[math.ceil((1.0 - tail) * (len(s) - 1))]
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
            pc = HCLT(
                Tree(tuple(-1 if i == hub else hub for i in range(self.channels))), v, num_latents
            )
            pc.init_params(idx.cpu(), seed=seed)
            pc = pc.to(dev)
        else:
            pc = HCLT.from_data(idx.cpu(), v, num_latents, seed=seed).to(dev)
        hist = fit_em(
            pc,
            idx,
            epochs=epochs,
            batch_size=batch_size,
            full_batch_epochs=full_batch_epochs,
            step_size=step_size,
            pseudocount=pseudocount,
            seed=seed,
            progress=progress,
        )
        if leaves == "logistic":
            pc = DiscretizedLogisticTree.from_hclt(pc, lo, n)
            u = values.to(dev) - self._medians()
            opt = torch.optim.Adam(pc.parameters(), lr=lr)
            for _step in range(finetune_steps):
                rows = u[torch.randint(len(u), (batch_size,), generator=g).to(dev)]
                rows = rows + (torch.rand(rows.shape, generator=g, dtype=rows.dtype) - 0.5).to(dev)
                loss = -pc.log_prob_values(rows).mean() / (self.channels * LN2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if finetune_steps:  # no steps: no fine-tuning record (and no loss to report)
                hist.append(
                    {"epoch": len(hist) + 1, "mode": "adam-logistic", "train_bpd": float(loss)}
                )
        self.pc = pc
        self.update(force=True)
        return hist

    # -- CompressAI interface -------------------------------------------------------------------
    def update(self, force: bool = False, update_quantiles: bool = False) -> bool:
        """Write the circuit's integer coding tables into the buffers; False if present and not forced."""
        if self._pc_root.numel() > 0 and not force:
            return False
        pc = self._require_fitted()
        pc.check_finite()  # NaN or infinite parameters have no coding tables: name the parameter
        t = coding_tables(pc, refresh=True)  # update() is where tables follow the parameters
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
            return (
                (self.quantiles[:, 0, [0, 2]] - self.quantiles[:, 0, [0, 2]].detach()).abs().sum()
            )
        m = self._medians()
        target = torch.stack(
            [m + self._offset - 0.5, m + self._offset + self._cdf_length - 0.5], -1
        )
        return (self.quantiles[:, 0, [0, 2]] - target).abs().sum()

    def log_likelihood(self, s: Tensor) -> Tensor:
        """Code length model: log p of each position's symbols s [B, C, H, W] in nats, [B, H, W]."""
        pc = self._require_fitted()
        self._check_latent(s)
        b, c, h, w = s.shape
        rows = s.permute(0, 2, 3, 1).reshape(-1, c)
        idx, rel, esc = self._indices(rows)
        leaf = pc.log_emissions().transpose(1, 2)[
            torch.arange(c, device=idx.device), idx
        ]  # [N, C, K]
        logp = pc.upward(leaf)[0]
        bits = torch.where(esc, escape_bits(rel, self._cdf_length.long()), 0.0).sum(-1)
        return (logp - bits.to(logp.dtype) * LN2).view(b, h, w)

    def forward(self, x: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        """(x_hat, likelihoods [B, C, H, W]); the product over channels is p(position)."""
        if training is None:
            training = self.training
        self._check_latent(x)  # before the medians broadcast against a wrong shape
        med = self._medians().view(1, -1, 1, 1).to(x.dtype)
        rounded = torch.round(x - med) + med
        if not training:
            out = rounded
        elif self.quantization == "noise":
            out = x + torch.empty_like(x).uniform_(-0.5, 0.5)
        else:
            out = x + (rounded - x).detach()
        if training and isinstance(
            self.pc, DiscretizedLogisticTree
        ):  # smooth in x: the rate trains g_a
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
        encode_columns(encs, inc, idx, p, rel.cpu().numpy(), esc.cpu().numpy(), n_np)
        fp = self._fingerprint(tables)
        return [
            framing.pack(FORMAT, fp, (h, w), enc.get_compressed().astype("<u4").tobytes())
            for enc in encs
        ]

    def decompress(self, strings: list[bytes], size: tuple[int, ...] | torch.Size) -> Tensor:
        """Decode ``compress``'s strings into the dequantized latent [B, C, H, W].

        The latent has the dtype of the module's medians (``quantiles``), as CompressAI's
        ``EntropyBottleneck.decompress`` returns, so a ``.half()`` or ``.double()`` codec gets its
        own dtype. ``size`` is the latent's (H, W): two positive integers (a ``torch.Size`` too).
        """
        if not isinstance(strings, (list, tuple)):
            raise InputError(f"strings must be a list of bytes, got {type(strings).__name__}")
        size = _check_size(size)
        tables = self._require_tables()
        fp = self._fingerprint(tables)
        words = unpack_strings(strings, FORMAT, fp, size, tables, self.channels)
        b, c, (h, w) = len(strings), self.channels, size
        p = h * w
        dev = tables.root.device
        v = tables.emit.shape[-1]
        n_np = self._cdf_length.cpu().numpy().astype(np.int64)
        decs = range_decoders(words)
        rel = decode_columns(
            decs, IncrementalConditionals(tables, b * p, dev), p, v - 1, n_np, FORMAT.name
        )
        finish_decoding(decs, FORMAT.name)
        s = rel.to(self._offset.device) + self._offset.long()
        # Fresh standard-stride output: convolutions pick kernels by stride, and a channels-last
        # view (even of 1x1 latents) would make the synthesis differ from the forward pass.
        med = self._medians()
        out = torch.empty(b, c, h, w, dtype=med.dtype, device=self._offset.device)
        out.copy_(s.view(b, h, w, c).permute(0, 3, 1, 2))
        return out.add_(med.to(out.device).view(1, -1, 1, 1))
