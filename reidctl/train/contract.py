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

A method that trains differently from the CC family overrides the hooks whose defaults are
exactly the CC family's loop (in the spirit of fast-reid's ``build_optimizer`` /
``build_lr_scheduler`` / ``build_train_loader`` and Lightning's ``configure_optimizers``):

* ``configure_optimizer(model, heads)``: the optimiser and its parameter groups (default: Adam);
* ``configure_scheduler(optimizer, epoch, step)`` and ``scheduler_interval``: the lr schedule and
  whether it steps once per epoch or after every iteration (default: StepLR, per epoch);
* ``epoch_length(data)`` and ``train_stream(ctx)``: what one epoch is and the inputs of its steps
  (default: ``params.iters`` identity-balanced batches, :mod:`reidctl.train.streams`);
* ``training_step(inputs, forward, state)``: the forward pass(es) and the loss (default: one
  forward, then ``loss``);
* ``persistent_arrays()`` / ``load_persistent_arrays(arrays)``: large state that persists across
  epochs, saved in a file of its own beside the checkpoint (default: none).

The trainer owns everything else: devices, AMP, DDP, BN chunks, checkpoints and logging.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, NamedTuple

import numpy as np
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LRScheduler, StepLR

from reidctl.data.samplers import ANCHORS
from reidctl.errors import ReidctlError
from reidctl.models.reid import ReidModel
from reidctl.options import option, resolve, resolve_names
from reidctl.train.bn_chunks import check_bn_chunks
from reidctl.train.epoch import Batch, EpochData, StreamContext
from reidctl.train.joint import SourceParams
from reidctl.train.streams import identity_stream

#: ``TrainingMethod.scheduler_interval`` values: step after the epoch, or after every iteration.
SCHEDULER_INTERVALS = ("epoch", "iteration")


