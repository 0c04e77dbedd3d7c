"""2-process DDP on CPU (gloo): every rank must end with the same parameters."""

from __future__ import annotations

import hashlib

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from helpers import make_mnist, make_pngs

from pc_prior.integrations import PCConditional, PCEntropyBottleneck
from pc_prior.train import (
    CodecModule,
    ImageFolderDataModule,
    MNISTDataModule,
    PriorModule,
    RDModule,
)

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"
)


class SaveParams(pl.Callback):
    """Each rank writes its parameters (and a hash of them) to ``out/rank{r}.pt`` after training."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.start: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = {k: v.detach().cpu().clone() for k, v in pl_module.named_parameters()}

    def on_train_end(self, trainer, pl_module) -> None:
        params = {k: v.detach().cpu().clone() for k, v in pl_module.named_parameters()}
        digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in params.values())).hexdigest()
        torch.save(
            {"params": params, "sha": digest, "step": trainer.global_step, "start": self.start},
            f"{self.out}/rank{trainer.global_rank}.pt",
        )


def run_ddp(tmp_path, model, dm, **kw) -> tuple[dict, dict]:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[SaveParams(str(tmp_path))],
        **kw,
    )
    trainer.fit(model, dm)
    return (
        torch.load(tmp_path / "rank0.pt", weights_only=False),
        torch.load(tmp_path / "rank1.pt", weights_only=False),
    )


def test_ddp_em_ranks_agree(tmp_path):
    dm = MNISTDataModule(str(make_mnist(tmp_path / "m", 128, 16)), batch_size=32, bits=2)
    init = PriorModule(num_latents=3, coded_items=0, export_path="")
    r0, r1 = run_ddp(
        tmp_path, PriorModule(num_latents=3, lr=0.5, coded_items=0, export_path=""), dm, max_steps=2
    )
    assert r0["step"] == r1["step"] == 2
    assert r0["sha"] == r1["sha"]
    # the ranks saw different halves of each batch, so agreement means the counts were summed
    dm.setup("fit")
    init.build(dm.structure_sample(20000))
    assert not torch.allclose(r0["params"]["pc.emission_logits"], init.pc.emission_logits)


def test_ddp_codec_ranks_agree(tmp_path):
    dm = ImageFolderDataModule(
        str(make_pngs(tmp_path / "train", 4)),
        patch_size=32,
        batch_size=2,
        num_workers=0,
        pin_memory=False,
    )
    model = CodecModule(
        arch="FactorizedPrior", net_kwargs={"N": 8, "M": 12}, lr=1e-2, aux_lr=1e-2, export_path=""
    )
    q0 = model.net.entropy_bottleneck.quantiles.detach().clone()
    r0, r1 = run_ddp(tmp_path, model, dm, max_steps=2)
    assert r0["sha"] == r1["sha"]
    # aux parameters were trained (and kept in sync)
    assert not torch.equal(r0["params"]["net.entropy_bottleneck.quantiles"], q0)


def test_ddp_joint_fine_tuning_ranks_agree(tmp_path):
    """RDModule under DDP: every rank fits the same initial priors (the same seeded crops), then
    codec and both PC entropy models train in sync."""
    dm = ImageFolderDataModule(
        str(make_pngs(tmp_path / "train", 4, (64, 64))),
        patch_size=64,
        batch_size=2,
        num_workers=0,
        pin_memory=False,
    )
    model = RDModule(
        arch="MeanScaleHyperprior",
        net_kwargs={"N": 8, "M": 12},
        quality=2,
        num_latents=2,
        prior_max_images=4,
        prior_epochs=1,
        prior_finetune_steps=5,
        conditional_fit={"num_latents": 2, "steps": 5},
        lr=1e-2,
        prior_lr=1e-2,
        export_path="",
    )
    assert isinstance(model.net.entropy_bottleneck, PCEntropyBottleneck)
    assert isinstance(model.net.gaussian_conditional, PCConditional)
    r0, r1 = run_ddp(tmp_path, model, dm, max_steps=2)
    assert r0["step"] == r1["step"] == 2
    assert r0["sha"] == r1["sha"]
    start = r0["start"]  # after setup's initial fit, the same on both ranks
    assert all(torch.equal(v, r1["start"][k]) for k, v in start.items())
    changed = {k for k, v in r0["params"].items() if not torch.equal(v, start[k])}
    for prefix in ("net.g_a.", "net.entropy_bottleneck.pc.", "net.gaussian_conditional.pc."):
        assert any(k.startswith(prefix) for k in changed), prefix
