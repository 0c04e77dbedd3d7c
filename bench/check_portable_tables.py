"""Rates with the portable coding tables against tables built with torch's own float functions.

    OMP_NUM_THREADS=2 python bench/check_portable_tables.py [--factorized 2] [--hyperprior 1]
        [--cond-steps 300] [--limit 24] [--out runs/portable_tables.json]

Since codec file version 2, every coding table is computed by ``pc_prior.portable`` (the same
bits on every device), where it used to be ``torch.softmax``/``torch.erfc`` in float64. This
fits PC priors into shared base codecs on BSDS500 (``pc-prior prior fit``'s defaults;
``--cond-steps`` shortens the PCConditional fit, which does not change how the two table
builds compare), then codes Kodak with the same circuits twice: with their portable tables, and
with tables built the torch way and loaded through the state dict (the stored-tables path).
Reports how many integer table entries differ and both Kodak rates from real bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pc_prior.coding import quantize_probs
from pc_prior.continuous import DiscretizedLogisticTree, ScaleConditionedTree
from pc_prior.eval.rd import evaluate_model
from pc_prior.hclt import HCLT
from pc_prior.images import list_images
from pc_prior.integrations import (
    PCConditional,
    PCEntropyBottleneck,
    fit_prior,
    load_codec,
    swap_entropy_model,
)
from pc_prior.settings import ConditionalFit

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def torch_tables(module: PCEntropyBottleneck | PCConditional) -> dict[str, torch.Tensor]:
    """The integer tables as this project built them before ``pc_prior.portable`` (the reference)."""
    pc = module.pc
    with torch.no_grad():
        root = quantize_probs(torch.softmax(pc.root_logits.double(), -1))
        trans = quantize_probs(torch.softmax(pc.transition_logits.double(), -1))
        if isinstance(pc, HCLT):
            emit = quantize_probs(torch.softmax(pc.emission_logits.double(), -1))
        elif isinstance(pc, DiscretizedLogisticTree):
            emit = quantize_probs(pc.log_emissions().double().exp())
        else:
            assert isinstance(pc, ScaleConditionedTree)
            emit = quantize_probs(torch_emission_probs(pc, module.radius, module.scale_table))
    return {"_pc_root": root, "_pc_trans": trans, "_pc_emit": emit}


def torch_emission_probs(
    pc: ScaleConditionedTree, radius: int, table: torch.Tensor
) -> torch.Tensor:
    s = table.double()
    loc, log_scale, power = (p.detach().double() for p in (pc.loc, pc.log_scale, pc.scale_power))
    off = pc.scale_offset.detach().double()[:, :, None]
    mu = s[None, :, None] * loc[:, None, :]
    scale = torch.exp(
        log_scale[:, None, :] + off + torch.log(s)[None, :, None] * (1 + power[:, None, :])
    )
    cdf = lambda x: 0.5 * torch.erfc(-(2**-0.5) * x)  # noqa: E731
    vals = torch.arange(-radius, radius + 1, dtype=torch.float64)
    v = (vals - mu[..., None]).abs()
    body = cdf((0.5 - v) / scale[..., None]) - cdf((-0.5 - v) / scale[..., None])
    esc = cdf((-radius - 0.5 - mu) / scale) + cdf((-radius - 0.5 + mu) / scale)
    return torch.cat([body, esc[..., None]], -1).clamp_min(0.0)


def compare(codec: Path, conditional: bool, cond_steps: int, kodak: list[Path]) -> dict:
    net = load_codec(codec)
    names = (
        ("entropy_bottleneck", "gaussian_conditional") if conditional else ("entropy_bottleneck",)
    )
    fit_prior(
        net,
        SHARED / "data" / "bsds500",
        name=names,
        progress=False,
        conditional=ConditionalFit(steps=cond_steps),
    )
    net.update(force=True)
    state = net.state_dict()
    differ, total = 0, 0
    for name in names:
        old = torch_tables(getattr(net, name))
        for key, t in old.items():
            new = getattr(getattr(net, name), key)
            differ += int((t.to(torch.int32) != new).sum())
            total += new.numel()
            state[f"{name}.{key}"] = t.to(torch.int32)
    ref = load_codec(codec)  # the same codec, loaded with the torch-built tables

    swap_entropy_model(ref, names)
    ref.load_state_dict(state)
    ref.eval()
    portable_bpp = evaluate_model(net, kodak, progress=False)["mean"]["bpp"]
    torch_bpp = evaluate_model(ref, kodak, progress=False)["mean"]["bpp"]
    return {
        "codec": str(codec),
        "table_entries": total,
        "entries_that_differ": differ,
        "kodak_bpp_portable": portable_bpp,
        "kodak_bpp_torch_tables": torch_bpp,
        "relative_difference": (portable_bpp - torch_bpp) / torch_bpp,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factorized", type=int, nargs="*", default=[2])
    ap.add_argument("--hyperprior", type=int, nargs="*", default=[1])
    ap.add_argument("--cond-steps", type=int, default=300)
    ap.add_argument("--limit", type=int, default=24, help="Kodak images coded")
    ap.add_argument("--out", default="runs/portable_tables.json")
    args = ap.parse_args()
    kodak = list_images(SHARED / "data" / "kodak")[: args.limit]
    rows = [
        compare(SHARED / "models" / f"bmshj2018-factorized-q{q}.pt", False, 0, kodak)
        for q in args.factorized
    ] + [
        compare(SHARED / "models" / f"bmshj2018-hyperprior-q{q}.pt", True, args.cond_steps, kodak)
        for q in args.hyperprior
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
