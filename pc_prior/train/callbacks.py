"""Callbacks shared by the training commands."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

__all__ = ["InterruptCheckpoint"]


class InterruptCheckpoint(Callback):
    """Save ``<checkpoint dir>/interrupted.ckpt`` when fitting stops on an exception (Ctrl+C, SIGTERM, errors).

    The folder is ``dirpath`` if given, else that of the trainer's ``ModelCheckpoint``, else
    ``<default_root_dir>/checkpoints``. Resume with ``--ckpt_path <that file>``.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "interrupted.ckpt") -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.last_path: Path | None = None

    def _dir(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        cb = trainer.checkpoint_callback
        if cb is not None and getattr(cb, "dirpath", None):
            return Path(cb.dirpath)
        return Path(trainer.default_root_dir) / "checkpoints"

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Save the checkpoint when fitting stops on an exception after at least one step; a failure
        to save is a warning and never masks the exception."""
        if trainer.state.fn != "fit" or trainer.global_step == 0:
            return  # nothing trained yet (e.g. the data failed to load): keep the original error alone
        path = self._dir(trainer) / self.filename
        try:
            trainer.save_checkpoint(path)  # every rank must call it; rank 0 writes
        except Exception as e:  # never mask the exception that stopped training
            rank_zero_warn(f"could not save {path} after {type(exception).__name__}: {e}")
            return
        self.last_path = path
        rank_zero_info(f"saved {path}; resume with --ckpt_path {path}")
