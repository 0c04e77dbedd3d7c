import torch
from conftest import random_hclt

from pc_prior import HCLT, bits_per_dim, fit_adam, fit_em
from pc_prior.fitting import expected_counts


def _data(n=2000, seed=1):
    teacher = random_hclt(parent=(-1, 0, 0, 1, 1, 2, 2, 3), num_cats=4, num_latents=3, seed=seed)
    return teacher, teacher.sample(n, generator=torch.Generator().manual_seed(seed))


def test_minibatch_em_improves_likelihood_and_is_seeded():
    teacher, x = _data()
    runs = []
    for _ in range(2):
        pc = HCLT(teacher.tree, 4, 3)
        pc.init_params(x, seed=3)
        before = bits_per_dim(pc, x)
        hist = fit_em(pc, x, epochs=4, batch_size=256, progress=False, seed=5)
        runs.append((before, bits_per_dim(pc, x), hist))
    (b0, a0, h0), (_b1, a1, h1) = runs
    assert a0 < b0 - 0.03
    assert a0 == a1 and h0 == h1  # reproducible under a seed
    # close to the teacher's entropy rate (it has the same structure)
    assert a0 < bits_per_dim(teacher, x) + 0.02


def test_full_batch_em_never_decreases_likelihood():
    teacher, x = _data(800)
    pc = HCLT(teacher.tree, 4, 3, dtype=torch.float64)
    pc.init_params(x, seed=0)
    prev = bits_per_dim(pc, x)
    for _ in range(4):
        fit_em(
            pc,
            x,
            epochs=0,
            full_batch_epochs=1,
            pseudocount=0.0,
            leaf_smoothing=0.0,
            progress=False,
        )
        cur = bits_per_dim(pc, x)
        assert cur <= prev + 1e-9
        prev = cur


def test_adam_improves_likelihood():
    teacher, x = _data()
    pc = HCLT(teacher.tree, 4, 3)
    pc.init_params(x, seed=0)
    before = bits_per_dim(pc, x)
    fit_adam(pc, x, epochs=3, batch_size=256, lr=0.05, progress=False)
    assert bits_per_dim(pc, x) < before - 0.03


def test_em_update_is_one_em_step():
    from pc_prior.fitting import em_step_counts, em_update

    teacher, x = _data(500)
    pc = HCLT(teacher.tree, 4, 3, dtype=torch.float64)
    pc.init_params(x, seed=0)
    before = float(pc.log_prob(x).detach().sum())
    counts, ll = em_step_counts(pc, x)
    assert abs(ll - before) < 1e-6 * abs(before)
    for logits, c in zip((pc.root_logits, pc.transition_logits, pc.emission_logits), counts):
        em_update(logits, c, 1.0, 0.0)
    assert (
        float(pc.log_prob(x).detach().sum()) > before + 1.0
    )  # full-batch EM raises the likelihood
    # with step size 1 the root becomes its normalized expected counts
    assert torch.allclose(pc.log_root().exp(), counts[0] / counts[0].sum(-1, keepdim=True))
    # a step size mixes old and new; a row without counts keeps its distribution
    logits = torch.tensor([[0.2, 0.8], [0.3, 0.7]], dtype=torch.float64).log()
    em_update(logits, torch.tensor([[3.0, 1.0], [0.0, 0.0]], dtype=torch.float64), 0.5, 0.0)
    want = torch.tensor([[0.1 + 0.375, 0.4 + 0.125], [0.3, 0.7]], dtype=torch.float64)
    assert torch.allclose(logits.exp(), want)


def test_lossless_defaults_are_the_settings():
    import inspect

    from pc_prior.cli import build_parser
    from pc_prior.settings import LosslessFit

    em = inspect.signature(fit_em).parameters
    adam = inspect.signature(fit_adam).parameters
    s = LosslessFit()
    fields = ("epochs", "batch_size", "step_size", "pseudocount", "full_batch_epochs", "seed")
    for k in fields + ("leaf_smoothing", "smoothing_width"):
        assert em[k].default == getattr(s, k), k
    assert (adam["epochs"].default, adam["batch_size"].default, adam["lr"].default) == (
        s.epochs,
        s.batch_size,
        s.adam_lr,
    )
    from pc_prior.lossless import LOSSLESS_OPTIONS
    from pc_prior.settings import from_args

    args = build_parser().parse_args(["lossless", "fit"])
    assert from_args(s, args, LOSSLESS_OPTIONS) == s
    args = build_parser().parse_args(["lossless", "fit", "--latents", "3", "--step-size", "1", "0"])
    assert (args.num_latents, tuple(args.step_size)) == (3, (1.0, 0.0))
    # the README's MNIST table: K=64, 50 + 1 EM epochs, step size 0.2 -> 0.005, smoothing 0.1 / 4
    assert (s.num_latents, s.epochs, s.full_batch_epochs, s.step_size) == (64, 50, 1, (0.2, 0.005))
    assert (s.leaf_smoothing, s.smoothing_width) == (0.1, 4.0)
    args = build_parser().parse_args(["lossless", "fit", "--leaf-smoothing", "0"])
    assert args.leaf_smoothing == 0.0


def test_smooth_leaves_spreads_interior_mass_and_keeps_the_ends():
    from pc_prior.errors import InputError
    from pc_prior.fitting import smooth_leaves

    pc = random_hclt(parent=(-1, 0, 0), num_cats=12, num_latents=2, seed=4)
    with torch.no_grad():  # leaf (0, 0): all interior mass on symbol 5, nothing on 4 or 6
        logits = torch.full((12,), -1e4)
        logits[[0, 5, 11]] = torch.tensor([1.0, 0.0, 2.0])
        pc.emission_logits[0, 0] = logits
    before = torch.softmax(pc.emission_logits.detach().double(), -1)
    smooth_leaves(pc, 0.0, 4.0)
    assert torch.equal(torch.softmax(pc.emission_logits.detach().double(), -1), before)
    smooth_leaves(pc, 0.2, 1.0)
    after = torch.softmax(pc.emission_logits.detach().double(), -1)
    torch.testing.assert_close(after.sum(-1), torch.ones(3, 2, dtype=torch.float64))
    # the end symbols and the interior's total keep their mass in every leaf
    torch.testing.assert_close(after[..., [0, -1]], before[..., [0, -1]], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        after[..., 1:-1].sum(-1), before[..., 1:-1].sum(-1), rtol=1e-5, atol=1e-7
    )
    # symbol 5 lends mass to its neighbours, nearer ones more, and keeps 80% plus its share
    p = after[0, 0]
    assert p[4] > p[3] > p[2] > 0 and p[6] > p[7] > 0
    assert 0.8 * before[0, 0, 5] < p[5] < before[0, 0, 5]
    # a grouped circuit's distributions are per group: each is smoothed over its own symbols
    from pc_prior.hclt import GroupedHCLT

    grouped = GroupedHCLT(pc.tree, num_symbols=12, num_groups=2, num_latents=2)
    with torch.no_grad():
        grouped.emission_logits.copy_(torch.randn(grouped.emission_logits.shape))
    ends = torch.softmax(grouped.emission_logits.detach().double(), -1)[..., [0, -1]]
    smooth_leaves(grouped, 0.2, 1.0)
    q = torch.softmax(grouped.emission_logits.detach().double(), -1)
    torch.testing.assert_close(q[..., [0, -1]], ends, rtol=1e-5, atol=1e-7)
    for bad in ((-0.1, 1.0), (1.5, 1.0), (0.1, 0.0)):
        try:
            smooth_leaves(pc, *bad)
        except InputError:
            continue
        raise AssertionError(f"smooth_leaves{bad} accepted")


def test_em_counts_equal_the_gradients_through_the_leaf_gather():
    """The flow-based counts equal autograd's gradients of log p through the plain passes."""
    from pc_prior.fitting import em_step_counts

    teacher, x = _data(300, seed=4)
    pc = HCLT(teacher.tree, 4, 3, dtype=torch.float64)
    pc.init_params(x, seed=2)
    params = [
        p.detach().requires_grad_(True)
        for p in (pc.log_root(), pc.log_transitions(), pc.log_emissions())
    ]
    lr, lt, le = params
    # reference: variable-order leaves, upward(), gradients through the gather
    ll = pc.upward(pc.leaf_log_probs(x, log_emit=le), log_root=lr, log_trans=lt)[0].sum()
    want = torch.autograd.grad(ll, params)
    got, got_ll = em_step_counts(pc, x)
    assert abs(got_ll - float(ll)) < 1e-9 * abs(float(ll))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-10)
    # the counts are expected flows: each variable's emission counts sum to the batch size
    assert torch.allclose(
        got[2].sum((1, 2)), torch.full((pc.num_vars,), 300.0, dtype=torch.float64)
    )


def test_log_prob_equals_the_variable_order_pass_with_missing_values():
    teacher, x = _data(50, seed=6)
    missing = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    pc = HCLT(teacher.tree, 4, 3, dtype=torch.float64)
    pc.init_params(x, seed=1)
    ref = pc.upward(pc.leaf_log_probs(x.masked_fill(missing, 0), missing))[0]
    assert torch.allclose(pc.log_prob(x, missing), ref, rtol=1e-12, atol=1e-12)


def test_per_item_root_priors_split_the_root_counts_by_item():
    pc = random_hclt((1, -1, 1, 0, 0, 2), num_cats=3, num_latents=4, seed=6)
    x = pc.sample(300, generator=torch.Generator().manual_seed(2))
    shared = expected_counts(pc, x, batch_size=128)
    same = expected_counts(pc, x, batch_size=128, log_root=pc.log_root().detach().expand(300, -1))
    assert same[0].shape == (300, 4)  # per item: the root posteriors
    assert torch.allclose(same[0].sum(0), shared[0]) and torch.allclose(
        same[0].sum(1), torch.ones(300, dtype=same[0].dtype)
    )
    for a, b in zip(same[1:], shared[1:]):
        assert torch.allclose(a, b)
    # a prior sure of state 2 for the first half of the items puts their root counts there
    lr = pc.log_root().detach().expand(300, -1).clone()
    lr[:150] = torch.log(torch.tensor([1e-9, 1e-9, 1.0, 1e-9], dtype=lr.dtype))
    sure = expected_counts(pc, x, batch_size=128, log_root=lr)[0]
    assert torch.all(sure[:150, 2] > 0.999) and torch.allclose(sure[150:], same[0][150:])
