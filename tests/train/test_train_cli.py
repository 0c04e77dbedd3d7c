"""``pc-prior lightning fit`` / ``codec train`` end to end on tiny synthetic data: checkpoints, resume, interrupts, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import make_mnist, make_pngs

from pc_prior.cli import main
from pc_prior.train import InterruptCheckpoint, MNISTDataModule, PriorModule

REPO = Path(__file__).resolve().parents[2]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def fit_args(tmp_path: Path, data: Path, epochs: int) -> list[str]:
    return [
        "lightning",
        "fit",
        "--config",
        str(REPO / "configs" / "mnist_hclt.yaml"),
        "--data.init_args.data",
        str(data),
        "--data.init_args.bits",
        "2",
        "--data.init_args.batch_size",
        "64",
        "--model.init_args.num_latents",
        "3",
        "--model.init_args.coded_items",
        "4",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--checkpoint.dirpath",
        str(tmp_path / "ckpt"),
        "--trainer.max_epochs",
        str(epochs),
        *QUIET,
    ]


def test_fit_writes_checkpoints_logs_and_resumes(tmp_path):
    data = make_mnist(tmp_path / "mnist", 128, 32)
    assert main(fit_args(tmp_path, data, 1)) == 0
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (0, 2)
    assert (tmp_path / "ckpt" / "epoch=0-step=2.ckpt").is_file()
    assert (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").is_file()
    assert list((tmp_path / "run" / "tensorboard" / "version_0").glob("events.out.tfevents*"))
    assert (tmp_path / "run" / "csv" / "version_0" / "hclt.pt").is_file()

    assert main([*fit_args(tmp_path, data, 2), "--ckpt_path", "last"]) == 0
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 4)  # continued, not restarted
    assert last["pc_structure"]["num_cats"] == 4


class StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_interrupt_saves_checkpoint_that_resumes(tmp_path):
    dm = MNISTDataModule(str(make_mnist(tmp_path / "m", 128, 32)), batch_size=32, bits=2)
    kw = dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        max_epochs=2,
    )
    saver = InterruptCheckpoint()
    trainer = pl.Trainer(callbacks=[StopAt(6), saver], **kw)
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl+C
        trainer.fit(PriorModule(num_latents=3, coded_items=0, export_path=""), dm)
    assert saver.last_path == tmp_path / "checkpoints" / "interrupted.ckpt"
    assert torch.load(saver.last_path, weights_only=False)["global_step"] == 6
    trainer = pl.Trainer(**kw)
    trainer.fit(
        PriorModule(num_latents=3, coded_items=0, export_path=""), dm, ckpt_path=saver.last_path
    )
    assert trainer.global_step == 8 and trainer.current_epoch == 2


def test_fit_missing_data_is_one_clear_error(tmp_path, capsys):
    assert main(fit_args(tmp_path, tmp_path / "nowhere", 1)) == 1
    err = capsys.readouterr().err
    assert "pc-prior lightning fit: error:" in err and "nowhere" in err and "Traceback" not in err
    assert not (tmp_path / "ckpt" / "interrupted.ckpt").exists()


def test_train_codec_command_and_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = [
        "codec",
        "train",
        "--data.train_dir",
        str(tmp_path / "empty"),
        "--data.num_workers",
        "0",
        *QUIET,
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
    ]
    assert main(args) == 1
    assert "no images" in capsys.readouterr().err
    args[3] = str(make_pngs(tmp_path / "train", 4))
    args += [
        "--model.arch",
        "FactorizedPrior",
        "--model.net_kwargs",
        '{"N": 8, "M": 12}',
        "--data.patch_size",
        "64",
        "--data.batch_size",
        "2",
        "--data.pin_memory",
        "false",
        "--trainer.max_steps",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--model.export_path",
        str(tmp_path / "codec.pt"),
    ]
    assert main(args) == 0
    ck = torch.load(tmp_path / "codec.pt", weights_only=False)
    assert ck["arch"] == "FactorizedPrior" and ck["steps"] == 2 and ck["lmbda"] == 0.0067
    assert (tmp_path / "run" / "checkpoints").is_dir() or list((tmp_path / "run").rglob("*.ckpt"))


def test_old_names_and_refused_arguments_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["--data.train_dir", str(tmp_path / "empty"), "--data.num_workers", "0", *QUIET]
    args += ["--trainer.default_root_dir", str(tmp_path / "run")]
    assert main(["train-codec", *args]) == 1  # the old name: still runs, with one warning
    err = capsys.readouterr().err
    assert (
        "pc-prior: warning: 'pc-prior train-codec' is deprecated and goes in the next release; "
        "use 'pc-prior codec train'" in err
    )
    assert "pc-prior train-codec: error:" in err and "no images" in err
    # an argument the module's class refuses: one line with the class's message, no traceback
    assert main(["codec", "train", *args, "--model.quality", "99"]) == 1
    err = capsys.readouterr().err
    assert "pc-prior codec train: error: an argument was refused: quality must be one of" in err
    assert "Traceback" not in err
    # finetune takes RDModule (or a subclass) only: LightningCLI's parser refuses the codec config
    codec_config = str(REPO / "configs" / "codec_factorized.yaml")
    with pytest.raises(SystemExit) as e:
        main(["codec", "finetune", "--config", codec_config, *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: pc-prior codec finetune [-c CONFIG]")
    assert "does not correspond to a subclass of RDModule" in err


@pytest.mark.parametrize("path", [["codec", "train"], ["codec", "finetune"], ["lightning", "fit"]])
def test_lightning_help_is_lightning_clis_under_the_command_name(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--lightning-help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pc-prior {' '.join(path)} [-c CONFIG]"), out[:200]
    assert "[options] fit" not in out and "--ckpt_path" in out and "--trainer.max_steps" in out


def _one_step_fit(tmp_path: Path, *extra: str):
    from pc_prior.train.cli import run_lightning_cli

    args = fit_args(tmp_path, make_mnist(tmp_path / "mnist", 64, 32), 1)[2:]  # no "lightning fit"
    args = [a for a in args if a not in QUIET]
    return run_lightning_cli(
        [*args, "--trainer.max_steps", "1", "--trainer.enable_model_summary", "false", *extra]
    ).trainer


def test_cli_trainer_gets_checkpoints_loggers_and_a_log_friendly_bar(tmp_path, monkeypatch):
    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    import pc_prior.progress

    monkeypatch.setattr(pc_prior.progress, "stderr_is_terminal", lambda: False)
    trainer = _one_step_fit(tmp_path)
    kinds = [type(c) for c in trainer.callbacks]
    assert kinds.count(ModelCheckpoint) == 1 and kinds.count(InterruptCheckpoint) == 1
    assert kinds.count(TQDMProgressBar) == 1
    assert trainer.progress_bar_callback.refresh_rate == pc_prior.progress.LOG_REFRESH_BATCHES
    assert [type(lg) for lg in trainer.loggers] == [CSVLogger, TensorBoardLogger]
    assert Path(trainer.loggers[0].log_dir).parent == tmp_path / "run" / "csv"
    assert trainer.checkpoint_callback.dirpath == str(tmp_path / "ckpt")


def test_cli_trainer_keeps_explicit_logger_and_bar_settings(tmp_path, monkeypatch):
    import pc_prior.progress

    monkeypatch.setattr(pc_prior.progress, "stderr_is_terminal", lambda: True)
    trainer = _one_step_fit(tmp_path, "--trainer.logger", "false")
    assert trainer.loggers == []
    assert trainer.progress_bar_callback.refresh_rate == 1  # a terminal: Lightning's default
    trainer = _one_step_fit(tmp_path / "quiet", *QUIET)
    assert trainer.progress_bar_callback is None
    assert sum(isinstance(c, InterruptCheckpoint) for c in trainer.callbacks) == 1


def test_cli_overrides_only_public_lightning_hooks():
    from pytorch_lightning.cli import LightningCLI

    from pc_prior.train.cli import _cli_class

    own = [n for n in vars(_cli_class()) if callable(getattr(LightningCLI, n, None))]
    assert own and all(not n.startswith("_") for n in own), own
