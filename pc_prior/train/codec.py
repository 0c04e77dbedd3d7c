"""``CodecModule``: train a CompressAI image codec from scratch with Lightning, and export it.

Follows CompressAI's ``examples/train.py``: loss ``λ·255²·MSE + bpp``, a main Adam on every
parameter except the entropy bottlenecks' ``quantiles``, an auxiliary Adam on those, gradient
clipping on the main parameters. The main and auxiliary losses touch disjoint parameters, so one
backward of their sum gives both optimizers exactly their gradients (and lets DDP reduce them in
one pass). Manual optimization; the auxiliary optimizer steps without counting, so
``trainer.global_step`` counts batches. A batch whose gradients are not finite is skipped with a
warning, as if it had not been drawn (no step, so it does not count in ``global_step``;
``train_skipped_steps`` counts them), and 20 in a row end the run. The optimizers, schedule, step, logging, validation and
export hook live in :class:`RDTrainingModule`, which :class:`CodecModule` (codec from scratch) and
``pc_prior.train.rd.RDModule`` (codec + PC prior fine-tuned jointly) share.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from compressai.losses import RateDistortionLoss
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from ..images import crop_padding, ms_ssim, pad_to_multiple, psnr
from ..integrations.base import resize_buffers
from ..integrations.codec_file import build_codec, resolve_codec, save_codec
from ..integrations.swap import PC_MODULES
from .prior import export_at_fit_end

__all__ = [
    "ZOO_MSE_LAMBDAS",
    "ZOO_MSSSIM_LAMBDAS",
    "CodecModule",
    "RDTrainingModule",
    "export_codec",
    "lambda_for_quality",
    "load_start_codec",
    "rd_metrics",
    "split_parameters",
    "start_lambda",
]

#: λ of CompressAI's zoo models trained for MSE, by quality 1..8 (CompressAI docs, "Training";
#: the same list is compressai.models.vbr's ``lmbda``).
ZOO_MSE_LAMBDAS: dict[int, float] = {
    1: 0.0018,
    2: 0.0035,
    3: 0.0067,
    4: 0.0130,
    5: 0.0250,
    6: 0.0483,
    7: 0.0932,
    8: 0.1800,
}
#: λ of the zoo models trained for MS-SSIM (loss λ·(1 − MS-SSIM) + bpp), same source.
ZOO_MSSSIM_LAMBDAS: dict[int, float] = {
    1: 2.40,
    2: 4.58,
    3: 8.73,
    4: 16.64,
    5: 31.73,
    6: 60.50,
    7: 115.37,
    8: 220.0,
}
METRICS = ("mse", "ms-ssim")


def lambda_for_quality(quality: int, metric: str = "mse") -> float:
    """CompressAI's zoo λ for ``quality`` 1..8 and ``metric`` (``"mse"`` or ``"ms-ssim"``)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    table = ZOO_MSE_LAMBDAS if metric == "mse" else ZOO_MSSSIM_LAMBDAS
    if quality not in table:
        raise ValueError(f"quality must be one of {sorted(table)}, got {quality}")
    return table[quality]


