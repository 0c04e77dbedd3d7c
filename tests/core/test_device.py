"""The core on the test device (``PC_PRIOR_TEST_DEVICE``; the CPU by default, CUDA in the device
suite): the same code path as the CPU, exact where the README claims exactness."""

import copy

import torch
from conftest import all_assignments, random_hclt

from pc_prior import decode, encode, fit_em
from pc_prior.coding import coding_tables


def test_hclt_queries_on_the_device_match_the_cpu(device):
    pc = random_hclt()
    x = all_assignments(pc.num_vars, pc.num_cats)
    on = copy.deepcopy(pc).to(device)
    logp = on.log_prob(x.to(device))
    assert logp.device.type == device.type
    # brute force: the probabilities of all assignments sum to one on the device too
    torch.testing.assert_close(logp.exp().sum().cpu(), torch.tensor(1.0, dtype=logp.dtype))
    torch.testing.assert_close(logp.cpu(), pc.log_prob(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(on.conditionals(x[:50].to(device)).cpu(), pc.conditionals(x[:50]))


def test_em_on_the_device_follows_the_cpu(device):
    teacher = random_hclt(parent=(-1, 0, 0, 1, 1, 2), num_cats=4, num_latents=3, seed=1)
    x = teacher.sample(600, generator=torch.Generator().manual_seed(0))
    cpu = random_hclt(parent=(-1, 0, 0, 1, 1, 2), num_cats=4, num_latents=3, seed=2)
    on = copy.deepcopy(cpu).to(device)
    h_cpu = fit_em(cpu, x, epochs=2, full_batch_epochs=1, batch_size=128, progress=False)
    h_on = fit_em(on, x.to(device), epochs=2, full_batch_epochs=1, batch_size=128, progress=False)
    for a, b in zip(h_cpu, h_on):
        assert abs(a["train_bpd"] - b["train_bpd"]) < 1e-9
    for p, q in zip(cpu.parameters(), on.parameters()):
        torch.testing.assert_close(q.detach().cpu(), p.detach(), rtol=1e-9, atol=1e-9)


def test_lossless_streams_cross_devices_exactly(device):
    pc = random_hclt(parent=(-1, 0, 0, 1, 1, 2, 2, 3), num_cats=5, num_latents=4, seed=3)
    x = pc.sample(300, generator=torch.Generator().manual_seed(1))
    coding_tables(pc)
    on = copy.deepcopy(pc).to(device)  # tables are integer buffers: the same bits after the move
    data = encode(on, x.to(device))
    assert data == encode(pc, x)  # same bytes from either device
    assert torch.equal(decode(pc, data), x)  # encoded on the device, decoded on the CPU
    assert torch.equal(decode(on, encode(pc, x)).cpu(), x)  # and the reverse


def test_pc_entropy_bottleneck_strings_cross_devices_exactly(device):
    from pc_prior.integrations import PCEntropyBottleneck

    g = torch.Generator().manual_seed(0)
    values = torch.randn(4000, 6, generator=g) * torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 6.0])
    eb = PCEntropyBottleneck(6)
    eb.fit(values, num_latents=3, context=None, epochs=1, progress=False)
    on = copy.deepcopy(eb).to(device)
    y = torch.randn(2, 6, 5, 7, generator=g) * 3.0
    strings = on.compress(y.to(device))
    assert strings == eb.compress(y)  # the same bytes from either device
    want = eb.decompress(eb.compress(y), (5, 7))
    assert torch.equal(eb.decompress(strings, (5, 7)), want)  # device -> CPU
    assert torch.equal(on.decompress(eb.compress(y), (5, 7)).cpu(), want)  # CPU -> device
