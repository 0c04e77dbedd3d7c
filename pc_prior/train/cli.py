"""``pc-prior codec train``, ``pc-prior codec finetune`` and ``pc-prior lightning fit``: LightningCLI.

Three commands, one LightningCLI, which fits the model on the data module:

- ``codec train``: ``CodecModule`` on ``ImageFolderDataModule`` (a CompressAI codec from scratch;
  was ``train-codec``);
- ``codec finetune``: ``RDModule`` on ``ImageFolderDataModule`` (joint rate-distortion fine-tuning
  of a trained codec and a PC prior; was ``fit --config configs/rd_factorized.yaml``);
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
from typing import Any

__all__ = ["codec_finetune", "codec_train", "lightning_fit", "run_lightning_cli"]


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
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.get("ckpt_path"))
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
    with LightningCLI, from the parsed command's LightningCLI arguments; returns the exit status."""
    from .datamodules import ImageFolderDataModule
    from .rd import RDModule

    run_lightning_cli(
        _lightning_args(args), RDModule, ImageFolderDataModule, f"pc-prior {args.command_name}"
    )
    return 0


def lightning_fit(args: argparse.Namespace) -> int:
    """``pc-prior lightning fit``: fit any LightningModule on any LightningDataModule named by
    ``class_path`` with LightningCLI; returns the exit status."""
    run_lightning_cli(_lightning_args(args), prog=f"pc-prior {args.command_name}")
    return 0
