"""The registry of clustering algorithms: ``--algo`` name → :class:`~.base.ClusterAlgorithm`,
filled by :mod:`reidctl.cluster.algorithms` (one line per algorithm there; see
:mod:`reidctl.registry`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reidctl.errors import ReidctlError
from reidctl.registry import Registry, one_of

if TYPE_CHECKING:
    from reidctl.cluster.algorithms.base import ClusterAlgorithm

ALGORITHMS: Registry[ClusterAlgorithm] = Registry(
    lambda name, names: ReidctlError(f"--algo {name}: choose {one_of(names)}"))


def get_algorithm(name: str) -> ClusterAlgorithm:
    """The algorithm registered as ``name`` (a one-line user error naming the choices otherwise)."""
    return ALGORITHMS.find(name)


def distance_names() -> set[str]:
    """The names under which the registered algorithms store the distance they clustered on."""
    return {algorithm.distance_name for algorithm in ALGORITHMS.values()}


def clustered_distance(extra: dict[str, Any]) -> tuple[str, Any] | None:
    """``(name, matrix)`` of the distance a labels file's arrays (``extra``) were clustered on,
    whatever the algorithm; None when they hold none (labels made by hand)."""
    for name in distance_names():
        if name in extra:
            return name, extra[name]
    return None