@dataclass
class TrainParams:
    """Options of the one-epoch trainer that every method has (CC's official values)."""

    iters: int = field(default=200, metadata=option("Iterations per epoch (MSMT17: cc 400)."))
    batch_size: int = field(default=256, metadata=option("Training batch = identities × --num-instances."))
    num_instances: int = field(default=16, metadata=option("Images per pseudo identity in a batch."))
    lr: float = field(default=3.5e-4, metadata=option("Learning rate."))
    weight_decay: float = field(default=5e-4, metadata=option("Weight decay."))
    step_size: int = field(default=20, metadata=option("StepLR period in epochs."))
    gamma: float = field(default=0.1, metadata=option("StepLR factor."))
    bn_chunks: int = field(default=4, metadata=option(
        "BatchNorm statistics per chunk of the global batch: 4 emulates the official 4-GPU DataParallel runs "
        "(ALGORITHMS.md §3.8); 1 = plain BatchNorm."))
    sampler_anchor: str = field(default="first", metadata=option(
        "Identity sampler: the anchor first, before its companions (CC's sampler), or last, after them, "
        "with single-image identities dropped (NCPLR's sampler)."))

    def check(self) -> None:
        """Raise a user error for values that cannot work."""
        for name in ("iters", "batch_size", "num_instances", "step_size", "bn_chunks"):
            if getattr(self, name) < 1:
                raise ReidctlError(f"--{name.replace('_', '-')} must be at least 1")
        if self.sampler_anchor not in ANCHORS:
            raise ReidctlError(f"--sampler-anchor {self.sampler_anchor}: choose first or last")
        if self.lr <= 0 or self.weight_decay < 0 or self.gamma <= 0:
            raise ReidctlError("--lr and --gamma must be positive, --weight-decay not negative")
        if self.batch_size % self.num_instances:
            raise ReidctlError(f"--batch-size {self.batch_size} is not a multiple of --num-instances "
                               f"{self.num_instances}: a batch holds whole groups of that many images per identity")
        check_bn_chunks(self.batch_size, self.bn_chunks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StepResult(NamedTuple):
    """What ``training_step`` returns: the loss to back-propagate, named values to log, and what
    ``after_backward`` receives as its ``outputs``."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor | float]
    outputs: Any


#: The trainer's forward: the (possibly DDP-wrapped) model + heads under the session's autocast.
#: Given a list of batches (one per domain) it returns a list of outputs, each batch normalised
#: by its own BatchNorm statistics, in one forward pass (DDP allows one per backward).
Forward = Callable[[Any], Any]


def trainable_parameters(*modules: nn.Module | None) -> list[nn.Parameter]:
    """Every parameter that requires a gradient (GeM ``p`` included, the frozen BN bias not)."""
    return [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]


def positioned(scheduler: LRScheduler, steps: int) -> LRScheduler:
    """``scheduler`` stepped ``steps`` times: a schedule rebuilt at its base lr every epoch lands
    on bit-identically the lr of one that was stepped all along (so a resumed run, or an
    ``--epoch`` given explicitly, continues exactly). Returns ``scheduler``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
        for _ in range(steps):
            scheduler.step()
    return scheduler


class TrainingMethod:
    """Base class of a trainable method: override ``make_state`` and ``loss`` at least."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[TrainParams]] = TrainParams
    #: Whether ``loss`` uses the part features (DDP must know about unused parameters).
    uses_parts: ClassVar[bool] = False
    #: Whether the method trains on pseudo labels. False: it trains on every train row without
    #: any (``EpochData.labels`` numbers the rows 0..N-1), and ``loop`` neither clusters nor refines.
    clusters: ClassVar[bool] = True
    #: Names of the labels file's extra arrays the method reads (into ``EpochData.extra``);
    #: only these are loaded, since others (e.g. a sparse Jaccard matrix) can be large.
    label_arrays: ClassVar[tuple[str, ...]] = ()
    #: When the trainer steps the scheduler: once after the epoch's last iteration (``"epoch"``,
    #: the CC family's StepLR) or after every optimiser step (``"iteration"``).
    scheduler_interval: ClassVar[str] = "epoch"
    #: Methods whose checkpoints' heads this method continues (MAR: the agents of ``pretrain``);
    #: a checkpoint of any other method gives only its model weights.
    heads_from: ClassVar[tuple[str, ...]] = ()
    #: Whether the method trains on the labelled source (``--aux-data``) itself, reading it from
    #: its parameters (MAR); otherwise a given source joins its training through the trainer's
    #: joint source step (:mod:`reidctl.train.joint`).
    learns_source: ClassVar[bool] = False
    #: The labelled source section of its options (``--aux-data`` ...): :class:`~reidctl.train.joint.SourceParams`,
    #: or a subclass with the method's defaults (MAR: every identity of the source).
    Source: ClassVar[type] = SourceParams

    def __init__(self, params: TrainParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def resolve_params(cls, base: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
                       ) -> TrainParams:
        """The method's defaults, then ``base`` (e.g. a checkpoint's values), then ``overrides``.

        Unknown names in ``overrides`` are a user error (an option of another method); unknown
        names in ``base`` are ignored (a checkpoint of another method).
        """
        cls.refuse_foreign(overrides or {})
        return resolve(cls.Params, overrides, what=f"--method {cls.name}", base=base)

    @classmethod
    def refuse_foreign(cls, options: Mapping[str, Any]) -> None:
        """Refuse option names ``Params`` does not have (before any work is done)."""
        resolve_names(cls.Params, options, what=f"--method {cls.name}")

    def build_heads(self, model: ReidModel) -> nn.Module | None:
        """Extra trainable modules (classifiers ...) optimised and saved with the model."""
        return None

    # ---- optimisation

    def configure_optimizer(self, model: nn.Module, heads: nn.Module | None) -> torch.optim.Optimizer:
        """The optimiser and its parameter groups; called once, when the session is built
        (before a checkpoint's optimiser state is loaded into it).

        The hyper-parameters each group gets here are restored at the start of every epoch
        (before ``configure_scheduler``), so options changed on resuming take effect.
        Default: Adam over every trainable parameter of the model and heads with ``params.lr``
        and ``params.weight_decay`` (one group).
        """
        p = self.params
        return torch.optim.Adam(trainable_parameters(model, heads), lr=p.lr, weight_decay=p.weight_decay)

    def configure_scheduler(self, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> LRScheduler:
        """The lr schedule of ``epoch``, positioned where that epoch starts; called at the start of
        every epoch, the groups holding their ``configure_optimizer`` values.

        ``step`` is the number of optimiser steps of the session's earlier epochs (to position a
        per-iteration schedule). The trainer steps it as ``scheduler_interval`` says.
        Default: ``StepLR(step_size, gamma)`` stepped ``epoch`` times (see :func:`positioned`).
        """
        p = self.params
        return positioned(StepLR(optimizer, step_size=p.step_size, gamma=p.gamma), epoch)

    # ---- the epoch's stream of steps

    def epoch_length(self, data: EpochData) -> int:
        """Steps (optimiser updates) in one epoch; called at the start of every epoch, and by the
        stage for its progress bar, so it must be cheap and draw no random number.
        Default: ``params.iters`` (the CC family's ``IterLoader``)."""
        return self.params.iters

    def train_stream(self, ctx: StreamContext) -> Iterable[Any]:
        """The inputs of the epoch's steps, one per ``training_step``; the trainer takes
        ``ctx.length`` of them. Called once per epoch before ``make_state``; build the loader here
        (eagerly: errors and random draws before the first step) and draw every random number
        from ``ctx.generator``.

        Default: :func:`reidctl.train.streams.identity_stream`: identity-balanced batches of
        ``ctx.samples`` as :class:`Batch`, restarting the sampler when a pass is exhausted.
        """
        return identity_stream(ctx, self.params.num_instances, self.params.sampler_anchor)

    def training_step(self, inputs: Any, forward: Forward, state: Any) -> StepResult:
        """One step's forward pass(es) and loss; ``inputs`` is an item of ``train_stream`` and
        ``forward`` the trainer's net (model + heads, under autocast and DDP as configured): call
        it once, with a list of per-domain batches, to get per-domain BatchNorm statistics.
        Default: ``outputs = forward(inputs.images)``, then ``loss(inputs, outputs, state)``."""
        outputs = forward(inputs.images)
        loss, logs = self.loss(inputs, outputs, state)
        return StepResult(loss, logs, outputs)

    def make_state(self, data: EpochData, heads: nn.Module | None) -> Any:
        raise NotImplementedError

    def loss(self, batch: Batch, outputs: dict[str, torch.Tensor], state: Any
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        raise NotImplementedError

    def after_backward(self, batch: Any, outputs: Any, state: Any) -> None:
        """Non-differentiable per-batch updates (memory momentum ...), run after the backward pass
        and before the optimiser step; ``batch`` is the step's input and ``outputs`` what
        ``training_step`` returned as its outputs. Default: none."""

    def epoch_summary(self, state: Any) -> dict[str, Any]:
        """Extra numbers for the epoch's stats."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State kept from one epoch to the next (saved in the checkpoint)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def persistent_arrays(self) -> dict[str, np.ndarray]:
        """Large state kept from one epoch to the next (a multilabel memory of hundreds of MB).

        Called when a checkpoint is saved (rank 0 only: under DDP every rank must hold the same
        arrays); when not empty, they are written to a file of their own beside the checkpoint
        (``<checkpoint>.state.h5``), never into it, and the checkpoint records that file's name
        and content digest. Default: none."""
        return {}

    def load_persistent_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Take back what ``persistent_arrays`` saved; called when a session resumes a checkpoint
        of the same method that has them (after the file's digest was verified). Default: none."""
