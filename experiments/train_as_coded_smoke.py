"""Does a plain CompressAI-style training loop improve a codec with default PC priors? (issue 31)

The user's scenario of issue 31's first finding: swap PC entropy models into a shared codec, fit
them with ``fit_prior``'s defaults, then train as CompressAI's ``examples/train.py`` does
(``net.train()``, ``RateDistortionLoss``, Adam on the codec and the circuits, the aux loss on the
quantiles) for a few steps. Measured on held-out bsds500/test crops (never Kodak), from real bytes:
coded bpp, PSNR and the RD loss λ·255²·MSE + bpp, before (the frozen default prior) and after.
Also the training-mode bpp against the coded bpp of the same crops (how tightly the training rate
tracks the coded one), for the PC models and for the codec's own entropy models. Arms, as issue
31 names them: (a) *frozen*, the default PC priors on the frozen codec; (c) *joint*, the same
loop on (a); (b) *frozen+*, the codec trained alone with its own entropy models for the same steps
on the same crops, then the default PC priors.

    OMP_NUM_THREADS=2 python experiments/train_as_coded_smoke.py --codec ../shared/models/bmshj2018-factorized-q1.pt \
        --fit-images 40 --steps 30 --out runs/train_as_coded/factorized-q1.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from compressai.losses import RateDistortionLoss

from pc_prior.images import list_images, load_image
from pc_prior.integrations import fit_prior, load_codec
from pc_prior.train.codec import lambda_for_quality

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def crops(files: list[Path], size: int, g: torch.Generator | None) -> torch.Tensor:
    """One crop per file: random (``g``) or central (None), [N, 3, size, size]."""
    out = []
    for f in files:
        x = load_image(f)
        h, w = x.shape[-2:]
        if g is None:
            i, j = (h - size) // 2, (w - size) // 2
        else:
            i = int(torch.randint(0, h - size + 1, (1,), generator=g))
            j = int(torch.randint(0, w - size + 1, (1,), generator=g))
        out.append(x[..., i : i + size, j : j + size])
    return torch.cat(out)


@torch.no_grad()
def measure(net: torch.nn.Module, x: torch.Tensor, lmbda: float) -> dict[str, float]:
    """Coded bpp (real bytes), PSNR, RD loss, and the training-mode bpp (mean of 4 noise draws)."""
    net.eval().update(force=True)
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    enc = net.compress(x)
    x_hat = net.decompress(enc["strings"], enc["shape"])["x_hat"].clamp(0, 1)
    bits = sum(8 * len(s) for group in enc["strings"] for s in group)
    mse = float(torch.mean((x - x_hat) ** 2))
    bpp = bits / pixels
    net.train()
    train_bpp = 0.0
    for _ in range(4):
        lik = net(x)["likelihoods"]
        train_bpp += sum(float(-torch.log2(v).sum()) for v in lik.values()) / pixels / 4
    net.eval()
    return {
        "bpp": bpp,
        "psnr": 10 * math.log10(1 / mse),
        "rd_loss": lmbda * 255**2 * mse + bpp,
        "train_bpp": train_bpp,
        "train_over_coded": train_bpp / bpp,
    }


def train(net: torch.nn.Module, files: list[Path], args: argparse.Namespace, lmbda: float) -> dict:
    """CompressAI's ``examples/train.py`` loop for ``args.steps`` steps on random crops of
    ``files`` (seeded, so every arm sees the same crops): Adam on the codec at ``lr`` and on the
    circuits (if any) at ``prior_lr``, the aux loss on the quantiles, gradient clipping at 1."""
    aux = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    circuits = [p for n, p in net.named_parameters() if ".pc." in n]
    codec = [
        p for n, p in net.named_parameters() if ".pc." not in n and not n.endswith(".quantiles")
    ]
    for p in net.parameters():
        p.requires_grad_(True)
    groups = [{"params": codec}] + ([{"params": circuits, "lr": args.prior_lr}] if circuits else [])
    opt = torch.optim.Adam(groups, lr=args.lr)
    aux_opt = torch.optim.Adam(aux, lr=1e-3)
    loss_fn = RateDistortionLoss(lmbda=lmbda)
    g = torch.Generator().manual_seed(1)
    net.train()
    t = time.perf_counter()
    history = []
    for step in range(args.steps):
        idx = torch.randint(0, len(files), (args.batch,), generator=g).tolist()
        x = crops([files[i] for i in idx], args.size, g)
        loss = loss_fn(net(x), x)
        opt.zero_grad()
        aux_opt.zero_grad()
        loss["loss"].backward()
        torch.nn.utils.clip_grad_norm_(codec + circuits, 1.0)
        opt.step()
        net.aux_loss().backward()
        aux_opt.step()
        history.append({"step": step, **{k: float(v.detach()) for k, v in loss.items()}})
    return {"seconds": time.perf_counter() - t, "history": history}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codec", type=Path, default=SHARED / "models" / "bmshj2018-factorized-q1.pt")
    ap.add_argument("--quality", type=int, default=1, help="the codec's quality (its λ)")
    ap.add_argument("--train", type=Path, default=SHARED / "data" / "bsds500" / "train")
    ap.add_argument("--val", type=Path, default=SHARED / "data" / "bsds500" / "test")
    ap.add_argument("--fit-images", type=int, default=40)
    ap.add_argument("--val-images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--prior-lr", type=float, default=1e-3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    lmbda = lambda_for_quality(args.quality)
    val = crops(list_images(args.val)[: args.val_images], args.size, None)
    train_files = list_images(args.train)
    base = load_codec(args.codec)
    names = [n for n in ("entropy_bottleneck", "gaussian_conditional") if hasattr(base, n)]
    res: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "lmbda": lmbda}
    res["base"] = measure(base, val, lmbda)

    def default_fit(net: torch.nn.Module) -> float:
        t = time.perf_counter()
        fit_prior(net, args.train, name=names, max_images=args.fit_images, progress=False)
        return time.perf_counter() - t

    net = copy.deepcopy(base)  # (a) frozen: the default PC priors on the frozen codec
    res["fit_seconds"] = default_fit(net)
    res["frozen"] = measure(net, val, lmbda)
    res["joint_training"] = train(net, train_files, args, lmbda)  # (c) joint, from (a)
    res["joint"] = measure(net, val, lmbda)
    plus = copy.deepcopy(base)  # (b) frozen+: the codec trained alone, then the default priors
    res["frozen_plus_training"] = train(plus, train_files, args, lmbda)
    res["base_plus"] = measure(plus, val, lmbda)
    default_fit(plus)
    res["frozen_plus"] = measure(plus, val, lmbda)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    for arm in ("base", "frozen", "joint", "base_plus", "frozen_plus"):
        print(arm, {k: round(v, 4) for k, v in res[arm].items()})


if __name__ == "__main__":
    main()
