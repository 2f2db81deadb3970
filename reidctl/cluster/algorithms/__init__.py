"""Clustering algorithms, each registered under its ``--algo`` name: a new one is a module here
(a :class:`~reidctl.cluster.algorithms.base.ClusterAlgorithm`) plus one line below. The CLI's
choices and help, the defaults of the shared options and the stored distance's name come from
the registered objects."""

from reidctl.cluster.algorithms.agglomerative import AverageLinkage
from reidctl.cluster.algorithms.base import ClusterAlgorithm, Clustered
from reidctl.cluster.algorithms.dbscan import DBSCAN
from reidctl.cluster.algorithms.infomap import InfoMap
from reidctl.cluster.algorithms.registry import (
    ALGORITHMS,
    clustered_distance,
    distance_names,
    get_algorithm,
)

ALGORITHMS.update({
    "dbscan": DBSCAN(),
    "agglomerative": AverageLinkage(),
    "infomap": InfoMap(),
})

__all__ = ["ALGORITHMS", "ClusterAlgorithm", "Clustered", "clustered_distance", "distance_names", "get_algorithm"]
