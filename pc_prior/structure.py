"""Learning the tree that an HCLT is built on.

Chow-Liu: the maximum spanning tree of pairwise mutual information between observed variables
(scipy does the spanning tree), rooted at its center so that the tree, and hence the number of
sequential levels in evaluation, stays as shallow as possible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

from ._checks import check_int, check_tensor
from .errors import InputError

__all__ = ["Tree", "chow_liu_tree", "pairwise_mutual_information", "star_tree"]


@dataclass(frozen=True)
class Tree:
    """A rooted tree over D variables, given by each variable's parent (-1 for the root).

    Derived orders are computed once: ``levels`` lists node indices by depth (root first),
    ``preorder`` is a depth-first order in which every node follows its parent and each subtree
    is contiguous, which is what the incremental coder needs.
    """

    parent: tuple[int, ...]

    def __post_init__(self) -> None:
        par = np.asarray(self.parent, dtype=np.int64)
        d = len(par)
        if d == 0:
            raise ValueError("a tree needs at least one variable")
        roots = np.flatnonzero(par < 0)
        if len(roots) != 1:
            raise ValueError(f"a tree needs exactly one root (parent -1), got {len(roots)}")
        if par.max() >= d:
            raise ValueError("parent index out of range")
        # Depth by repeated parent lookups; a cycle never reaches the root.
        depth = np.full(d, -1, dtype=np.int64)
        depth[roots[0]] = 0
        for _ in range(d):
            todo = depth < 0
            if not todo.any():
                break
            known = depth[par[todo]] >= 0
            idx = np.flatnonzero(todo)[known]
            depth[idx] = depth[par[idx]] + 1
        if (depth < 0).any():
            raise ValueError("parent array does not describe a tree (it has a cycle)")
        object.__setattr__(self, "_depth", depth)

    @property
    def num_vars(self) -> int:
        """D, the number of nodes."""
        return len(self.parent)

    @property
    def root(self) -> int:
        """The root's index (the node whose parent is -1)."""
        return int(np.flatnonzero(np.asarray(self.parent) < 0)[0])

    @property
    def depth(self) -> np.ndarray:
        """Each node's depth [D] (the root's is 0)."""
        return self._depth  # type: ignore[attr-defined]

    @property
    def height(self) -> int:
        """The largest depth."""
        return int(self.depth.max())

    def children(self) -> list[list[int]]:
        """Each node's children, in index order."""
        ch: list[list[int]] = [[] for _ in range(self.num_vars)]
        for i, p in enumerate(self.parent):
            if p >= 0:
                ch[p].append(i)
        return ch

    def levels(self) -> list[np.ndarray]:
        """Node indices grouped by depth, root level first."""
        return [np.flatnonzero(self.depth == k) for k in range(self.height + 1)]

    def preorder(self) -> np.ndarray:
        """Depth-first preorder from the root (children in index order); subtrees are contiguous."""
        ch = self.children()
        order, stack = [], [self.root]
        while stack:
            n = stack.pop()
            order.append(n)
            stack.extend(reversed(ch[n]))
        return np.asarray(order, dtype=np.int64)


def _bin(x: torch.Tensor, num_cats: int, num_bins: int) -> torch.Tensor:
    if num_bins >= num_cats:
        return x
    return (x * num_bins) // num_cats


def pairwise_mutual_information(
    x: torch.Tensor, num_cats: int, num_bins: int = 16, max_samples: int = 20000, seed: int = 0
) -> torch.Tensor:
    """Mutual information (nats) between every pair of columns of integer data ``x`` [N, D].

    Values are grouped into at most ``num_bins`` equal-width bins and at most ``max_samples`` rows
    are used, so the joint counts of all pairs come from a single one-hot matrix product.
    """
    check_tensor("x", x, "integer", "[N, D]")
    if x.dim() != 2:
        raise InputError(f"expected data of shape [N, D], got {tuple(x.shape)}")
    num_cats = check_int("num_cats", num_cats, 1)
    num_bins = check_int("num_bins", num_bins, 1)
    max_samples = check_int("max_samples", max_samples, 1)
    n, d = x.shape
    if n > max_samples:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(n, generator=g)[:max_samples]]
        n = max_samples
    b = min(num_bins, num_cats)
    xb = _bin(x.long().cpu(), num_cats, b)
    onehot = torch.zeros(n, d * b, dtype=torch.float32)
    onehot.scatter_(1, xb + torch.arange(d) * b, 1.0)
    joint = (onehot.T @ onehot).view(d, b, d, b).permute(0, 2, 1, 3).double()  # [D, D, b, b]
    joint = (joint + 1e-3) / (n + 1e-3 * b * b)  # a tiny pseudocount keeps logs finite
    marg = joint.sum(-1)  # [D, D, b]: marginal of the first variable of each pair
    pi = marg.diagonal(dim1=0, dim2=1).T  # [D, b]
    # The diagonal (i, i) is not a real pair; its value is never used by the spanning tree.
    mi = (joint * (joint.log() - pi[:, None, :, None].log() - pi[None, :, None, :].log())).sum(
        (-1, -2)
    )
    mi.fill_diagonal_(0.0)
    return mi.clamp_min(0.0).float()


def _center(adj) -> int:
    """A node minimizing the height of the tree when used as root (middle of a longest path)."""

    def farthest(src: int) -> tuple[int, np.ndarray]:
        order, pred = breadth_first_order(adj, src, directed=False, return_predecessors=True)
        return int(order[-1]), pred

    a, _ = farthest(0)
    b, pred = farthest(a)
    path = [b]
    while path[-1] != a:
        path.append(int(pred[path[-1]]))
    return path[len(path) // 2]


def star_tree(x: torch.Tensor) -> Tree:
    """The star over the columns of ``x`` [N, D]: every column a child of the one with the highest
    variance (the root; the first column for fewer than two rows). The cheap structure choice of
    both entropy models' fits (``structure="star"``)."""
    check_tensor("x", x, "real", "[N, D]")
    if x.dim() != 2 or x.shape[1] == 0:
        raise InputError(f"expected data of shape [N, D] with D >= 1, got {tuple(x.shape)}")
    hub = int(x.double().var(0).argmax()) if len(x) > 1 else 0
    return Tree(tuple(-1 if i == hub else hub for i in range(x.shape[1])))


def chow_liu_tree(mi: torch.Tensor | np.ndarray) -> Tree:
    """Maximum spanning tree of a symmetric mutual-information matrix, rooted at its center."""
    w = np.asarray(mi, dtype=np.float64)
    d = w.shape[0]
    if w.shape != (d, d):
        raise ValueError(f"mutual information must be square, got {w.shape}")
    if d == 1:
        return Tree((-1,))
    # scipy treats zero entries as missing edges, so use the strictly positive cost max+1-MI:
    # its minimum spanning tree is the maximum spanning tree of MI.
    mst = minimum_spanning_tree(np.triu(w.max() + 1.0 - w, 1))
    adj = mst + mst.T
    root = _center(adj)
    order, pred = breadth_first_order(adj, root, directed=False, return_predecessors=True)
    if len(order) != d:
        raise RuntimeError("spanning tree is disconnected")
    parent = np.where(pred < 0, -1, pred)
    parent[root] = -1
    return Tree(tuple(int(p) for p in parent))
