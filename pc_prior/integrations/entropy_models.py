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
    coding_tables,
    decode_columns,
    encode_columns,
    escape_bits,
    finish_decoding,
    range_decoders,
)
from ..continuous import DiscretizedLogisticTree
from ..errors import (
    InputError,
    PCPriorError,
)
from ..hclt import HCLT
from ..settings import CHOICES, BottleneckFit
from ..structure import Tree
from ..training import fit_em
from .base import PCEntropyModel, check_latent_shape, loaded_tables

__all__ = ["PCEntropyBottleneck"]

STRUCTURES = CHOICES["structure"]  # circuit structures over the channels (pc_prior.settings)
LN2 = math.log(2.0)


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


class PCEntropyBottleneck(PCEntropyModel, EntropyBottleneck):
    """Entropy bottleneck whose prior is a hidden Chow-Liu tree over the channels at a position.

    Same interface as ``EntropyBottleneck`` (``forward``, ``compress``, ``decompress``,
    ``update``, ``loss``), so CompressAI models use it unchanged. Fit it with ``fit`` (or
    ``pc_prior.integrations.fit_prior``), then ``update()`` (``fit`` does) before coding.
    ``quantization`` selects the training-mode rounding: ``"noise"`` (uniform noise on the
    output, CompressAI's default) or ``"ste"`` (straight-through rounding).
    """

    FORMAT = framing.BOTTLENECK  # magic, version and header fields of this model's strings

    def __init__(
        self, channels: int, *args: Any, quantization: str = "noise", **kwargs: Any
    ) -> None:
        super().__init__(channels, *args, **kwargs)
        if quantization not in ("noise", "ste"):
            raise ValueError(f'quantization must be "noise" or "ste", got {quantization!r}')
        self.quantization = quantization
        # The circuit replaces the factorized density; only ``quantiles`` (medians) is kept.
        del self.matrices, self.biases, self.factors
        self._init_tables(emit_dims=3)
        self.pc: HCLT | DiscretizedLogisticTree | None = None

    # -- state ----------------------------------------------------------------------------------
    @property
    def num_symbols(self) -> int:
        """V: the circuit's leaf alphabet size (largest channel alphabet + ESCAPE)."""
        return self._require_fitted().num_cats

    def _medians(self) -> Tensor:
        return self.quantiles[:, 0, 1].detach()

    def _require_tables(self) -> CodingTables:
        return self._coding_tables()

    def _fingerprint(self, tables: CodingTables, *extra: Tensor) -> bytes:
        return super()._fingerprint(
            tables,
            self._offset.to(torch.int32),
            self._cdf_length.to(torch.int32),
            self._medians().float(),
            *extra,
        )

    def _compute_tables(self) -> CodingTables:
        return coding_tables(self._require_fitted(), refresh=True)

    def _tables_entries(self) -> int:
        pc = self._require_fitted()
        return pc.num_vars * pc.num_latents * pc.num_cats

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """Check the alphabets (and any stored tables), resize the buffers and build the circuit;
        once its parameters are loaded, take the stored tables or rebuild and verify them."""
        stored = loaded_tables(state_dict, prefix, error_msgs)
        trans = state_dict.get(prefix + "pc.transition_logits")
        logits = state_dict.get(prefix + "pc.emission_logits")
        off, n = state_dict.get(prefix + "_offset"), state_dict.get(prefix + "_cdf_length")
        d = self.channels
        if stored is not None or trans is not None:
            if (
                off is None
                or n is None
                or tuple(off.shape) != (d,)
                or tuple(n.shape) != (d,)
                or off.dtype.is_floating_point
                or n.dtype.is_floating_point
                or (stored is not None and stored.emit.shape[0] != d)
            ):
                error_msgs.append(
                    f"{prefix}: the circuit is over {d} channels, the alphabets (_offset, "
                    f"_cdf_length) must be integer vectors of {d}"
                )
                return
            if stored is not None:
                v = stored.emit.shape[-1]
            elif logits is not None and logits.dim() == 3:
                v = logits.shape[-1]
            else:
                v = int(n.max()) + 1
            if int(n.min()) < 1 or int(n.max()) > v - 1 or int(off.abs().max()) > MAX_SYMBOL:
                error_msgs.append(
                    f"{prefix}_cdf_length must lie in 1..{v - 1} and |_offset| <= {MAX_SYMBOL}"
                )
                return
        elif any(m.startswith(prefix) for m in error_msgs):
            return
        self._resize_for(state_dict, prefix, ("_offset", "_cdf_length", "_quantized_cdf"))
        if trans is not None:
            parent = state_dict.get(prefix + "_pc_parent")
            cls = HCLT if logits is not None else DiscretizedLogisticTree
            try:
                if parent is None or trans.dim() != 3 or len(parent) != d or trans.shape[0] != d:
                    raise ValueError(f"_pc_parent and the transitions must be over {d} channels")
                tree = Tree(tuple(int(p) for p in parent))
            except (ValueError, TypeError, PCPriorError) as e:
                error_msgs.append(f"{prefix}: the circuit's tree is not valid: {e}")
                return
            self.pc = cls(tree, v, trans.shape[1], dtype=trans.dtype).to(self.quantiles.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._finish_loading(state_dict, prefix, stored, missing_keys, unexpected_keys, error_msgs)

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
        check_choice("leaves", a["leaves"], CHOICES["leaves"])
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
        check_choice("warm_start", a["warm_start"], (False, True))
        return a

    def fit(
        self,
        values: Tensor,
        num_latents: int = BottleneckFit.num_latents,
        *,
        tail: float = BottleneckFit.tail,
        max_alphabet: int = BottleneckFit.max_alphabet,
        max_items: int | None = BottleneckFit.max_items,
        epochs: int = BottleneckFit.epochs,
        batch_size: int = BottleneckFit.batch_size,
        full_batch_epochs: int = BottleneckFit.full_batch_epochs,
        step_size: float | tuple[float, float] = BottleneckFit.step_size,
        pseudocount: float = BottleneckFit.pseudocount,
        structure: str = BottleneckFit.structure,
        leaves: str = BottleneckFit.leaves,
        finetune_steps: int = BottleneckFit.finetune_steps,
        lr: float = BottleneckFit.lr,
        seed: int = BottleneckFit.seed,
        progress: bool = True,
        warm_start: bool = False,
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
        ``InputError`` before any work (``check_fit_args``). Defaults:
        ``pc_prior.settings.BottleneckFit``.

        ``warm_start=True`` continues the fitted circuit on new values instead (``pc-prior prior fit
        --init``: adapt a prior to a domain): the alphabets, structure, K and leaf kind are kept,
        so ``num_latents``, ``structure``, ``leaves``, ``tail`` and ``max_alphabet`` are not used;
        EM (categorical leaves) or the Adam refinement (logistic leaves) starts from the current
        parameters. ``NotFittedError`` if there is nothing to continue.
        """
        a = self.check_fit_args(
            **{k: v for k, v in locals().items() if k not in ("self", "values", "__class__")}
        )
        max_items, tail = a["max_items"], a["tail"]
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
        if warm_start:
            pc = self._require_fitted()
            hist = self._train(pc, self._indices(s)[0], values, a, g, progress, [])
            self.update(force=True)
            return hist
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
        hist = self._train(pc, idx, values, a, g, progress, [])
        if leaves == "logistic":  # EM first, then smooth leaves refined by Adam
            pc = DiscretizedLogisticTree.from_hclt(pc, lo, n)
            self._train(pc, idx, values, a, g, progress, hist)
        self.pc = pc
        self.update(force=True)
        return hist

    def _train(
        self,
        pc: HCLT | DiscretizedLogisticTree,
        idx: Tensor,
        values: Tensor,
        a: dict[str, Any],
        g: torch.Generator,
        progress: bool,
        hist: list[dict],
    ) -> list[dict]:
        """Train ``pc`` from its current parameters with the fit settings ``a``: EM on leaf
        indices ``idx`` (categorical leaves) or Adam on noisy ``values`` (logistic leaves).
        Appends its records to ``hist`` and returns it."""
        if isinstance(pc, HCLT):
            hist += fit_em(
                pc,
                idx,
                epochs=a["epochs"],
                batch_size=a["batch_size"],
                full_batch_epochs=a["full_batch_epochs"],
                step_size=a["step_size"],
                pseudocount=a["pseudocount"],
                leaf_smoothing=0.0,  # chosen for images' grey levels, not latent symbols
                seed=a["seed"],
                progress=progress,
            )
        else:
            dev = self.quantiles.device
            u = values.to(dev) - self._medians()
            opt = torch.optim.Adam(pc.parameters(), lr=a["lr"])
            for _step in range(a["finetune_steps"]):
                rows = u[torch.randint(len(u), (a["batch_size"],), generator=g).to(dev)]
                rows = rows + (torch.rand(rows.shape, generator=g, dtype=rows.dtype) - 0.5).to(dev)
                loss = -pc.log_prob_values(rows).mean() / (self.channels * LN2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if a["finetune_steps"]:  # no steps: no fine-tuning record (and no loss to report)
                hist.append(
                    {
                        "epoch": len(hist) + 1,
                        "mode": "adam-logistic",
                        "train_bpd": float(loss.detach()),
                    }
                )
        return hist

    # -- CompressAI interface -------------------------------------------------------------------
    def update(self, force: bool = False, update_quantiles: bool = False) -> bool:
        """Write the circuit's integer coding tables into the buffers; False if present and not forced."""
        if self._pc_root.numel() > 0 and not force:
            return False
        self._set_tables(self._compute_tables())  # update() is where tables follow the parameters
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
        return [self._frame(fp, (h, w), enc) for enc in encs]

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
        words = self._unframe(strings, fp, size, tables, self.channels)
        b, c, (h, w) = len(strings), self.channels, size
        p = h * w
        dev = tables.root.device
        v = tables.emit.shape[-1]
        n_np = self._cdf_length.cpu().numpy().astype(np.int64)
        decs = range_decoders(words)
        rel = decode_columns(
            decs, IncrementalConditionals(tables, b * p, dev), p, v - 1, n_np, self.FORMAT.name
        )
        finish_decoding(decs, self.FORMAT.name)
        s = rel.to(self._offset.device) + self._offset.long()
        # Fresh standard-stride output: convolutions pick kernels by stride, and a channels-last
        # view (even of 1x1 latents) would make the synthesis differ from the forward pass.
        med = self._medians()
        out = torch.empty(b, c, h, w, dtype=med.dtype, device=self._offset.device)
        out.copy_(s.view(b, h, w, c).permute(0, 3, 1, 2))
        return out.add_(med.to(out.device).view(1, -1, 1, 1))
