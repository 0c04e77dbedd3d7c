"""pc_prior.portable: accurate, and the same bits whatever the tensor's shape, slicing or threads."""

import math

import pytest
import torch

from pc_prior import portable


def test_accuracy_against_torch():
    x = torch.linspace(-700, 700, 20001, dtype=torch.float64)
    assert ((portable.exp(x) - torch.exp(x)) / torch.exp(x)).abs().max() < 1e-15
    y = torch.logspace(-300, 300, 20001, dtype=torch.float64)
    assert (portable.log(y) - torch.log(y)).abs().max() < 1e-12
    assert portable.log(torch.tensor([1.0], dtype=torch.float64)).item() == 0.0
    a = torch.linspace(-40, 40, 40001, dtype=torch.float64)
    ref = 0.5 * torch.special.erfc(-a / math.sqrt(2))
    got = portable.normal_cdf(a)
    assert (got - ref).abs().max() < 1e-15
    tail = (ref > 1e-290) & (a < 0) & (a > -11)  # the lower tail, relative accuracy
    assert ((got - ref) / ref)[tail].abs().max() < 1e-13
    s = torch.linspace(-60, 60, 2001, dtype=torch.float64)
    assert (portable.sigmoid(s) - torch.sigmoid(s)).abs().max() < 1e-15
    logits = torch.randn(50, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = portable.softmax(logits * 6)
    assert (p - torch.softmax(logits * 6, -1)).abs().max() < 1e-15
    assert torch.equal(
        portable.softmax(torch.tensor([[0.0, -math.inf]]))[0, 1],
        torch.tensor(0.0, dtype=torch.float64),
    )


@pytest.mark.parametrize("fn", [portable.exp, portable.normal_cdf, portable.sigmoid])
def test_same_bits_for_any_slicing_and_thread_count(fn):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200_003, dtype=torch.float64, generator=g) * 9
    whole = fn(x)
    parts = torch.cat([fn(x[i : i + 997]) for i in range(0, len(x), 997)])
    assert torch.equal(whole, parts)  # ATen's vector body and scalar tail would differ here
    assert torch.equal(fn(x.view(-1, 1)[::1]).view(-1), whole)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(fn(x), whole)
    finally:
        torch.set_num_threads(n)


def test_log_refuses_non_positive():
    with pytest.raises(ValueError, match="positive"):
        portable.log(torch.tensor([0.0, 1.0]))
