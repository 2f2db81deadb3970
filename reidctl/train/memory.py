"""Cluster memory and the ClusterNCE loss (ALGORITHMS.md §3.5).

The official ``ClusterMemory`` updates its centroids inside an autograd ``backward``. Here the
loss is an ordinary differentiable function of the features and the (constant) memory, and
:meth:`ClusterMemory.update` is called explicitly after ``loss.backward()``: the gradient is the
one computed with the old memory, exactly as in the official code, with no hidden side effects.

All update rules act on L2-normalised, detached features. ``C[y] ← m·C[y] + (1−m)·x`` and
``C[y] ← C[y]/‖C[y]‖``: a small momentum ``m`` (CC: 0.1) lets the new sample dominate.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from reidctl.runtime import dist
from reidctl.errors import ReidctlError

UPDATES = ("sample", "hard", "mean")


def cluster_centroids(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                      num_clusters: int | None = None) -> torch.Tensor:
    """L2-normalised means of the rows of each label ``0..K-1`` (labels < 0 ignored). K×D float32."""
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features).float()
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).long()
    keep = y >= 0
    x, y = x[keep], y[keep]
    k = int(y.max().item()) + 1 if num_clusters is None else num_clusters
    sums = torch.zeros(k, x.shape[1], dtype=torch.float32).index_add_(0, y, x)
    counts = torch.bincount(y, minlength=k)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ReidctlError(f"cluster labels must be 0..K-1 without gaps; no member for label(s) {missing}")
    return F.normalize(sums / counts[:, None].float(), dim=1)


def cluster_nce(features: torch.Tensor, labels: torch.Tensor, memory: torch.Tensor,
                temperature: float = 0.05) -> torch.Tensor:
    """ClusterNCE: cross entropy of ``normalize(f) · Cᵀ / τ`` against the pseudo labels (fp32)."""
    q = F.normalize(features.float(), dim=1)
    return F.cross_entropy(q @ memory.t() / temperature, labels)


def _occurrence(labels: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions carry the same label (0 for the first)."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    occ = torch.empty_like(labels)
    occ[order] = torch.arange(len(labels), device=labels.device) - starts[inverse[order]]
    return occ


def _step(memory: torch.Tensor, rows: torch.Tensor, x: torch.Tensor, momentum: float) -> None:
    """One momentum step on distinct ``rows``, then renormalise them."""
    new = memory[rows] * momentum + (1.0 - momentum) * x
    memory[rows] = new / new.norm(dim=1, keepdim=True)


@torch.no_grad()
def update_sample(memory: torch.Tensor, x: torch.Tensor, y: torch.Tensor, momentum: float) -> torch.Tensor:
    """One step per sample in batch order (official ``CM``).

    Samples of different clusters do not interact, so the k-th occurrences of all clusters are
    applied together: K vectorised steps instead of B sequential ones, with the same result.
    """
    occ = _occurrence(y)
    for r in range(int(occ.max().item()) + 1 if len(y) else 0):
        sel = occ == r
        _step(memory, y[sel], x[sel], momentum)
    return memory


@torch.no_grad()
def update_hard(memory: torch.Tensor, x: torch.Tensor, y: torch.Tensor, momentum: float) -> torch.Tensor:
    """Per cluster in the batch, one step with its member least similar to the old centroid
    (official ``CM_Hard``; ties go to the earliest sample, like ``np.argmin``)."""
    if not len(y):
        return memory
    sims = (x * memory[y]).sum(1)
    by_sim = torch.argsort(sims, stable=True)
    order = by_sim[torch.argsort(y[by_sim], stable=True)]  # grouped by label, ascending similarity
    ys = y[order]
    first = torch.ones_like(ys, dtype=torch.bool)
    first[1:] = ys[1:] != ys[:-1]
    pick = order[first]
    _step(memory, y[pick], x[pick], momentum)
    return memory


@torch.no_grad()
def update_mean(memory: torch.Tensor, x: torch.Tensor, y: torch.Tensor, momentum: float) -> torch.Tensor:
    """Per cluster in the batch, one step with the mean of its (normalised) members (NCPLR ``CM_Mean``)."""
    if not len(y):
        return memory
    rows, inverse = torch.unique(y, return_inverse=True)
    sums = torch.zeros(len(rows), x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
    counts = torch.bincount(inverse, minlength=len(rows)).to(x.dtype)
    _step(memory, rows, sums / counts[:, None], momentum)
    return memory


_RULES = {"sample": update_sample, "hard": update_hard, "mean": update_mean}


class ClusterMemory:
    """K×D unit-norm centroids, the ClusterNCE loss against them, and their momentum update."""

    def __init__(self, centroids: torch.Tensor, *, temperature: float = 0.05, momentum: float = 0.1,
                 update: str = "sample") -> None:
        if update not in _RULES:
            raise ReidctlError(f"--memory-update {update}: choose one of {', '.join(UPDATES)}")
        if not 0.0 <= momentum < 1.0:
            raise ReidctlError("--momentum must lie in [0, 1)")
        if temperature <= 0:
            raise ReidctlError("--temperature must be positive")
        self.features = centroids.detach().float().clone()
        self.temperature = temperature
        self.momentum = momentum
        self.rule = update

    @classmethod
    def from_features(cls, features: np.ndarray, labels: np.ndarray, *, device: torch.device | str = "cpu",
                      **kwargs) -> "ClusterMemory":
        """Memory initialised with the normalised cluster means (labels 0..K-1)."""
        return cls(cluster_centroids(features, labels).to(device), **kwargs)

    def __len__(self) -> int:
        return self.features.shape[0]

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ClusterNCE of unnormalised features; differentiable in ``features`` only."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            return cluster_nce(features, labels, self.features, self.temperature)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Apply the update rule to a batch (call after ``backward``).

        Under DDP the features and labels of all ranks are gathered first, in rank order (= the
        order of the global batch), so every rank applies the same update to the same memory.
        """
        x = F.normalize(features.detach().float(), dim=1)
        y = labels.detach().long()
        x, y = dist.all_gather_cat(x), dist.all_gather_cat(y)
        _RULES[self.rule](self.features, x.to(self.features.device), y.to(self.features.device), self.momentum)
