"""Tiny synthetic data for the training tests (idx files, PNG folders)."""

from __future__ import annotations

# -- tests of the modules (tiny synthetic data) --------------------------------------------------
import pytest
import torch
from helpers import make_mnist, make_pngs, tiny_trainer

import pc_prior
from pc_prior.images import pad_to_multiple
from pc_prior.integrations import load_codec
from pc_prior.train import (
    CodecModule,
    EMOptimizer,
    ImageFolderDataModule,
    MNISTDataModule,
    PriorModule,
    lambda_for_quality,
)
from pc_prior.train.codec import split_parameters


def test_mnist_datamodule_reads_idx_and_reduces_bits(tmp_path):
    dm = MNISTDataModule(str(make_mnist(tmp_path / "m", 40, 10)), batch_size=16, bits=2)
    dm.setup("fit")
    assert dm.x_train.shape == (40, 64) and dm.x_train.dtype == torch.long
    assert dm.num_cats == 4 and int(dm.x_train.min()) >= 0 and int(dm.x_train.max()) <= 3
    assert torch.equal(dm.structure_sample(5), dm.x_train[:5])
    (xb,) = next(iter(dm.train_dataloader()))
    assert xb.shape == (16, 64)


def test_prior_em_lowers_bpd_and_exports_loadable_circuit(tmp_path):
    dm = MNISTDataModule(str(make_mnist(tmp_path / "m")), batch_size=64, bits=2)
    model = PriorModule(
        num_latents=4, lr=0.3, lr_end=0.1, coded_items=8, export_path=str(tmp_path / "h.pt")
    )
    trainer = tiny_trainer(max_epochs=2)
    before = trainer.validate(model, dm, verbose=False)[0]["val_bpd"]
    trainer.fit(model, dm)
    after = trainer.callback_metrics["val_bpd"].item()
    assert after < before - 0.02, (before, after)
    assert trainer.global_step == 2 * 4  # 256 rows / 64 per batch, 2 epochs
    coded = trainer.callback_metrics["val_coded_bpd"].item()
    assert after < coded < after + 1.0  # real bytes: close to, and above, the model's estimate
    pc = pc_prior.load(tmp_path / "h.pt")
    x = dm.x_val[:8]
    assert torch.allclose(pc.log_prob(x), model.pc.log_prob(x), atol=1e-5)
    assert torch.equal(pc_prior.decode(pc, pc_prior.encode(pc, x)), x)


def test_prior_adam_trains(tmp_path):
    dm = MNISTDataModule(str(make_mnist(tmp_path / "m")), batch_size=64, bits=2)
    model = PriorModule(num_latents=4, method="adam", lr=0.05, coded_items=0, export_path="")
    trainer = tiny_trainer(max_epochs=2)
    before = trainer.validate(model, dm, verbose=False)[0]["val_bpd"]
    trainer.fit(model, dm)
    assert trainer.callback_metrics["val_bpd"].item() < before


def test_lightning_em_equals_fit_em_exactly():
    """PriorModule's EM (EMOptimizer) and fit_em apply the same update: the same circuit, bit for bit."""
    import copy

    from torch.utils.data import DataLoader, TensorDataset

    from pc_prior.fitting import bits_per_dim, fit_em

    x = torch.randint(0, 3, (120, 6), generator=torch.Generator().manual_seed(0))
    x[:, 1] = x[:, 0]  # some structure, so EM has something to learn
    model = PriorModule(num_latents=3, lr=1.0, lr_end=None, coded_items=0, export_path="")
    model.build(x)
    ref = copy.deepcopy(model.pc)
    before = bits_per_dim(ref, x)
    # full-batch EM, two iterations: one batch of all rows, in order, step size 1
    fit_em(ref, x, epochs=0, full_batch_epochs=2, batch_size=len(x), progress=False)
    loader = DataLoader(TensorDataset(x), batch_size=len(x), shuffle=False)
    tiny_trainer(max_epochs=2, limit_val_batches=0).fit(model, train_dataloaders=loader)
    assert bits_per_dim(ref, x) < before - 0.05
    for name in ("root_logits", "transition_logits", "emission_logits"):
        assert torch.equal(getattr(model.pc, name), getattr(ref, name)), name
    with pytest.raises(ValueError, match="step size"):
        EMOptimizer([model.pc.root_logits], lr=1.5)


def test_lightning_defaults_are_the_settings():
    import inspect

    from pc_prior.settings import BottleneckFit, LosslessFit
    from pc_prior.train import RDModule

    p = inspect.signature(PriorModule).parameters
    s = LosslessFit()
    assert (p["num_latents"].default, p["pseudocount"].default, p["seed"].default) == (
        s.num_latents,
        s.pseudocount,
        s.seed,
    )
    assert (p["lr"].default, p["lr_end"].default) == s.step_size
    assert p["structure_samples"].default == s.structure_samples
    r = inspect.signature(RDModule).parameters
    assert {
        "num_latents": r["num_latents"].default,
        "structure": r["structure"].default,
        "leaves": r["leaves"].default,
        "max_items": r["prior_max_items"].default,
        "epochs": r["prior_epochs"].default,
        "finetune_steps": r["prior_finetune_steps"].default,
    } == {
        "num_latents": BottleneckFit.num_latents,
        "structure": BottleneckFit.structure,
        "leaves": BottleneckFit.leaves,
        "max_items": BottleneckFit.max_items,
        "epochs": BottleneckFit.epochs,
        "finetune_steps": BottleneckFit.finetune_steps,
    }


