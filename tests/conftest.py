import itertools
import os
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


def device_name(cuda_test: bool) -> str:
    """The device a device test runs on: ``PC_PRIOR_TEST_DEVICE`` where it is set, else ``cuda``
    for the tests marked ``cuda`` (tests/cuda) and the CPU for the others (tests/core/test_device.py).
    ``PC_PRIOR_TEST_DEVICE=cpu`` runs the ``cuda`` tests' logic on the CPU (both sides of every
    cross-device check the CPU); ``PC_PRIOR_TEST_DEVICE=cuda`` moves the others to the GPU."""
    return os.environ.get("PC_PRIOR_TEST_DEVICE", "cuda" if cuda_test else "cpu")


def pytest_collection_modifyitems(config, items) -> None:
    """Without a CUDA GPU, the tests that would run on one (the ``cuda`` tests, and those taking
    ``device`` where ``PC_PRIOR_TEST_DEVICE`` names CUDA) are skipped with the reason: in CI, the
    ``cuda`` tests. The mark is set here, so their fixtures are not even built."""
    if torch.cuda.is_available():
        return
    for item in items:
        cuda_test = item.get_closest_marker("cuda") is not None
        name = device_name(cuda_test)
        if name.startswith("cuda") and (cuda_test or "device" in item.fixturenames):
            reason = f"runs on {name}, and no CUDA GPU is available (PC_PRIOR_TEST_DEVICE=cpu runs it on the CPU)"
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def device(request) -> torch.device:
    """The device of the device tests (``device_name``): the GPU for the ``cuda`` tests, the
    CPU for the others, unless ``PC_PRIOR_TEST_DEVICE`` names another."""
    return torch.device(device_name(request.node.get_closest_marker("cuda") is not None))


@pytest.fixture
def one_thread():
    """One torch thread for the test (Lightning runs: steady and no oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
