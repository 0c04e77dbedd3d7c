"""Joint RD fine-tuning (``RDModule``) for a few steps on CUDA: the steps run on the GPU, move the
codec and the circuit, and the export round-trips exactly on the CPU; its strings coded on the GPU
decode on the CPU to the GPU's latent. Marked ``cuda``: skipped without a GPU;
``PC_PRIOR_TEST_DEVICE=cpu`` runs it on the CPU (tests/conftest.py)."""

import math

import pytest
import pytorch_lightning as pl
import torch
from helpers import assert_round_trip, make_pngs, random_images, tiny_trainer

from pc_prior.integrations import load_codec
from pc_prior.train import ImageFolderDataModule, RDModule

pytestmark = pytest.mark.cuda


class StepDevices(pl.Callback):
    """The device of the module's parameters and the loss at every training step."""

    def __init__(self) -> None:
        self.devices: list[torch.device] = []
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.devices.append(next(pl_module.parameters()).device)
        self.losses.append(float(outputs["loss"]))


def test_rd_module_trains_on_the_device_and_exports_for_the_cpu(device, tmp_path):
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    train = make_pngs(tmp_path / "train", 4)
    dm = ImageFolderDataModule(
        str(train), None, patch_size=64, batch_size=2, num_workers=0, pin_memory=cuda
    )
    export = tmp_path / "joint.pt"
    model = RDModule(
        arch="FactorizedPrior",
        net_kwargs={"N": 8, "M": 12},
        quality=2,
        num_latents=3,
        prior_max_images=4,
        prior_epochs=1,
        prior_finetune_steps=5,
        lr=1e-2,
        prior_lr=1e-2,
        lr_decay_at=None,
        coded_val_batches=0,
        export_path=str(export),
        plain_export_path="",
    )
    model.fit_prior(random_images(2))  # first, so that the circuit's parameters are snapshot too
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    steps = StepDevices()
    accelerator = "gpu" if cuda else "cpu"
    trainer = tiny_trainer(
        accelerator=accelerator, max_steps=3, limit_val_batches=0, callbacks=[steps]
    )
    trainer.fit(model, dm)
    assert trainer.global_step == 3
    assert [d.type for d in steps.devices] == [device.type] * 3
    assert all(math.isfinite(v) for v in steps.losses)
    after = dict(model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k].detach().cpu())}
    assert any(k.startswith("net.g_a.") for k in changed)
    assert any(k.startswith("net.entropy_bottleneck.pc.") for k in changed)  # and the circuit
    net = load_codec(export, map_location="cpu")
    x = torch.cat(random_images(2))
    assert_round_trip(net, x)
    on = load_codec(export, map_location=device)  # the same file on the device: coded there,
    with torch.no_grad():  # decoded on the CPU to the latent the device coded
        out = on.compress(x.to(device))
        want = on.entropy_bottleneck.decompress(out["strings"][0], out["shape"]).cpu()
        assert torch.equal(net.entropy_bottleneck.decompress(out["strings"][0], out["shape"]), want)
