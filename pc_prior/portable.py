"""Float64 math that gives the same bits on every device, thread count and tensor shape.

Why. The coder's tables are ``floor(p * 2**22) + 1`` of float64 probabilities ``p``. If ``p`` is
computed with ``torch.exp``/``torch.erfc``/``torch.sum``, its last bits depend on the device, the
CPU's vector width, how a tensor is split over threads (ATen codes a chunk's tail with the
scalar libm function, its body with SLEEF) and the reduction order, so once in a while a table
entry differs by one and a stream made on one machine is refused on another. This module builds
``exp``, ``log``, the normal CDF, the sigmoid and the softmax from operations that IEEE 754
rounds correctly and that PyTorch runs as one elementwise kernel each: ``+ - * /``, ``floor``,
comparisons, ``where``, gathers from constant tables, exact bit manipulation, and sums in a fixed
order. Their results are therefore a function of the input bits alone, which lets a codec file
store parameters instead of tables (``pc_prior.integrations``) and rebuild the tables bit for bit.

Accuracy (tested against ``torch.special``): relative error below 1e-14 for ``exp``/``log``,
absolute error below 1e-15 for ``normal_cdf``. That is far below the tables' 2**-22 resolution;
what matters here is that the bits are reproducible, not the last digit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._erfcx_table import COEFFS, DEGREE, PIECES, WIDTH

__all__ = ["exp", "fixed_order_sum", "log", "normal_cdf", "sigmoid", "softmax"]

_LOG2E = 1.4426950408889634
_LN2_HI = float.fromhex("0x1.62e42fee00000p-1")  # ln 2 split so n·_LN2_HI is exact for |n| < 2**20
_LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
_EXP_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(14))  # |r| <= ln2/2: error < 1e-17
_ATANH_TERMS = tuple(2.0 / (2 * k + 1) for k in range(13))  # log m = 2·atanh(t), |t| <= 0.172
_SQRT1_2 = 0.7071067811865476
_MANTISSA = (1 << 52) - 1
_ERFCX_END = PIECES * WIDTH  # erfc(z) < 1e-28 beyond: the normal tail is 0 there


def _as_float64(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    return x.detach().to(torch.float64)


def _pow2(n: Tensor) -> Tensor:
    """2**n for integer-valued float64 n in [-1022, 1023], built from its exponent bits (exact)."""
    return ((n.to(torch.int64) + 1023) << 52).view(torch.float64)


def exp(x: Tensor) -> Tensor:
    """e**x, float64; inputs are clamped to [-700, 700] (results stay normal numbers)."""
    x = _as_float64(x).clamp(-700.0, 700.0)
    n = torch.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = torch.full_like(r, _EXP_TAYLOR[-1])
    for c in _EXP_TAYLOR[-2::-1]:  # in place: the same kernels, less memory traffic
        p.mul_(r).add_(c)
    return p.mul_(_pow2(n))


def log(x: Tensor) -> Tensor:
    """Natural log of positive normal float64 values (else ``ValueError``)."""
    x = _as_float64(x)
    if x.numel() and not (
        bool(torch.isfinite(x).all()) and float(x.min()) >= 2.2250738585072014e-308
    ):
        raise ValueError("portable.log takes positive, finite, normal numbers")
    bits = x.view(torch.int64)
    e = ((bits >> 52) - 1023).to(torch.float64)
    m = ((bits & _MANTISSA) | (1023 << 52)).view(torch.float64)  # x = m·2**e, m in [1, 2)
    big = m > math.sqrt(2.0)
    m = torch.where(big, m * 0.5, m)
    e = torch.where(big, e + 1.0, e)
    t = (m - 1.0) / (m + 1.0)
    t2 = t * t
    s = torch.full_like(t, _ATANH_TERMS[-1])
    for c in _ATANH_TERMS[-2::-1]:
        s = s * t2 + c
    return e * _LN2_HI + (e * _LN2_LO + s * t)


def _erfcx(w: Tensor) -> Tensor:
    """exp(w²)·erfc(w) for w in [0, 8), piecewise polynomials of ``pc_prior._erfcx_table``."""
    k = torch.floor(w * (1.0 / WIDTH)).clamp(0, PIECES - 1)
    x = w * (2.0 / WIDTH) - (2.0 * k + 1.0)
    coef = torch.tensor(COEFFS, dtype=torch.float64, device=w.device).T.contiguous()  # [DEG+1, P]
    idx = k.to(torch.int64)
    p = coef[DEGREE].index_select(0, idx)
    for j in range(DEGREE - 1, -1, -1):
        p.mul_(x).add_(coef[j].index_select(0, idx))
    return p


def normal_cdf(a: Tensor) -> Tensor:
    """Φ(a), the standard normal CDF, float64; each tail computed where it is small (accurate)."""
    z = _as_float64(a) * -_SQRT1_2  # Φ(a) = erfc(z) / 2
    w = z.abs()
    inside = w < _ERFCX_END  # elementwise, so computing only these changes no bits
    wi = w[inside]
    tail = torch.zeros_like(w)
    tail[inside] = 0.5 * exp(-(wi * wi)) * _erfcx(wi)
    return torch.where(z >= 0, tail, 1.0 - tail)


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + e**-x), float64, computed from the smaller of e**x and e**-x."""
    x = _as_float64(x)
    e = exp(-x.abs())
    return torch.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def fixed_order_sum(x: Tensor) -> Tensor:
    """Sum over the last dimension, left to right (so the rounding does not depend on the device)."""
    x = _as_float64(x)
    if x.shape[-1] == 0:
        return torch.zeros(x.shape[:-1], dtype=torch.float64, device=x.device)
    s = x[..., 0].clone()
    for j in range(1, x.shape[-1]):
        s = s + x[..., j]
    return s


def softmax(x: Tensor) -> Tensor:
    """Softmax over the last dimension of logits, float64; -inf logits get probability 0."""
    x = _as_float64(x)
    m = x.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.where(torch.isfinite(x), exp(x - m), torch.zeros_like(x))
    return e / fixed_order_sum(e)[..., None]
