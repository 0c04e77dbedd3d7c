"""``pc-prior codec train``, ``pc-prior codec finetune`` and ``pc-prior lightning fit``: LightningCLI.

Three commands, one LightningCLI, which fits the model on the data module:

- ``codec train``: ``CodecModule`` on ``ImageFolderDataModule`` (a CompressAI codec from scratch;
  was ``train-codec``);
- ``codec finetune``: ``RDModule`` on ``ImageFolderDataModule`` (joint rate-distortion fine-tuning
  of a trained codec and a PC prior; was ``fit --config configs/rd_factorized.yaml``); its short
  form ``MODEL --data DIR -o OUTPUT`` then refits the priors (``Refit``: ``prior fit``'s default
  fit on the fine-tuned codec; ``--no-refit`` keeps the jointly trained ones);
- ``lightning fit``: any ``LightningModule`` on any ``LightningDataModule``, chosen by
  ``class_path`` in a config (e.g. ``PriorModule`` on MNIST; was ``fit``).

The first two take their classes or subclasses of them, so ``--model.quality 2`` needs no
``class_path`` and a config written with one (``configs/*.yaml``) works as well. Everything after
the verb goes to LightningCLI (``--config``, ``--trainer.*``, ``--model.*``, ``--data.*``,
``--checkpoint.*``, ``--ckpt_path``); ``--lightning-help`` is its ``--help`` (the parsers, in
``pc_prior.cli``, print their own ``--help`` without importing Lightning). LightningCLI runs without
sub-commands (``run=False``) and this module calls ``trainer.fit``, so its usage reads ``pc-prior
codec train [-h] ...`` and not ``pc-prior [options] fit``.

Every run gets a ``ModelCheckpoint`` (each epoch, plus ``last.ckpt``; configure under
``checkpoint:``), a checkpoint on interrupt (``interrupted.ckpt``), and CSV + TensorBoard loggers
under ``default_root_dir`` unless ``trainer.logger`` is set. When stderr is not a terminal (a log
file, CI) the progress bar redraws every ``pc_prior.progress.LOG_REFRESH_BATCHES`` batches instead
of every batch.

Arguments that LightningCLI's parser, or a class it builds from them, refuses are ``InputError``
(one line); errors while fitting keep their traceback. Only LightningCLI's public seams are used: ``trainer_defaults`` for the interrupt checkpoint,
``add_arguments_to_parser`` for the checkpoint options and ``--ckpt_path``, and
``instantiate_trainer`` (whose keyword arguments override the parsed trainer options) for the
loggers and the progress bar.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Refit",
    "codec_finetune",
    "codec_train",
    "finetune_cli_args",
    "lightning_fit",
    "run_lightning_cli",
]


def _cli_class():
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI

    class PCPriorCLI(LightningCLI):
        """LightningCLI with an always-on ModelCheckpoint (``checkpoint``), ``--ckpt_path``,
        interrupt checkpoints and default loggers."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults(
                {
                    "checkpoint.save_last": True,
                    "checkpoint.every_n_epochs": 1,
                    "checkpoint.save_top_k": 1,
                }
            )
            for key, cls in (("model", self.model_class), ("data", self.datamodule_class)):
                if cls not in (None, pl.LightningModule, pl.LightningDataModule):
                    # the command's own class needs no class_path; a config may name a subclass
                    parser.set_defaults({key: {"class_path": f"{cls.__module__}.{cls.__name__}"}})
            parser.add_argument(
                "--ckpt_path",
                type=str | None,
                default=None,
                help="resume from this checkpoint ('last': <checkpoint.dirpath>/last.ckpt)",
            )

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            """Lightning's trainer, with CSV + TensorBoard loggers unless ``trainer.logger`` is
            set, and a log-friendly progress bar when stderr is not a terminal."""
            from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar
            from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

            from ..progress import refresh_rate, stderr_is_terminal

            init = self.config_init[self.subcommand] if self.subcommand else self.config_init
            trainer = init.get("trainer") or {}
            if kwargs.get("logger", trainer.get("logger")) in (None, True):
                root = trainer.get("default_root_dir") or os.getcwd()
                kwargs["logger"] = [
                    CSVLogger(root, name="csv"),
                    TensorBoardLogger(root, name="tensorboard"),
                ]
            given = trainer.get("callbacks") or []
            given = given if isinstance(given, list) else [given]
            if (
                not stderr_is_terminal()
                and trainer.get("enable_progress_bar") is not False
                and not any(isinstance(c, ProgressBar) for c in given)
            ):
                self.trainer_defaults["callbacks"] = [
                    *self.trainer_defaults.get("callbacks", []),
                    TQDMProgressBar(refresh_rate=refresh_rate()),
                ]
            return super().instantiate_trainer(**kwargs)

    return PCPriorCLI


