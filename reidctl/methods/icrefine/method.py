"""icrefine (Li et al., ICIP 2023, "ICSR"): prune global pseudo labels with intra-camera clusters.

Stage 2 of the method, as its released ``train_global.py`` runs it (ALGORITHMS.md §5.3-5.5):
global average-linkage clustering on the Jaccard distance (the ``cluster`` stage), information
nodes (:mod:`.info_nodes`), and, for each of them, the same-camera members of its global
cluster outside its intra-camera cluster discarded with probability p(epoch) (:mod:`.discard`,
:mod:`.decay`). Training is Cluster Contrast's on the rows that remain.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from reidctl.errors import ReidctlError
from reidctl.methods.base import Refined, RunDefaults
from reidctl.methods.cc import CCParams, ClusterContrast
from reidctl.methods.icrefine.decay import DECAYS, discard_probability
from reidctl.methods.icrefine.discard import discard
from reidctl.methods.icrefine.info_nodes import (
    INFOMAP_SEED, MODES, cosine_neighbours, infomap_clusters, score_links, select_information_nodes,
)
from reidctl.methods.icrefine.intra import DEFAULT_CLUSTERS, cluster_per_camera, read_intra_labels
from reidctl.methods.icrefine.prelude import INTRA_CAMERA
from reidctl.options import option, resolve

#: Global clusters when --n-clusters is not given: the released ``train_global.py`` hard-codes
#: 1200 for every dataset (the paper's Market-1501 value is 800: ``--n-clusters 800``), capped at
#: N/5 so that small datasets still cluster.
DEFAULT_GLOBAL_CLUSTERS = 1200


@dataclass
class IcrefineParams(CCParams):
    """Stage-2 training of the official ``train_global.py`` (ClusterNCE, momentum 0.1, τ 0.05):
    batch 64 of 4 instances, 200 iterations (MSMT17: 400); the rest is CC's."""

    batch_size: int = 64
    num_instances: int = 4


@dataclass
class IcrefineOptions:
    """Options of the refine stage (``reidctl refine --method icrefine``)."""

    decay: str = field(default="none", metadata=option(
        "icrefine: discard probability p(e) at epoch e of E: none (p = 1, the released code), linear 1−e/(4E), "
        "exponential 0.75^(e/E), cosine ½(1+cos(πe/(3E)))."))
    epoch: int = field(default=0, metadata=option("icrefine: the epoch e of p(e).", loop=False))
    epochs: int = field(default=50, metadata=option(
        "icrefine: the number of epochs E of p(e) (the official number of epochs).", loop=False))
    info_nodes: str = field(default="per-cluster", metadata=option(
        "icrefine: information nodes: per-cluster (one per Infomap cluster, the code) or all (every image "
        "scoring above the mean, the paper)."))
    intra: str | None = field(default=None, metadata=option(
        "icrefine: intra-camera labels from `reidctl intra-camera` (default: `refine` clusters each camera's "
        "features itself; `loop` runs that stage unless given this file).", loop=False))
    knn_k: int = field(default=15, metadata=option(
        "icrefine: neighbours of the centrality score and the Infomap graph (self included)."))
    min_sim: float = field(default=0.5, metadata=option("icrefine: links need cosine similarity ≥ this."))
    min_size: int = field(default=4, metadata=option("icrefine: Infomap modules need more members than this."))
    intra_clusters: str | None = field(default=None, metadata=option(
        f"icrefine: clusters per camera when `refine` clusters each camera itself (no --intra): images/D or a "
        f"fixed number (unset: {DEFAULT_CLUSTERS}).", loop=False))
    intra_k1: int = field(default=30, metadata=option(
        "icrefine: Jaccard k1 of that per-camera clustering (train_cam.py's; lowered for small cameras).",
        loop=False))

    def check(self) -> None:
        if self.decay not in DECAYS:
            raise ReidctlError(f"--decay {self.decay}: choose one of {', '.join(DECAYS)}")
        if self.info_nodes not in MODES:
            raise ReidctlError(f"--info-nodes {self.info_nodes}: choose one of {', '.join(MODES)}")
        discard_probability(self.decay, self.epoch, self.epochs)  # checks epoch/epochs
        if self.knn_k < 2:
            raise ReidctlError("--knn-k must be at least 2 (the image itself and one neighbour)")
        if not 0.0 <= self.min_sim <= 1.0:
            raise ReidctlError("--min-sim must lie in [0, 1]")
        if self.min_size < 0:
            raise ReidctlError("--min-size must not be negative")
        if self.intra_k1 < 2:
            raise ReidctlError("--intra-k1 must be at least 2")
        if self.intra is not None and self.intra_clusters is not None:
            raise ReidctlError("--intra-clusters sets how `refine` clusters each camera itself; with --intra FILE "
                               "the intra-camera clusters come from that file (drop one of them)")
        if self.intra is not None:
            self.intra = str(self.intra)
        if self.intra is not None and not Path(self.intra).exists():
            raise ReidctlError(f"--intra {self.intra}: no such file (make one with `reidctl intra-camera`)")


