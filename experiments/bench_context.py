"""What the checkerboard context alone buys on frozen hyperprior codecs, and two variants of it.

For each quality: collect the shared bmshj2018-hyperprior codec's symbols and scale indexes on
``bsds500/train`` (fit) and ``bsds500/test`` (validation), both cropped as ``fit_prior``
reads folders, fit ``CheckerboardContext`` on the first, and report the validation y code length
under CompressAI's Gaussian (table scales) with and without the context (no circuit: the
context's own share of ``PCConditional``'s saving). Kodak, the test set, chooses nothing, so it is
not read here. Two variants, on the
non-anchor or anchor positions they would change:

- ``cross_mean``: the integer mean predicted from all channels of the neighbours (ridge least
  squares) instead of the same channel, with the shift table refit for it;
- ``third_pass``: anchors split in two diagonal halves, the second coded with a context from its
  four diagonal neighbours (the same fit, on those positions); its share of all y bits.

    OMP_NUM_THREADS=1 python experiments/bench_context.py --qualities 1 2 3 --json runs/bench_context.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def rows_at(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] at the positions of ``mask`` [H, W] -> rows [B*n, C]."""
    return t[..., mask].permute(0, 2, 1).reshape(-1, t.shape[1])


def shift_refit(ctx, train, test, table, mean_fn) -> float:
    """Validation non-anchor bits with means from ``mean_fn`` and a per-cell shift refit for them."""
    from pc_prior.continuous import gaussian_bits
    from pc_prior.integrations.context import anchor_mask

    def rows(maps):
        out = {"r": [], "s": [], "cell": []}
        for sym, idx in maps:
            a, b, usum, cnt = ctx.features(sym, idx)
            na = ~anchor_mask(*sym.shape[-2:])
            c = sym.shape[1]
            cell = (
                torch.arange(c)[None, :, None, None] * ctx.shift.shape[1] + a
            ) * ctx.shift.shape[2] + b
            out["r"].append(rows_at(sym - mean_fn(usum, cnt), na))
            out["s"].append(rows_at(idx, na))
            out["cell"].append(rows_at(cell, na))
        return {k: torch.cat(v) for k, v in out.items()}

    tr, te = rows(train), rows(test)
    cands = torch.arange(-12, 13)
    cost = torch.zeros(ctx.shift.numel(), len(cands), dtype=torch.float64)
    for k, d in enumerate(cands):
        bits = gaussian_bits(tr["r"].double(), table[(tr["s"] + d).clamp(0, len(table) - 1)])
        cost[:, k].index_add_(0, tr["cell"].flatten(), bits.flatten())
    shift = cands[cost.argmin(1)]
    return float(
        gaussian_bits(
            te["r"].double(), table[(te["s"] + shift[te["cell"]]).clamp(0, len(table) - 1)]
        ).sum()
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qualities", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--models", type=Path, default=SHARED / "models")
    ap.add_argument("--train", type=Path, default=SHARED / "data" / "bsds500" / "train")
    ap.add_argument("--valid", type=Path, default=SHARED / "data" / "bsds500" / "test")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pc_prior.images import FolderImages
    from pc_prior.integrations import collect_conditional_inputs, load_codec
    from pc_prior.integrations.context import (
        CheckerboardContext,
        anchor_mask,
        gaussian_bits,
        lattice_masks,
        rounded_mean,
    )
    from pc_prior.settings import ImageFit

    rows = []
    for q in args.qualities:
        net = load_codec(args.models / f"bmshj2018-hyperprior-q{q}.pt")
        net.update(force=True)
        table = net.gaussian_conditional.scale_table.double()

        def maps(folder):
            sym, idx = collect_conditional_inputs(
                net, FolderImages(folder, ImageFit.multiple, args.max_images), maps=True
            )
            return [(s.long(), i.long()) for s, i in zip(sym, idx)]

        train, test = maps(args.train), maps(args.valid)
        c = train[0][0].shape[1]
        ctx = CheckerboardContext(c, table)
        ctx.fit(train, table)
        base = ctx_bits = non_base = non_ctx = 0.0
        for sym, idx in test:
            s2, m = ctx(sym, idx)
            na = ~anchor_mask(*sym.shape[-2:])
            b0 = gaussian_bits(sym.double(), table[idx])
            b1 = gaussian_bits((sym - m).double(), table[s2])
            base, ctx_bits = base + float(b0.sum()), ctx_bits + float(b1.sum())
            non_base, non_ctx = (
                non_base + float(b0[..., na].sum()),
                non_ctx + float(b1[..., na].sum()),
            )
        # cross-channel mean: ridge regression of the symbols on all channels' neighbour means
        xs, ys = [], []
        for sym, idx in train:
            _, usum, cnt = ctx.neighbour_sums(sym, idx)
            na = ~anchor_mask(*sym.shape[-2:])
            xs.append(rows_at(usum.double() / cnt.clamp_min(1), na))
            ys.append(rows_at(sym, na).double())
        x1 = torch.cat(
            [torch.cat(xs), torch.ones(sum(len(x) for x in xs), 1, dtype=torch.float64)], 1
        )
        w = torch.linalg.solve(
            x1.T @ x1 + 100 * torch.eye(c + 1, dtype=torch.float64), x1.T @ torch.cat(ys)
        )

        def cross_mean(usum, cnt):
            x = (usum.double() / cnt.clamp_min(1)).permute(0, 2, 3, 1)
            return torch.round(x @ w[:-1] + w[-1]).permute(0, 3, 1, 2).long()

        def same_mean(usum, cnt):
            return rounded_mean(ctx.coef[None, :, None, None], usum, cnt)

        same_refit = shift_refit(ctx, train, test, table, same_mean)
        cross_refit = shift_refit(ctx, train, test, table, cross_mean)
        # third pass: the (odd, odd) quarter given its diagonal (even, even) neighbours
        diag = CheckerboardContext(c, table, lattice="diagonal")
        diag.fit(train, table)
        d_base = d_ctx = 0.0
        for sym, idx in test:
            quarter = lattice_masks(*sym.shape[-2:], "diagonal")[1]
            s2, m = diag(sym, idx)
            d_base += float(gaussian_bits(sym.double(), table[idx])[..., quarter].sum())
            d_ctx += float(gaussian_bits((sym - m).double(), table[s2])[..., quarter].sum())
        row = {
            "quality": q,
            "valid_y_bits_gaussian": base,
            "valid_y_bits_context": ctx_bits,
            "context_saving_pct": 100 * (1 - ctx_bits / base),
            "non_anchor_saving_pct": 100 * (1 - non_ctx / non_base),
            "mean_coef_abs_mean": float(ctx.coef.double().abs().mean() / 2**12),
            "same_mean_refit_non_anchor_saving_pct": 100 * (1 - same_refit / non_base),
            "cross_mean_refit_non_anchor_saving_pct": 100 * (1 - cross_refit / non_base),
            "third_pass_saving_pct_of_all_y": 100 * (d_base - d_ctx) / base,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    print(
        "\n| codec | context alone (y) | on non-anchors | same-channel mean | cross-channel mean | third pass (y) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| hyperprior q{r['quality']} | {r['context_saving_pct']:.2f}% | {r['non_anchor_saving_pct']:.2f}% | "
            f"{r['same_mean_refit_non_anchor_saving_pct']:.2f}% | {r['cross_mean_refit_non_anchor_saving_pct']:.2f}% | "
            f"+{r['third_pass_saving_pct_of_all_y']:.2f}% |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
