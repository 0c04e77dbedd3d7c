"""RDModule: joint RD fine-tuning of a CompressAI codec and its PC prior (tiny codecs, generated images)."""

from __future__ import annotations

import math
import urllib.error
from pathlib import Path

import pytest
import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.models import FactorizedPrior, MeanScaleHyperprior
from conftest import shared_path
from helpers import assert_round_trip, make_pngs, tiny_trainer

from pc_prior.cli import main
from pc_prior.hclt import GroupedHCLT
from pc_prior.integrations import (
    PCConditional,
    PCEntropyBottleneck,
    build_codec,
    fit_prior,
    load_codec,
    save_codec,
)
from pc_prior.integrations.bottleneck_state import LEAF_FLOOR, LEAF_STEP, LEVELS_KEY
from pc_prior.train import ImageFolderDataModule, RDModule
from pc_prior.train.codec import export_codec, load_start_codec, split_parameters

REPO = Path(__file__).resolve().parents[2]
TINY = {"arch": "FactorizedPrior", "net_kwargs": {"N": 8, "M": 12}, "quality": 2}
FAST_PRIOR = {
    "num_latents": 3,
    "prior_max_images": 8,
    "prior_epochs": 1,
    "prior_finetune_steps": 20,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def datamodule(
    tmp_path: Path, size: int = 64, val_size: tuple[int, int] = (40, 72)
) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        str(make_pngs(tmp_path / "train", 8, (size, size))),
        str(make_pngs(tmp_path / "val", 2, val_size, 1)),
        patch_size=size,
        batch_size=4,
        num_workers=0,
        pin_memory=False,
    )


def main_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Every parameter but the ``.quantiles`` (the aux optimizer's), in order."""
    return [p for n, p in module.named_parameters() if not n.endswith(".quantiles")]


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_joint_steps_change_codec_and_circuit(tmp_path):
    torch.manual_seed(0)
    dm = datamodule(tmp_path)
    model = RDModule(**TINY, **FAST_PRIOR, lr=1e-2, prior_lr=1e-2, lr_decay_at=None, export_path="")
    assert isinstance(model.pc_bottleneck, PCEntropyBottleneck) and not model.pc_bottleneck.fitted
    assert isinstance(model.plain_bottleneck, EntropyBottleneck) and model.lmbda == 0.0035
    dm.setup("fit")
    model.fit_prior(
        [torch.stack([dm.train_set[i] for i in range(4)])]
    )  # fit first, to snapshot the circuit
    # the default frozen fit: categorical leaves in their three-pass context groups
    assert isinstance(model.pc_bottleneck.pc, GroupedHCLT) and model.pc_bottleneck.schedule
    trainer = tiny_trainer(max_steps=3, limit_val_batches=1)
    before = snapshot(model)
    trainer.fit(model, dm)  # setup sees a fitted circuit and keeps it
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("net.g_a.") for k in changed) and any(
        k.startswith("net.g_s.") for k in changed
    )
    assert {
        "net.entropy_bottleneck.pc.emission_logits",
        "net.entropy_bottleneck.pc.transition_logits",
    } <= changed
    assert any(k.startswith("plain_bottleneck.") for k in changed)
    m = trainer.callback_metrics
    assert all(
        math.isfinite(float(m[k])) for k in ("train_loss", "train_bpp", "val_loss", "val_bpp_coded")
    )
    opt, aux_opt = model.optimizers()
    aux = {id(p) for g in aux_opt.optimizer.param_groups for p in g["params"]}
    assert aux == {id(p) for n, p in model.named_parameters() if n.endswith(".quantiles")}
    assert len(aux) == 2  # the circuit bottleneck's and the plain one's
    main_ids = [id(p) for g in opt.optimizer.param_groups for p in g["params"]]
    assert len(main_ids) == len(set(main_ids)) and not aux & set(main_ids)
    assert set(main_ids) | aux == {id(p) for p in model.parameters()}
    assert [g["lr"] for g in opt.optimizer.param_groups] == [1e-2, 1e-2]
    # under the state context every position codes with its state id's prior, not the root's:
    # the root gets no gradient (DDP needs that said), and stays as fitted
    eb = model.pc_bottleneck
    assert eb.state_context and [id(p) for p in eb.untrained_parameters()] == [
        id(eb.pc.root_logits)
    ]
    assert not eb.pc.root_logits.requires_grad
    assert "net.entropy_bottleneck.pc.root_logits" not in changed
    fresh = RDModule(**TINY, **FAST_PRIOR, export_path="")
    checkpoint = {"state_dict": model.state_dict()}  # as Lightning resumes a run
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])  # its circuits come from the checkpoint
    assert not fresh.pc_bottleneck.pc.root_logits.requires_grad
    assert fresh.pc_bottleneck.pc.emission_logits.requires_grad
    # the frozen root keeps its place in the optimizer (old checkpoints' layout), one group or two
    main = split_parameters(fresh)[0]
    assert id(fresh.pc_bottleneck.pc.root_logits) not in {id(p) for p in main}
    for prior_lr, group in ((1e-2, 1), (None, 0)):
        fresh.hparams.prior_lr = prior_lr
        groups = fresh.param_groups(main)
        ids = [id(p) for g in groups for p in g["params"]]
        assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in main_params(fresh)}
        assert any(p is fresh.pc_bottleneck.pc.root_logits for p in groups[group]["params"])


