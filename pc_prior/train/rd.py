"""``RDModule``: fine-tune a CompressAI codec and its PC entropy model jointly for rate-distortion.

Start: a codec file (``shared/models`` format, a ``CodecModule`` export, a ``pc-prior prior fit``
output that already holds a ``PCEntropyBottleneck``, or an ``RDModule`` export), a CompressAI
training checkpoint or state dict (with ``arch``), a zoo name ``ARCH:qN`` (pretrained weights,
downloaded; offline this fails with :class:`pc_prior.errors.ModelLoadError` naming the fix),
or nothing (``arch``/``quality``/``net_kwargs``, random weights).

Priors. Every entropy model of the codec is trained as a PC entropy model: its
``EntropyBottleneck`` becomes a ``PCEntropyBottleneck`` and, in a hyperprior codec, its
``GaussianConditional`` a ``PCConditional`` (``conditional``). The unfitted ones are fitted
(``fit_prior``) on the latents of up to ``prior_max_images`` training crops in ``setup``, before
the optimizers exist, with ``fit_prior``'s defaults (``pc_prior.settings``: the three-pass
contexts, categorical leaves), so joint training starts from the default frozen prior; a resumed
run skips this, the checkpoint holds the circuits. The training-mode rate of both models is the
coded rate, contexts included, trained through a smooth relaxation (see
``pc_prior.integrations.entropy_models``), so it trains the analysis transforms, the circuits
and, in a hyperprior, the hyper-synthesis. ``leaves="logistic"`` instead gives the bottleneck
discretized-logistic leaves (one pass; a fitted one-pass categorical circuit is converted). The
circuits' parameters are logits (log-softmax at every use) and log-scales (clamped), so any
gradient step leaves a valid distribution; the integer coding tables are a function of them and
are rebuilt (``update(force=True)``) before every validation that codes and on export, where the
bottleneck's leaves are first put back on their stored grid (``snap_leaves``: compact files). The
alphabets, medians and contexts fixed by the first fit stay; latents that drift outside an
alphabet are coded exactly through the escape path, only at a higher cost.

The module exports the circuits as trained; ``pc-prior codec finetune MODEL --data DIR -o OUT``
then refits them by default (``pc_prior.train.cli.Refit``: ``prior fit``'s default fit on the
fine-tuned codec), which coded about 1% smaller on validation data than the jointly trained ones
(factorized q1-q4, hyperprior q1). ``pc-prior prior fit`` on any run's output is the same refit.

Loss, as CompressAI's ``examples/train.py``: ``λ·255²·MSE + bpp`` or ``λ·(1 − MS-SSIM) + bpp``;
main Adam (codec at ``lr``, the circuit at ``prior_lr``), auxiliary Adam on the ``.quantiles``,
gradient clipping, step LR decay (see :class:`~pc_prior.train.codec.RDTrainingModule`).

Plain bottleneck. With ``keep_plain_bottleneck`` the codec's original factorized bottleneck (a
fresh one when the start already had a circuit) is kept beside it and trained on the *detached*
latents (its rate only moves its own density), so the fine-tuned transforms can also be exported
as an ordinary CompressAI codec, and ``val_bpp_plain`` compares the two entropy models on the same
latents.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from ..continuous import DiscretizedLogisticTree
from ..integrations import (
    PCConditional,
    PCEntropyBottleneck,
    fit_prior,
    save_codec,
    swap_entropy_model,
)
from ..integrations.swap import PC_MODULES
from ..settings import RD_BOTTLENECK, BottleneckFit, Finetune
from .codec import METRICS, RDTrainingModule, load_start_codec, start_lambda

__all__ = ["RDModule"]

#: The ``BottleneckFit`` fields RDModule takes as arguments of its own: field -> argument.
OWN_SETTINGS = {
    "num_latents": "num_latents",
    "structure": "structure",
    "leaves": "leaves",
    "max_items": "prior_max_items",
    "epochs": "prior_epochs",
    "finetune_steps": "prior_finetune_steps",
    "seed": "seed",
}


class RDModule(RDTrainingModule):
    """Joint rate-distortion fine-tuning of a CompressAI codec and a PC entropy model.

    Args:
        codec: what to start from (see :func:`load_start_codec`); ``None``: random ``arch``/``quality``/``net_kwargs``.
        arch, quality, net_kwargs: the architecture when ``codec`` does not say (random init,
            plain state dicts); ``quality`` also picks the default λ.
        metric: ``"mse"`` (loss ``λ·255²·MSE + bpp``) or ``"ms-ssim"`` (``λ·(1 − MS-SSIM) + bpp``).
        lmbda: ``None``: the codec file's λ (same metric), else CompressAI's zoo λ for ``quality``.
        bottleneck: attribute name of the entropy bottleneck to replace by a circuit.
        conditional: attribute name of the Gaussian conditional to replace by a ``PCConditional``
            where the codec has one (hyperprior codecs); ``None``: keep CompressAI's.
        num_latents, structure, leaves: the bottleneck's circuit (``BottleneckFit``'s fields).
        prior_images: folder of images for the initial fit; ``None``: the datamodule's training set
            (its random crops, drawn with ``seed``, identical on every DDP rank).
        prior_max_images, prior_max_items, prior_epochs, prior_finetune_steps: bounds of the initial fit.
        prior_fit: further ``BottleneckFit`` fields of the initial fit, one to one (e.g.
            ``batch_size``, ``step_size``; a dict, so configs and checkpoints hold plain data);
            every setting not given is ``BottleneckFit``'s default (with ``leaves="logistic"``,
            ``RD_BOTTLENECK``'s: one pass).
        conditional_fit: ``ConditionalFit`` fields of the conditional's initial fit (a dict;
            the rest: the defaults).
        lr, prior_lr, aux_lr: Adam learning rates of the codec (with the plain bottleneck's density),
            the circuit (``None``: ``lr``), and the quantiles.
        clip_max_norm, lr_decay_at, lr_decay_factor, pad_multiple: as in ``CodecModule``.
        coded_val_batches: validation batches really compressed (``val_bpp_coded``; ``None``: all, 0: none).
        keep_plain_bottleneck: train a factorized bottleneck beside the circuit on detached latents.
        export_path: codec file written at the end of fitting (default ``<log_dir>/codec.pt``; ``""``: none);
            read by ``pc_prior.integrations.load_codec``.
        plain_export_path: plain CompressAI state dict of the codec with the plain bottleneck
            (default ``<export stem>-plain-state-dict.pt`` next to it; ``""``: none).
        seed: seed of the initial fit's data and EM.
        prior_progress: progress bars while the initial fit collects latents and fits.

    The learning rates' and ``prior_max_images``' defaults are ``pc_prior.settings.Finetune``'s
    (those of ``pc-prior codec finetune`` on a CPU).
    """

    def __init__(
        self,
        codec: str | None = None,
        arch: str = "bmshj2018-factorized",
        quality: int = 3,
        net_kwargs: dict[str, Any] | None = None,
        metric: str = "mse",
        lmbda: float | None = None,
        bottleneck: str = "entropy_bottleneck",
        conditional: str | None = "gaussian_conditional",
        num_latents: int = BottleneckFit.num_latents,
        structure: str = BottleneckFit.structure,
        leaves: str = BottleneckFit.leaves,
        prior_images: str | None = None,
        prior_max_images: int = Finetune.prior_images,
        prior_max_items: int | None = BottleneckFit.max_items,
        prior_epochs: int = BottleneckFit.epochs,
        prior_finetune_steps: int = BottleneckFit.finetune_steps,
        prior_fit: dict[str, Any] | None = None,
        conditional_fit: dict[str, Any] | None = None,
        lr: float = Finetune.lr,
        prior_lr: float | None = Finetune.prior_lr,
        aux_lr: float = Finetune.aux_lr,
        clip_max_norm: float = 1.0,
        lr_decay_at: float | None = 0.85,
        lr_decay_factor: float = 0.1,
        pad_multiple: int = 64,
        coded_val_batches: int | None = None,
        keep_plain_bottleneck: bool = True,
        export_path: str | None = None,
        plain_export_path: str | None = None,
        seed: int = 0,
        prior_progress: bool = False,
    ) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if leaves not in ("logistic", "categorical"):
            raise ValueError(f'leaves must be "logistic" or "categorical", got {leaves!r}')
        given = locals()
        self._bottleneck_settings(  # checked now: a bad setting fails before anything is loaded
            {field: given[name] for field, name in OWN_SETTINGS.items()}, prior_fit
        )
        PCConditional.check_settings(**(conditional_fit or {}))
        net, meta = load_start_codec(codec, arch, quality, net_kwargs, metric)
        lmbda = start_lambda(lmbda, meta, metric)
        self.save_hyperparameters()
        self.hparams.lmbda = float(lmbda)  # resolved (LightningCLI may record the given None)
        self.codec_info = {k: v for k, v in meta.items() if v is not None}
        old = getattr(net, bottleneck, None)
        if not isinstance(old, EntropyBottleneck):
            raise TypeError(
                f"the codec's {bottleneck!r} is {type(old).__name__}, not an EntropyBottleneck"
            )
        for p in net.parameters():
            p.requires_grad_(True)
        if isinstance(old, PCEntropyBottleneck):
            plain = EntropyBottleneck(old.channels) if keep_plain_bottleneck else None
        else:
            plain = old if keep_plain_bottleneck else None
            swap_entropy_model(net, bottleneck)
        gc = getattr(net, conditional, None) if conditional is not None else None
        if isinstance(gc, GaussianConditional) and not isinstance(gc, PCConditional):
            swap_entropy_model(net, conditional)  # a hyperprior's: trained as a PCConditional
        self.net = net
        self.plain_bottleneck = plain
        self._init_rd()
        self.register_load_state_dict_post_hook(RDModule._after_load)

    # -- the circuit ----------------------------------------------------------------------------
    @property
    def pc_bottleneck(self) -> PCEntropyBottleneck:
        """The codec's ``PCEntropyBottleneck`` (the module named by ``bottleneck``)."""
        return getattr(self.net, self.hparams.bottleneck)

    @property
    def pc_modules(self) -> dict[str, nn.Module]:
        """Every PC entropy model this module trains, by name: the bottleneck, and the
        ``PCConditional`` of a hyperprior codec (``conditional``)."""
        names = [self.hparams.bottleneck, self.hparams.conditional]
        return {
            n: getattr(self.net, n)
            for n in names
            if n is not None and isinstance(getattr(self.net, n, None), PC_MODULES)
        }

    @staticmethod
    def _bottleneck_settings(
        own: dict[str, Any], prior_fit: dict[str, Any] | None
    ) -> BottleneckFit:
        """The bottleneck's initial fit settings: ``BottleneckFit``'s defaults (``RD_BOTTLENECK``'s
        with logistic leaves, which have one pass), RDModule's own arguments and ``prior_fit``."""
        if prior_fit is not None:
            clash = sorted(set(prior_fit) & {*own, "progress"})
            if clash:
                raise ValueError(
                    f"prior_fit must not hold {', '.join(clash)}: RDModule has its own arguments "
                    "for them (prior_max_items, prior_epochs, prior_finetune_steps, seed, ...)"
                )
        base = RD_BOTTLENECK if own.get("leaves") == "logistic" else BottleneckFit()
        return PCEntropyBottleneck.check_settings(base, **own, **(prior_fit or {}))

    def _prior_images(self) -> list[Tensor]:
        """Batches of training images for the initial fit, the same on every rank (seeded)."""
        hp = self.hparams
        if hp.prior_images is not None:
            from ..images import FolderImages

            return list(
                FolderImages(hp.prior_images, hp.pad_multiple, hp.prior_max_images, seed=hp.seed)
            )
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        dataset = getattr(dm, "train_set", None)
        if dataset is None and dm is not None:
            dataset = dm.train_dataloader().dataset
        if dataset is None:
            raise ValueError(
                "RDModule needs prior_images (a folder) or a datamodule with a training set "
                "to fit the circuit on"
            )
        return self.prior_batches(dataset)

    def prior_batches(self, dataset: Any) -> list[Tensor]:
        """Batches of 8 of ``prior_max_images`` items of ``dataset`` (its random crops), drawn
        with ``seed`` and the same on every rank: what the initial fit sees of a training set."""
        hp = self.hparams
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp.seed)
            idx = torch.randperm(len(dataset))[: hp.prior_max_images].tolist()
            items = [dataset[i] for i in idx]
        items = [x[0] if isinstance(x, (tuple, list)) else x for x in items]
        return [torch.stack(items[i : i + 8]) for i in range(0, len(items), 8)]

    def fit_prior(self, images: list[Tensor] | None = None) -> dict[str, list[dict]]:
        """Fit the PC entropy models not fitted yet on the current codec's latents (``images``:
        default :meth:`_prior_images`), with the default settings (see the class).

        Returns ``fit_prior``'s histories by module name.
        """
        hp = self.hparams
        names = [n for n, m in self.pc_modules.items() if not m.fitted]
        if not names:
            return {}
        images = self._prior_images() if images is None else images
        own = {field: hp[name] for field, name in OWN_SETTINGS.items()}
        hist = fit_prior(
            self.net,
            images,
            name=names,
            bottleneck=self._bottleneck_settings(own, hp.prior_fit),
            conditional=PCConditional.check_settings(
                **({"seed": hp.seed} | (hp.conditional_fit or {}))
            ),
            progress=bool(hp.get("prior_progress", False)),
        )
        for p in self.net.parameters():  # fit_prior froze the codec
            p.requires_grad_(True)
        return hist

    def _convert_leaves(self) -> None:
        eb = self.pc_bottleneck
        if self.hparams.leaves == "logistic" and not isinstance(eb.pc, DiscretizedLogisticTree):
            if eb.schedule is not None:  # leaf groups, state context: categorical only
                raise ValueError(
                    f"the codec's bottleneck codes in the {eb.schedule!r} schedule, which logistic "
                    "leaves have no leaf groups for: keep leaves='categorical' to fine-tune it"
                )
            eb.pc = DiscretizedLogisticTree.from_hclt(
                eb.pc, eb._offset.long(), eb._cdf_length.long()
            )
            with torch.no_grad():
                eb.update(force=True)

    def setup(self, stage: str) -> None:
        """At the start of a fit (not a resume): fit the PC entropy models not fitted yet on
        latents of the training crops, or give a fitted one-pass bottleneck logistic leaves when
        ``leaves="logistic"``."""
        if stage != "fit" or self.trainer.ckpt_path is not None:
            return  # resuming: the checkpoint holds the circuits (frozen as they load)
        if any(not m.fitted for m in self.pc_modules.values()):
            self.net.to(self.trainer.strategy.root_device)
            self.fit_history = self.fit_prior()
        self._convert_leaves()
        self._freeze_untrained()

    @staticmethod
    def _after_load(module: RDModule, _incompatible: Any) -> None:
        module._freeze_untrained()  # a resumed run's circuits come from its checkpoint

    def _freeze_untrained(self) -> None:
        """The PC entropy models' ``untrained_parameters`` get no gradient (``requires_grad``
        off): the rate does not depend on them, and DDP requires a gradient for every parameter
        that wants one. Done after the initial fit and after a checkpoint loads its circuits."""
        for m in self.pc_modules.values():
            for p in m.untrained_parameters():
                p.requires_grad_(False)

    # -- training -------------------------------------------------------------------------------
    def param_groups(self, main: list[nn.Parameter]) -> list[dict[str, Any]]:
        """The main optimizer's groups: the codec at ``lr`` and the PC prior at ``prior_lr`` (one
        group when that is None)."""
        # the untrained circuit parameters too, in place (no gradient: Adam leaves them), so the
        # optimizer's state keeps one layout for any context and checkpoints resume across them
        kept = {id(p) for p in main} | {
            id(p) for m in self.pc_modules.values() for p in m.untrained_parameters()
        }
        main = [p for p in self.parameters() if id(p) in kept]
        prior_lr = self.hparams.prior_lr
        if prior_lr is None:
            return [{"params": main}]
        density = {  # the plain bottleneck trains at lr, as in CompressAI
            id(p) for m in self.pc_modules.values() for p in m.parameters()
        }
        codec = [p for p in main if id(p) not in density]
        prior = [p for p in main if id(p) in density]
        return [{"params": codec}, {"params": prior, "lr": prior_lr}]

    def configure_optimizers(self):
        """``RDTrainingModule``'s optimizers, once the PC prior is fitted (``setup`` fits it)."""
        unfitted = [n for n, m in self.pc_modules.items() if not m.fitted]
        if unfitted:
            raise RuntimeError(
                f"the PC entropy models {', '.join(unfitted)} are not fitted: RDModule fits them "
                "in setup('fit') (or call fit_prior(images) first)"
            )
        return super().configure_optimizers()

    @contextlib.contextmanager
    def capture_latent(self) -> Iterator[list[Tensor]]:
        """Within the block, the inputs of every PC bottleneck forward are appended to the yielded list."""
        seen: list[Tensor] = []
        handle = self.pc_bottleneck.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            yield seen
        finally:
            handle.remove()

    def rd_step(self, x: Tensor) -> dict[str, Tensor]:
        """``RDTrainingModule.rd_step``, with the latent captured for the plain bottleneck's loss
        (``extra_loss``)."""
        with self.capture_latent() as self._seen:
            try:
                return super().rd_step(x)
            finally:
                self._seen = []

    def extra_loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]] | None:
        """Rate of the plain bottleneck on the detached latent: trains only its own density."""
        if self.plain_bottleneck is None or not getattr(self, "_seen", None):
            return None
        bpp = self._plain_bpp(self._seen[-1].detach(), x)
        return bpp, {"bpp_plain": bpp.detach()}

    def _plain_bpp(self, y: Tensor, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        _, lik = self.plain_bottleneck(y)
        return torch.log(lik).sum() / (-math.log(2) * n * h * w)

    def on_validation_epoch_start(self) -> None:
        """Rebuild the coding tables, the plain bottleneck's too."""
        super().on_validation_epoch_start()
        if self.plain_bottleneck is not None:
            with torch.no_grad():
                self.plain_bottleneck.update(force=True)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        """``RDTrainingModule.validation_step``, plus the plain bottleneck's rate
        (``val_bpp_plain``)."""
        with self.capture_latent() as seen:
            super().validation_step(batch, batch_idx)
        if self.plain_bottleneck is not None and seen:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            self.log(
                "val_bpp_plain", self._plain_bpp(seen[0], x), batch_size=len(x), sync_dist=True
            )

    # -- export ---------------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        """Write the codec with its circuit (``save_codec`` format, coding tables up to date) to ``path``,
        and the plain CompressAI state dict beside it (see ``plain_export_path``)."""
        path = Path(path)
        net = copy.deepcopy(self.net).cpu().eval()
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, PCEntropyBottleneck):
                    m.snap_leaves()  # the stored grid, so the file is compact and codes as stored
            net.update(force=True)
        arch, quality, extra = self._file_meta()
        save_codec(net, path, arch, quality, **extra)
        plain_target = self.hparams.plain_export_path
        if self.plain_bottleneck is not None and plain_target != "":
            if plain_target is None:
                plain_target = path.with_name(path.stem + "-plain-state-dict.pt")
            self.export_plain(plain_target)
        return path

    def plain_codec(self) -> nn.Module:
        """A CPU copy of the codec with CompressAI's own entropy models in place of the PC ones
        (the plain factorized bottleneck; a ``GaussianConditional``), tables updated."""
        if self.plain_bottleneck is None:
            raise RuntimeError("keep_plain_bottleneck is off: there is no plain bottleneck")
        net = copy.deepcopy(self.net).cpu().eval()
        setattr(net, self.hparams.bottleneck, copy.deepcopy(self.plain_bottleneck).cpu().eval())
        for name, m in self.pc_modules.items():  # a Gaussian conditional has no parameters
            if isinstance(m, PCConditional):
                setattr(net, name, GaussianConditional(None))
        with torch.no_grad():
            net.update(force=True)
        return net

    def export_plain(self, path: str | Path) -> Path:
        """Save the plain codec's state dict (what ``compressai`` models load, e.g. ``FactorizedPrior.from_state_dict``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.plain_codec().state_dict(), path)
        return path
