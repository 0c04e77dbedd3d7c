"""``pc-prior fit`` and ``pc-prior train-codec``: LightningCLI behind the argparse entry point.

Everything after the sub-command goes to LightningCLI's ``fit`` (``--config``, ``--trainer.*``,
``--model.*``, ``--data.*``, ``--checkpoint.*``, ``--ckpt_path``). Every run gets a
``ModelCheckpoint`` (each epoch, plus ``last.ckpt``; configure under ``checkpoint:``), a checkpoint
on interrupt (``interrupted.ckpt``), and CSV + TensorBoard loggers under ``default_root_dir``
unless ``trainer.logger`` is set. When stderr is not a terminal (a log file, CI) the progress bar
redraws every ``pc_prior.progress.LOG_REFRESH_BATCHES`` batches instead of every batch.

Only LightningCLI's public seams are used: ``trainer_defaults`` for the interrupt checkpoint,
``add_arguments_to_parser`` for the checkpoint options, and ``instantiate_trainer`` (whose keyword
arguments override the parsed trainer options) for the loggers and the progress bar.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["register", "run_lightning_cli"]

FIT_HELP = (
    "train a model with LightningCLI, e.g. pc-prior fit --config configs/mnist_hclt.yaml "
    "--trainer.max_epochs 1, or joint codec + PC prior fine-tuning with --config configs/rd_factorized.yaml "
    "(any LightningModule/DataModule by class_path)"
)
CODEC_HELP = (
    "train a CompressAI codec from scratch (CodecModule + ImageFolderDataModule), e.g. "
    "pc-prior train-codec --data.train_dir DIR --data.val_dir DIR --model.quality 2 --trainer.max_steps 10000"
)


def _cli_class():
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI

    class PCPriorCLI(LightningCLI):
        """LightningCLI with an always-on ModelCheckpoint (``checkpoint``), interrupt checkpoints and default loggers."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults(
                {
                    "checkpoint.save_last": True,
                    "checkpoint.every_n_epochs": 1,
                    "checkpoint.save_top_k": 1,
                }
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


def run_lightning_cli(args: list[str], model_class=None, datamodule_class=None) -> Any:
    """Run ``fit`` through LightningCLI with ``args``; subclass mode (``class_path``) unless classes are given."""
    import warnings

    import pytorch_lightning as pl

    from .callbacks import InterruptCheckpoint

    cli = _cli_class()
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    fixed = model_class is not None
    return cli(
        model_class if fixed else pl.LightningModule,
        datamodule_class if fixed else pl.LightningDataModule,
        subclass_mode_model=not fixed,
        subclass_mode_data=not fixed,
        args=["fit", *args],
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [InterruptCheckpoint()]},
        auto_configure_optimizers=False,
    )


def _fit(args: argparse.Namespace) -> int:
    run_lightning_cli(list(args.lightning_args))
    return 0


def _train_codec(args: argparse.Namespace) -> int:
    from .codec import CodecModule
    from .data import ImageFolderDataModule

    run_lightning_cli(list(args.lightning_args), CodecModule, ImageFolderDataModule)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fit`` and ``train-codec`` to the ``pc-prior`` command line."""
    for name, help_, func in (("fit", FIT_HELP, _fit), ("train-codec", CODEC_HELP, _train_codec)):
        p = subparsers.add_parser(
            name,
            help=help_,
            description=help_ + ". Run with --help for LightningCLI's options.",
            add_help=False,
            prefix_chars="\0",
        )
        p.add_argument(
            "lightning_args", nargs=argparse.REMAINDER, help="arguments for LightningCLI fit"
        )
        p.set_defaults(func=func)
