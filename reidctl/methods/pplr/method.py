"""PPLR, Part-based Pseudo Label Refinement (Cho et al., CVPR 2022), as its official code runs it.

The clustering is CC's on the global features (DBSCAN eps 0.5). The ``refine`` stage leaves the
labels alone and stores the *cross-agreement* ``S`` (N×P): how much the top-k neighbours of each
image in the global space and in each part space overlap. Training then uses ``S`` twice:

* PGLR: the global classifier learns from ``β·onehot(y) + (1−β)·Σ_p softmax(S/T)_p·softmax(part logits)``;
* AALS: each part classifier's target is smoothed towards uniform where the part disagrees
  (``1−S``), from epoch ``aals_epoch`` on (ordinary label smoothing before);

plus a batch-hard soft triplet on the global BN features and, optionally (``--camera-proxies``),
the camera-aware proxy loss of the official ``train_pplr_cam.py``, which the trainer adds to any
method (:mod:`reidctl.train.camera`). The classifiers are bias-free ``Linear`` layers with a
fixed number of rows (3000 officially), re-initialised every epoch with the normalised cluster
centroids; their Adam moments persist across epochs, as in the official code.

The official model: ResNet-50, last stride 1, 384×128 input, **average** pooling and 3 average
pooled stripes (``--pooling avg --parts 3 --height 384``). See ALGORITHMS.md §4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reidctl.errors import ReidctlError
from reidctl.methods.base import Batch, EpochData, Method, Refined, RunDefaults
from reidctl.methods.plan import refine_options
from reidctl.methods.pplr import losses as pplr_losses
from reidctl.models.reid import ReidModel
from reidctl.options import option
from reidctl.search import knn
from reidctl.train import losses
from reidctl.train.camera import CameraAwareParams
from reidctl.train.heads import CentroidClassifiers
from reidctl.train.memory import cluster_centroids

PARTS_HINT = "build the model with --parts 3 --pooling avg (the official PPLR model)"


def top_k_lists(feats: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """The official ranked list: k+1 exact neighbours with column 0 dropped (N×k indices).

    Column 0 is assumed to be the query itself. That holds unless an image has an exact
    duplicate with a smaller row index (ties go to the smaller index): then the duplicate is
    dropped and the query itself stays in its own list, as in the official code.
    """
    n = len(feats)
    if not 1 <= k < n:
        raise ReidctlError(f"--k {k}: the agreement needs 1 ≤ k < the number of samples ({n})")
    _, idx = knn(feats, k + 1)
    return idx[:, 1:]


def list_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Jaccard ``|A∩B| / |A∪B|`` of two N×k index arrays (rows without repeats)."""
    k = a.shape[1]
    both = np.sort(np.concatenate([a, b], axis=1), axis=1)
    inter = (both[:, 1:] == both[:, :-1]).sum(1)
    return (inter / (2 * k - inter)).astype(np.float32)


def cross_agreement(global_feats: np.ndarray | torch.Tensor, part_feats: np.ndarray | torch.Tensor,
                    k: int = 20) -> np.ndarray:
    """PPLR's cross-agreement: ``S[i,p]`` = Jaccard of i's top-k lists in the global and part-p space.

    ``global_feats`` N×D and ``part_feats`` N×P×D, L2-normalised. Returns N×P float32 in [0, 1].
    Uses the exact kNN of :mod:`reidctl.search` and the official "drop column 0" convention
    (see :func:`top_k_lists` for what that means with exact duplicate images).
    """
    parts = np.asarray(part_feats)
    if parts.ndim != 3 or len(parts) != len(global_feats):
        raise ReidctlError(f"part features must be N×P×D with N = {len(global_feats)}, got shape {parts.shape}")
    g = top_k_lists(global_feats, k)
    return np.stack([list_jaccard(g, top_k_lists(parts[:, p], k)) for p in range(parts.shape[1])], axis=1)