def test_rate_gradient_reaches_the_encoder(tmp_path):
    torch.manual_seed(0)
    model = RDModule(**TINY, **FAST_PRIOR, export_path="")
    images = [torch.rand(2, 3, 64, 64) for _ in range(3)]
    model.fit_prior(images)
    net = model.net.train()
    out = net(images[0])
    bpp = sum(torch.log(lk).sum() for lk in out["likelihoods"].values()) / (
        -math.log(2) * 2 * 64 * 64
    )
    net.zero_grad()
    bpp.backward()
    grads = [p.grad for p in net.g_a.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in net.g_s.parameters())


def test_ms_ssim_variant_runs(tmp_path):
    torch.manual_seed(0)
    dm = datamodule(tmp_path, size=176, val_size=(176, 176))  # MS-SSIM's 5 scales need > 160 pixels
    model = RDModule(**TINY, **FAST_PRIOR, metric="ms-ssim", coded_val_batches=0, export_path="")
    assert model.lmbda == 4.58 and model.rd_loss.metric is not torch.nn.MSELoss
    trainer = tiny_trainer(max_steps=2, limit_val_batches=1)
    trainer.fit(model, dm)
    m = trainer.callback_metrics
    assert 0 < float(m["train_ms_ssim"]) <= 1 and 0 < float(m["val_ms_ssim"]) <= 1
    assert math.isfinite(float(m["train_loss"])) and "val_bpp_coded" not in m
    with pytest.raises(ValueError, match="metric"):
        RDModule(**TINY, metric="psnr")


def test_export_loads_and_round_trips(tmp_path):
    torch.manual_seed(0)
    dm = datamodule(tmp_path)
    model = RDModule(**TINY, **FAST_PRIOR, lr=1e-3, export_path=str(tmp_path / "out" / "codec.pt"))
    tiny_trainer(max_steps=2, limit_val_batches=1).fit(model, dm)
    ck = torch.load(tmp_path / "out" / "codec.pt", weights_only=False)
    assert ck["pc_modules"] == ["entropy_bottleneck"] and ck["lmbda"] == 0.0035 and ck["steps"] == 2
    assert ck["net_kwargs"] == {"N": 8, "M": 12} and ck["metric"] == "mse"
    net = load_codec(tmp_path / "out" / "codec.pt")
    assert isinstance(net.entropy_bottleneck.pc, GroupedHCLT)
    state = torch.load(tmp_path / "out" / "codec.pt", weights_only=True)["state_dict"]
    assert "entropy_bottleneck." + LEVELS_KEY in state  # trained leaves snapped: compact again
    x = torch.rand(2, 3, 64, 64)
    assert_round_trip(net, x)
    model.net.eval()
    assert torch.allclose(net(x)["x_hat"], model.net(x)["x_hat"], atol=1e-6)
    rates = [float(-torch.log2(m(x)["likelihoods"]["y"]).sum()) for m in (net, model.net)]
    assert rates[0] == pytest.approx(rates[1], rel=0.01)  # the snap changes the rate by little
    # the plain CompressAI codec: fine-tuned transforms + a factorized bottleneck
    sd = torch.load(tmp_path / "out" / "codec-plain-state-dict.pt", weights_only=True)
    plain = FactorizedPrior.from_state_dict(sd).eval()
    assert torch.equal(plain.g_a[0].weight, net.g_a[0].weight)
    assert_round_trip(plain, x)
    # a second run can start from the export (the circuit is kept, not refitted)
    again = RDModule(codec=str(tmp_path / "out" / "codec.pt"), export_path="")
    assert again.lmbda == 0.0035 and again.pc_bottleneck.fitted
    assert torch.equal(
        again.pc_bottleneck.pc.emission_logits, net.entropy_bottleneck.pc.emission_logits
    )


