"""The trainer's contract: what a method implements so that the one-epoch trainer can train it.

This module imports nothing from ``reidctl.methods``: the trainer knows methods only through
:class:`TrainingMethod`. A method (``reidctl.methods.<name>``) subclasses it (through
:class:`reidctl.methods.base.Method`, which adds the stages a method owns) and overrides

* ``Params``: a dataclass of its training defaults *as the official command runs them* (the one
  place where they live), extending :class:`TrainParams` (the options every method shares);
* ``make_state(data, heads)``: the per-epoch state built from the epoch's pseudo labels and
  features (CC: the cluster memory); called before the first iteration;
* ``loss(batch, outputs, state)``: the differentiable loss of one batch and named values to log
  (0-d tensors or floats, averaged over the epoch; tensors avoid a device sync per step);
* ``after_backward(batch, outputs, state)``: explicit non-differentiable updates that need the
  batch (CC: the memory update), run after ``loss.backward()`` and before the optimiser step;
* optionally ``build_heads(model)``: extra trainable modules (classifiers ...) whose
  ``forward(outputs)`` returns more outputs (logits); they are optimised with the model,
  synchronised by DDP and saved in the checkpoint, and ``state_dict()`` / ``load_state_dict()``
  for small state that persists across epochs.

The trainer owns everything else: devices, AMP, DDP, BN chunks, checkpoints and logging.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn as nn

from reidctl.errors import ReidctlError
from reidctl.models.reid import ReidModel


@dataclass
class TrainParams:
    """Options of the one-epoch trainer that every method has (CC's official values)."""

    iters: int = 200
    batch_size: int = 256
    num_instances: int = 16
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    gamma: float = 0.1
    #: BN statistics on this many contiguous chunks of the global batch: 4 emulates the
    #: official 4-GPU DataParallel runs (ALGORITHMS.md §3.8); 1 = plain BatchNorm.
    bn_chunks: int = 4

    def check(self) -> None:
        """Raise a user error for values that cannot work."""
        for name in ("iters", "batch_size", "num_instances", "step_size", "bn_chunks"):
            if getattr(self, name) < 1:
                raise ReidctlError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.gamma <= 0:
            raise ReidctlError("--lr and --gamma must be positive, --weight-decay not negative")
        if self.batch_size % self.num_instances:
            raise ReidctlError(f"--batch-size {self.batch_size} is not a multiple of --num-instances "
                               f"{self.num_instances}: a batch holds whole groups of that many images per identity")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


class TrainingMethod:
    """Base class of a trainable method: override ``make_state`` and ``loss`` at least."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[TrainParams]] = TrainParams
    #: Whether ``loss`` uses the part features (DDP must know about unused parameters).
    uses_parts: ClassVar[bool] = False
    #: Names of the labels file's extra arrays the method reads (into ``EpochData.extra``);
    #: only these are loaded, since others (e.g. a sparse Jaccard matrix) can be large.
    label_arrays: ClassVar[tuple[str, ...]] = ()


    def __init__(self, params: TrainParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def resolve_params(cls, base: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
                       ) -> TrainParams:
        """The method's defaults, then ``base`` (e.g. a checkpoint's values), then ``overrides``.

        Unknown names in ``overrides`` are a user error (an option of another method); unknown
        names in ``base`` are ignored (a checkpoint of another method).
        """
        names = {f.name for f in dataclasses.fields(cls.Params)}
        values = {k: v for k, v in (base or {}).items() if k in names}
        bad = sorted(set(overrides or {}) - names)
        if bad:
            opts = ", ".join("--" + b.replace("_", "-") for b in bad)
            raise ReidctlError(f"{opts} does not apply to --method {cls.name}")
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        params = cls.Params(**values)
        params.check()
        return params

    def build_heads(self, model: ReidModel) -> nn.Module | None:
        """Extra trainable modules (classifiers ...) optimised and saved with the model."""
        return None

    def make_state(self, data: EpochData, heads: nn.Module | None) -> Any:
        raise NotImplementedError

    def loss(self, batch: Batch, outputs: dict[str, torch.Tensor], state: Any
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        raise NotImplementedError

    def after_backward(self, batch: Batch, outputs: dict[str, torch.Tensor], state: Any) -> None:
        """Non-differentiable per-batch updates (memory momentum ...); default: none."""

    def epoch_summary(self, state: Any) -> dict[str, Any]:
        """Extra numbers for the epoch's stats."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State kept from one epoch to the next (saved in the checkpoint)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass
