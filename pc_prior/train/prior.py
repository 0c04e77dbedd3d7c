"""``PriorModule``: train a probabilistic-circuit prior (an HCLT) on discrete data with Lightning.

Two methods, both with manual optimization:

- ``em``: mini-batch EM. Each step computes the batch's expected counts with
  :func:`pc_prior.fitting.em_step_counts`, sums them over all ranks (so every DDP rank applies
  the same update), stores them as the parameters' ``.grad`` and calls :class:`EMOptimizer`, whose
  learning rate is the EM step size (annealed by a linear LR schedule) and whose update is
  :func:`pc_prior.fitting.em_update`, the one ``fit_em`` applies.
- ``adam``: gradient descent on the negative log-likelihood (Adam on the logits); DDP averages
  the gradients.

The circuit's structure is learned in ``setup`` from ``datamodule.structure_sample(n)`` and
saved into Lightning checkpoints, so ``ckpt_path`` resume and ``load_from_checkpoint`` rebuild
the same circuit. ``latent_fn`` maps a batch to LongTensor symbols [N, D] (default: the batch is
already symbols), the hook through which a frozen codec's latents can be the training data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor

from ..checkpoint import save as save_pc
from ..coding import encode
from ..fitting import em_step_counts, em_update
from ..hclt import HCLT
from ..settings import LosslessFit
from ..structure import Tree

__all__ = ["EMOptimizer", "PriorModule"]

LN2 = math.log(2.0)


class EMOptimizer(torch.optim.Optimizer):
    """EM update for an HCLT's (root, transition, emission) logits, reading ``.grad`` as expected counts.

    Each parameter gets :func:`pc_prior.fitting.em_update` (``fit_em``'s update) with ``lr`` as
    the EM step size (1.0 with full-batch counts is a classic EM iteration). Parameters without
    ``.grad`` are left unchanged.
    """

    def __init__(
        self,
        params,
        lr: float = LosslessFit.step_size[0],
        pseudocount: float = LosslessFit.pseudocount,
    ) -> None:
        if not 0.0 < lr <= 1.0:
            raise ValueError(f"EM step size (lr) must be in (0, 1], got {lr}")
        if pseudocount < 0:
            raise ValueError(f"pseudocount must be >= 0, got {pseudocount}")
        super().__init__(params, {"lr": lr, "pseudocount": pseudocount})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one EM update (``em_update``) to every parameter from the expected counts stored in
        its ``.grad``; ``closure`` runs first, as in torch's optimizers."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    em_update(p, p.grad, group["lr"], group["pseudocount"])
        return loss


class PriorModule(pl.LightningModule):
    """Lightning module training an HCLT prior; logs ``train_bpd``, ``val_bpd`` and ``val_coded_bpd``.

    Args:
        num_latents: latent states per variable.
        num_cats: symbols per variable; ``None`` takes ``datamodule.num_cats``.
        method: ``"em"`` (mini-batch EM) or ``"adam"``.
        lr: EM step size (start of the linear schedule) or Adam's learning rate.
        lr_end: EM step size at the end of training (``None``: constant).
        pseudocount: EM smoothing (Dirichlet pseudo-counts per distribution).
        structure_samples: rows used to learn the Chow-Liu structure.
        coded_items: validation rows really encoded (``pc_prior.encode``) each validation; 0 turns it off.
        export_path: where ``on_fit_end`` writes the circuit with ``pc_prior.save`` (default:
            ``<log_dir>/hclt.pt``); ``""`` turns export off.
        latent_fn: maps a batch to LongTensor symbols [N, D] (not a hyperparameter; pass in code).
        seed: seed of the structure learning and initialization.

    Fit defaults are ``pc_prior.settings.LosslessFit``'s (``lr``/``lr_end``: its ``step_size``).
    """

    def __init__(
        self,
        num_latents: int = LosslessFit.num_latents,
        num_cats: int | None = None,
        method: Literal["em", "adam"] = "em",
        lr: float = LosslessFit.step_size[0],
        lr_end: float | None = LosslessFit.step_size[1],
        pseudocount: float = LosslessFit.pseudocount,
        structure_samples: int = LosslessFit.structure_samples,
        coded_items: int = 16,
        export_path: str | None = None,
        latent_fn: Callable[[Any], Tensor] | None = None,
        seed: int = LosslessFit.seed,
    ) -> None:
        super().__init__()
        if method not in ("em", "adam"):
            raise ValueError(f"method must be 'em' or 'adam', got {method!r}")
        self.save_hyperparameters(ignore=["latent_fn"])
        self.automatic_optimization = False
        self.latent_fn = latent_fn
        self.pc: HCLT | None = None

    # -- data --------------------------------------------------------------------------------
    def features(self, batch: Any) -> Tensor:
        """Symbols [N, D] of a batch: ``latent_fn(batch)``, or the batch itself (first item of a tuple)."""
        if self.latent_fn is not None:
            x = self.latent_fn(batch)
        else:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(
                f"PriorModule expects symbols of shape [N, D], got {getattr(x, 'shape', type(x))}"
            )
        return x.long()

    def build(self, x: Tensor) -> HCLT:
        """Learn the structure from ``x`` [N, D] and initialize the circuit (deterministic given ``seed``)."""
        hp = self.hparams
        num_cats = hp.num_cats if hp.num_cats is not None else int(x.max()) + 1
        self.pc = HCLT.from_data(x.cpu(), num_cats, hp.num_latents, seed=hp.seed).to(self.device)
        return self.pc

    def setup(self, stage: str) -> None:
        """Build the circuit from the data module's ``structure_sample`` unless one is set already
        (``build``)."""
        if self.pc is not None:
            return
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is None or not hasattr(dm, "structure_sample"):
            raise ValueError(
                "PriorModule needs a datamodule with structure_sample(n), or call build(x) first"
            )
        if self.hparams.num_cats is None and hasattr(dm, "num_cats") and self.latent_fn is None:
            self.hparams.num_cats = int(dm.num_cats)
        sample = dm.structure_sample(self.hparams.structure_samples)
        self.build(self.features(sample if self.latent_fn is not None else (sample,)))

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the circuit's structure (tree, sizes, dtype) beside the state dict."""
        pc = self._require_pc()
        checkpoint["pc_structure"] = {
            "parent": [int(p) for p in pc.tree.parent],
            "num_cats": pc.num_cats,
            "num_latents": pc.num_latents,
            "dtype": str(pc.root_logits.dtype).removeprefix("torch."),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the circuit from the structure the checkpoint stores, so that its state dict
        loads."""
        s = checkpoint.get("pc_structure")
        if s is None:
            raise ValueError("checkpoint has no 'pc_structure': it was not written by PriorModule")
        self.pc = HCLT(
            Tree(tuple(s["parent"])),
            s["num_cats"],
            s["num_latents"],
            dtype=getattr(torch, s["dtype"]),
        ).to(self.device)

    def _require_pc(self) -> HCLT:
        if self.pc is None:
            raise RuntimeError("the circuit is not built yet: run setup() or build(x) first")
        return self.pc

    # -- optimization ------------------------------------------------------------------------
    def configure_optimizers(self):
        """Adam on the logits (``method="adam"``), or an ``EMOptimizer`` whose step size falls
        linearly from ``lr`` to ``lr_end``."""
        pc, hp = self._require_pc(), self.hparams
        if hp.method == "adam":
            return torch.optim.Adam(pc.parameters(), lr=hp.lr)
        opt = EMOptimizer(
            [pc.root_logits, pc.transition_logits, pc.emission_logits],
            lr=hp.lr,
            pseudocount=hp.pseudocount,
        )
        total = self.trainer.estimated_stepping_batches if self.trainer is not None else math.inf
        if hp.lr_end is None or not math.isfinite(total):
            return opt
        sched = torch.optim.lr_scheduler.LinearLR(
            opt, 1.0, hp.lr_end / hp.lr, total_iters=max(int(total) - 1, 1)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _reduce_sum(self, t: Tensor) -> Tensor:
        if self.trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(t, reduce_op="sum")
        return t

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One EM step (expected counts summed over the ranks) or one Adam step on a batch; logs and
        returns the training bpd."""
        pc, hp = self._require_pc(), self.hparams
        x = self.features(batch).to(self.device)
        opt = self.optimizers()
        if hp.method == "adam":
            nll = -pc.log_prob(x).sum()
            opt.zero_grad()
            self.manual_backward(nll / len(x))
            opt.step()
            ll = -nll.detach()
        else:
            counts, ll_f = em_step_counts(pc, x)
            sizes = [c.numel() for c in counts]
            flat = self._reduce_sum(torch.cat([c.reshape(-1) for c in counts]))
            for p, c in zip(
                (pc.root_logits, pc.transition_logits, pc.emission_logits), flat.split(sizes)
            ):
                p.grad = c.view_as(p)
            opt.step()
            opt.zero_grad()
            ll = torch.tensor(ll_f, device=self.device, dtype=torch.float64)
        # global bpd of this step: sum log-likelihood and rows over ranks
        stats = self._reduce_sum(
            torch.stack(
                [ll.double(), torch.tensor(float(len(x)), device=self.device, dtype=torch.float64)]
            )
        )
        bpd = -stats[0] / (stats[1] * pc.num_vars * LN2)
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        self.log("train_bpd", bpd.float(), prog_bar=True, batch_size=len(x))
        self.log("lr", opt.param_groups[0]["lr"], batch_size=len(x))
        return bpd

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Validation bpd; on the first batch also the coded bpd of ``coded_items`` items, from real
        bytes."""
        pc = self._require_pc()
        x = self.features(batch).to(self.device)
        bpd = -pc.log_prob(x).mean() / (pc.num_vars * LN2)
        self.log("val_bpd", bpd, prog_bar=True, batch_size=len(x), sync_dist=True)
        n = self.hparams.coded_items
        if batch_idx == 0 and n > 0:
            xs = x[:n].cpu()
            pc_cpu = pc if pc.root_logits.device.type == "cpu" else _cpu_copy(pc)
            nbytes = len(encode(pc_cpu, xs))
            self.log("val_coded_bpd", 8.0 * nbytes / xs.numel(), batch_size=len(xs), sync_dist=True)

    # -- export ------------------------------------------------------------------------------
    def export(self, path: str | Path, **metadata: Any) -> Path:
        """Write the circuit with ``pc_prior.save`` (loadable by ``pc_prior.load``)."""
        path = Path(path)
        save_pc(
            _cpu_copy(self._require_pc()),
            path,
            trainer="PriorModule",
            global_step=int(self.global_step),
            **metadata,
        )
        return path

    def on_fit_end(self) -> None:
        """Export the circuit on rank 0: to ``export_path``, by default ``hclt.pt`` in the log
        folder (``""``: no export)."""
        export_at_fit_end(self, "hclt.pt")


def export_at_fit_end(module: pl.LightningModule, default_name: str) -> None:
    """``module.export(path)`` on rank 0, with ``path`` its ``export_path`` hyperparameter, by
    default ``default_name`` in the log folder (``""``: no export). The ``on_fit_end`` of every
    training module that writes its result (``PriorModule``, ``RDTrainingModule``), written once so
    that they resolve the path alike."""
    target = module.hparams.export_path
    if target == "" or not module.trainer.is_global_zero:
        return
    if target is None:
        target = Path(module.trainer.log_dir or module.trainer.default_root_dir) / default_name
    module.export(target)


def _cpu_copy(pc: HCLT) -> HCLT:
    copy = HCLT(pc.tree, pc.num_cats, pc.num_latents, dtype=pc.root_logits.dtype)
    copy.load_state_dict({k: v.detach().cpu() for k, v in pc.state_dict().items()})
    return copy
