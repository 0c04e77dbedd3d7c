"""Real Kodak bitstreams of a codec, shared by the integration benches (not a benchmark itself)."""

from __future__ import annotations

import time

import torch


@torch.no_grad()
def code_kodak(net: torch.nn.Module, images: list[torch.Tensor], check_forward: bool) -> dict:
    """Compress and decompress every image (padded to 64): bpp (total, first string group = y, rest),
    mean PSNR, the cropped reconstructions and per-image encode/decode seconds.

    With ``check_forward`` each reconstruction must equal the eval-mode forward pass's exactly.
    """
    from pc_prior.integrations import pad_to_multiple

    bits, ybits, pixels, ps, recs, t_enc, t_dec = 0, 0, 0, [], [], [], []
    for x in images:
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x, 64)
        t = time.perf_counter()
        enc = net.compress(xp)
        t_enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        rec = net.decompress(enc["strings"], enc["shape"])["x_hat"]
        t_dec.append(time.perf_counter() - t)
        if check_forward:
            ref = net(xp)["x_hat"].clamp(0, 1)
            if not torch.equal(rec, ref):
                raise AssertionError(
                    "decompress does not reproduce the eval-mode forward reconstruction"
                )
        rec = rec[..., :h, :w]
        bits += 8 * sum(len(s) for group in enc["strings"] for s in group)
        ybits += 8 * sum(len(s) for s in enc["strings"][0])
        pixels += h * w
        ps.append(float(-10 * torch.log10(((rec - x) ** 2).mean())))
        recs.append(rec)
    return {
        "bpp": bits / pixels,
        "y_bpp": ybits / pixels,
        "z_bpp": (bits - ybits) / pixels,
        "psnr": sum(ps) / len(ps),
        "recs": recs,
        "enc_times": t_enc,
        "dec_times": t_dec,
    }
