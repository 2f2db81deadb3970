"""Pruning global clusters with intra-camera clusters (ALGORITHMS.md §5.3-5.4, item 5).

For each information node n, in the given order: its global cluster's members that share n's
camera but not n's intra-camera cluster are discarded (label −1), each with probability p.
Kept exactly as the released code orders it, including its order-dependence:

* the members of a global cluster are those of the labels *before* any discarding, visited in
  ascending index order, with one uniform draw u per candidate (discarded when u < p);
* a node's cluster is looked up with its *current* label, so a node that an earlier node
  discarded prunes nothing; a row already discarded is not a candidate again (no draw);
* with p < 1 a row that survived one node's draw can be discarded by a later node.

A node whose camera or intra-camera cluster is unknown (−1) prunes nothing and is counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Discarded:
    labels: np.ndarray  # N int32: the global labels with discarded rows set to −1
    discarded_by: np.ndarray  # N int64: the information node that discarded the row, −1 = kept
    nodes_without_intra: int  # information nodes that pruned nothing for lack of intra-camera data

    @property
    def mask(self) -> np.ndarray:
        return self.discarded_by >= 0


def discard(global_labels: np.ndarray, camids: np.ndarray, intra_labels: np.ndarray, nodes: np.ndarray,
            p: float, rng: np.random.Generator) -> Discarded:
    """Prune ``global_labels`` with the information ``nodes`` (processed in the given order).

    ``intra_labels`` number intra-camera clusters uniquely across cameras (−1 = unknown).
    """
    y0 = np.asarray(global_labels, np.int64)
    cams = np.asarray(camids, np.int64)
    intra = np.asarray(intra_labels, np.int64)
    n = len(y0)
    if not len(cams) == len(intra) == n:
        raise ValueError("global labels, camera ids and intra-camera labels must have one entry per row")
    y = y0.copy()
    by = np.full(n, -1, np.int64)
    # members of each global cluster before any discarding, ascending row order within a cluster
    order = np.argsort(y0, kind="stable")
    values, starts = np.unique(y0[order], return_index=True)
    ends = np.append(starts[1:], n)
    where = {int(v): (int(s), int(e)) for v, s, e in zip(values, starts, ends) if v >= 0}
    without = 0
    for node in np.asarray(nodes, np.int64):
        cam, own = cams[node], intra[node]
        if cam < 0 or own < 0:
            without += 1
            continue
        label = int(y[node])
        if label < 0:
            continue
        s, e = where[label]
        members = order[s:e]
        cand = members[(cams[members] == cam) & (intra[members] != own) & (y[members] >= 0)]
        if len(cand) == 0:
            continue
        drop = cand[rng.random(len(cand)) < p]
        y[drop] = -1
        by[drop] = node
    return Discarded(labels=y.astype(np.int32), discarded_by=by, nodes_without_intra=without)