class Icrefine(ClusterContrast):
    """``icrefine``: CC training on global clusters pruned by intra-camera clusters."""

    name = "icrefine"
    Params = IcrefineParams
    params: IcrefineParams
    # average linkage into --n-clusters clusters; eps is ICSR's argparse default, used only
    # with --global-clustering dbscan (its commented-out DBSCAN path)
    cluster_defaults: ClassVar[dict[str, Any]] = {"algo": "agglomerative", "eps": 0.5}
    run_defaults = RunDefaults(epochs=50, eval_every=1)
    RefineOptions = IcrefineOptions
    refine_context = ("epoch", "epochs")  # p(e) needs them
    preludes = (INTRA_CAMERA,)  # stage 1: its labels reach refine as its option `intra`

    @classmethod
    def resolve_clustering(cls, params: Any, n_samples: int) -> Any:
        """Fill in the number of global clusters: 1200, or N/5 when that is smaller."""
        if params.algo == "agglomerative" and params.n_clusters is None:
            params = dataclasses.replace(params, n_clusters=max(1, min(DEFAULT_GLOBAL_CLUSTERS, n_samples // 5)))
        return params

    @classmethod
    def refine(cls, features: Any, labels: np.ndarray, extra: Mapping[str, Any], options: Mapping[str, Any],
               *, seed: int = 1) -> Refined:
        """Information nodes + discarding (see the module docstring); never reads identities."""
        opts = resolve(IcrefineOptions, options, what="`refine --method icrefine`")
        global_labels = np.asarray(labels, np.int32)
        camids = np.asarray(features.camids, np.int64)
        n = len(global_labels)
        notes = []
        if opts.intra is not None:
            intra, digest = read_intra_labels(opts.intra, paths=features.paths, camids=camids)
            source = f"stage 1: {opts.intra}"
            unclustered = []
        else:
            intra, reports = cluster_per_camera(features.feats, camids, clusters=opts.intra_clusters or DEFAULT_CLUSTERS,
                                                k1=opts.intra_k1)
            source = "per-camera clustering of the features (no --intra given)"
            unclustered = [f"camera {r.camera}: {r.skipped}" for r in reports if r.skipped]
            notes += [f"camera {r.camera}: {r.images} images, so its Jaccard k1 is {r.k1} instead of "
                      f"{opts.intra_k1}" for r in reports if r.k1 is not None]
        notes.insert(0, f"intra-camera clusters: {source}")
        notes += [f"not clustered, so never pruned: {u}" for u in unclustered]

        p = discard_probability(opts.decay, opts.epoch, opts.epochs)
        dist, idx = cosine_neighbours(features.feats, opts.knn_k)
        links = score_links(dist, idx, opts.min_sim)
        infomap_labels = None
        if opts.info_nodes == "per-cluster":
            infomap_labels = infomap_clusters(n, links, min_size=opts.min_size, seed=INFOMAP_SEED)
        nodes = select_information_nodes(links.score, infomap_labels, opts.info_nodes)
        rng = np.random.default_rng(seed)
        res = discard(global_labels, camids, intra, nodes, p, rng)

        discarded = int(res.mask.sum())
        notes.append(f"{len(nodes)} information nodes ({opts.info_nodes}); {discarded} rows discarded with "
                     f"p = {p:.4f} ({opts.decay}, epoch {opts.epoch} of {opts.epochs}), seed {seed}")
        if res.nodes_without_intra:
            notes.append(f"{res.nodes_without_intra} information nodes had no intra-camera cluster and pruned nothing")
        out_extra: dict[str, Any] = {
            "global_labels": global_labels,
            "info_nodes": nodes.astype(np.int64),
            "discard_mask": res.mask,
            "discarded_by": res.discarded_by,
            "centrality": links.score.astype(np.float32),
            "intra_labels": intra.astype(np.int32),
        }
        if infomap_labels is not None:
            out_extra["infomap_labels"] = infomap_labels.astype(np.int32)
        summary = {
            "global_clusters": int(len(set(global_labels.tolist()) - {-1})),
            "info_nodes": int(len(nodes)), "info_node_mode": opts.info_nodes, "discarded": discarded,
            "p": p, "decay": opts.decay, "epoch": opts.epoch, "epochs": opts.epochs, "seed": seed,
            "intra": source, "intra_unclustered_cameras": len(unclustered),
            "notes": notes,
        }
        resolved = {**dataclasses.asdict(opts), "p": p, "seed": seed, "infomap_seed": INFOMAP_SEED,
                    "knn_k_used": int(idx.shape[1])}
        del resolved["intra"]  # the file by its content (below), not by where it lies; its path is in attrs
        if opts.intra is not None:
            resolved["intra_digest"] = digest
        return Refined(res.labels, extra=out_extra, summary=summary, options=resolved,
                       attrs={"intra_source": source, "discard_p": p})
