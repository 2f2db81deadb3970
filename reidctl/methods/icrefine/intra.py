"""Intra-camera clusters: each camera's images clustered on their own, and the artifact that
carries them from stage 1 to the refine stage.

Why per camera: within one camera the same person looks alike (same background, light and
viewpoint), so these clusters are purer than the global ones and can veto same-camera members
of a global cluster. Clustering is the global one restricted to a camera: k-reciprocal Jaccard
distance + average-linkage agglomerative clustering into ``images/5`` clusters (or a fixed
number), with the existing kNN, Jaccard and agglomerative code (and its memory check).

The artifact (schema ``reidctl/intra-camera-labels``) has one row per train image, in artifact
row order: ``labels`` numbers the intra-camera clusters uniquely across cameras (camera by
camera, ascending camera id; −1 = not clustered: unknown camera or too few images), ``camids``
the cameras they were made with, and per-camera arrays indexed like ``cameras``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from reidctl.artifacts import INTRA_LABELS, read_labels, write_labels
from reidctl.cluster.clustering import ClusterParams, cluster_features
from reidctl.errors import ArtifactError, ReidctlError

DEFAULT_CLUSTERS = "images/5"


def parse_clusters(spec: str | int) -> tuple[str, int]:
    """``"images/D"`` → ("ratio", D); ``"600"`` or 600 → ("fixed", 600)."""
    text = str(spec).strip().replace(" ", "")
    try:
        if text.startswith("images/"):
            value, kind = int(text.removeprefix("images/")), "ratio"
        else:
            value, kind = int(text), "fixed"
    except ValueError:
        value, kind = 0, "bad"
    if kind == "bad" or value < 1:
        raise ReidctlError(f"--clusters {spec}: use images/D (e.g. images/5, the default) or a positive number")
    return kind, value


def clusters_for(spec: str | int, images: int) -> int:
    """The number of clusters of a camera with ``images`` images (images // D, or the fixed number)."""
    kind, value = parse_clusters(spec)
    return images // value if kind == "ratio" else value


def camera_k1(images: int, k1: int) -> int:
    """The Jaccard k1 for a camera of ``images`` images: ``k1`` (the official 30), lowered to
    ``images − 1`` for a smaller camera, which the distance needs. Below 2 it cannot cluster."""
    return min(k1, images - 1)


def skip_reason(images: int, clusters: int, k1: int) -> str | None:
    """Why a camera cannot be clustered even with its k1 lowered (:func:`camera_k1`), or None."""
    if camera_k1(images, k1) < 2:
        return f"{images} images are too few to cluster (the Jaccard distance needs at least 3)"
    if not 2 <= clusters < images:
        return (f"too few images ({images}) for {clusters} clusters: the silhouette score needs between 2 and "
                f"{images - 1} clusters")
    return None


def cluster_camera(feats: np.ndarray, n_clusters: int, *, k1: int = 30, k2: int = 6,
                   device: str = "auto") -> tuple[np.ndarray, sp.csr_matrix]:
    """Average-linkage labels (0..n_clusters−1) of one camera's features and their Jaccard distance
    (``k1`` lowered for a small camera, see :func:`camera_k1`)."""
    k1 = camera_k1(len(feats), k1)
    res = cluster_features(feats, ClusterParams(algo="agglomerative", k1=k1, k2=min(k2, k1), n_clusters=n_clusters,
                                                device=device))
    return res["labels"].astype(np.int64), res[res["distance"]]


def silhouette(jaccard: sp.spmatrix, labels: np.ndarray) -> float:
    """sklearn's silhouette score of ``labels`` on the (dense) precomputed Jaccard distance."""
    from sklearn.metrics import silhouette_score  # noqa: PLC0415

    coo = sp.coo_matrix(jaccard)
    dense = np.ones(coo.shape, np.float32)  # entries the sparse matrix leaves out are 1
    dense[coo.row, coo.col] = coo.data
    np.fill_diagonal(dense, 0.0)
    return float(silhouette_score(dense, labels, metric="precomputed"))


@dataclass
class CameraReport:
    """What happened to one camera (stage 1 fills the training fields)."""

    camera: int
    images: int
    clusters: int = 0
    skipped: str | None = None
    best_epoch: int = -1
    silhouette: float | None = None
    trained_epochs: int = 0
    k1: int | None = None  # set when the camera is too small for the requested k1 (lowered)
    note: str | None = None
    history: list[float] = field(default_factory=list)  # silhouette of each epoch's clustering

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "history"}
        return {k: v for k, v in d.items() if v is not None}