def test_zoo_arch_export_reads_with_integrations_and_eval_loaders(tmp_path):
    from pc_prior.integrations import load_codec as integrations_load_codec

    torch.manual_seed(0)
    model = RDModule(
        arch="bmshj2018-factorized",
        quality=1,
        num_latents=2,
        structure="star",
        prior_epochs=1,
        prior_finetune_steps=5,
        keep_plain_bottleneck=False,
        export_path="",
    )
    model.fit_prior([torch.rand(1, 3, 64, 64)])
    model.export(tmp_path / "codec.pt")
    assert not (tmp_path / "codec-plain-state-dict.pt").exists()
    x = torch.rand(1, 3, 64, 64)
    net = integrations_load_codec(tmp_path / "codec.pt")
    assert_round_trip(net, x)
    from pc_prior.integrations import resolve_codec  # what pc-prior eval uses

    loaded = resolve_codec(tmp_path / "codec.pt")
    assert isinstance(loaded.net.entropy_bottleneck, PCEntropyBottleneck)
    assert_round_trip(loaded.net, x)


def test_starts_from_a_prior_fit_output_and_plain_files(tmp_path):
    torch.manual_seed(0)
    base = build_codec(**TINY)
    export_codec(
        base, tmp_path / "base.pt", "FactorizedPrior", 2, 0.0035, net_kwargs=TINY["net_kwargs"]
    )
    net, meta = load_start_codec(str(tmp_path / "base.pt"), "bmshj2018-factorized", 3)
    assert meta["lmbda"] == 0.0035 and isinstance(net, FactorizedPrior) and net.training
    fit_prior(
        net, [torch.rand(1, 3, 64, 64)], num_latents=2, epochs=1, progress=False
    )  # categorical leaves
    save_codec(net, tmp_path / "swapped.pt", "FactorizedPrior", 2, net_kwargs=TINY["net_kwargs"])
    model = RDModule(codec=str(tmp_path / "swapped.pt"), lmbda=0.01, export_path="")
    assert model.lmbda == 0.01 and model.pc_bottleneck.fitted
    assert all(p.requires_grad for p in model.parameters())
    assert (
        isinstance(model.plain_bottleneck, EntropyBottleneck)
        and model.plain_bottleneck is not model.pc_bottleneck
    )
    model._trainer = type("T", (), {"ckpt_path": None})()  # setup("fit") only needs ckpt_path here
    model.setup("fit")
    assert isinstance(model.pc_bottleneck.pc, GroupedHCLT)  # kept as fitted: trained as it codes
    logistic = RDModule(codec=str(tmp_path / "swapped.pt"), leaves="logistic", export_path="")
    logistic._trainer = model._trainer
    with pytest.raises(ValueError, match="no leaf groups"):  # a context: no logistic leaves
        logistic.setup("fit")
    # a plain CompressAI state dict needs the architecture
    torch.save(base.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="--arch"):
        load_start_codec(str(tmp_path / "plain.pth"), None, 2)  # type: ignore[arg-type]
    net, meta = load_start_codec(str(tmp_path / "plain.pth"), "bmshj2018-factorized", 2)
    assert isinstance(net, FactorizedPrior) and net.g_a[0].weight.shape[0] == 8


def test_zoo_name_offline_is_a_clear_error(monkeypatch):
    import compressai.zoo.image

    from pc_prior.errors import ModelLoadError

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(compressai.zoo.image, "load_state_dict_from_url", offline)
    with pytest.raises(ModelLoadError, match="network access; offline, pass a local checkpoint"):
        RDModule(codec="bmshj2018-factorized:q2")
    with pytest.raises(FileNotFoundError):
        RDModule(codec="missing/codec.pt")


def test_shared_codec_starts(tmp_path):
    path = shared_path("models", "bmshj2018-factorized-q2.pt")
    model = RDModule(codec=str(path), export_path="")
    assert model.lmbda == 0.0035 and model.codec_info["arch"] == "bmshj2018-factorized"
    assert model.plain_bottleneck.quantiles.shape[0] == 192


QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def cli_args(
    tmp_path: Path, steps: int, config: str = "rd_factorized", arch: str = "FactorizedPrior"
) -> list[str]:
    return [
        "codec",
        "finetune",
        "--config",
        str(REPO / "configs" / f"{config}.yaml"),
        "--model.init_args.codec",
        "null",
        "--model.init_args.arch",
        arch,
        "--model.init_args.net_kwargs",
        '{"N": 8, "M": 12}',
        "--model.init_args.quality",
        "2",
        "--model.init_args.num_latents",
        "3",
        "--model.init_args.prior_max_images",
        "8",
        "--model.init_args.prior_epochs",
        "1",
        "--model.init_args.prior_finetune_steps",
        "10",
        "--model.init_args.lr",
        "1e-3",
        "--data.init_args.train_dir",
        str(tmp_path / "train"),
        "--data.init_args.val_dir",
        str(tmp_path / "val"),
        "--data.init_args.patch_size",
        "64",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.pin_memory",
        "false",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_steps",
        str(steps),
        "--trainer.check_val_every_n_epoch",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--checkpoint.dirpath",
        str(tmp_path / "ckpt"),
        *QUIET,
    ]


