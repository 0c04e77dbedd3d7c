import itertools
from pathlib import Path

import pytest
import torch

from pc_prior import HCLT, Tree

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test (with the reason) where it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (../shared is only in the project's own checkouts)")
    return p


def random_hclt(
    parent=(1, -1, 1, 0, 0, 2), num_cats=3, num_latents=4, seed=0, dtype=torch.float64
) -> HCLT:
    """A tiny HCLT with well-spread random parameters."""
    g = torch.Generator().manual_seed(seed)
    pc = HCLT(Tree(tuple(parent)), num_cats, num_latents, dtype=dtype)
    with torch.no_grad():
        for p in pc.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 1.5)
    return pc


def all_assignments(num_vars: int, num_cats: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(num_cats), repeat=num_vars)))


@pytest.fixture
def device() -> torch.device:
    """The device of the device tests: ``PC_PRIOR_TEST_DEVICE`` (e.g. ``cuda``; the device suite
    sets it), else the CPU. A device this machine lacks skips the test, naming it."""
    import os

    name = os.environ.get("PC_PRIOR_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"PC_PRIOR_TEST_DEVICE={name}, but no CUDA GPU is available")
    return torch.device(name)