def test_prior_checkpoint_restores_structure(tmp_path):
    dm = MNISTDataModule(str(make_mnist(tmp_path / "m", 64, 16)), batch_size=32, bits=2)
    model = PriorModule(num_latents=3, coded_items=0, export_path="")
    trainer = tiny_trainer(max_epochs=1, enable_checkpointing=True, default_root_dir=str(tmp_path))
    trainer.fit(model, dm)
    ckpt = trainer.checkpoint_callback.best_model_path
    loaded = PriorModule.load_from_checkpoint(ckpt)
    assert loaded.pc.tree.parent == model.pc.tree.parent
    assert torch.allclose(loaded.pc.log_prob(dm.x_val), model.pc.log_prob(dm.x_val))


def test_codec_module_trains_and_exports(tmp_path):
    torch.manual_seed(0)
    dm = ImageFolderDataModule(
        str(make_pngs(tmp_path / "train", 8)),
        str(make_pngs(tmp_path / "val", 2, (40, 72), 1)),
        patch_size=64,
        batch_size=4,
        num_workers=0,
        pin_memory=False,
    )
    model = CodecModule(
        arch="FactorizedPrior",
        net_kwargs={"N": 8, "M": 12},
        quality=2,
        lr=1e-2,
        export_path=str(tmp_path / "codec.pt"),
    )
    assert model.lmbda == lambda_for_quality(2) == 0.0035
    _main, aux = split_parameters(model.net)
    assert len(aux) == 1 and aux[0] is model.net.entropy_bottleneck.quantiles
    trainer = tiny_trainer(max_steps=4, limit_val_batches=2)
    before = trainer.validate(model, dm, verbose=False)[0]["val_loss"]
    trainer.fit(model, dm)
    assert trainer.global_step == 4  # the aux optimizer does not count as a step
    m = trainer.callback_metrics
    assert m["val_loss"].item() < before
    assert {
        "train_bpp",
        "train_psnr",
        "train_loss",
        "train_aux_loss",
        "val_psnr",
        "val_bpp",
    } <= m.keys()
    ck = torch.load(tmp_path / "codec.pt", map_location="cpu", weights_only=False)
    assert {"arch", "quality", "lmbda", "state_dict"} <= ck.keys() and ck["lmbda"] == 0.0035
    net = load_codec(tmp_path / "codec.pt")
    x = torch.rand(1, 3, 64, 64)
    out = net.compress(x)  # needs the coder tables update(force=True) exported
    rec = net.decompress(out["strings"], out["shape"])["x_hat"]
    assert rec.shape == x.shape
    model.net.eval()
    assert torch.allclose(net(x)["x_hat"], model.net(x)["x_hat"], atol=1e-5)


class _NaNLossAt(torch.nn.Module):
    """The codec's rate-distortion loss, NaN at the given (1-based) calls."""

    def __init__(self, loss: torch.nn.Module, bad: set[int] | None = None) -> None:
        super().__init__()
        self.loss, self.bad, self.calls = loss, bad, 0

    def forward(self, out, x):
        self.calls += 1
        losses = self.loss(out, x)
        if self.bad is None or self.calls in self.bad:
            losses["loss"] = losses["loss"] * float("nan")
        return losses


def _tiny_codec_run(tmp_path, bad: set[int] | None, steps: int):
    torch.manual_seed(0)
    dm = ImageFolderDataModule(
        str(make_pngs(tmp_path / "train", 8)), None, patch_size=64, batch_size=2,
        num_workers=0, pin_memory=False,
    )  # fmt: skip
    model = CodecModule(arch="FactorizedPrior", net_kwargs={"N": 8, "M": 12}, quality=2,
                        lr=1e-2, export_path="")  # fmt: skip
    model.rd_loss = _NaNLossAt(model.rd_loss, bad)
    trainer = tiny_trainer(max_steps=steps, limit_val_batches=0)
    return model, trainer, dm


def test_a_nonfinite_step_is_skipped_and_training_goes_on(tmp_path):
    """Clipping an infinite gradient gives NaN parameters; the step is skipped instead."""
    model, trainer, dm = _tiny_codec_run(tmp_path, {2}, 4)
    with pytest.warns(UserWarning, match="step 1: non-finite loss or gradient, step skipped"):
        trainer.fit(model, dm)
    assert trainer.global_step == 4  # a skipped batch is no step: 5 batches were drawn
    assert model.rd_loss.calls == 5
    assert trainer.callback_metrics["train_skipped_steps"].item() == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(trainer.callback_metrics["train_loss"])  # step 4 trained


def test_a_diverged_run_stops_with_a_clear_error(tmp_path, monkeypatch):
    import pc_prior.train.codec as codec

    monkeypatch.setattr(codec, "MAX_SKIPPED_IN_A_ROW", 3)
    model, trainer, dm = _tiny_codec_run(tmp_path, None, 30)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="3 steps in a row .* lower the learning rate"):
        trainer.fit(model, dm)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_zoo_codec_builds_without_weights_and_pad():
    m = CodecModule(arch="bmshj2018-factorized", quality=1)
    assert m.lmbda == 0.0018 and m.net.N == 128
    assert pad_to_multiple(torch.zeros(1, 3, 40, 64)).shape[-2:] == (64, 64)
    with pytest.raises(ValueError, match="quality"):
        lambda_for_quality(9)
    with pytest.raises(ValueError, match="unknown arch"):
        CodecModule(arch="no-such-codec")


def test_image_datamodule_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolderDataModule(str(tmp_path / "missing")).setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataModule(str(tmp_path / "empty")).setup("fit")
    with pytest.raises(FileNotFoundError, match="data.init_args.data"):
        MNISTDataModule(str(tmp_path / "empty")).setup("fit")
