"""Mixtures of sparse Jaccard distances over several feature branches (NCPLR, ALGORITHMS.md §7.2).

GL-NCPLR clusters on ``D = 0.6·J_global + 0.2·J_up + 0.2·J_down``. The reference code adds three
dense N×N matrices; here each J_b stays in the sparse form :func:`jaccard_distance` returns and
the mixture is formed in O(nnz) memory, in the same form, so DBSCAN and agglomerative clustering
consume it unchanged.

The sparse convention of :func:`reidctl.cluster.jaccard.jaccard_distance` (what a mixture must
respect): an N×N float32 CSR matrix whose **unstored entries are 1.0**; every entry below 1 is
stored, none equal to 1; the diagonal is always stored as an explicit 0; off-diagonal zeros
(identical neighbourhoods) are stored explicitly; column indices are sorted within each row
and never repeated. Explicit zeros carry meaning (distance 0, not 1), which is why the mixture
is assembled from index arrays here: scipy's arithmetic (``+``, ``*``, ``eliminate_zeros``)
drops stored zeros and would turn them into 1s.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from reidctl.errors import ReidctlError

#: How far the branch weights may sum from 1 (they are typed by hand, e.g. 0.6/0.2/0.2).
WEIGHT_TOLERANCE = 1e-6

_NAME = re.compile(r"global|part(0|[1-9][0-9]*)")


def mix_jaccard(matrices: Sequence[sp.spmatrix | sp.sparray], weights: Sequence[float]) -> sp.csr_matrix:
    """``Σ_b w_b·J_b`` of sparse Jaccard matrices, as a float32 CSR matrix in their convention.

    An entry stored in some branches and not in others takes 1.0 from the others (their
    implicit value), so the result's pattern is the union of the inputs' patterns; its
    implicit value is ``Σ w_b`` (1 within :data:`WEIGHT_TOLERANCE`). Entries whose mixed value
    equals the implicit value are left unstored, as ``jaccard_distance`` leaves out its 1s;
    every other entry, explicit zeros and the diagonal included, is stored. Each entry is summed
    in float64 in branch order, ``Σ_b w_b·x_b``, then rounded to float32, so a dense mixture
    computed the same way matches it bit for bit. Cost O(total nnz) memory and one merge of
    the (already sorted) patterns.
    """
    w = check_weights(weights)
    if len(matrices) != len(w):
        raise ReidctlError(f"{len(matrices)} Jaccard matrices but {len(w)} weights")
    n = _common_size(matrices)
    entries = [_entries(m, n) for m in matrices]
    union, slots = _union([keys for keys, _ in entries])
    mixed = _weighted_sum(w, [vals for _, vals in entries], slots, len(union))
    keep = mixed != np.float32(math.fsum(w))
    return _csr(union[keep], mixed[keep], n)


def check_weights(weights: Sequence[float]) -> list[float]:
    """The weights as floats; refuses non-positive ones and sums away from 1.

    Why: the mixture's unstored entries are Σw, and DBSCAN / agglomerative clustering read them
    as 1; a sum away from 1 would silently change every distance outside the neighbourhoods.
    """
    w = [float(x) for x in weights]
    if not w:
        raise ReidctlError("a Jaccard mixture needs at least one branch")
    if not all(math.isfinite(x) and x > 0 for x in w):
        raise ReidctlError(f"branch weights must be positive numbers, got {w}")
    total = math.fsum(w)
    if abs(total - 1) > WEIGHT_TOLERANCE:
        raise ReidctlError(f"branch weights must sum to 1, got {w} (sum {total:.6g})")
    return w


def _common_size(matrices: Sequence[sp.spmatrix | sp.sparray]) -> int:
    """N of the N×N CSR inputs; refuses other formats (a conversion could merge or drop entries)."""
    if not matrices:
        raise ReidctlError("a Jaccard mixture needs at least one matrix")
    shapes = {m.shape for m in matrices}
    if len(shapes) != 1:
        raise ReidctlError(f"Jaccard matrices of different shapes cannot be mixed: {sorted(shapes)}")
    (shape,) = shapes
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ReidctlError(f"Jaccard matrices must be square, got shape {shape}")
    for m in matrices:
        if not sp.issparse(m) or m.format != "csr":
            raise ReidctlError(f"Jaccard matrices must be sparse CSR, got {type(m).__name__}")
    return int(shape[0])


def _entries(m: sp.spmatrix | sp.sparray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Stored entries as (ascending keys row·N + column, float32 values), explicit zeros kept.

    Read straight from indptr/indices/data: no scipy conversion, so nothing is dropped or merged.
    """
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(m.indptr))
    keys = rows * n + m.indices.astype(np.int64)
    vals = np.asarray(m.data, dtype=np.float32)
    if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():  # columns unsorted (or repeated)
        order = np.argsort(keys, kind="stable")
        keys, vals = keys[order], vals[order]
        if (keys[1:] == keys[:-1]).any():
            raise ReidctlError("a Jaccard matrix stores the same entry twice; it is not in canonical form")
    return keys, vals


