import numpy as np
import pytest
import torch
from conftest import all_assignments, random_hclt

from pc_prior import HCLT, InputError, Tree, chow_liu_tree, pairwise_mutual_information


@pytest.mark.parametrize("parent", [(-1,), (1, -1, 1, 0, 0, 2), (-1, 0, 1, 2, 3)])
def test_normalizes_by_enumeration(parent):
    pc = random_hclt(parent, num_cats=3, num_latents=3)
    x = all_assignments(len(parent), 3)
    assert torch.allclose(
        pc.log_prob(x).exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12
    )


def test_float32_default_normalizes():
    pc = random_hclt(dtype=torch.float32)
    assert pc.log_prob(all_assignments(6, 3)).dtype == torch.float32
    assert abs(float(pc.log_prob(all_assignments(6, 3)).detach().exp().sum()) - 1.0) < 1e-5


def test_marginals_equal_brute_force_sums():
    pc = random_hclt()
    x = all_assignments(6, 3)
    p = pc.log_prob(x).exp()
    missing = torch.tensor([False, True, False, True, True, False])
    obs = (~missing).nonzero().squeeze(1)
    # brute force: sum p over all assignments that agree on the observed variables
    key = (x[:, obs] * torch.tensor([9, 3, 1])).sum(1)
    ref = torch.zeros(27, dtype=torch.float64).index_add_(0, key, p)[key]
    assert torch.allclose(pc.log_prob(x, missing).exp(), ref, atol=1e-14)
    # everything missing: probability one
    assert torch.allclose(
        pc.log_prob(x[:2], torch.ones(6, dtype=torch.bool)), torch.zeros(2, dtype=torch.float64)
    )


def test_conditionals_equal_naive_reference():
    pc = random_hclt()
    x = all_assignments(6, 3)[::7]
    cond = pc.conditionals(x)
    for i in range(6):
        rows = []
        for v in range(3):
            xv = x.clone()
            xv[:, i] = v
            rows.append(pc.log_prob(xv))
        naive = torch.stack(rows, -1)
        naive = naive - naive.logsumexp(-1, keepdim=True)
        assert torch.allclose(cond[:, i], naive, atol=1e-12)


def test_conditionals_with_extra_missing_match_marginal_ratios():
    pc = random_hclt()
    x = all_assignments(6, 3)[::11]
    missing = torch.tensor([False, False, True, False, False, False])
    cond = pc.conditionals(x, missing)[:, 4]
    ref = []
    for v in range(3):
        xv = x.clone()
        xv[:, 4] = v
        ref.append(pc.log_prob(xv, missing))
    ref = torch.stack(ref, -1)
    assert torch.allclose(cond, ref - ref.logsumexp(-1, keepdim=True), atol=1e-12)


def test_sampling_matches_distribution():
    pc = random_hclt(parent=(-1, 0, 0), num_cats=2, num_latents=3)
    x = all_assignments(3, 2)
    p = pc.log_prob(x).exp()
    s = pc.sample(40000, generator=torch.Generator().manual_seed(0))
    emp = torch.bincount((s * torch.tensor([4, 2, 1])).sum(1), minlength=8).double() / len(s)
    # 8 outcomes, 40k draws: each frequency within 5 standard errors
    se = (p * (1 - p) / len(s)).sqrt()
    assert ((emp - p).abs() < 5 * se + 1e-9).all()


def test_chow_liu_recovers_chain_and_roots_at_center():
    g = torch.Generator().manual_seed(0)
    n, d = 4000, 7
    x = torch.empty(n, d, dtype=torch.long)
    x[:, 0] = torch.randint(0, 2, (n,), generator=g)
    for i in range(1, d):  # a Markov chain 0-1-...-6 with strong dependence
        flip = torch.rand(n, generator=g) < 0.1
        x[:, i] = torch.where(flip, 1 - x[:, i - 1], x[:, i - 1])
    tree = chow_liu_tree(pairwise_mutual_information(x, 2))
    edges = {tuple(sorted((i, p))) for i, p in enumerate(tree.parent) if p >= 0}
    assert edges == {(i, i + 1) for i in range(d - 1)}
    assert tree.root == 3 and tree.height == 3


def test_tree_validation():
    with pytest.raises(ValueError, match="exactly one root"):
        Tree((-1, -1))
    with pytest.raises(ValueError, match="cycle"):
        Tree((-1, 2, 1))


@pytest.mark.parametrize(
    "bad, err, match",
    [
        (torch.zeros(3, 6), TypeError, "an integer torch.Tensor .* got torch.float32"),
        (torch.zeros(3, 5, dtype=torch.long), ValueError, r"shape \[N, 6\]"),
        (torch.full((3, 6), 3), ValueError, "out of range"),
        (torch.full((3, 6), -1), ValueError, "out of range"),
        (np.zeros((3, 6), dtype=np.int64), TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_is_named(bad, err, match):
    pc = random_hclt()
    with pytest.raises(err, match=match):
        pc.log_prob(bad)


def test_bad_mask_is_named():
    pc = random_hclt()
    x = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(TypeError, match="bool"):
        pc.log_prob(x, torch.zeros(2, 6))
    with pytest.raises(ValueError, match="missing must have shape"):
        pc.log_prob(x, torch.zeros(3, dtype=torch.bool))


def test_from_data_learns_structure_and_shapes():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (300, 10), generator=g)
    pc = HCLT.from_data(x, num_cats=5, num_latents=4)
    assert pc.num_vars == 10 and pc.tree.num_vars == 10
    lp = pc.log_prob(x)
    assert lp.shape == (300,) and torch.isfinite(lp).all()
    assert pc.sample(7).shape == (7, 10)


def test_star_tree_hangs_every_column_from_the_most_variable_one():
    from pc_prior import star_tree

    x = torch.stack([torch.zeros(50), torch.arange(50.0) * 3, torch.arange(50.0)], 1)
    assert star_tree(x).parent == (1, -1, 1)
    assert star_tree(x[:1]).parent == (-1, 0, 0)  # one row: no variance, the first column
    assert star_tree(x.long()).parent == (1, -1, 1)  # symbols too
    with pytest.raises(InputError):
        star_tree(x[:, :0])
