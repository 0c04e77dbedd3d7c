"""Short CPU evidence run of RDModule: shared factorized q2 + PC prior, frozen fit vs joint RD fine-tuning.

Writes OUT/before.pt (the frozen-codec PC prior the joint run starts from) and OUT/after.pt (codec
and circuit after joint training, capped at --minutes), both in the ``save_codec`` format:

    OMP_NUM_THREADS=1 python experiments/bench_rd_finetune_cpu.py --steps 300 --lr 1e-5 --out runs/rd_cpu_lr1e-5
    pc-prior eval runs/rd_cpu_lr1e-5/before.pt runs/rd_cpu_lr1e-5/after.pt --data ../shared/data/kodak --threads 1

Measured (1 thread, shared 2-core machine, 8-minute cap = 111-141 steps of 128x128 crops, batch 8):
frozen 0.2504 bpp / 27.372 dB; joint lr 1e-4: 0.2500 bpp / 26.893 dB; joint lr 1e-5: 0.2510 bpp /
27.372 dB (rates with the 13-byte string header). Far too short to show the benefit of joint training, which needs GPU hours.
These were measured with the since removed ``pc-prior prior eval``, which took PSNR on the
unrounded reconstruction; ``pc-prior eval`` takes it on 8-bit values, as CompressAI does, so its
PSNR may differ in the last digits (Kodak's 768x512 images need no padding: the rates are the same).
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-5, help="codec learning rate")
    ap.add_argument("--minutes", type=int, default=8, help="wall-clock cap of the joint training")
    ap.add_argument("--codec", default="../shared/models/bmshj2018-factorized-q2.pt")
    ap.add_argument("--train", default="../shared/data/bsds500/train")
    ap.add_argument("--out", default="runs/rd_cpu")
    args = ap.parse_args()
    from pc_prior.train import ImageFolderDataModule, RDModule

    torch.set_num_threads(1)
    pl.seed_everything(0)
    dm = ImageFolderDataModule(
        args.train, None, patch_size=128, batch_size=8, num_workers=0, pin_memory=False
    )
    dm.setup("fit")
    model = RDModule(
        codec=args.codec,
        num_latents=16,
        structure="star",
        prior_max_items=30000,
        prior_epochs=3,
        prior_finetune_steps=200,
        # the EM settings of the measured run (the fit defaults of that time; README figures)
        prior_fit={"full_batch_epochs": 1, "batch_size": 1024, "step_size": (0.1, 0.01)},
        lr=args.lr,
        prior_lr=1e-3,
        lr_decay_at=None,
        coded_val_batches=0,
        export_path=f"{args.out}/after.pt",
    )
    idx = torch.randperm(len(dm.train_set), generator=torch.Generator().manual_seed(0))[
        :200
    ].tolist()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        crops = [dm.train_set[i] for i in idx]
    t = time.time()
    hist = model.fit_prior([torch.stack(crops[i : i + 8]) for i in range(0, len(crops), 8)])
    print("prior fit", round(time.time() - t, 1), "s", hist["entropy_bottleneck"][-1], flush=True)
    model.export(f"{args.out}/before.pt")
    t = time.time()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        max_time={"minutes": args.minutes},
        limit_val_batches=0,
        logger=pl.loggers.CSVLogger(args.out, name="csv"),
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(model, dm)
    print(
        "joint training", round(time.time() - t, 1), "s,", trainer.global_step, "steps", flush=True
    )


if __name__ == "__main__":
    main()