def _union(keys: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted union of the branches' keys, and where each branch's keys sit in it.

    The concatenation is a few sorted runs; numpy's stable sort (timsort for int64) merges them
    in about O(nnz·log B) rather than a full O(nnz·log nnz) sort.
    """
    flat = np.concatenate(keys)
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    first = np.ones(len(ordered), bool)
    first[1:] = ordered[1:] != ordered[:-1]
    position = np.empty(len(flat), np.int64)
    position[order] = np.cumsum(first) - 1
    bounds = np.cumsum([len(k) for k in keys])[:-1]
    return ordered[first], np.split(position, bounds)


def _weighted_sum(
    weights: list[float], values: list[np.ndarray], slots: list[np.ndarray], size: int
) -> np.ndarray:
    """float32 of Σ_b w_b·x_b over the union, x_b = the branch's value or its implicit 1.0."""
    acc = np.zeros(size, np.float64)
    x = np.empty(size, np.float64)
    for w, vals, slot in zip(weights, values, slots):
        x.fill(1.0)
        x[slot] = vals
        acc += w * x
    return acc.astype(np.float32)


def _csr(keys: np.ndarray, values: np.ndarray, n: int) -> sp.csr_matrix:
    """CSR matrix from ascending keys, built from its arrays so that stored zeros stay stored."""
    rows, cols = np.divmod(keys, n)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    index_type = np.int32 if max(len(keys), n) < np.iinfo(np.int32).max else np.int64
    return sp.csr_matrix(
        (values, cols.astype(index_type), indptr.astype(index_type)), shape=(n, n)
    )


def parse_branches(spec: str) -> list[tuple[str, float]]:
    """Branch names and weights of ``--branches``: ``global`` or e.g. ``global=0.6,part0=0.2,part1=0.2``.

    Names are ``global`` (the features' N×D matrix) and ``partI`` (index I of the parts axis).
    A single branch may omit its weight (it is 1); several branches each need one, summing to 1.
    """
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or not all(items):
        raise ReidctlError(f"--branches {spec!r}: give global, or name=weight pairs separated by commas")
    pairs = [_branch_item(item, spec, single=len(items) == 1) for item in items]
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ReidctlError(f"--branches {spec!r}: {', '.join(repeated)} given more than once")
    try:
        check_weights([w for _, w in pairs])
    except ReidctlError as exc:
        raise ReidctlError(f"--branches {spec!r}: {exc}") from None
    return pairs


def _branch_item(item: str, spec: str, *, single: bool) -> tuple[str, float]:
    """One ``name`` or ``name=weight`` of a ``--branches`` value."""
    name, sep, weight = (part.strip() for part in item.partition("="))
    if not _NAME.fullmatch(name):
        raise ReidctlError(f"--branches {spec!r}: unknown branch {name!r} (global, part0, part1, ...)")
    if not sep:
        if single:
            return name, 1.0
        raise ReidctlError(f"--branches {spec!r}: give every branch a weight, e.g. {name}=0.2")
    try:
        return name, float(weight)
    except ValueError:
        raise ReidctlError(f"--branches {spec!r}: weight {weight!r} of {name} is not a number") from None


def branch_features(name: str, feats: np.ndarray, parts: np.ndarray | None) -> np.ndarray:
    """The N×D features of one branch, contiguous float32 (the layout the kNN search reads).

    ``global`` is ``feats``; ``partI`` is ``parts[:, I]`` of the N×P×D part features, an error
    naming the branch when the file holds fewer parts (e.g. a CC model's features have none).
    """
    if name == "global":
        return np.ascontiguousarray(feats, dtype=np.float32)
    match = _NAME.fullmatch(name)
    if not match or match.group(1) is None:
        raise ReidctlError(f"--branches {name}: unknown branch (global, part0, part1, ...)")
    count = 0 if parts is None else parts.shape[1]
    index = int(match.group(1))
    if index >= count:
        raise ReidctlError(f"--branches {name}: the features have {count} parts")
    return np.ascontiguousarray(parts[:, index], dtype=np.float32)
