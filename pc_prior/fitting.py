"""Training HCLTs: mini-batch and full-batch EM, and gradient training with Adam.

EM's expected counts are the gradients of the batch log-likelihood with respect to the
log-parameters (a circuit is multilinear in its parameters, so theta * dlogp/dtheta is the
expected flow through theta); autograd computes all of them in one backward pass. One update,
``em_update``, turns counts into new parameters: ``fit_em`` and the Lightning ``EMOptimizer``
(``pc_prior.train.prior``) both call it. Defaults: ``pc_prior.settings.LosslessFit``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_int, check_real, check_step_size
from .coding import coding_tables
from .errors import InputError
from .hclt import HCLT, check_symbols
from .progress import progress_bar
from .settings import LosslessFit

__all__ = [
    "apply_em_counts",
    "bits_per_dim",
    "em_step_counts",
    "em_update",
    "expected_counts",
    "fit_adam",
    "fit_em",
    "smooth_leaves",
]

LN2 = math.log(2.0)


def bits_per_dim(pc: HCLT, x: Tensor, batch_size: int = 1024) -> float:
    """Average negative log-likelihood of ``x`` in bits per variable."""
    batch_size = check_int("batch_size", batch_size, 1)
    x = check_symbols(x, pc.num_vars, pc.num_cats)
    if len(x) == 0:
        raise InputError("x is empty (0 rows): bits per dimension of no data are undefined")
    total = 0.0
    with torch.no_grad():
        for b in x.split(batch_size):
            total -= float(pc.log_prob(b.to(pc.root_logits.device)).sum())
    return total / (len(x) * pc.num_vars * LN2)


def em_step_counts(
    pc: HCLT, x: Tensor, log_root: Tensor | None = None
) -> tuple[list[Tensor], float]:
    """Expected sufficient statistics (root, transitions, emissions) on a batch, and its log-likelihood.

    The counts are the flows: gradients of the log-likelihood with respect to the log root prior,
    the log transitions and the gathered leaf values, which one ``index_add`` turns into emission
    counts (cheaper than differentiating through the gather). ``log_root`` [N, K] gives each
    item its own root prior; the root counts are then per item ([N, K], the root posteriors).
    """
    lr = (pc.log_root() if log_root is None else log_root).detach().requires_grad_(True)
    lt = pc.log_transitions().detach().requires_grad_(True)
    with torch.no_grad():
        leaves, rows = pc.level_leaf_log_probs(x, log_emit=pc.log_emissions())
    leaves.requires_grad_(True)
    ll = pc.inside(leaves, log_root=lr, log_trans=lt)[0].sum()
    # A one-variable tree uses no transition (the root's row is never read): its counts are zero.
    grads = torch.autograd.grad(ll, [lr, lt, leaves], allow_unused=True)
    c_root, c_trans, flow = (
        torch.zeros_like(p) if c is None else c.detach() for p, c in zip((lr, lt, leaves), grads)
    )
    return [c_root, c_trans, pc.emission_counts(rows, flow)], float(ll.detach())


def expected_counts(
    pc: HCLT, x: Tensor, batch_size: int = 4096, log_root: Tensor | None = None
) -> list[Tensor]:
    """``em_step_counts`` summed over all of ``x`` in batches: full-batch EM's statistics. With
    per-item root priors ``log_root`` [N, K], the root counts stay per item ([N, K])."""
    acc: list[Tensor] | None = None
    roots: list[Tensor] = []
    dev = pc.root_logits.device
    priors = itertools.repeat(None) if log_root is None else log_root.split(batch_size)
    for b, lr in zip(x.split(batch_size), priors):
        counts, _ = em_step_counts(pc, b.to(dev), None if lr is None else lr.to(dev))
        if lr is not None:  # per item: kept apart, summed below only to share the loop
            roots.append(counts[0])
            counts = [counts[0].sum(0), *counts[1:]]
        acc = counts if acc is None else [a + c for a, c in zip(acc, counts)]
    if acc is None:
        raise InputError("x is empty (0 rows): no counts")
    return [torch.cat(roots), *acc[1:]] if log_root is not None else acc


def _normalize(counts: Tensor, pseudocount: float, current: Tensor) -> Tensor:
    """Smoothed frequencies of ``counts``; rows without any count (and no pseudocount) keep ``current``."""
    c = counts + pseudocount / counts.shape[-1]
    total = c.sum(-1, keepdim=True)
    return torch.where(total > 0, c / total.clamp_min(torch.finfo(c.dtype).tiny), current)


@torch.no_grad()
def em_update(logits: Tensor, counts: Tensor, step_size: float, pseudocount: float) -> None:
    """One EM update, in place, of logits whose last dimension holds distributions.

    ``new = (1 - step_size) * current + step_size * normalize(counts + pseudocount / V)``, with
    ``current = softmax(logits)``; the logits become the new log-probabilities. A row without any
    count (and no pseudocount) keeps its distribution. ``step_size`` 1.0 with full-batch counts is
    a classic EM iteration, which never lowers the likelihood.
    """
    p = torch.log_softmax(logits, -1).exp()
    new = (1.0 - step_size) * p + step_size * _normalize(counts, pseudocount, p)
    logits.copy_(new.clamp_min(torch.finfo(new.dtype).tiny).log())


def apply_em_counts(pc: HCLT, counts: list[Tensor], step_size: float, pseudocount: float) -> None:
    """``em_update`` of the root, transition and emission logits with ``em_step_counts``' counts."""
    for logits, cnt in zip((pc.root_logits, pc.transition_logits, pc.emission_logits), counts):
        em_update(logits, cnt, step_size, pseudocount)