def camera_rows(camids: np.ndarray) -> dict[int, np.ndarray]:
    """Rows of each known camera (ascending camera id; −1 = unknown is left out)."""
    camids = np.asarray(camids, np.int64)
    cams = sorted(int(c) for c in np.unique(camids) if c >= 0)
    if not cams:
        raise ReidctlError("no camera ids are known for these images; icrefine needs them "
                           "(a Market-style name, a manifest camid column ...)")
    return {c: np.flatnonzero(camids == c) for c in cams}


def cluster_per_camera(feats: np.ndarray, camids: np.ndarray, *, clusters: str | int = DEFAULT_CLUSTERS,
                       k1: int = 30, k2: int = 6, device: str = "auto") -> tuple[np.ndarray, list[CameraReport]]:
    """Intra-camera labels (unique across cameras, −1 = not clustered) from fixed features."""
    labels = np.full(len(feats), -1, np.int64)
    reports = []
    offset = 0
    for cam, rows in camera_rows(camids).items():
        k = clusters_for(clusters, len(rows))
        rep = CameraReport(camera=cam, images=len(rows), skipped=skip_reason(len(rows), k, k1))
        if rep.skipped is None and camera_k1(len(rows), k1) < k1:
            rep.k1 = camera_k1(len(rows), k1)
        if rep.skipped is None:
            y, _ = cluster_camera(np.ascontiguousarray(feats[rows]), k, k1=k1, k2=k2, device=device)
            labels[rows] = y + offset
            offset += k
            rep.clusters = k
        reports.append(rep)
    return labels, reports


def write_intra_labels(path: str | os.PathLike, labels: np.ndarray, *, camids: np.ndarray, paths: Sequence[str],
                       reports: Sequence[CameraReport], epochs: int, params: Mapping[str, Any],
                       inputs: Mapping[str, str] | None, seed: int, summary: Mapping[str, Any],
                       sources: Mapping[str, str] | None = None) -> str:
    """Write the stage-1 artifact atomically; returns its digest."""
    history = np.full((len(reports), max(epochs, 1)), np.nan, np.float32)
    for i, r in enumerate(reports):
        history[i, : len(r.history)] = r.history
    extra = {
        "camids": np.asarray(camids, np.int64),
        "cameras": np.array([r.camera for r in reports], np.int64),
        "camera_images": np.array([r.images for r in reports], np.int64),
        "camera_clusters": np.array([r.clusters for r in reports], np.int64),
        "best_epoch": np.array([r.best_epoch for r in reports], np.int64),
        "silhouette": np.array([np.nan if r.silhouette is None else r.silhouette for r in reports], np.float32),
        "silhouette_history": history,
    }
    return write_labels(path, labels, paths=paths, extra=extra, params=params, inputs=inputs, seed=seed,
                        attrs={"summary": dict(summary), "sources": dict(sources or {})}, schema=INTRA_LABELS)


def read_intra_labels(path: str | os.PathLike, *, paths: Sequence[str], camids: np.ndarray) -> tuple[np.ndarray, str]:
    """Intra-camera labels of a stage-1 file whose rows and cameras match the features; and its digest."""
    lab = read_labels(path, expect_paths=paths, load=("camids",), schema=INTRA_LABELS)
    stored = lab.extra.get("camids")
    if stored is None or not np.array_equal(np.asarray(stored), np.asarray(camids)):
        raise ArtifactError(f"{Path(path)}: its camera ids differ from the features' (made from another dataset?)")
    return lab.labels.astype(np.int64), lab.meta.digest
