"""icrefine stage 1 (ALGORITHMS.md §5.1-5.2, §5.6): learn intra-camera clusters, camera by camera.

For each camera, a fresh model (the same initial weights for every camera) is trained with
Cluster Contrast on that camera's images only. Each epoch: extract the camera's features,
cluster them (Jaccard + average linkage into images/5 clusters), score the clustering with
the silhouette (sklearn, precomputed Jaccard distance), train ``iters`` iterations on it. The
labels of the best-scoring epoch are kept; the stage-1 weights are not (only the labels are
used later). Output: one ``reidctl/intra-camera-labels`` artifact for all cameras.

Two shortcuts that change no saved label: the silhouette of epoch e scores the clustering made
at its start, so the last epoch's training is skipped; and when a camera's clusters can no
longer fill a training batch, its training stops and the best clustering so far is kept.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from reidctl.runtime import dist
from reidctl.artifacts import INTRA_LABELS, check_output, file_digest
from reidctl.cluster.agglomerative import check_linkage_memory
from reidctl.data.datasets import load_dataset
from reidctl.data.samplers import pass_length
from reidctl.runtime.device import resolve_device
from reidctl.errors import ReidctlError
from reidctl.runtime.processes import check_loader_options
from reidctl.models.spec import ModelSpec
from reidctl.models.features import extract_features
from reidctl.data.stats import Norm, input_norm
from reidctl.methods.cc import CCParams, ClusterContrast
from reidctl.methods.icrefine.intra import (
    DEFAULT_CLUSTERS, CameraReport, camera_k1, camera_rows, cluster_camera, clusters_for, parse_clusters, silhouette,
    skip_reason, write_intra_labels,
)
from reidctl.options import option, resolve, unused
from reidctl.runtime import Runtime
from reidctl.progress import progress_bar
from reidctl.models.checkpoint import checkpoint_digest
from reidctl.train.trainer import TrainSession, prepare_determinism, prepare_epoch, train_epoch


@dataclass
class IntraCameraParams(CCParams):
    """Stage-1 defaults of the official ``train_cam.py`` (the one place they live): Cluster
    Contrast per camera with batch 64 = 16 × 4, 100 iterations and memory momentum 0.2; τ 0.05,
    Adam 3.5e-4 / 5e-4, StepLR 20 × 0.1 (never fires in 20 epochs) and 4 BN chunks are CC's."""

    iters: int = 100
    batch_size: int = 64
    num_instances: int = 4
    momentum: float = 0.2
    # one camera at a time: no cross-camera positive exists, so the camera-aware term is not offered
    camera_proxies: bool = field(default=False, metadata=unused())
    cam_lambda: float = field(default=0.5, metadata=unused())
    cam_temperature: float = field(default=0.07, metadata=unused())
    cam_hard_negatives: int = field(default=50, metadata=unused())
    epochs: int = field(default=20, metadata=option("Epochs per camera; lower it on a CPU."))
    k1: int = field(default=30, metadata=option("Jaccard k1; a camera needs more images than k1."))
    k2: int = field(default=6, metadata=option("Jaccard k2."))
    clusters: str = field(default=DEFAULT_CLUSTERS, metadata=option(
        "Clusters per camera: images/D or a fixed number (Market's released files: 600)."))

    def check(self) -> None:
        if self.epochs < 1:
            raise ReidctlError("--intra-epochs / --epochs must be at least 1")
        parse_clusters(self.clusters)
        if self.k1 < 2 or self.k2 < 1:
            raise ReidctlError("--k1 must be at least 2 and --k2 at least 1")
        if self.bn_chunks > 1 and self.batch_size // self.bn_chunks < 2:
            raise ReidctlError(f"--bn-chunks {self.bn_chunks} splits a batch of {self.batch_size} into chunks of "
                               "fewer than 2 images; BatchNorm needs at least 2 per chunk")
        self.train_params().check()

    def train_params(self) -> CCParams:
        """The Cluster Contrast options of one camera's training."""
        names = {f.name for f in dataclasses.fields(CCParams)}
        return CCParams(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


#: Options of the loop's training that stage 1 follows when given (both stages officially
#: use batches of 64 = 16 identities × 4 on 4 GPUs).
SHARED_WITH_TRAINING = ("batch_size", "num_instances", "bn_chunks")


def loop_params(intra: Mapping[str, Any], train: Mapping[str, Any]) -> IntraCameraParams:
    """Stage-1 options of ``loop``: its ``--intra-*`` options, then the batch shape of ``train``."""
    shared = {k: train[k] for k in SHARED_WITH_TRAINING if train.get(k) is not None}
    return resolve_params({**shared, **intra}, prefix="intra_")


def resolve_params(given: Mapping[str, Any], prefix: str = "") -> IntraCameraParams:
    """The defaults with the given (non-None) options; ``clusters`` may come as a number.
    ``prefix``: how the options are spelled (``intra_``: ``loop --intra-lr``), for the messages."""
    given = {k: (str(v) if k == "clusters" and v is not None else v) for k, v in given.items()}
    return resolve(IntraCameraParams, given, what="the intra-camera stage", prefix=prefix)


@dataclass
class IntraCameraRequest:
    """Inputs of stage 1: the model to start every camera from and the dataset's train split."""

    model: ModelSpec = field(default_factory=ModelSpec)
    runtime: Runtime = field(default_factory=Runtime)
    data: str = ""
    dataset: str | None = None
    params: IntraCameraParams = field(default_factory=IntraCameraParams)
    force: bool = False  # overwrite an existing --out that is not an intra-camera labels file


def run_intra_camera(req: IntraCameraRequest, out: str | Path) -> dict[str, Any]:
    """Run stage 1 on every camera of the train split and write the artifact ``out``."""
    p, spec, run = req.params, req.model, req.runtime
    p.check()
    check_loader_options(run.extract_batch_size, run.workers, batch_flag="--extract-batch-size")
    check_output(out, schema=INTRA_LABELS, inputs=(spec.checkpoint, spec.weights), force=req.force)
    ds = load_dataset(req.data, req.dataset)
    train = ds.train
    if not train:
        raise ReidctlError(f"{ds.root}: the dataset has no train images")
    camids = np.array([s.camid for s in train], np.int64)
    groups = camera_rows(camids)
    plans = {cam: clusters_for(p.clusters, len(rows)) for cam, rows in groups.items()}
    reasons = {cam: skip_reason(len(groups[cam]), k, p.k1) for cam, k in plans.items()}
    if all(reasons.values()):
        raise ReidctlError("no camera has enough images to cluster: "
                           + "; ".join(f"camera {c}: {r}" for c, r in reasons.items()))
    check_linkage_memory(max(len(groups[c]) for c, r in reasons.items() if r is None))
    if run.deterministic:
        prepare_determinism()
    model0, provenance = spec.build(run.seed)
    labels = np.full(len(train), -1, np.int64)
    reports: list[CameraReport] = []
    offset = 0
    # under torchrun every rank runs this (sharded extraction, DDP training); rank 0 writes
    with dist.distributed(resolve_device(run.device)) as device:
        for cam, rows in groups.items():
            rep = CameraReport(camera=cam, images=len(rows), skipped=reasons[cam])
            reports.append(rep)
            if rep.skipped:
                continue
            rep.clusters = plans[cam]
            if camera_k1(len(rows), p.k1) < p.k1:
                rep.k1 = camera_k1(len(rows), p.k1)
            best = _train_camera(req, copy.deepcopy(model0), [train[i] for i in rows], camids[rows], rep, device,
                                 input_norm(model0.config, train))
            labels[rows] = best + offset
            offset += rep.clusters
        main = dist.is_main()
        dist.barrier()

    unknown = int(np.sum(camids < 0))
    summary: dict[str, Any] = {
        "rows": len(train), "cameras": len(groups), "clustered_cameras": sum(not r.skipped for r in reports),
        "clusters": offset, "unclustered_rows": int(np.sum(labels < 0)), "unknown_camera_rows": unknown,
        "per_camera": [r.to_dict() for r in reports],
    }
    params = {"stage": "intra-camera", "layout": ds.layout, **provenance, "intra": dataclasses.asdict(p),
              "deterministic": run.deterministic}
    inputs = {}
    if spec.weights is not None:
        inputs["weights"] = file_digest(spec.weights)
    if spec.checkpoint is not None:
        inputs["checkpoint"] = checkpoint_digest(spec.checkpoint)
    if main:
        write_intra_labels(out, labels, camids=camids, paths=[s.relpath for s in train], reports=reports,
                           epochs=p.epochs, params=params, inputs=inputs, seed=run.seed, summary=summary,
                           sources={"data": str(req.data), "dataset": ds.name})
    return summary


def _train_camera(req: IntraCameraRequest, model: Any, samples: list, camids: np.ndarray, rep: CameraReport,
                  device: Any, norm: Norm) -> np.ndarray:
    """One camera: cluster, score, train, epoch after epoch; returns the best epoch's labels."""
    p, run = req.params, req.runtime
    session = TrainSession(model, ClusterContrast(p.train_params()), device=device, amp=run.amp, seed=run.seed,
                           generator=np.random.default_rng([run.seed, rep.camera]))
    best_score, best_labels = -math.inf, None
    bar = None if dist.is_main() else False
    for epoch in range(p.epochs):
        with progress_bar(f"camera {rep.camera}: extract", len(samples), enabled=bar, unit="img") as advance:
            ext = extract_features(session.model, samples, batch_size=run.extract_batch_size, workers=run.workers,
                                   device=device, amp=run.amp, progress=advance, norm=norm)
        labels, jaccard = cluster_camera(ext.feats, rep.clusters, k1=p.k1, k2=p.k2, device=str(device))
        score = silhouette(jaccard, labels)
        rep.history.append(score)
        if score > best_score:
            best_score, best_labels, rep.best_epoch, rep.silhouette = score, labels, epoch, score
        if epoch == p.epochs - 1:
            break
        images = pass_length(labels, p.num_instances)
        if images < p.batch_size:
            rep.note = (f"trained {epoch} of {p.epochs} epochs: the {rep.clusters} clusters of epoch {epoch} yield "
                        f"{images} images per pass, fewer than a batch of {p.batch_size} (lower --batch-size); "
                        "its labels are the best clustering up to there")
            break
        data = prepare_epoch(labels, camids, ext.feats)
        with progress_bar(f"camera {rep.camera}: epoch {epoch}", p.iters, enabled=bar) as advance:
            train_epoch(session, samples, data, epoch=epoch, workers=run.workers, deterministic=run.deterministic,
                        progress=advance, norm=norm)
        rep.trained_epochs += 1
    assert best_labels is not None
    return best_labels
