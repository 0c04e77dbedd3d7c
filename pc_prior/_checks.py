"""Argument checks shared by the fitting entry points: each raises ``InputError`` naming the argument.

Integers must be integers (Python, numpy or a one-element integer tensor; not bools, not floats),
numbers must be real and not NaN, and both must lie in the stated range, so that a bad argument
fails at once with its name instead of as a ``ZeroDivisionError`` or an ``IndexError`` deep inside
a fit.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Literal, overload

import numpy as np
import torch

from .errors import InputError

__all__ = [
    "check_choice",
    "check_int",
    "check_real",
    "check_rows",
    "check_step_size",
    "check_tensor",
    "fit_keywords",
    "tensor_problem",
]

# The dtypes each kind of tensor argument may have: the ones every device computes with. Bools,
# complex numbers, quantized and float8 tensors have no meaning here (or fail inside torch).
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TENSOR_KINDS = {
    "integer": INTEGER_DTYPES,
    "float": FLOAT_DTYPES,
    "real": INTEGER_DTYPES + FLOAT_DTYPES,
}


@overload
def check_int(
    name: str, value: Any, minimum: int | None = None, *, allow_none: Literal[False] = False
) -> int: ...
@overload
def check_int(
    name: str, value: Any, minimum: int | None = None, *, allow_none: bool
) -> int | None: ...
def check_int(
    name: str, value: Any, minimum: int | None = None, *, allow_none: bool = False
) -> int | None:
    """``value`` as an int, refusing non-integers (bools and floats included) and values below ``minimum``."""
    if value is None and allow_none:
        return None
    want = (
        "an integer"
        + (f" >= {minimum}" if minimum is not None else "")
        + (" or None" if allow_none else "")
    )
    if isinstance(value, (bool, np.bool_, float, np.floating)) or (
        isinstance(value, torch.Tensor)
        and (value.dtype.is_floating_point or value.dtype == torch.bool)
    ):
        raise InputError(f"{name} must be {want}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InputError(f"{name} must be {want}, got {type(value).__name__} {value!r}") from None
    if minimum is not None and v < minimum:
        raise InputError(f"{name} must be {want}, got {v}")
    return v


@overload
def check_real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: Literal[False] = False,
) -> float: ...
@overload
def check_real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool,
) -> float | None: ...
def check_real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> float | None:
    """``value`` as a float in the interval from ``low`` to ``high`` (open ends as flagged); NaN is refused."""
    if value is None and allow_none:
        return None
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    want = f"a number in {'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
    if allow_none:
        want += " or None"
    ok_type = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype.is_floating_point:
        ok_type = True
    if not ok_type:
        raise InputError(f"{name} must be {want}, got {type(value).__name__} {value!r}")
    v = float(value)
    if (
        math.isnan(v)
        or (low is not None and (v <= low if low_open else v < low))
        or (high is not None and (v >= high if high_open else v > high))
        or (low is None and v == -math.inf)
        or (high is None and v == math.inf)
    ):
        raise InputError(f"{name} must be {want}, got {v}")
    return v


def check_step_size(value: Any, name: str = "step_size") -> float | tuple[float, float]:
    """An EM step size: a number in (0, 1], or a (start, end) pair of them (annealed linearly)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InputError(
                f"{name} must be a number in (0, 1] or a (start, end) pair of them, "
                f"got a sequence of {len(value)}"
            )
        return (
            check_real(f"{name}[0] (start)", value[0], 0.0, 1.0, low_open=True),
            check_real(f"{name}[1] (end)", value[1], 0.0, 1.0, low_open=True),
        )
    try:
        return check_real(name, value, 0.0, 1.0, low_open=True)
    except InputError as e:
        raise InputError(f"{e} (a number in (0, 1] or a (start, end) pair of them)") from None


def check_rows(name: str, x: Any, num_vars: int | None = None) -> torch.Tensor:
    """A non-empty 2-D tensor [N, D] (with D = ``num_vars`` if given)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(
            f"{name} must be a torch.Tensor of shape [N, {num_vars or 'D'}], got {type(x).__name__}"
        )
    if x.dim() != 2 or (num_vars is not None and x.shape[1] != num_vars):
        raise InputError(f"{name} must have shape [N, {num_vars or 'D'}], got {tuple(x.shape)}")
    if len(x) == 0:
        raise InputError(f"{name} is empty (0 rows)")
    return x


def tensor_problem(
    name: str, x: Any, kind: Literal["integer", "float", "real"], shape: str = ""
) -> str | None:
    """Why ``x`` is not a dense tensor with values of ``kind`` (``TENSOR_KINDS``), or None.

    Sparse, nested and meta tensors (no values to read) and dtypes outside the kind are named
    here instead of failing as a ``NotImplementedError`` inside torch. ``shape`` (for example
    ``"[B, C, H, W]"``) only words the message. For loaders that collect problems (state dicts);
    arguments use ``check_tensor``.
    """
    what = f"{'an' if kind == 'integer' else 'a'} {kind} torch.Tensor{' ' + shape if shape else ''}"
    if not isinstance(x, torch.Tensor):
        return f"{name} must be {what}, got {type(x).__name__}"
    if x.layout != torch.strided:
        return f"{name} must be a dense tensor, got layout {x.layout} (call .to_dense())"
    if x.is_meta:
        return f"{name} is a meta tensor: it has no values to code or fit on"
    if x.is_quantized or x.dtype not in TENSOR_KINDS[kind]:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in TENSOR_KINDS[kind])
        return f"{name} must be {what} ({allowed}), got {x.dtype}"
    return None


def check_tensor(
    name: str, x: Any, kind: Literal["integer", "float", "real"], shape: str = ""
) -> torch.Tensor:
    """``x`` if it is a dense tensor with values of ``kind``, else ``InputError`` naming the
    problem (``tensor_problem``)."""
    problem = tensor_problem(name, x, kind, shape)
    if problem is not None:
        raise InputError(problem)
    return x


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """``value`` if it is one of ``choices``, else ``InputError`` listing them."""
    if value not in choices:
        raise InputError(f"{name} must be one of {choices}, got {value!r}")
    return value


def fit_keywords(
    owner: type, fit: Any, data: tuple[str, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The keyword arguments ``kwargs`` of ``owner.fit`` bound to its signature, defaults filled in,
    without ``self`` and the ``data`` parameters; unknown names raise ``InputError``."""
    import inspect

    try:
        bound = inspect.signature(fit).bind(None, *([None] * len(data)), **kwargs)
    except TypeError as e:
        raise InputError(f"{owner.__name__}.fit: {e}") from None
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k != "self" and k not in data}