def test_cli_fit_with_config_checkpoints_exports_and_resumes(tmp_path):
    make_pngs(tmp_path / "train", 8)
    make_pngs(tmp_path / "val", 2, (40, 72), 1)
    assert main(cli_args(tmp_path, 2)) == 0
    first = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert (first["epoch"], first["global_step"]) == (0, 2)
    assert (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").is_file()
    assert list((tmp_path / "run" / "tensorboard" / "version_0").glob("events.out.tfevents*"))
    assert (tmp_path / "run" / "csv" / "version_0" / "codec.pt").is_file()
    assert (tmp_path / "run" / "csv" / "version_0" / "codec-plain-state-dict.pt").is_file()

    assert main([*cli_args(tmp_path, 4), "--ckpt_path", "last"]) == 0
    second = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert (second["epoch"], second["global_step"]) == (1, 4)  # continued, not restarted
    key = "net.entropy_bottleneck.pc.emission_logits"
    assert second["state_dict"][key].shape == first["state_dict"][key].shape
    assert not torch.equal(
        second["state_dict"][key], first["state_dict"][key]
    )  # the resumed optimizer trains it
    net = load_codec(tmp_path / "run" / "csv" / "version_1" / "codec.pt")
    trained = torch.log_softmax(second["state_dict"][key].double(), -1)  # the export snaps them
    live = trained > LEAF_FLOOR
    got = net.entropy_bottleneck.pc.emission_logits.double()
    assert (got - trained)[live].abs().max() <= LEAF_STEP / 2 + 1e-6


def test_hyperprior_trains_both_pc_entropy_models_and_exports_exactly(tmp_path):
    torch.manual_seed(0)
    dm = datamodule(tmp_path)
    model = RDModule(
        arch="MeanScaleHyperprior",
        net_kwargs={"N": 8, "M": 12},
        quality=2,
        **FAST_PRIOR,
        conditional_fit={"num_latents": 2, "steps": 20},
        lr=1e-2,
        prior_lr=1e-2,
        lr_decay_at=None,
        export_path=str(tmp_path / "out" / "codec.pt"),
    )
    assert set(model.pc_modules) == {"entropy_bottleneck", "gaussian_conditional"}
    assert isinstance(model.net.gaussian_conditional, PCConditional)
    dm.setup("fit")
    model.fit_prior([torch.stack([dm.train_set[i] for i in range(4)])])
    assert model.net.gaussian_conditional.schedule == "three-pass"  # the default contexts
    before = snapshot(model)
    tiny_trainer(max_steps=3, limit_val_batches=1).fit(model, dm)
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for prefix in ("net.g_a.", "net.h_a.", "net.h_s.", "net.entropy_bottleneck.pc.",
                   "net.gaussian_conditional.pc."):  # fmt: skip
        assert any(k.startswith(prefix) for k in changed), prefix
    net = load_codec(tmp_path / "out" / "codec.pt")
    assert isinstance(net.gaussian_conditional, PCConditional)
    assert_round_trip(net, torch.rand(1, 3, 64, 64))
    plain = MeanScaleHyperprior.from_state_dict(
        torch.load(tmp_path / "out" / "codec-plain-state-dict.pt", weights_only=True)
    ).eval()
    assert_round_trip(plain, torch.rand(1, 3, 64, 64))  # CompressAI's own entropy models


def test_cli_hyperprior_config_trains_both_pc_entropy_models(tmp_path):
    make_pngs(tmp_path / "train", 8)
    make_pngs(tmp_path / "val", 2, (40, 72), 1)
    args = cli_args(tmp_path, 2, "rd_hyperprior", "MeanScaleHyperprior")
    args += ["--model.init_args.conditional_fit", '{"num_latents": 2, "steps": 10}']
    assert main(args) == 0
    path = tmp_path / "run" / "csv" / "version_0" / "codec.pt"
    assert torch.load(path, weights_only=True)["pc_modules"] == [
        "entropy_bottleneck",
        "gaussian_conditional",
    ]
    assert_round_trip(load_codec(path), torch.rand(1, 3, 64, 64))