def run_lightning_cli(
    args: list[str],
    model_class: type | None = None,
    datamodule_class: type | None = None,
    prog: str = "pc-prior lightning fit",
) -> Any:
    """Parse ``args`` with LightningCLI and fit; returns the CLI (``.trainer``, ``.model``).

    The model and data module are ``model_class`` and ``datamodule_class`` or subclasses of them
    (default: any LightningModule and LightningDataModule), given by ``class_path`` or, for the
    classes themselves, by their arguments alone. ``prog`` is the command shown in usage lines.
    """
    import warnings

    import pytorch_lightning as pl

    from ..errors import InputError
    from .callbacks import InterruptCheckpoint

    cli_class = _cli_class()
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # our modules optimize manually and checkpoint the state after each step, as intended
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    try:
        cli = cli_class(
            model_class or pl.LightningModule,
            datamodule_class or pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=False,
            parser_kwargs={"prog": prog},
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": [InterruptCheckpoint()]},
            auto_configure_optimizers=False,
        )
    except ValueError as e:
        # jsonargparse reports an argument that the model's or data module's class refused
        # (quality 99, a missing codec file) as a ValueError naming it: bad input, not a bug.
        # Fitting is outside this block: its errors keep their kind and traceback.
        cause: BaseException = e
        while cause.__cause__ is not None:  # the class's own message, not jsonargparse's wrapping
            cause = cause.__cause__
        raise InputError(f"an argument was refused: {cause}") from e
    ckpt = cli.config.get("ckpt_path")
    dirpath = getattr(cli.trainer.checkpoint_callback, "dirpath", None)
    if ckpt == "last" and dirpath is not None:
        ckpt = os.path.join(dirpath, "last.ckpt")
    if ckpt in (None, "last", "best", "hpc", "registry"):  # Lightning resolves these names
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    else:  # set before fit, so that setup() sees it (RDModule then skips its initial prior fit)
        cli.trainer.ckpt_path = ckpt
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def _lightning_args(args: argparse.Namespace) -> list[str]:
    """The arguments for LightningCLI; ``--lightning-help`` asks it for its ``--help``."""
    return ["--help" if a == "--lightning-help" else a for a in args.lightning_args]


def codec_train(args: argparse.Namespace) -> int:
    """``pc-prior codec train``: fit ``CodecModule`` (or a subclass) on ``ImageFolderDataModule``
    with LightningCLI, from the parsed command's LightningCLI arguments; returns the exit status."""
    from .codec import CodecModule
    from .datamodules import ImageFolderDataModule

    run_lightning_cli(
        _lightning_args(args), CodecModule, ImageFolderDataModule, f"pc-prior {args.command_name}"
    )
    return 0


def codec_finetune(args: argparse.Namespace) -> int:
    """``pc-prior codec finetune``: fit ``RDModule`` (or a subclass) on ``ImageFolderDataModule``
    with LightningCLI; returns the exit status. ``MODEL --data DIR -o OUTPUT [options]`` (a first
    argument that is not an option) is the short form, translated by :func:`finetune_cli_args`;
    anything else goes to LightningCLI as given."""
    from .codec import CodecModule
    from .datamodules import ImageFolderDataModule
    from .rd import RDModule

    given = _lightning_args(args)
    prog = f"pc-prior {args.command_name}"
    if not given or given[0].startswith("-"):
        run_lightning_cli(given, RDModule, ImageFolderDataModule, prog)
        return 0
    given, own, refit = finetune_cli_args(given, prog)
    cli = run_lightning_cli(given, CodecModule if own else RDModule, ImageFolderDataModule, prog)
    last = cli.trainer.checkpoint_callback.dirpath
    # the final step too (optimizer states included), so a longer rerun goes on from it
    cli.trainer.save_checkpoint(f"{last}/last.ckpt", weights_only=False)
    if refit is not None and cli.trainer.is_global_zero:
        refit.run()
    return 0


@dataclass(frozen=True)
class Refit:
    """The last step of ``codec finetune`` (``settings.Finetune.refit``): the jointly trained codec
    (``trained``, in the run folder) gets default priors fitted on its latents of the training
    folder (``pc_prior.integrations.api.fit_prior_file``, what ``pc-prior prior fit`` does),
    written to the command's OUTPUT."""

    trained: str
    data: str
    output: str
    device: str
    seed: int

    def run(self) -> None:
        """Fit the default priors into ``trained`` (progress shown) and write ``output``."""
        from ..integrations.api import fit_prior_file
        from ..settings import BottleneckFit, ConditionalFit

        print(
            f"refitting the priors of {self.trained} on {self.data} (the default fit; "
            f"--no-refit skips it) -> {self.output}",
            flush=True,
        )
        fit_prior_file(
            self.trained,
            self.data,
            self.output,
            bottleneck=BottleneckFit(seed=self.seed),
            conditional=ConditionalFit(seed=self.seed),
            device=self.device,
        )


