"""What one training epoch hands a method: the clustered rows (:class:`EpochData`), the batches
(:class:`Batch`) and what a method builds its stream of steps from (:class:`StreamContext`).

Kept apart from the method contract (:mod:`reidctl.train.contract`) so that the data streams
(:mod:`reidctl.train.streams`), which the contract's default stream uses, can build these types
without importing the contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from reidctl.data.base import Sample
from reidctl.data.stats import IMAGENET, Norm


@dataclass
class EpochData:
    """What a method sees of the epoch: the clustered rows only (outliers are left out).

    ``labels`` are remapped to 0..K-1 (K = ``num_clusters``) in the order of the original label
    values; ``rows`` are the positions of these samples in the full train split, to index
    per-row matrices of the labels file (``extra``, e.g. per-row scores a refine step stored). There are no
    ground-truth identities here on purpose.
    """

    labels: np.ndarray  # n int64, 0..K-1
    camids: np.ndarray  # n int64, -1 unknown
    features: np.ndarray  # n×D float32, L2-normalised (for centroids)
    parts: np.ndarray | None  # n×P×D float32 or None
    rows: np.ndarray  # n int64, positions in the train split
    num_clusters: int
    extra: Mapping[str, Any] = field(default_factory=dict)  # the labels file's other arrays (full rows)
    # Set by the trainer:
    epoch: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0  # for a method's own randomness this epoch (the same on every rank)


@dataclass
class Batch:
    """One (per-rank) training batch on the training device."""

    images: torch.Tensor  # B×3×H×W
    labels: torch.Tensor  # B int64, 0..K-1
    camids: torch.Tensor  # B int64
    index: torch.Tensor  # B int64: positions in EpochData (not in the train split)


@dataclass
class StreamContext:
    """What ``TrainingMethod.train_stream`` may build an epoch's stream from.

    Under DDP every rank gets the same context except ``rank``; ``generator`` is the session's
    training generator, in the same state on every rank, so drawing from it keeps the ranks in
    step and makes the epoch a function of the checkpoint it starts from.
    """

    samples: Sequence[Sample]  # the clustered train images: samples[i] is data.labels[i]
    data: EpochData  # epoch, device and seed already set
    generator: np.random.Generator
    device: torch.device
    rank: int
    world: int
    workers: int  # DataLoader workers (resolved: a number)
    height: int  # the model's input size
    width: int
    batch_size: int  # the global batch (params.batch_size)
    per_rank: int  # this rank's part of it
    length: int  # steps this epoch (``epoch_length(data)``)
    norm: Norm = IMAGENET  # the input normalisation of ``samples`` (reidctl.data.stats.input_norm)
    #: The model's normalisation for images of another dataset, given that dataset's train split
    #: (a labelled source: ImageNet's, or the source's own statistics with --input-norm dataset).
    norm_of: Callable[[Sequence[Sample]], Norm] = lambda train: IMAGENET
