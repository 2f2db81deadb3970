"""Identity-balanced batches (ALGORITHMS.md §3.6) and an epoch of exactly ``iters`` batches.

:class:`IdentityBatchSampler` reproduces the semantics of the official
``RandomMultipleGallerySampler`` + ``BatchSampler(drop_last=True)`` but draws every random number
from one explicit ``numpy.random.Generator``: the batches are a function of the generator's
state, so an epoch is reproducible and a run resumes exactly from a saved state.

It also draws one seed per sampled image, handed to the dataset with the index, so that the
augmentation of an image does not depend on DataLoader workers or DDP ranks (see
``reidctl.data.transforms.TrainTransform``). Under DDP every rank holds the same generator state,
builds the same global batches and keeps its contiguous part of each, so the global batch equals
the single-process one.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np
from torch.utils.data import Sampler

from reidctl.errors import ReidctlError

SEED_BOUND = 2**63 - 1
T = TypeVar("T")


def identity_groups(labels: Sequence[int]) -> list[np.ndarray]:
    """Row indices of each identity, identities in order of first appearance, outliers (<0) left out."""
    labels = np.asarray(labels)
    groups: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        if y >= 0:
            groups.setdefault(y, []).append(i)
    return [np.asarray(v, dtype=np.int64) for v in groups.values()]


#: Where the identity sampler puts an identity's anchor: ``first`` (Cluster Contrast's sampler)
#: or ``last``, after its companions (NCPLR's modified sampler, which also drops single-image
#: identities).
ANCHORS = ("first", "last")


def identity_balanced_order(
    labels: Sequence[int], camids: Sequence[int], num_instances: int, rng: np.random.Generator,
    anchor: str = "first",
) -> list[int]:
    """One pass over the identities (``RandomMultipleGallerySampler.__iter__`` semantics).

    For each identity in a random permutation: a random anchor, then ``num_instances - 1``
    companions drawn from the identity's images in *other* cameras (without replacement when at
    least ``num_instances`` are available, else with replacement); when none is in another camera,
    from its other images under the same rule. Unknown cameras (-1) compare equal, i.e. count as
    one camera. ``anchor="first"`` (CC): the anchor precedes its companions and a single-image
    identity contributes its anchor alone. ``anchor="last"`` (NCPLR's sampler, ALGORITHMS.md
    §7.8): the anchor follows its companions and a single-image identity contributes nothing.
    The random draws are the same in both orders.
    """
    if anchor not in ANCHORS:
        raise ReidctlError(f"--sampler-anchor {anchor}: choose first or last")
    if num_instances < 1:
        raise ReidctlError("--num-instances must be at least 1")
    camids = np.asarray(camids)
    groups = identity_groups(labels)
    order: list[int] = []
    for g in rng.permutation(len(groups)).tolist():
        members = groups[g]
        anchor_pos = int(rng.integers(len(members)))
        first = int(members[anchor_pos])
        order.extend(_with_anchor(first, _companions(members, anchor_pos, camids, num_instances, rng), anchor))
    return order


def _companions(members: np.ndarray, anchor_pos: int, camids: np.ndarray, num_instances: int,
                rng: np.random.Generator) -> list[int] | None:
    """The anchor's ``num_instances - 1`` companions (other cameras first); None for a
    single-image identity, [] when ``num_instances`` is 1."""
    if len(members) == 1:
        return None
    if num_instances == 1:
        return []
    pool = np.flatnonzero(camids[members] != camids[members[anchor_pos]])
    if len(pool) == 0:
        pool = np.delete(np.arange(len(members)), anchor_pos)
    picks = rng.choice(pool, size=num_instances - 1, replace=len(pool) < num_instances)
    return members[picks].tolist()


def _with_anchor(anchor_row: int, companions: list[int] | None, anchor: str) -> list[int]:
    if anchor == "first":
        return [anchor_row, *(companions or [])]
    return [] if companions is None else [*companions, anchor_row]


def pass_length(labels: Sequence[int], num_instances: int, anchor: str = "first") -> int:
    """Images one pass yields: ``num_instances`` per identity; a single-image identity yields
    its anchor (``anchor="first"``) or nothing (``"last"``)."""
    single = 1 if anchor == "first" else 0
    return sum(single if len(g) == 1 else num_instances for g in identity_groups(labels))


class IdentityBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(row index, augmentation seed)``: contiguous blocks of identity-balanced passes.

    ``batch_size`` is the global batch; with ``world_size`` ranks each rank yields its contiguous
    ``batch_size / world_size`` slice of every global batch. Incomplete last blocks are dropped
    (``drop_last=True``). Each ``iter()`` is a new pass that advances ``rng``.
    """

    def __init__(
        self,
        labels: Sequence[int],
        camids: Sequence[int],
        *,
        batch_size: int,
        num_instances: int,
        rng: np.random.Generator,
        rank: int = 0,
        world_size: int = 1,
        anchor: str = "first",
    ) -> None:
        if batch_size < 1:
            raise ReidctlError("--batch-size must be at least 1")
        if batch_size % world_size:
            raise ReidctlError(
                f"--batch-size {batch_size} is not divisible by the {world_size} processes: every rank "
                "must take an equal part of each batch"
            )
        self.labels = np.asarray(labels)
        self.camids = np.asarray(camids)
        if self.labels.shape != self.camids.shape:
            raise ValueError("labels and camids must have one entry per row")
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.rng = rng
        self.rank = rank
        self.world_size = world_size
        self.per_rank = batch_size // world_size
        self.anchor = anchor
        self.batches_per_pass = pass_length(self.labels, num_instances, anchor) // batch_size

    def __len__(self) -> int:
        return self.batches_per_pass

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = identity_balanced_order(self.labels, self.camids, self.num_instances, self.rng, self.anchor)
        seeds = self.rng.integers(0, SEED_BOUND, size=len(order)).tolist()
        lo = self.rank * self.per_rank
        for b in range(len(order) // self.batch_size):
            start = b * self.batch_size + lo
            yield list(zip(order[start:start + self.per_rank], seeds[start:start + self.per_rank]))


class IterLoader(Iterable[T]):
    """Exactly ``iters`` batches from ``loader``, starting it again whenever it is exhausted.

    This is how the CC family defines an epoch (``IterLoader(length=iters)``): the pass over the
    pseudo identities and the epoch are decoupled.
    """

    def __init__(self, loader: Iterable[T], iters: int) -> None:
        if iters < 1:
            raise ReidctlError("--iters must be at least 1")
        self.loader = loader
        self.iters = iters

    def __len__(self) -> int:
        return self.iters

    def __iter__(self) -> Iterator[T]:
        it = iter(self.loader)
        for _ in range(self.iters):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(self.loader)
                try:
                    batch = next(it)
                except StopIteration:
                    raise ReidctlError("the training loader yields no complete batch") from None
            yield batch
