"""``pc-prior codec finetune MODEL --data DIR -o OUTPUT``: the short form with defaults (tiny codec, generated images)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compressai.models import FactorizedPrior
from helpers import assert_round_trip, make_pngs

from pc_prior.cli import main
from pc_prior.errors import InputError
from pc_prior.integrations import PCEntropyBottleneck, build_codec, load_codec, save_codec
from pc_prior.settings import FINETUNE_GPU, Finetune
from pc_prior.train import CodecModule
from pc_prior.train.cli import finetune_cli_args

TINY = {"N": 8, "M": 12}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    make_pngs(tmp_path / "train", 6)
    make_pngs(tmp_path / "val", 2, (40, 72), 1)
    torch.manual_seed(0)
    net = build_codec("FactorizedPrior", 2, TINY)
    net.update(force=True)
    save_codec(net, tmp_path / "base.pt", "FactorizedPrior", 2, net_kwargs=TINY, lmbda=0.0035)
    return tmp_path


def short(tmp: Path, out: str, steps: int, *extra: str) -> list[str]:
    return [
        "codec",
        "finetune",
        str(tmp / "base.pt"),
        "--data",
        str(tmp / "train"),
        "-o",
        str(tmp / out),
        "--device",
        "cpu",
        "--steps",
        str(steps),
        "--batch-size",
        "2",
        "--patch-size",
        "64",
        "--prior-images",
        "4",
        "--checkpoints",
        "2",
        "--num-workers",
        "0",
        *extra,
    ]


def last_step(tmp: Path, out: str) -> int:
    ck = torch.load(
        tmp / Path(out).with_suffix(".run") / "checkpoints" / "last.ckpt", weights_only=False
    )
    return int(ck["global_step"])


def test_short_form_fine_tunes_exports_and_resumes(setup, capsys, monkeypatch):
    from pc_prior.train.rd import RDModule

    fits = []
    fit_prior = RDModule.fit_prior
    monkeypatch.setattr(RDModule, "fit_prior", lambda self: fits.append(1) or fit_prior(self))
    tmp = setup
    base = load_codec(tmp / "base.pt")
    assert main(short(tmp, "out/ft.pt", 3, "--val", str(tmp / "val"))) == 0
    assert "CPU defaults" in capsys.readouterr().out
    net = load_codec(tmp / "out" / "ft.pt")
    assert isinstance(net.entropy_bottleneck, PCEntropyBottleneck)
    assert net.entropy_bottleneck.schedule == "three-pass"  # the default fit's contexts
    assert not torch.equal(net.g_a[0].weight, base.g_a[0].weight)  # the codec trained
    assert_round_trip(net, torch.rand(1, 3, 64, 64))
    assert last_step(tmp, "out/ft.pt") == 3
    assert list((tmp / "out" / "ft.run" / "csv").rglob("metrics.csv"))

    assert len(fits) == 1
    assert main(short(tmp, "out/ft.pt", 5)) == 0  # the same command, more steps: goes on
    assert "resuming from" in capsys.readouterr().out
    assert len(fits) == 1  # the checkpoint holds the circuits: no second initial fit
    assert last_step(tmp, "out/ft.pt") == 5
    assert torch.load(tmp / "out" / "ft.pt", weights_only=True)["steps"] == 5

    assert main(short(tmp, "out/ft.pt", 2, "--restart")) == 0  # starts over
    assert "resuming" not in capsys.readouterr().out
    assert last_step(tmp, "out/ft.pt") == 2


def test_own_entropy_models_fine_tunes_the_codec_alone(setup):
    tmp = setup
    assert main(short(tmp, "own.pt", 2, "--own-entropy-models")) == 0
    file = torch.load(tmp / "own.pt", weights_only=True)
    assert file["pc_modules"] == [] and file["lmbda"] == 0.0035 and file["steps"] == 2
    net = load_codec(tmp / "own.pt")
    assert type(net) is FactorizedPrior  # CompressAI's own entropy models
    assert not torch.equal(net.g_a[0].weight, load_codec(tmp / "base.pt").g_a[0].weight)
    assert_round_trip(net, torch.rand(1, 3, 64, 64))


def test_codec_module_refuses_a_pc_codec(setup):
    tmp = setup
    assert main(short(tmp, "ft.pt", 1)) == 0
    with pytest.raises(ValueError, match="holds PC entropy models"):
        CodecModule(codec=str(tmp / "ft.pt"))


def test_defaults_are_the_settings_and_devices_pick_them(setup, monkeypatch):
    tmp = setup
    argv = [str(tmp / "base.pt"), "--data", str(tmp / "train"), "-o", str(tmp / "x.pt")]
    args, own, refit = finetune_cli_args([*argv, "--device", "cpu", "--no-refit"])
    s = Finetune()
    assert not own and refit is None and s.refit
    assert f"--model.export_path={tmp / 'x.pt'}" in args
    args, _, refit = finetune_cli_args([*argv, "--device", "cpu"])  # the default: a refit
    assert refit is not None and refit.output == str(tmp / "x.pt") and refit.seed == s.seed
    assert f"--model.export_path={tmp / 'x.run' / 'joint.pt'}" in args  # trained, then refitted
    _, _, refit = finetune_cli_args([*argv, "--device", "cpu", "--own-entropy-models"])
    assert refit is None  # nothing to refit: the codec's own entropy models
    for expected in (
        f"--trainer.max_steps={s.steps}",
        f"--data.batch_size={s.batch_size}",
        f"--data.patch_size={s.patch_size}",
        f"--model.lr={s.lr}",
        f"--model.prior_lr={s.prior_lr}",
        f"--model.prior_max_images={s.prior_images}",
        f"--checkpoint.every_n_train_steps={s.steps // s.checkpoints}",
        "--trainer.accelerator=cpu",
        "--trainer.limit_val_batches=0",  # no --val: no validation
    ):
        assert expected in args
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args, _, refit = finetune_cli_args(argv)  # auto, with a GPU: the GPU preset
    assert refit is not None and refit.device == "cuda"
    assert f"--trainer.max_steps={FINETUNE_GPU.steps}" in args
    assert "--trainer.accelerator=gpu" in args
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no CUDA device"):
        finetune_cli_args([*argv, "--device", "cuda"])
    with pytest.raises(InputError, match="--steps must be at least 1"):
        finetune_cli_args([*argv, "--steps", "0"])


def test_refit_is_prior_fit_on_the_trained_codec_and_no_refit_keeps_it(setup, capsys):
    """The refit's (the default's) output priors are exactly ``prior fit``'s on the jointly
    trained codec (``joint.pt`` in the run folder); with ``--no-refit``, that trained codec is
    the output."""
    tmp = setup
    assert main(short(tmp, "ft.pt", 2)) == 0
    assert "refitting the priors" in capsys.readouterr().out
    trained = tmp / "ft.run" / "joint.pt"
    fit = ["prior", "fit", str(trained), "--data", str(tmp / "train"), "-o", str(tmp / "pf.pt")]
    assert main(fit) == 0
    out, ref = (torch.load(tmp / f, weights_only=True) for f in ("ft.pt", "pf.pt"))
    assert out["steps"] == ref["steps"] == 2 and out["lmbda"] == 0.0035
    assert out["state_dict"].keys() == ref["state_dict"].keys()
    for k, v in out["state_dict"].items():
        assert torch.equal(v, ref["state_dict"][k]), k
    joint = torch.load(trained, weights_only=True)["state_dict"]
    assert any(not torch.equal(v, joint[k]) for k, v in out["state_dict"].items() if k in joint)
    net = load_codec(tmp / "ft.pt")
    assert_round_trip(net, torch.rand(1, 3, 64, 64))

    assert main(short(tmp, "nr.pt", 2, "--no-refit")) == 0
    assert "refitting" not in capsys.readouterr().out
    assert not (tmp / "nr.run" / "joint.pt").exists()
    kept = torch.load(tmp / "nr.pt", weights_only=True)["state_dict"]
    for k, v in joint.items():  # the same training (same seed): the trained codec as it is
        assert torch.equal(v, kept[k]), k


def test_short_form_errors_are_clear(setup, capsys):
    tmp = setup
    with pytest.raises(SystemExit):
        main(["codec", "finetune", str(tmp / "base.pt"), "-o", str(tmp / "x.pt")])
    assert "--data" in capsys.readouterr().err  # argparse names the missing option
    assert main(short(tmp, "x.pt", 1)[:3] + ["--data", str(tmp / "nowhere"), "-o",
                str(tmp / "x.pt"), "--device", "cpu"]) == 1  # fmt: skip
    assert "nowhere" in capsys.readouterr().err


def test_start_lambda_takes_the_files_own_for_the_same_metric_only():
    from pc_prior.train.codec import start_lambda

    meta = {"quality": 2, "lmbda": 0.004, "metric": "mse"}
    assert start_lambda(None, meta) == 0.004  # the file's own
    assert start_lambda(0.01, meta) == 0.01  # given
    assert start_lambda(None, meta, "ms-ssim") == 4.58  # trained for MSE: the zoo's MS-SSIM λ
    assert start_lambda(None, {"quality": 2, "lmbda": 4.0, "metric": "ms-ssim"}) == 0.0035
    with pytest.raises(ValueError, match="lmbda must be > 0"):
        start_lambda(-1.0, meta)
