"""``reidctl refine --method mar FEATURES --agents CHECKPOINT``: what MAR sees of a target set.

MAR has no pseudo labels to refine. For inspection it writes the soft multilabels of every
image (its ``top`` largest entries per row, as a sparse N×K matrix ``multilabels``) and the pairs
whose multilabels agree above the initial mining threshold (the top ``mining_ratio`` of all
pairs, §6.3: a sparse upper-triangular N×N matrix ``agreement_pairs`` holding the agreements).
Every label is −1 (MAR does not cluster); ``run_refine`` reports the pairs' precision when the
features file has ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from reidctl.errors import ArtifactError, ReidctlError
from reidctl.methods.base import Refined
from reidctl.methods.mar import losses as L
from reidctl.options import option
from reidctl.models.checkpoint import load_checkpoint


@dataclass
class MARRefineOptions:
    agents: str | None = field(default=None, metadata=option(
        "mar: the checkpoint whose agents describe the images (`reidctl pretrain`, or a mar model).", loop=False))
    top: int = field(default=10, metadata=option("mar: largest multilabel entries kept per image.", loop=False))
    scale: float = field(default=30.0, metadata=option("MAR: scale of the agent softmax (scala_ce)."))
    mining_ratio: float = field(default=0.005, metadata=option(
        "MAR: fraction of a batch's pairs mined (the closest), and the quantile of the agreement threshold."))

    def check(self) -> None:
        if not self.agents:
            raise ReidctlError("--agents CHECKPOINT is required: the agents that describe the images")


def read_agents(path: str | Path) -> torch.Tensor:
    """The normalised agents (K×C) of a ``pretrain`` or ``mar`` checkpoint."""
    payload = load_checkpoint(path)
    heads = payload.get("heads") or {}
    if "weight" not in heads or "pids" not in heads:
        raise ArtifactError(f"{path}: has no agents (a checkpoint of `reidctl pretrain` or of --method mar has)")
    return L.normalized_agents(heads["weight"].float())


def agreement_pairs(ml: torch.Tensor, threshold: float, block: int = 1024) -> sp.csr_matrix:
    """Every pair i < j with agreement above ``threshold``, as a sparse matrix of agreements."""
    n = len(ml)
    rows, cols, vals = [], [], []
    for r0 in range(0, n, block):
        a = L.agreement(ml[r0:r0 + block], ml)
        a = torch.triu(a, diagonal=r0 + 1)  # keep j > i (row r of the block is image r0 + r)
        i, j = torch.nonzero(a > threshold, as_tuple=True)
        rows.append(i.numpy() + r0)
        cols.append(j.numpy())
        vals.append(a[i, j].numpy())
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


def refine_mar(features: Any, options: MARRefineOptions) -> Refined:
    if options.top < 1 or options.scale <= 0 or not 0 < options.mining_ratio < 1:
        raise ReidctlError("--top must be at least 1, --scale positive and --mining-ratio in (0, 1)")
    agents = read_agents(options.agents)
    dim = features.feats.shape[1]
    if dim != agents.shape[1]:
        raise ReidctlError(f"{options.agents}: its agents are {agents.shape[1]}-d but the features are {dim}-d "
                           "(extract them with the same model)")
    ml = L.multilabels_of(features.feats, agents, options.scale)
    top = min(options.top, ml.shape[1])
    values, index = torch.topk(ml, top, dim=1)
    n = len(ml)
    multilabels = sp.csr_matrix((values.numpy().ravel(), index.numpy().ravel(), np.arange(0, n * top + 1, top)),
                                shape=ml.shape)
    threshold = L.initial_threshold(ml, options.mining_ratio) if n > 1 else 1.0
    pairs = agreement_pairs(ml, threshold)
    coo = pairs.tocoo()
    return Refined(
        labels=np.full(n, -1, dtype=np.int32),
        extra={"multilabels": multilabels, "agreement_pairs": pairs},
        summary={"agents": int(agents.shape[0]), "threshold": threshold, "agreement_pairs": int(pairs.nnz),
                 "top_mass": float(values.sum(1).mean())},
        options={"agents": str(options.agents), "top": top, "scale": options.scale,
                 "mining_ratio": options.mining_ratio},
        pairs=np.stack([coo.row, coo.col], 1).astype(np.int64),
    )