def split_parameters(net: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(main, aux) trainable parameters: aux are those whose name ends in ``.quantiles``."""
    main, aux = [], []
    for name, p in net.named_parameters():
        if p.requires_grad:
            (aux if name.endswith(".quantiles") else main).append(p)
    return main, aux


def rd_metrics(
    out: dict[str, Any], x: Tensor, lmbda: float, num_pixels: int | None = None, metric: str = "mse"
) -> dict[str, Tensor]:
    """``loss``, ``bpp``, ``mse`` and ``psnr`` (plus ``ms_ssim`` for that metric) of a codec's forward
    output on ``x`` in [0, 1]; ``loss`` is ``λ·255²·MSE + bpp`` or ``λ·(1 − MS-SSIM) + bpp``.

    ``num_pixels`` (default N·H·W of ``x``) lets padded inputs be rated per original pixel.
    """
    n, _, h, w = x.shape
    pixels = num_pixels if num_pixels is not None else n * h * w
    bpp = sum(torch.log(lk).sum() for lk in out["likelihoods"].values()) / (-math.log(2) * pixels)
    mse = F.mse_loss(out["x_hat"], x)
    db = psnr(out["x_hat"].detach(), x)
    if metric == "mse":
        return {"loss": lmbda * 255**2 * mse + bpp, "bpp": bpp, "mse": mse, "psnr": db}
    if metric != "ms-ssim":
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    msssim = ms_ssim(out["x_hat"], x)
    return {
        "loss": lmbda * (1 - msssim) + bpp,
        "bpp": bpp,
        "mse": mse,
        "psnr": db,
        "ms_ssim": msssim,
    }


def load_start_codec(
    codec: str | None,
    arch: str,
    quality: int,
    net_kwargs: dict[str, Any] | None = None,
    metric: str = "mse",
) -> tuple[nn.Module, dict[str, Any]]:
    """The codec to start from (train mode, CPU) and what is known about it (``arch``, ``quality``, ``lmbda``...).

    ``codec``: any spec :func:`~pc_prior.integrations.resolve_codec` resolves (what ``pc-prior
    eval`` reads): a codec file with ``arch``/``quality``/``state_dict``, a CompressAI training
    checkpoint or state dict (of architecture ``arch``), a zoo spec ``ARCH:qN`` (pretrained, needs
    the network); or ``None`` for a fresh ``build_codec(arch, quality, net_kwargs)``.
    """
    if codec is None:
        return build_codec(arch, quality, net_kwargs).train(), {
            "arch": arch,
            "quality": quality,
            "net_kwargs": net_kwargs,
            "source": "random init",
        }
    rc = resolve_codec(codec, arch=arch, metric=metric)  # arch: for files that do not name theirs
    meta = {k: rc.info[k] for k in ("lmbda", "metric", "net_kwargs") if k in rc.info}
    return rc.net.cpu().train(), {
        "arch": rc.arch or arch,
        "quality": rc.quality if rc.quality is not None else quality,
        **meta,
        "source": rc.source,
    }


def start_lambda(lmbda: float | None, meta: dict[str, Any], metric: str = "mse") -> float:
    """λ of a run from a start codec (``load_start_codec``'s ``meta``): ``lmbda`` when given, else
    the codec file's own when it was trained for ``metric``, else CompressAI's zoo λ for its
    quality. A λ that is not positive is a ``ValueError``."""
    if lmbda is None:
        same_metric = meta.get("metric", "mse") == metric
        lmbda = (
            meta["lmbda"]
            if meta.get("lmbda") and same_metric
            else lambda_for_quality(int(meta["quality"]), metric)
        )
    if lmbda <= 0:
        raise ValueError(f"lmbda must be > 0, got {lmbda}")
    return float(lmbda)


def export_codec(
    net: nn.Module,
    path: str | Path,
    arch: str,
    quality: int,
    lmbda: float | None = None,
    **extra: Any,
) -> Path:
    """Write ``{"arch", "quality", "lmbda", "state_dict", ...}`` (the ``shared/models`` format) after
    ``update(force=True)`` on a CPU copy, so the entropy coder tables are in the state dict."""
    net = copy.deepcopy(net).cpu().eval()
    net.update(force=True)
    if lmbda is not None:
        extra["lmbda"] = lmbda
    return save_codec(net, path, arch, quality, **extra)


def _resize_coder_buffers(
    module: nn.Module, state_dict: dict[str, Tensor], prefix: str = ""
) -> None:
    """Give entropy coder buffers (``_quantized_cdf``, ``_offset``, ``_cdf_length``, ``scale_table``)
    the shapes they have in ``state_dict``, which ``update()`` may have changed, so a Lightning
    checkpoint loads (CompressAI's own ``load_state_dict`` does this only at the model's top level)."""
    for name, buf in list(module.named_buffers()):
        owner_name, _, leaf = name.rpartition(".")
        key = prefix + name
        if (
            leaf in {"_quantized_cdf", "_offset", "_cdf_length", "scale_table"}
            and key in state_dict
            and state_dict[key].shape != buf.shape
        ):
            owner = module.get_submodule(owner_name) if owner_name else module
            resize_buffers(owner, state_dict, key[: len(key) - len(leaf)], [leaf])


#: ``RDTrainingModule`` skips a step whose gradients are not finite; this many in a row end the run.
MAX_SKIPPED_IN_A_ROW = 20


class RDTrainingModule(pl.LightningModule):
    """Rate-distortion training of ``self.net`` (a CompressAI codec) shared by the codec modules.

    Subclasses call ``save_hyperparameters()`` with at least ``lr``, ``aux_lr``, ``clip_max_norm``,
    ``lr_decay_at``, ``lr_decay_factor``, ``pad_multiple``, ``export_path`` and a resolved ``lmbda``
    (and optionally ``metric``, ``coded_val_batches``), set ``self.net``, call :meth:`_init_rd` and
    implement :meth:`export`. Hooks: :meth:`param_groups` (main optimizer groups) and
    :meth:`extra_loss` (added to the loss; e.g. auxiliary entropy models on detached latents).

    Optimizers: a main Adam on every trainable parameter of the module whose name does not end in
    ``.quantiles``, an auxiliary Adam on those. Schedule: the main LR is multiplied by
    ``lr_decay_factor`` after ``lr_decay_at`` of the planned steps.
    """

    net: nn.Module

    def _init_rd(self) -> None:
        self.automatic_optimization = False
        self._skipped_total = self._skipped_in_a_row = 0  # non-finite steps (_skip_nonfinite)
        self.rd_loss = RateDistortionLoss(
            lmbda=self.lmbda, metric=self.metric
        )  # CompressAI's own loss

    @property
    def lmbda(self) -> float:
        """λ of the rate-distortion loss."""
        return float(self.hparams.lmbda)

    @property
    def metric(self) -> str:
        """The distortion: ``"mse"`` or ``"ms-ssim"``."""
        return str(self.hparams.get("metric", "mse"))

    def forward(self, x: Tensor) -> dict[str, Any]:
        """The codec's forward pass on ``x`` (CompressAI's dict: ``x_hat``, ``likelihoods``)."""
        return self.net(x)

    def param_groups(self, main: list[nn.Parameter]) -> list[dict[str, Any]]:
        """Parameter groups of the main optimizer (default: one group at ``lr``)."""
        return [{"params": main}]

    def extra_loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]] | None:
        """Called inside :meth:`rd_step` after the forward pass; (loss term, metrics to log) or None."""
        return None

    def configure_optimizers(self):
        """The main Adam (groups from ``param_groups``) and the auxiliary Adam on the
        ``.quantiles``; the main learning rate drops by ``lr_decay_factor`` after ``lr_decay_at`` of
        the steps."""
        hp = self.hparams
        main, aux = split_parameters(self)
        opt = torch.optim.Adam(self.param_groups(main), lr=hp.lr)
        aux_opt = torch.optim.Adam(aux, lr=hp.aux_lr)
        total = self.trainer.estimated_stepping_batches if self.trainer is not None else math.inf
        decay_step = (
            int(hp.lr_decay_at * total)
            if hp.lr_decay_at is not None and math.isfinite(total)
            else None
        )
        factor = hp.lr_decay_factor
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: factor if decay_step is not None and step >= decay_step else 1.0
        )
        return [opt, aux_opt], [{"scheduler": sched, "interval": "step"}]

    def aux_loss(self) -> Tensor:
        """Sum of the ``loss()`` of every entropy bottleneck in the module (CompressAI's aux loss)."""
        from compressai.entropy_models import EntropyBottleneck

        terms = [m.loss() for m in self.modules() if isinstance(m, EntropyBottleneck)]
        return torch.stack(terms).sum() if terms else torch.zeros((), device=self.device)

    def rd_step(self, x: Tensor) -> dict[str, Tensor]:
        """One optimization step on ``x``; returns the detached metrics."""
        opt, aux_opt = self.optimizers()
        out = self.net(x)
        losses = self.rd_loss(out, x)
        loss = losses["loss"]
        extra = self.extra_loss(x)
        logs: dict[str, Tensor] = {}
        if extra is not None:
            loss = loss + extra[0]
            logs = extra[1]
        aux_loss = self.aux_loss()
        opt.zero_grad()
        aux_opt.zero_grad()
        self.manual_backward(loss + aux_loss)
        skipped = self._skip_nonfinite()
        if not skipped:
            if self.hparams.clip_max_norm > 0:
                self.clip_gradients(
                    opt,
                    gradient_clip_val=self.hparams.clip_max_norm,
                    gradient_clip_algorithm="norm",
                )
            opt.step()
            aux_opt.optimizer.step()  # raw step: global_step counts main steps only
            self.lr_schedulers().step()
        mse = (
            losses["mse_loss"].detach()
            if "mse_loss" in losses
            else F.mse_loss(out["x_hat"].detach(), x)
        )
        m = {
            "skipped_steps": torch.tensor(float(self._skipped_total)),
            "loss": losses["loss"].detach(),
            "bpp": losses["bpp_loss"].detach(),
            "mse": mse,
            "psnr": psnr(out["x_hat"].detach(), x),
            "aux_loss": aux_loss.detach(),
            **logs,
        }
        if "ms_ssim_loss" in losses:
            m["ms_ssim"] = losses["ms_ssim_loss"].detach()
        return m

    def _skip_nonfinite(self) -> bool:
        """Whether this step's gradients hold a NaN or an infinity (after DDP's reduction, so
        every rank agrees). Such a step is skipped: clipping would turn an infinite gradient into
        NaN parameters, and one NaN step ruins every later one. A warning names the step;
        ``MAX_SKIPPED_IN_A_ROW`` skips in a row raise ``FloatingPointError`` (the run diverged)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        finite = (
            bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        )
        if finite:
            self._skipped_in_a_row = 0
            return False
        self._skipped_total += 1
        self._skipped_in_a_row += 1
        for p in self.parameters():
            p.grad = None
        if self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise FloatingPointError(
                f"training diverged: {self._skipped_in_a_row} steps in a row up to step "
                f"{self.global_step} had a non-finite loss or gradient; lower the learning rate "
                "(--lr) or resume from an earlier checkpoint"
            )
        rank_zero_warn(
            f"step {self.global_step}: non-finite loss or gradient, step skipped (parameters "
            f"unchanged; {self._skipped_total} skipped so far)"
        )
        return True

    def on_fit_start(self) -> None:
        """Refuse 16-bit mixed precision, whose scaler needs every step counted (32 and bf16-mixed
        run)."""
        precision = str(self.trainer.precision)
        if precision.startswith("16"):
            raise ValueError(
                f"{type(self).__name__} supports precision 32 or bf16-mixed "
                "(16-mixed's scaler needs every step counted)"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resize the coder's buffers to the checkpoint's before Lightning loads its state dict."""
        _resize_coder_buffers(self, checkpoint.get("state_dict", {}))

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """One rate-distortion step (``rd_step``) on a batch: logs its metrics, returns the loss."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        m = self.rd_step(x)
        self.log_dict({f"train_{k}": v for k, v in m.items()}, prog_bar=False, batch_size=len(x))
        self.log_dict(
            {"bpp": m["bpp"], "psnr": m["psnr"]}, prog_bar=True, logger=False, batch_size=len(x)
        )
        self.log("lr", self.optimizers()[0].param_groups[0]["lr"], batch_size=len(x))
        return m["loss"]

    def _coded_val(self, batch_idx: int) -> bool:
        limit = self.hparams.get("coded_val_batches", 0)
        return limit is None or batch_idx < limit

    def on_validation_epoch_start(self) -> None:
        """Rebuild the coding tables (``update(force=True)``) when validation codes bitstreams."""
        if self.hparams.get("coded_val_batches", 0) != 0:
            with torch.no_grad():
                self.net.update(force=True)  # parameters moved since the tables were built

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        """Rate-distortion metrics of a batch padded as the evaluation pads; for the first
        ``coded_val_batches`` batches also the rate of real bitstreams (``val_bpp_coded``)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        n, _, h, w = x.shape
        xp = pad_to_multiple(x, self.hparams.pad_multiple)  # centred, as the evaluation pads
        out = self.net(xp)
        out["x_hat"] = crop_padding(out["x_hat"], (h, w)).clamp(0, 1)
        m = rd_metrics(out, x, self.lmbda, num_pixels=n * h * w, metric=self.metric)
        self.log_dict(
            {f"val_{k}": v for k, v in m.items()}, prog_bar=True, batch_size=n, sync_dist=True
        )
        if self._coded_val(batch_idx):  # real bitstreams
            enc = self.net.compress(xp)
            nbytes = sum(len(s) for group in enc["strings"] for s in group)
            self.log(
                "val_bpp_coded",
                torch.tensor(8.0 * nbytes / (n * h * w), device=self.device),
                prog_bar=True,
                batch_size=n,
                sync_dist=True,
            )
            self.log(
                "val_bpp_est_coded", m["bpp"], batch_size=n, sync_dist=True
            )  # same images' estimate

    def export(self, path: str | Path) -> Path:
        """Write the trained codec to ``path`` and return the path (each subclass writes its own
        format)."""
        raise NotImplementedError

    def _file_meta(self) -> tuple[str, int, dict[str, Any]]:
        """(arch, quality, extra fields) of the exported codec file: what is known of the start
        codec (``self.codec_info``), λ, the metric and the steps trained."""
        info = getattr(self, "codec_info", {})
        extra: dict[str, Any] = {
            "lmbda": self.lmbda,
            "metric": self.metric,
            "steps": int(self.global_step),
        }
        if info.get("source"):
            extra["start"] = info["source"]
        if info.get("net_kwargs"):
            extra["net_kwargs"] = dict(info["net_kwargs"])
        return (
            info.get("arch", self.hparams.arch),
            int(info.get("quality", self.hparams.quality)),
            extra,
        )

    def on_fit_end(self) -> None:
        """Export the codec on rank 0: to ``export_path``, by default ``codec.pt`` in the log folder
        (``""``: no export)."""
        export_at_fit_end(self, "codec.pt")


class CodecModule(RDTrainingModule):
    """Train a CompressAI codec for rate-distortion, from scratch or from a trained one; logs
    loss, bpp, PSNR and aux loss. The codec keeps its own (CompressAI) entropy models: this is
    ``pc-prior codec train``, and ``pc-prior codec finetune --own-entropy-models`` (the codec
    fine-tuned alone, the *frozen+* arm of a joint-training comparison).

    Args:
        arch: a ``compressai.zoo.image_models`` name, or a ``compressai.models`` class name with ``net_kwargs``.
        quality: zoo quality (picks the architecture's size and, by default, λ).
        lmbda: RD trade-off; ``None`` takes the start codec file's λ, else CompressAI's zoo λ for
            ``quality``.
        net_kwargs: constructor arguments for a ``compressai.models`` class (e.g. ``{"N": 8, "M": 12}``).
        codec: a trained codec to start from (see :func:`load_start_codec`: a codec file, a
            CompressAI checkpoint, a zoo name); ``None``: a fresh ``arch``/``quality`` codec.
        lr, aux_lr: main and auxiliary Adam learning rates.
        clip_max_norm: gradient-norm clipping of the main parameters (0 turns it off).
        lr_decay_at: fraction of the planned steps after which the main LR is multiplied by
            ``lr_decay_factor`` (needs ``max_steps`` or ``max_epochs``; ``None`` keeps it constant).
        pad_multiple: validation images are zero-padded (centred, as ``pc-prior eval`` pads) to this
            multiple and rated per original pixel.
        coded_val_batches: validation batches really compressed (``val_bpp_coded``; ``None``:
            all, 0: none).
        export_path: where ``on_fit_end`` writes the codec (default ``<log_dir>/codec.pt``; ``""``: none).
    """

    def __init__(
        self,
        arch: str = "bmshj2018-factorized",
        quality: int = 3,
        lmbda: float | None = None,
        net_kwargs: dict[str, Any] | None = None,
        codec: str | None = None,
        lr: float = 1e-4,
        aux_lr: float = 1e-3,
        clip_max_norm: float = 1.0,
        lr_decay_at: float | None = 0.85,
        lr_decay_factor: float = 0.1,
        pad_multiple: int = 64,
        coded_val_batches: int | None = 0,
        export_path: str | None = None,
    ) -> None:
        super().__init__()
        if codec is None and lmbda is None:
            lmbda = lambda_for_quality(quality)  # also checks quality, before anything is built
        net, meta = load_start_codec(codec, arch, quality, net_kwargs)
        if any(isinstance(m, PC_MODULES) for m in net.modules()):
            raise ValueError(
                f"the codec {codec!r} holds PC entropy models, and CodecModule trains a codec with "
                "CompressAI's own: start from the base codec, or fine-tune with the PC priors "
                "(pc-prior codec finetune without --own-entropy-models, RDModule)"
            )
        lmbda = start_lambda(lmbda, meta)
        self.save_hyperparameters()
        self.hparams.lmbda = float(lmbda)  # resolved value (LightningCLI may record the given None)
        self.codec_info = {k: v for k, v in meta.items() if v is not None}
        for p in net.parameters():
            p.requires_grad_(True)
        self.net = net
        self._init_rd()

    def export(self, path: str | Path) -> Path:
        """Write the codec in the ``shared/models`` format (see :func:`export_codec`)."""
        arch, quality, extra = self._file_meta()
        return export_codec(self.net, path, arch, quality, **extra)