@torch.no_grad()
def smooth_leaves(pc: HCLT, weight: float, width: float) -> None:
    """Blend every leaf distribution's interior symbols with their Gaussian-kernel smoothing, in place.

    Symbols 1..V-2 are the interior: leaf (i, k) keeps its mass there, and ``weight`` of it is
    spread over neighbouring symbols with a Gaussian kernel of standard deviation ``width``
    symbols (truncated at 3 widths; renormalized at the interior's edges). The two end symbols
    are left alone: image intensities pile up there (clipping), and smoothing those spikes into
    their neighbours costs more than it gains. Why at all: a leaf's categorical sees each grey
    level a handful of times, and EM gives levels it never saw almost no mass; neighbouring
    levels are about as likely. ``weight`` 0 is a no-op, as is a circuit with fewer than 4 symbols.
    """
    weight = check_real("weight", weight, 0.0, 1.0)
    width = check_real("width", width, 0.0, low_open=True)
    v = pc.emission_logits.shape[-1]  # symbols per distribution (per group for a GroupedHCLT)
    if weight == 0.0 or v < 4:
        return
    p = torch.softmax(pc.emission_logits.double(), -1)
    inner = p[..., 1:-1].reshape(-1, 1, v - 2)
    r = int(3 * width) + 1
    t = torch.arange(-r, r + 1, dtype=torch.float64, device=p.device)
    kernel = torch.exp(-0.5 * (t / width) ** 2).view(1, 1, -1)
    spread = F.conv1d(inner, kernel, padding=r)
    spread = spread / F.conv1d(torch.ones_like(inner[:1]), kernel, padding=r)  # edge-renormalized
    mass = inner.sum(-1, keepdim=True)
    spread = spread * (mass / spread.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny))
    p[..., 1:-1] = ((1.0 - weight) * inner + weight * spread).view(*p.shape[:-1], v - 2)
    dt = pc.emission_logits.dtype
    pc.emission_logits.copy_(p.clamp_min(torch.finfo(dt).tiny).log().to(dt))


def _check_circuit(pc: HCLT, fn: str) -> None:
    if not isinstance(pc, HCLT):
        raise InputError(f"{fn} trains an HCLT (categorical leaves), got {type(pc).__name__}")
    pc.check_finite()


def _batches(x: Tensor, batch_size: int, g: torch.Generator, shuffle: bool) -> Iterator[Tensor]:
    idx = torch.randperm(len(x), generator=g) if shuffle else torch.arange(len(x))
    for s in range(0, len(x), batch_size):
        yield x[idx[s : s + batch_size]]


def _schedule(start: float, end: float, total: int) -> Callable[[int], float]:
    """Linear step-size schedule from ``start`` to ``end`` over ``total`` updates."""
    return lambda t: start + (end - start) * min(t / max(total - 1, 1), 1.0)