@dataclass
class PPLRParams(CameraAwareParams):
    """The official command's values (``train_pplr.py``, ALGORITHMS.md §4.6). Adam 3.5e-4 / 5e-4,
    StepLR 20 × 0.1 and 4 BN chunks (here 16 images each: the 4-GPU runs) are inherited from
    :class:`~reidctl.train.contract.TrainParams`, and the camera-aware options from
    :class:`~reidctl.train.camera.CameraAwareParams`. Clustering: DBSCAN eps 0.5
    (``PPLR.cluster_defaults``); model: 3 average-pooled disjoint stripes at 384×128 (``PPLR.model_defaults``). The camera-aware variant
    (``camera_proxies``) officially clusters with eps 0.4 (Market) / 0.6 (MSMT17) and uses
    ``cam_lambda`` 1.0 on MSMT17."""

    iters: int = 400
    batch_size: int = 64
    num_instances: int = 4
    beta: float = field(default=0.5, metadata=option("pplr: weight of the one-hot label in the PGLR target."))
    pglr: bool = field(default=True, metadata=option(
        "pplr: --no-pglr is the ablation where the global classifier learns from the one-hot label (β = 1)."))
    aals: bool = field(default=True, metadata=option(
        "pplr: --no-aals is the ablation where the parts keep the warm-up label smoothing in every epoch."))
    aals_epoch: int = field(default=5, metadata=option("pplr: first epoch of AALS; label smoothing before."))
    label_smoothing: float = field(default=0.1, metadata=option(
        "pplr: ε of the part classifiers' warm-up label smoothing."))
    agreement_temperature: float = field(default=1.0, metadata=option(
        "pplr: T of the part weights softmax(S/T) in PGLR."))
    classifier_rows: int = field(default=3000, metadata=option(
        "pplr, ncplr: rows of each classifier = the most clusters allowed."))

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.beta <= 1.0:
            raise ReidctlError("--beta must lie in [0, 1]")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ReidctlError("--label-smoothing must lie in [0, 1)")
        if self.aals_epoch < 0:
            raise ReidctlError("--aals-epoch must not be negative")
        if self.agreement_temperature <= 0:
            raise ReidctlError("--agreement-temperature must be positive")
        if self.classifier_rows < 1:
            raise ReidctlError("--classifier-rows must be at least 1")


@dataclass
class PPLRRefineOptions:
    """Options of PPLR's ``refine`` step."""

    k: int = field(default=20, metadata=option("pplr: top-k neighbours of the cross-agreement."))

    def check(self) -> None:
        if self.k < 1:
            raise ReidctlError("--k must be at least 1")


#: PPLR's classifiers: a global one and one per stripe, re-initialised from centroids every epoch.
PPLRHeads = CentroidClassifiers


@dataclass
class PPLRState:
    """One epoch's constants: the agreement of the epoch's rows."""

    agreement: torch.Tensor  # n×P, rows of EpochData
    epoch: int


