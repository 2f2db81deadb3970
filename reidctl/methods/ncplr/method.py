"""NCPLR and GL-NCPLR: neighbour-consistency guided pseudo-label refinement (Cheng, Tai et al.,
arXiv 2211.16847), as the official code ``haichuntai/NCPLR-ReID`` runs it (ALGORITHMS.md §7).

* **Cluster** (GL): DBSCAN (eps 0.5) on ``(1−2λ1)·J_g + λ1·J_up + λ1·J_down``, the sparse mixture
  of :mod:`reidctl.cluster.mixing`; plain NCPLR clusters on the global Jaccard.
* **Refine**: the neighbour sets ``{j : D(i,j) ≤ eps_neighbor}`` over the clustered rows, sparse
  with their distances (:mod:`.neighbours`); the labels pass through.
* **Train**: ClusterNCE against a cluster memory per branch, plus the refinement loss: each image's
  target mixes its one-hot label with the prediction of its neighbours *in the same batch*
  (:mod:`.targets`). Under DDP the neighbours are looked up in the whole global batch.

``--method gl-ncplr`` is the released ``train.sh`` command, GL-NCPLR (the model has an up and a
down half, each with its own GeM, BN neck and classifier, split at H//2 without overlap);
``--method ncplr`` is plain NCPLR, the README's other row: the same command without
``--use-part`` (global branch only). ``--global-local`` / ``--global-only`` switch either one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from reidctl.cluster.algorithms import clustered_distance
from reidctl.runtime import dist
from reidctl.errors import ReidctlError
from reidctl.methods.base import Batch, EpochData, Method, Refined, RunDefaults
from reidctl.methods.cc import CCParams
from reidctl.methods.ncplr import neighbours as nb
from reidctl.methods.ncplr import targets as tg
from reidctl.methods.plan import refine_options
from reidctl.models.reid import ReidModel
from reidctl.options import option
from reidctl.train.heads import CentroidClassifiers
from reidctl.train.memory import ClusterMemory, cluster_centroids

#: GL-NCPLR's part branches: the upper and the lower half of the feature map.
HALVES = 2


@dataclass
class NCPLRParams(CCParams):
    """Plain NCPLR: the official ``train.sh`` values without ``--use-part`` (ALGORITHMS.md §7,
    §7.7; :class:`GLNCPLRParams` is ``train.sh`` itself). Inherited from :class:`CCParams`
    with CC's values, which are also NCPLR's: batch 256 = 16 identities × 16, 200 iterations,
    Adam 3.5e-4 / 5e-4, StepLR 20 × 0.1, the cluster memories' momentum 0.1, τ 0.05 and
    per-sample update. Clustering: DBSCAN eps 0.5 (``NCPLR.cluster_defaults``);
    model: GeM at 320×128, with two halves for ``--global-local`` (``NCPLR.official_model``;
    ``global_local`` and ``lambda1`` are the method's switches, :class:`NCPLRSwitches`);
    neighbour sets: eps_neighbor 0.2 (:class:`NCPLRRefineOptions`)."""

    sampler_anchor: str = "last"
    #: Not an option here: set from the method's switch (:class:`NCPLRSwitches`) by the plan,
    #: and kept in the checkpoint with the other parameters.
    global_local: bool = False
    lambda2: float = field(default=0.2, metadata=option(
        "ncplr: weight λ2 of each half's ClusterNCE and refinement loss (global 1−λ2); --global-local only."))
    alpha: float = field(default=0.1, metadata=option(
        "ncplr: weight α of the one-hot label in the global refined target."))
    cmalpha: float = field(default=0.3, metadata=option(
        "ncplr: weight α_c of the one-hot label in the halves' refined targets."))
    temp_kl: float = field(default=5.0, metadata=option(
        "ncplr: temperature T_KL of the global-local agreement weights exp(−KL/T_KL)."))
    neighbor_weight: str = field(default="official", metadata=option(
        "ncplr: weights of the in-batch neighbours: official (softmax of +D/T_n, farther is heavier), paper "
        "(softmax of −D/T_n) or mean."))
    neighbor_temp: float = field(default=1.0, metadata=option("ncplr: temperature T_n of the neighbour weights."))
    refine_loss: bool = field(default=True, metadata=option(
        "ncplr: --no-refine-loss is the ablation with the ClusterNCE terms alone."))
    classifier_rows: int = field(default=3000, metadata=option(
        "pplr, ncplr: rows of each classifier = the most clusters allowed."))

    def check(self) -> None:
        super().check()
        for name in ("lambda2", "alpha", "cmalpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ReidctlError(f"--{name} must lie in [0, 1]")
        if self.temp_kl <= 0 or self.neighbor_temp <= 0:
            raise ReidctlError("--temp-kl and --neighbor-temp must be positive")
        if self.neighbor_weight not in nb.NEIGHBOR_WEIGHTS:
            raise ReidctlError(f"--neighbor-weight {self.neighbor_weight}: choose one of "
                               f"{', '.join(nb.NEIGHBOR_WEIGHTS)}")
        if self.classifier_rows < 1:
            raise ReidctlError("--classifier-rows must be at least 1")


@dataclass
class NCPLRSwitches:
    """NCPLR's method-level switches: the variant, which the model, the clustering and the
    training all follow, and the clustering's mixture of the variant's branches."""

    global_local: bool = field(default=False, metadata=option(
        "ncplr: GL-NCPLR (the official train.sh): up/down halves with their own memories, classifiers and "
        "targets, clustering on the mixed distance; --global-only is plain NCPLR.", off="--global-only",
        reads=("model", "cluster", "train")))
    lambda1: float = field(default=0.2, metadata=option(
        "ncplr: weight λ1 of each half's Jaccard distance in the clustering (global 1−2λ1); --global-local only.",
        reads=("cluster",)))

    def check(self) -> None:
        if not 0 < self.lambda1 < 0.5:
            raise ReidctlError("--lambda1 must lie in (0, 0.5): the global distance keeps 1 − 2·λ1")


@dataclass
class GLNCPLRSwitches(NCPLRSwitches):
    """GL-NCPLR's switches: the global-local variant."""

    global_local: bool = True


@dataclass
class NCPLRRefineOptions:
    """Options of NCPLR's ``refine`` step."""

    eps_neighbor: float = field(default=0.2, metadata=option(
        "ncplr: neighbour sets {j : D(i,j) ≤ eps} on the clustering distance."))

    def check(self) -> None:
        if not 0 <= self.eps_neighbor < 1:
            raise ReidctlError("--eps-neighbor must lie in [0, 1)")


def mixture(lambda1: float) -> str:
    """The ``--branches`` value of GL-NCPLR's clustering distance."""
    return f"global={1 - 2 * lambda1:g},part0={lambda1:g},part1={lambda1:g}"


@dataclass
class GLNCPLRParams(NCPLRParams):
    """GL-NCPLR, the released ``train.sh`` (``--use-part --use-mixdistneighbbor``): the global
    branch plus an up and a down half; every other value is :class:`NCPLRParams`'."""

    global_local: bool = True


@dataclass
class NCPLRState:
    """One epoch's constants: a memory per branch and the neighbour sets in epoch positions."""

    memories: list[ClusterMemory]  # global, then each half
    neighbours: sp.csr_matrix  # n×n over EpochData rows, values = distances
    epoch: int


class NCPLR(Method):
    """``ncplr``: ClusterNCE per branch + the neighbour-consistency refinement loss."""

    name = "ncplr"
    Params = NCPLRParams
    Switches = NCPLRSwitches
    RefineOptions = NCPLRRefineOptions
    params: NCPLRParams
    label_arrays = ("neighbors",)
    cluster_defaults = {"eps": 0.5}
    model_defaults = {"pooling": "gem", "height": 320, "width": 128}
    run_defaults = RunDefaults(epochs=50, eval_every=1)

    @property  # type: ignore[override]
    def uses_parts(self) -> bool:
        return self.params.global_local

    @classmethod
    def official_model(cls, switches: NCPLRSwitches) -> dict[str, Any]:
        return {**cls.model_defaults, "parts": HALVES if switches.global_local else 0}

    @classmethod
    def official_clustering(cls, switches: NCPLRSwitches) -> dict[str, Any]:
        if not switches.global_local:
            return dict(cls.cluster_defaults)
        return {**cls.cluster_defaults, "branches": mixture(switches.lambda1)}

    # ---- refine stage

    @classmethod
    def refine(cls, features: Any, labels: np.ndarray, extra: Mapping[str, Any], options: Mapping[str, Any],
               *, seed: int = 1) -> Refined:
        """Labels unchanged; the neighbour sets on the clustering's distance as ``neighbors``."""
        opts = refine_options(cls, options)
        clustered = clustered_distance(extra)
        if clustered is None:
            raise ReidctlError("--method ncplr needs the clustering's distance: give a labels file made by "
                               "`reidctl cluster` (or none, to cluster here)")
        labels = np.asarray(labels, dtype=np.int32)
        sets = nb.neighbour_sets(clustered[1], labels, float(opts["eps_neighbor"]))
        return Refined(labels, extra={"neighbors": sets}, summary=nb.summary(sets, labels), options=opts)

    # ---- training

    def build_heads(self, model: ReidModel) -> CentroidClassifiers:
        parts = model.config.parts
        if self.params.global_local and parts != HALVES:
            raise ReidctlError(f"--global-local needs a model with {HALVES} halves (--parts 2), this one has {parts}")
        return CentroidClassifiers(model.channels, HALVES if self.params.global_local else 0,
                                   self.params.classifier_rows)

    def make_state(self, data: EpochData, heads: nn.Module | None) -> NCPLRState:
        """Classifier rows and memories from the normalised centroids of each branch; the
        neighbour sets of the epoch's rows."""
        p = self.params
        if not isinstance(heads, CentroidClassifiers):
            raise ReidctlError("--method ncplr: the session has no NCPLR classifiers")
        if data.num_clusters > p.classifier_rows:
            raise ReidctlError(f"{data.num_clusters} clusters exceed the {p.classifier_rows} classifier rows "
                               "(--classifier-rows; the official code has 3000)")
        if "neighbors" not in data.extra:
            raise ReidctlError("the labels file has no 'neighbors': make it with `reidctl refine --method ncplr`")
        branches = [data.features]
        if p.global_local:
            if data.parts is None or data.parts.shape[1] != HALVES:
                raise ReidctlError("--global-local needs the features of the two halves (a model with --parts 2)")
            branches += [np.ascontiguousarray(data.parts[:, i]) for i in range(HALVES)]
        centroids = [cluster_centroids(x, data.labels, data.num_clusters) for x in branches]
        heads.reset(centroids[0], centroids[1:])
        memories = [ClusterMemory(c.to(data.device), temperature=p.temperature, momentum=p.momentum,
                                  update=p.memory_update) for c in centroids]
        sets = nb.epoch_neighbours(data.extra["neighbors"], data.rows)
        return NCPLRState(memories, sets, data.epoch)

    @staticmethod
    def _branches(outputs: dict[str, torch.Tensor], key: str, parts_key: str) -> list[torch.Tensor]:
        out = [outputs[key]]
        if parts_key in outputs:
            out += list(outputs[parts_key].unbind(1))
        return out

    def ensembles(self, batch: Batch, logits: list[torch.Tensor], state: NCPLRState) -> list[torch.Tensor]:
        """Each branch's neighbour-ensemble prediction for this rank's rows (detached).

        The neighbours are looked up in the global batch: under DDP the detached probabilities
        and epoch positions of every rank are gathered first (in rank order = the global batch),
        as the official single-process code sees the whole batch."""
        p = self.params
        local = len(batch.index)
        index = dist.all_gather_cat(batch.index)
        start = dist.rank() * local if dist.is_distributed() else 0
        r, b, d = nb.batch_pairs(state.neighbours, index.cpu().numpy(), slice(start, start + local))
        device = logits[0].device
        r_t, b_t = torch.as_tensor(r, device=device), torch.as_tensor(b, device=device)
        w = nb.neighbour_weights(r_t, torch.as_tensor(d, device=device), local, p.neighbor_weight, p.neighbor_temp)
        probs = dist.all_gather_cat(torch.stack([F.softmax(lg.detach().float(), dim=1) for lg in logits], 1))
        return [nb.ensemble(probs[:, i], r_t, b_t, w, local) for i in range(len(logits))]

    def loss(self, batch: Batch, outputs: dict[str, torch.Tensor], state: NCPLRState
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """``Σ_b w_b·NCE_b + L_refine`` (weights ``[1]`` or ``[1−λ2, λ2, λ2]``, ALGORITHMS.md §7.6)."""
        p = self.params
        y = batch.labels
        feats = self._branches(outputs, "global", "parts")[:len(state.memories)]
        logits = self._branches(outputs, "logits", "part_logits")
        weights = tg.branch_weights(len(state.memories), p.lambda2)
        nce = sum(w * m.loss(f, y) for w, m, f in zip(weights, state.memories, feats))
        logs: dict[str, torch.Tensor | float] = {"nce": nce.detach()}
        if not p.refine_loss:
            return nce, logs
        e = self.ensembles(batch, logits, state)
        if p.global_local:
            targets = tg.global_local_targets(e[0], e[1:], y, alpha=p.alpha, cmalpha=p.cmalpha,
                                              temperature=p.temp_kl)
        else:
            targets = [tg.plain_target(e[0], y, p.alpha)]
        refine = tg.refine_loss(logits, targets, p.lambda2)
        logs["refine"] = refine.detach()
        return nce + refine, logs

    def after_backward(self, batch: Batch, outputs: dict[str, torch.Tensor], state: NCPLRState) -> None:
        feats = self._branches(outputs, "global", "parts")
        for memory, f in zip(state.memories, feats):
            memory.update(f, batch.labels)

    def epoch_summary(self, state: NCPLRState) -> dict[str, Any]:
        sizes = np.diff(state.neighbours.indptr)
        return {"memory_size": len(state.memories[0]), "neighbours_mean": float(sizes.mean()) if len(sizes) else 0.0}


class GLNCPLR(NCPLR):
    """``gl-ncplr``: NCPLR with the up and down halves, the released ``train.sh``."""

    name = "gl-ncplr"
    Params = GLNCPLRParams
    Switches = GLNCPLRSwitches
    params: GLNCPLRParams
