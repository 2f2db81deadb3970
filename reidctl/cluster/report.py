"""What the `cluster` and `refine` stages report about the pseudo labels they write.

Besides cluster counts and (when the dataset has identities) the ground-truth quality, both
stages report the *camera mix*: how many pseudo identities hold images of two or more cameras.
It needs camera ids only, so it is available on unlabelled footage too, and it warns of a
failure no loss can fix: re-ID is scored on cross-camera matches (the Market protocol drops the
query's own-camera gallery images of the same person), and a pseudo identity seen by one camera
teaches same-camera matching only. With weak starting features on few cameras (ImageNet
MobileNetV2 on CUHK03's two cameras) DBSCAN finds no cross-camera cluster at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reidctl.cluster.quality import label_quality
from reidctl.errors import ReidctlError


def camera_mix(labels: np.ndarray, camids: np.ndarray) -> dict[str, Any] | None:
    """Cameras, clusters spanning ≥ 2 cameras, and the cross-camera share of same-cluster pairs.

    None when fewer than two cameras are known or some image has no camera id (-1). Outliers
    (label −1) are ignored. Counts come from the (cluster, camera) table, not the O(N²) pairs.
    """
    labels = np.asarray(labels).ravel()
    camids = np.asarray(camids).ravel()
    if labels.shape != camids.shape:
        raise ReidctlError(f"{labels.size} labels but {camids.size} camera ids")
    if camids.size == 0 or (camids < 0).any() or np.unique(camids).size < 2:
        return None
    keep = labels >= 0
    mix: dict[str, Any] = {"cameras": int(np.unique(camids).size), "multi_camera_clusters": 0,
                           "cross_camera_pairs": 0.0}
    if not keep.any():
        return mix
    _, li = np.unique(labels[keep], return_inverse=True)
    _, ci = np.unique(camids[keep], return_inverse=True)
    table = np.zeros((li.max() + 1, ci.max() + 1), dtype=np.int64)
    np.add.at(table, (li, ci), 1)
    sizes = table.sum(1)
    pairs = int((sizes * (sizes - 1) // 2).sum())
    same_camera = int((table * (table - 1) // 2).sum())
    mix["multi_camera_clusters"] = int(((table > 0).sum(1) > 1).sum())
    mix["cross_camera_pairs"] = (pairs - same_camera) / pairs if pairs else 0.0
    return mix


def labels_report(labels: np.ndarray, camids: np.ndarray, pids: np.ndarray | None) -> dict[str, Any]:
    """``clusters``, ``outliers``, ``sizes`` (images of the largest and the median pseudo identity,
    and of all clustered rows), ``camera_mix`` (when cameras are known) and ``quality`` (with pids)."""
    labels = np.asarray(labels)
    _, sizes = np.unique(labels[labels >= 0], return_counts=True)
    report: dict[str, Any] = {"clusters": int(sizes.size), "outliers": int(np.sum(labels < 0))}
    if sizes.size:  # images per pseudo identity: the largest and the median, and how many were clustered
        report["sizes"] = {"largest": int(sizes.max()), "median": float(np.median(sizes)), "clustered": int(sizes.sum())}
    mix = camera_mix(labels, camids)
    if mix is not None:
        report["camera_mix"] = mix
    if pids is not None:
        report["quality"] = label_quality(labels, pids)
    return report


#: A pseudo identity is reported as a merger of many people when it holds at least this share of
#: the clustered images and this many times the median cluster's images (a real identity of a
#: re-ID train split holds well under 1 % of it: Market-1501 has 12,936 images of 751 people).
MERGED_SHARE = 0.05
MERGED_OVER_MEDIAN = 10


def merged_cluster_warning(report: dict[str, Any]) -> str | None:
    """A one-line warning when one pseudo identity swallows a large share of the images (DBSCAN
    chaining: an eps too wide for the features' scale, e.g. a source-trained model's), else None.
    Label-free: sizes only. Reports of older runs (no ``sizes``) give none."""
    sizes = report.get("sizes")
    if not sizes or report.get("clusters", 0) < 2:
        return None
    largest, median, clustered = sizes["largest"], sizes["median"], sizes["clustered"]
    if largest < MERGED_SHARE * clustered or largest < MERGED_OVER_MEDIAN * median:
        return None
    return (f"warning: one of the {report['clusters']} pseudo identities holds {largest} of the {clustered} clustered "
            f"images ({100 * largest / clustered:.0f} %; the median one {median:g}): the clustering chains different "
            "people together on these features; a smaller --eps (DBSCAN) or more --n-clusters splits it "
            "(docs/guide.md: Camera mix)")


def single_camera_warning(report: dict[str, Any]) -> str | None:
    """A one-line warning when clusters exist but none spans two cameras, else None."""
    mix = report.get("camera_mix")
    if not mix or mix["multi_camera_clusters"] or not report.get("clusters"):
        return None
    return (f"warning: none of the {report['clusters']} pseudo identities spans two of the {mix['cameras']} "
            "cameras, so training on them cannot teach cross-camera matching (docs/guide.md: Camera mix)")