def fit_em(
    pc: HCLT,
    x_train: Tensor,
    epochs: int = LosslessFit.epochs,
    batch_size: int = LosslessFit.batch_size,
    step_size: float | tuple[float, float] = LosslessFit.step_size,
    pseudocount: float = LosslessFit.pseudocount,
    full_batch_epochs: int = LosslessFit.full_batch_epochs,
    leaf_smoothing: float = LosslessFit.leaf_smoothing,
    smoothing_width: float = LosslessFit.smoothing_width,
    x_valid: Tensor | None = None,
    seed: int = LosslessFit.seed,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Mini-batch EM for ``epochs`` epochs, then ``full_batch_epochs`` epochs of full-batch EM.

    ``step_size`` is a constant or a (start, end) pair annealed linearly over all mini-batch
    updates. After the last epoch, ``smooth_leaves(pc, leaf_smoothing, smoothing_width)``.
    Returns one record per epoch with train (and valid) bits per dimension. The coding
    tables are refreshed at the end, and before every ``callback(epoch, record)`` (which may save
    a checkpoint: its tables are then those of its parameters).
    Bad arguments (and a circuit with non-finite parameters) raise ``InputError`` before any update.
    """
    _check_circuit(pc, "fit_em")
    epochs = check_int("epochs", epochs, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    step_size = check_step_size(step_size)
    pseudocount = check_real("pseudocount", pseudocount, 0.0)
    full_batch_epochs = check_int("full_batch_epochs", full_batch_epochs, 0)
    leaf_smoothing = check_real("leaf_smoothing", leaf_smoothing, 0.0, 1.0)
    smoothing_width = check_real("smoothing_width", smoothing_width, 0.0, low_open=True)
    if callback is not None and not callable(callback):
        raise InputError(f"callback must be callable or None, got {type(callback).__name__}")
    x_train = check_symbols(x_train, pc.num_vars, pc.num_cats, "x_train")
    if len(x_train) == 0:
        raise InputError("x_train is empty (0 rows)")
    if x_valid is not None:
        x_valid = check_symbols(x_valid, pc.num_vars, pc.num_cats, "x_valid")
        if len(x_valid) == 0:
            raise InputError("x_valid is empty (0 rows): pass None for no validation")
    dev = pc.root_logits.device
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    sched = (
        _schedule(*step_size, epochs * steps_per_epoch)
        if isinstance(step_size, tuple)
        else (lambda t: step_size)
    )
    history: list[dict] = []
    t = 0
    denom = pc.num_vars * LN2
    total_epochs = epochs + full_batch_epochs
    bar = progress_bar(
        total=total_epochs * steps_per_epoch, desc="EM", disable=not progress, unit="batch"
    )
    for epoch in range(total_epochs):
        full = epoch >= epochs
        acc: list[Tensor] | None = None
        nll, seen = 0.0, 0
        for xb in _batches(x_train, batch_size, g, shuffle=not full):
            counts, ll = em_step_counts(pc, xb.to(dev))
            nll -= ll
            seen += len(xb)
            if full:
                acc = counts if acc is None else [a + c for a, c in zip(acc, counts)]
            else:
                apply_em_counts(pc, counts, sched(t), pseudocount)
                t += 1
            # refresh=False: the postfix is drawn with the next update, at the bar's interval
            bar.set_postfix(
                epoch=epoch + 1,
                bpd=f"{nll / seen / denom:.4f}",
                mode="full" if full else "mini",
                refresh=False,
            )
            bar.update(1)
        if full and acc is not None:
            apply_em_counts(pc, acc, 1.0, pseudocount)
        if epoch == total_epochs - 1:
            smooth_leaves(pc, leaf_smoothing, smoothing_width)
        rec = {
            "epoch": epoch + 1,
            "mode": "full" if full else "mini",
            "train_bpd": nll / seen / denom,
        }
        if x_valid is not None:
            rec["valid_bpd"] = bits_per_dim(pc, x_valid, batch_size)
        history.append(rec)
        if callback is not None:
            # the callback may save or code: give it the coder's tables of these parameters
            coding_tables(pc, refresh=True)
            callback(epoch, rec)
    bar.close()
    if callback is None or not total_epochs:  # else the last epoch's callback has them already
        coding_tables(pc, refresh=True)  # the coder's integer tables follow the new parameters
    return history


def fit_adam(
    pc: HCLT,
    x_train: Tensor,
    epochs: int = LosslessFit.epochs,
    batch_size: int = LosslessFit.batch_size,
    lr: float = LosslessFit.adam_lr,
    seed: int = LosslessFit.seed,
    progress: bool = True,
) -> list[dict]:
    """Gradient training: Adam on the logits, minimizing negative log-likelihood."""
    _check_circuit(pc, "fit_adam")
    epochs = check_int("epochs", epochs, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    lr = check_real("lr", lr, 0.0, low_open=True)
    x_train = check_symbols(x_train, pc.num_vars, pc.num_cats, "x_train")
    if len(x_train) == 0:
        raise InputError("x_train is empty (0 rows)")
    dev = pc.root_logits.device
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(pc.parameters(), lr=lr)
    denom = pc.num_vars * LN2
    history = []
    steps = math.ceil(len(x_train) / batch_size)
    bar = progress_bar(total=epochs * steps, desc="Adam", disable=not progress, unit="batch")
    for epoch in range(epochs):
        nll, seen = 0.0, 0
        for xb in _batches(x_train, batch_size, g, shuffle=True):
            loss = -pc.log_prob(xb.to(dev)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            nll += float(loss.detach()) * len(xb)
            seen += len(xb)
            bar.set_postfix(epoch=epoch + 1, bpd=f"{nll / seen / denom:.4f}", refresh=False)
            bar.update(1)
        history.append({"epoch": epoch + 1, "train_bpd": nll / seen / denom})
    bar.close()
    coding_tables(pc, refresh=True)  # the coder's integer tables follow the new parameters
    return history
