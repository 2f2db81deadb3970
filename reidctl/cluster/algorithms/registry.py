"""The registry of clustering algorithms: ``--algo`` name → :class:`~.base.ClusterAlgorithm`.

Filled by :mod:`reidctl.cluster.algorithms` (one line per algorithm there); a module of its own
that imports none of the algorithms, so that anything may read it without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reidctl.errors import ReidctlError

if TYPE_CHECKING:
    from reidctl.cluster.algorithms.base import ClusterAlgorithm

ALGORITHMS: dict[str, ClusterAlgorithm] = {}


def get_algorithm(name: str) -> ClusterAlgorithm:
    """The algorithm registered as ``name`` (a one-line user error naming the choices otherwise)."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        names = list(ALGORITHMS)
        choices = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else ", ".join(names)
        raise ReidctlError(f"--algo {name}: choose {choices}") from None


def distance_names() -> set[str]:
    """The names under which the registered algorithms store the distance they clustered on."""
    return {algorithm.distance_name for algorithm in ALGORITHMS.values()}


def clustered_distance(extra: dict) -> tuple[str, object] | None:
    """``(name, matrix)`` of the distance a labels file's arrays (``extra``) were clustered on,
    whatever the algorithm; None when they hold none (labels made by hand)."""
    for name in distance_names():
        if name in extra:
            return name, extra[name]
    return None
