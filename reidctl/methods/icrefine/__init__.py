"""icrefine: intra-camera similarity refines global pseudo labels (ALGORITHMS.md §5).

Stage 1 (:mod:`.stage1`, ``reidctl intra-camera``) clusters each camera on its own; stage 2
(:mod:`.method`, ``reidctl refine --method icrefine``) prunes the global clusters with them.
:mod:`.prelude` declares stage 1 as the prelude ``loop`` runs once before epoch 0.
"""

from reidctl.methods.icrefine.decay import DECAYS, discard_probability
from reidctl.methods.icrefine.discard import Discarded, discard
from reidctl.methods.icrefine.info_nodes import (
    MODES, Links, infomap_clusters, score_links, select_information_nodes,
)
from reidctl.methods.icrefine.intra import cluster_per_camera, read_intra_labels
from reidctl.methods.icrefine.method import Icrefine, IcrefineOptions, IcrefineParams

__all__ = ["DECAYS", "MODES", "Discarded", "Icrefine", "IcrefineOptions", "IcrefineParams", "Links",
           "cluster_per_camera", "discard", "discard_probability", "infomap_clusters", "read_intra_labels",
           "score_links", "select_information_nodes"]
