"""Quality of pseudo labels against ground-truth identities: for reports only.

Ground-truth pids must never reach a clustering or refinement step; this module is the one
place that reads them, and only to score labels that were already made.

Pairwise scores count pairs of samples: precision = pairs put together that share a pid /
pairs put together; recall = pairs sharing a pid that were put together / pairs sharing a pid;
F = their harmonic mean. Outliers (label −1) are scored two ways: ``*`` keys treat each outlier
as a cluster of its own (it joins no pair, so outliers cost recall, never precision), and
``clustered_*`` keys score only the non-outlier samples. With no pairs to judge, precision and
recall are 1 (nothing wrong was claimed / nothing was missed). Everything is computed from the
contingency table of (label, pid), never from the O(N²) pairs.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from reidctl.errors import ReidctlError


def label_quality(labels: np.ndarray, gt_pids: np.ndarray) -> dict[str, float | int]:
    """Cluster counts and pairwise / NMI / ARI scores of ``labels`` against ``gt_pids``."""
    labels = np.asarray(labels).ravel()
    gt_pids = np.asarray(gt_pids).ravel()
    if labels.shape != gt_pids.shape:
        raise ReidctlError(f"{labels.size} labels but {gt_pids.size} ground-truth pids")
    n = labels.size
    outlier = labels == -1
    clustered = ~outlier
    singletons = labels.copy()
    if outlier.any():  # each outlier its own cluster, ids beyond the real ones
        singletons[outlier] = labels.max() + 1 + np.arange(outlier.sum())
    out: dict[str, float | int] = {
        "n_samples": int(n),
        "n_clusters": int(np.unique(labels[clustered]).size),
        "n_outliers": int(outlier.sum()),
        "outlier_fraction": float(outlier.mean()) if n else 0.0,
        "n_identities": int(np.unique(gt_pids).size),
    }
    out.update(_scores(singletons, gt_pids, ""))
    out.update(_scores(labels[clustered], gt_pids[clustered], "clustered_"))
    return out


def _pairs(counts: np.ndarray) -> int:
    c = counts.astype(np.int64)
    return int((c * (c - 1) // 2).sum())


def _scores(labels: np.ndarray, pids: np.ndarray, prefix: str) -> dict[str, float]:
    if labels.size == 0:
        nan = float("nan")
        return {f"{prefix}{k}": nan for k in ("precision", "recall", "f_score", "nmi", "ari")}
    _, li = np.unique(labels, return_inverse=True)
    _, pi = np.unique(pids, return_inverse=True)
    _, cell = np.unique(li.astype(np.int64) * (pi.max() + 1) + pi, return_counts=True)
    together = _pairs(np.bincount(li))  # pairs sharing a label
    same = _pairs(np.bincount(pi))  # pairs sharing a pid
    both = _pairs(cell)
    precision = both / together if together else 1.0
    recall = both / same if same else 1.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        f"{prefix}precision": float(precision),
        f"{prefix}recall": float(recall),
        f"{prefix}f_score": float(f),
        f"{prefix}nmi": float(normalized_mutual_info_score(pids, labels)),
        f"{prefix}ari": float(adjusted_rand_score(pids, labels)),
    }


def pair_precision(pairs: np.ndarray, gt_pids: np.ndarray) -> dict[str, float | int]:
    """Of ``pairs`` (P×2 row indices claimed to show one person, e.g. MAR's mined positive pairs),
    the fraction whose rows share a known pid; pairs with an unknown pid (−1) are not judged.
    The official MAR code logs the same number as its mined pairs' true-positive rate."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    gt_pids = np.asarray(gt_pids)
    a, b = gt_pids[pairs[:, 0]], gt_pids[pairs[:, 1]]
    known = (a >= 0) & (b >= 0)
    judged = int(known.sum())
    right = int(np.sum(a[known] == b[known]))
    return {"pairs": int(len(pairs)), "judged": judged, "precision": right / judged if judged else None}