class PPLR(Method):
    """``pplr``: PGLR + AALS + soft triplet (+ camera proxies) on a global and P part classifiers."""

    name = "pplr"
    Params = PPLRParams
    RefineOptions = PPLRRefineOptions
    params: PPLRParams
    uses_parts = True
    label_arrays = ("agreement",)
    cluster_defaults = {"eps": 0.5}
    model_defaults = {"parts": 3, "pooling": "avg", "height": 384, "width": 128}
    run_defaults = RunDefaults(epochs=50, eval_every=5)

    # ---- refine stage

    @classmethod
    def refine(cls, features: Any, labels: np.ndarray, extra: Mapping[str, Any], options: Mapping[str, Any],
               *, seed: int = 1) -> Refined:
        """Labels unchanged; the cross-agreement of all N rows (outliers included) as ``agreement``."""
        opts = refine_options(cls, options)
        if features.parts is None:
            raise ReidctlError(f"{getattr(features, 'path', 'the features')} has no part features: "
                               f"--method pplr needs them; extract with --parts 3 --pooling avg")
        scores = cross_agreement(features.feats, features.parts, k=int(opts["k"]))
        summary = {"agreement_mean": [round(float(v), 4) for v in scores.mean(0)]}
        return Refined(np.asarray(labels, dtype=np.int32), extra={"agreement": scores}, summary=summary,
                       options=opts)

    # ---- training

    def build_heads(self, model: ReidModel) -> PPLRHeads:
        if model.config.parts < 1:
            raise ReidctlError(f"--method pplr needs part features: {PARTS_HINT}")
        return PPLRHeads(model.channels, model.config.parts, self.params.classifier_rows)

    def make_state(self, data: EpochData, heads: nn.Module | None) -> PPLRState:
        """Re-initialise the classifiers' first K rows with the epoch's normalised centroids (global
        and per part), take the agreement rows of the clustered samples."""
        p = self.params
        k = data.num_clusters
        if not isinstance(heads, PPLRHeads):
            raise ReidctlError("--method pplr: the session has no PPLR classifiers")
        if k > p.classifier_rows:
            raise ReidctlError(f"{k} clusters exceed the {p.classifier_rows} classifier rows "
                               "(--classifier-rows; the official code has 3000): raise it or cluster coarser")
        if data.parts is None:
            raise ReidctlError(f"--method pplr needs part features: {PARTS_HINT}")
        nparts = len(heads.part_classifiers)
        if data.parts.shape[1] != nparts:
            raise ReidctlError(f"the features have {data.parts.shape[1]} parts, the model {nparts}")
        if "agreement" not in data.extra:
            raise ReidctlError("the labels file has no 'agreement' array: make it with `reidctl refine --method pplr`")
        agreement = np.asarray(data.extra["agreement"], dtype=np.float32)
        if agreement.ndim != 2 or agreement.shape[1] != nparts:
            raise ReidctlError(f"the labels file's agreement is {agreement.shape}, expected N×{nparts}")
        agreement = agreement[data.rows]
        parts = [np.ascontiguousarray(data.parts[:, i]) for i in range(nparts)]
        heads.reset(cluster_centroids(data.features, data.labels, k),
                    [cluster_centroids(x, data.labels, k) for x in parts])
        return PPLRState(torch.as_tensor(agreement, device=data.device), data.epoch)

    def loss(self, batch: Batch, outputs: dict[str, torch.Tensor], state: PPLRState
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """``L_GCE (PGLR) + L_PCE (AALS or label smoothing) + L_TRI``, weights 1 (``--camera-proxies``:
        the trainer adds ``λ_cam·L_cam``, :mod:`reidctl.train.camera`)."""
        p = self.params
        y = batch.labels
        s = state.agreement[batch.index]
        logits, part_logits = outputs["logits"], outputs["part_logits"]
        if p.pglr:
            target = pplr_losses.pglr_target(y, part_logits, s, p.beta, p.agreement_temperature)
            l_global = losses.soft_cross_entropy(logits, target)
        else:
            l_global = F.cross_entropy(logits.float(), y)
        if p.aals and state.epoch >= p.aals_epoch:
            l_parts = pplr_losses.aals_loss(part_logits, y, s)
        else:
            l_parts = torch.stack([losses.label_smoothing_cross_entropy(part_logits[:, i], y, p.label_smoothing)
                                   for i in range(part_logits.shape[1])]).mean()
        l_tri = losses.soft_triplet_loss(outputs["global"], y)
        loss = l_global + l_parts + l_tri
        logs: dict[str, torch.Tensor | float] = {"global_ce": l_global.detach(), "part_ce": l_parts.detach(),
                                                 "triplet": l_tri.detach()}
        return loss, logs

    def epoch_summary(self, state: PPLRState) -> dict[str, Any]:
        return {"aals": bool(self.params.aals and state.epoch >= self.params.aals_epoch),
                "agreement_mean": float(state.agreement.mean())}