def finetune_cli_args(
    argv: list[str], prog: str = "pc-prior codec finetune"
) -> tuple[list[str], bool, Refit | None]:
    """LightningCLI's arguments for ``codec finetune MODEL --data DIR -o OUTPUT [options]``,
    whether the codec keeps its own entropy models (``--own-entropy-models``: ``CodecModule``), and
    the refit that follows joint training (None with ``--no-refit`` or own entropy models; the
    trained codec is then exported to OUTPUT itself, else to ``joint.pt`` in the run folder).

    The defaults are ``settings.Finetune`` (a CPU) or ``settings.FINETUNE_GPU`` (``--device cuda``,
    or ``auto`` with a GPU). The run folder is OUTPUT with the suffix ``.run`` (checkpoints, logs,
    config); its ``checkpoints/last.ckpt`` is resumed unless ``--restart``. Validation and
    checkpoints every ``steps / checkpoints`` steps; the initial fit shows its progress.
    """
    from pathlib import Path

    import torch

    from ..cli import FINETUNE_OPTIONS, finetune_parser
    from ..errors import InputError
    from ..settings import FINETUNE_GPU, Finetune, from_args

    device = finetune_parser(prog=prog).parse_known_args(argv)[0].device  # picks the defaults
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here (use --device cpu)")
    gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    defaults = FINETUNE_GPU if gpu else Finetune()
    opts = finetune_parser(defaults, prog).parse_args(argv)  # bad ones: usage and exit 2
    s = from_args(defaults, opts, FINETUNE_OPTIONS)
    for name in ("steps", "batch_size", "patch_size", "prior_images", "val_images", "checkpoints"):
        if getattr(s, name) < 1:
            raise InputError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(s, name)}"
            )
    out = Path(opts.output)
    run = out.with_suffix(".run")
    every = max(1, s.steps // s.checkpoints)
    refit = None
    if s.refit and not opts.own_entropy_models:
        where = "cuda" if gpu else "cpu"
        refit = Refit(str(run / "joint.pt"), opts.data, str(out), where, s.seed)
    args = [
        f"--seed_everything={s.seed}",
        f"--model.codec={opts.model}",
        f"--model.lr={s.lr}",
        f"--model.aux_lr={s.aux_lr}",
        f"--model.export_path={refit.trained if refit else out}",
        f"--model.coded_val_batches={s.val_images if opts.val else 0}",
        f"--data.train_dir={opts.data}",
        f"--data.patch_size={s.patch_size}",
        f"--data.batch_size={s.batch_size}",
        f"--data.num_workers={s.num_workers}",
        f"--data.pin_memory={str(gpu).lower()}",
        f"--trainer.max_steps={s.steps}",
        f"--trainer.accelerator={'gpu' if gpu else 'cpu'}",
        f"--trainer.default_root_dir={run}",
        "--trainer.num_sanity_val_steps=0",
        f"--checkpoint.dirpath={run / 'checkpoints'}",
        f"--checkpoint.every_n_train_steps={every}",
        "--checkpoint.every_n_epochs=0",
    ]
    if opts.arch:
        args.append(f"--model.arch={opts.arch}")
    if not opts.own_entropy_models:
        args += [
            f"--model.prior_lr={s.prior_lr}",
            f"--model.prior_max_images={s.prior_images}",
            f"--model.seed={s.seed}",
            "--model.prior_progress=true",
        ]
    if opts.val:
        args += [
            f"--data.val_dir={opts.val}",
            f"--data.val_limit={s.val_images}",
            "--trainer.check_val_every_n_epoch=null",
            f"--trainer.val_check_interval={every}",
        ]
    else:
        args.append("--trainer.limit_val_batches=0")
    last = run / "checkpoints" / "last.ckpt"
    resume = last.is_file() and not opts.restart
    if resume:
        args.append(f"--ckpt_path={last}")
    what = "with CompressAI's own entropy models" if opts.own_entropy_models else "with PC priors"
    print(
        f"{prog}: {opts.model} {what}, {s.steps} steps of {s.batch_size} crops of "
        f"{s.patch_size}² from {opts.data} ({'GPU' if gpu else 'CPU'} defaults); run folder {run}"
        + (f", resuming from {last}" if resume else "")
        + ("; then the priors are refitted (default fit)" if refit else ""),
        flush=True,
    )
    return args, bool(opts.own_entropy_models), refit


def lightning_fit(args: argparse.Namespace) -> int:
    """``pc-prior lightning fit``: fit any LightningModule on any LightningDataModule named by
    ``class_path`` with LightningCLI; returns the exit status."""
    run_lightning_cli(_lightning_args(args), prog=f"pc-prior {args.command_name}")
    return 0
