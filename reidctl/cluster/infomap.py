"""InfoMap clustering of a cosine kNN graph: Cluster Contrast's InfoMap variant (ALGORITHMS.md §3.9).

Why a second clustering: DBSCAN on the k-reciprocal Jaccard distance needs a radius tuned per
dataset, and Cluster Contrast's authors recommend the InfoMap variant for custom data. What the
official code (``clustercontrast/utils/infomap_cluster.py``, run by
``examples/cluster_contrast_train_usl_infomap.py``: k1 15, k2 4, eps 0.5) does, and what is
done here:

1. kNN by inner product of the L2-normalised features, k = k1 with the image itself among
   them; distance d = 1 − cos, neighbours by ascending d. Here: the exact search of
   :func:`reidctl.search.knn` (squared L2 = 2 − 2·cos, ties by ascending index) instead of
   faiss, converted with d = dist / 2.
2. Links: for image i, its neighbours j in ascending d, skipping i itself (wherever it stands:
   duplicates can come first), while d ≤ 1 − eps; the first farther neighbour ends the walk.
   Each accepted j is a directed link i → j weighted cos = 1 − d.
3. Infomap, two-level and directed, on those links (added in the order the official code adds
   them: by i, then by ascending d). Its seed is Infomap's own default, 123, which the official
   code ran with (it passes none): labels are deterministic, and equal run to run.
4. Every image in the network takes its leaf node's module. The official code walks the whole
   tree (``iterTree``), which also yields the root and one node per module, and drops them by
   position: the first two entries of module 0 (root + module node), the first of every other
   module. In a two-level tree that leaves exactly the leaf nodes, which is what is read here
   (Infomap's ``modules()``: leaf → module); slicing by position would put image 0 (the
   physical id the inner nodes carry) into a wrong cluster on any other tree shape.
5. Images without an outgoing link ("single") get a cluster of their own. The official code
   finds them by their empty link list and asserts that none of them is a link target (its
   node count check); with exact distances that holds — an image that is a neighbour within
   1 − eps of someone has its own nearest neighbour at least that close — but when rounding
   breaks the tie the official code stops on its assertion. Here an image is single when it
   is in no link at all, and an image that only receives links keeps its Infomap module.
6. Clusters of at most k2 images (``cluster_num``: ``len(members) <= cluster_num``) become −1,
   singles included. The kept clusters are numbered 0.. in the order of their first row
   (smallest index), as reidctl's DBSCAN numbers by smallest core sample; the official code
   numbers them in the iteration order of a Python ``set`` of module ids, which carries no
   meaning. Only the numbering differs: the partition is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
import scipy.sparse as sp

from reidctl import search
from reidctl.errors import ReidctlError

#: Infomap's own default seed, which the official code ran with (it passes none).
INFOMAP_SEED = 123


@dataclass(frozen=True)
class Links:
    """Directed links i → j of the kNN graph, in the order the official code adds them."""

    src: np.ndarray  # E int64
    dst: np.ndarray  # E int64
    weight: np.ndarray  # E float64: cos(i, j) = 1 − d


def require_infomap(needed_by: str = "--algo infomap") -> ModuleType:
    """The ``infomap`` module, or the one-line user error that says which option needs it and
    how to install it. Called when the options are resolved, so a missing package fails before
    any kNN search."""
    try:
        import infomap  # noqa: PLC0415 (optional: only the InfoMap options need it)
    except ImportError:
        raise ReidctlError(f"{needed_by} needs the infomap package: pip install 'reidctl[infomap]'") from None
    return infomap


def own_swig_types(infomap: ModuleType) -> int:
    """Make ``infomap``'s own Python classes wrap the C++ objects it returns; returns how many
    classes were registered (0 where the package is not a SWIG build).

    Why: SWIG extension modules built with the same SWIG runtime share one type table in the
    process, and the module registered last owns the Python class of each C++ type they share.
    faiss and infomap share two: ``swig::SwigPyIterator`` and ``std::vector<double>``. Once
    faiss is imported after infomap, the vectors of an Infomap result iterate through faiss's
    iterator class, whose ``__next__`` steps an infomap iterator as a faiss one: a segmentation
    fault (issue 27, defect 5: ``--algo infomap --knn-backend faiss-*``, exit code 139).
    Registering infomap's classes again right before it runs gives them back, whatever was
    imported since; faiss uses neither type in the calls reidctl makes, so it is not disturbed.
    """
    proxies = getattr(infomap, "_swig", infomap)  # infomap ≥ 2.13 keeps its SWIG classes in _swig
    extension = getattr(proxies, "_infomap", None)
    registered = 0
    for name, cls in vars(proxies).items():
        register = getattr(extension, f"{name}_swigregister", None)
        if isinstance(cls, type) and register is not None:
            register(cls)
            registered += 1
    return registered


def infomap_links(dist: np.ndarray, idx: np.ndarray, min_sim: float) -> Links:
    """The links of step 2 (module docstring) from kNN lists as :func:`reidctl.search.knn`
    returns them: ``dist`` squared L2 distances of unit vectors (2 − 2·cos), ascending per row,
    and ``idx`` their rows (N×k, the image itself among them). ``min_sim``: the cosine a link
    needs (the official ``eps``)."""
    dist = np.asarray(dist, np.float64)
    idx = np.asarray(idx, np.int64)
    if dist.ndim != 2 or dist.shape != idx.shape:
        raise ValueError(f"dist and idx must be N×k arrays of one shape, got {dist.shape} and {idx.shape}")
    d = dist / 2.0  # 1 − cos
    not_self = idx != np.arange(len(idx))[:, None]
    beyond = not_self & (d > 1.0 - min_sim)
    accept = not_self & (np.cumsum(beyond, axis=1) == 0)  # stop at the first farther neighbour
    rows, cols = np.nonzero(accept)  # row-major: by i, then by ascending distance
    return Links(src=rows.astype(np.int64), dst=idx[rows, cols], weight=1.0 - d[rows, cols])


def infomap_modules(n: int, links: Links, *, seed: int = INFOMAP_SEED,
                    needed_by: str = "--algo infomap") -> np.ndarray:
    """Two-level directed Infomap on ``links`` (anything with ``src``, ``dst`` and ``weight``
    arrays): each of the ``n`` rows' module id (Infomap's numbering), −1 for rows in no link (the
    official code's "single" images). Shared with icrefine's information nodes."""
    modules = np.full(n, -1, np.int64)
    infomap = require_infomap(needed_by)
    if len(links.src) == 0:
        return modules
    own_swig_types(infomap)  # faiss, imported later, must not wrap Infomap's results (see there)
    im = infomap.Infomap(two_level=True, directed=True, silent=True, seed=seed, num_trials=1)
    im.add_links(zip(links.src.tolist(), links.dst.tolist(), links.weight.tolist()))
    result = im.run()
    if result is not None and hasattr(result, "modules"):  # infomap ≥ 2.14: leaf node → module
        found = result.modules() if callable(result.modules) else result.modules
    else:  # older 2.x: results live on the Infomap object
        found = im.get_modules()
    nodes = np.fromiter(found.keys(), np.int64, len(found))
    modules[nodes] = np.fromiter(found.values(), np.int64, len(found))
    return modules


def drop_small(modules: np.ndarray, min_size: int) -> np.ndarray:
    """Labels from module ids (−1 = single: a cluster of its own): clusters of at most
    ``min_size`` rows become −1, the others are numbered 0.. by their smallest row."""
    modules = np.asarray(modules, np.int64)
    n = len(modules)
    ids = modules.copy()
    single = np.flatnonzero(ids < 0)
    ids[single] = ids.max(initial=-1) + 1 + np.arange(len(single))
    labels = np.full(n, -1, np.int64)
    if n == 0:
        return labels
    _, first, inverse, counts = np.unique(ids, return_index=True, return_inverse=True, return_counts=True)
    kept = np.flatnonzero(counts > min_size)
    order = kept[np.argsort(first[kept])]  # kept clusters by their smallest row
    new = np.full(len(counts), -1, np.int64)
    new[order] = np.arange(len(order))
    labels[:] = new[inverse.ravel()]
    return labels


def infomap_labels(dist: np.ndarray, idx: np.ndarray, *, min_sim: float = 0.5, min_size: int = 4,
                   seed: int = INFOMAP_SEED) -> np.ndarray:
    """Cluster labels (int64, −1 = outlier) from kNN lists (as :func:`infomap_links` takes them)."""
    links = infomap_links(dist, idx, min_sim)
    return drop_small(infomap_modules(len(idx), links, seed=seed), min_size)


def infomap_cluster(feats: np.ndarray, k1: int = 15, eps: float = 0.5, k2: int = 4, seed: int = INFOMAP_SEED,
                    *, knn: tuple[np.ndarray, np.ndarray] | None = None, backend: str = "auto",
                    device: str = "auto") -> np.ndarray:
    """Cluster L2-normalised features as the official InfoMap variant does (module docstring):
    labels int64, −1 = outlier, clusters numbered by their smallest row.

    ``k1``: neighbours searched per image (itself included); ``eps``: the cosine a link needs;
    ``k2``: clusters of at most k2 images become outliers; ``knn``: precomputed ``(dist, idx)``
    of :func:`reidctl.search.knn` with at least k1 columns (the first k1 are used)."""
    if knn is None:
        dist, idx = search.knn(feats, k1, backend=backend, device=device)
    else:
        dist, idx = (np.asarray(a)[:, :k1] for a in knn)
    return infomap_labels(dist, idx, min_sim=eps, min_size=k2, seed=seed)


def link_distances(n: int, links: Links) -> sp.csr_matrix:
    """The graph InfoMap clustered as a sparse distance matrix in reidctl's convention (stored
    entries are distances, missing ones count as 1): 1 − cos on each link i → j (row i), and an
    explicit 0 on the diagonal, as the Jaccard matrix has. Rows hold only the links: pairs
    closer than the cut but beyond the k1 searched neighbours are missing."""
    rows = np.concatenate([links.src, np.arange(n, dtype=np.int64)])
    cols = np.concatenate([links.dst, np.arange(n, dtype=np.int64)])
    data = np.concatenate([1.0 - links.weight, np.zeros(n)]).astype(np.float32)
    m = sp.csr_matrix((data, (rows, cols)), shape=(n, n))
    m.sort_indices()
    return m
