"""Clustering of features into pseudo identities: sparse Jaccard distance, DBSCAN,
average-linkage agglomerative clustering, and label-quality reports."""

from reidctl.cluster.agglomerative import agglomerative
from reidctl.cluster.dbscan import dbscan
from reidctl.cluster.jaccard import jaccard_distance
from reidctl.cluster.quality import label_quality

__all__ = ["agglomerative", "dbscan", "jaccard_distance", "label_quality"]
