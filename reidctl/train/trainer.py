"""The one-epoch trainer: the method's stream of steps → model → method loss → optimiser step.

:class:`TrainSession` holds what persists from one epoch to the next (model, method, optimiser,
scaler, the training generator, the epoch and step counters) and is what a checkpoint stores;
:func:`train_epoch` runs one epoch on it. The method (:class:`~reidctl.train.contract.TrainingMethod`)
supplies the optimiser, the schedule, the stream of batches and the loss through hooks whose
defaults are the CC family's loop (Adam, StepLR per epoch, ``iters`` identity-balanced batches);
the trainer supplies everything else: devices, BN chunks, AMP, DDP, checkpoints and logging.

Randomness: every random number of an epoch comes from the session's ``numpy`` generator (the
sampler's draws and one augmentation seed per sampled image), so an epoch is a function of the
checkpoint it starts from, whatever the number of DataLoader workers or DDP ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler

from reidctl.runtime import dist
from reidctl.data.base import Sample
from reidctl.data.samplers import SEED_BOUND
from reidctl.data.stats import Norm, given_norm, input_norm
from reidctl.errors import ReidctlError
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.runtime.device import resolve_workers
from reidctl.runtime.precision import DEFAULT_AMP, autocast, dtype_name, memory_format, resolve_amp
from reidctl.progress import Advance
from reidctl.train.bn_chunks import chunk_sizes, set_bn_chunks
from reidctl.models.checkpoint import (
    capture_rng, load_training_state, read_method_arrays, restore_rng, save_checkpoint, write_method_arrays,
)
from reidctl.options import resolve
from reidctl.train.contract import SCHEDULER_INTERVALS, EpochData, Forward, StepResult, StreamContext, TrainingMethod
from reidctl.train.camera import CameraAware, wants_camera_term
from reidctl.train.joint import JointSource, SourceParams

class _Net(nn.Module):
    """Model + method heads as one module, so DDP synchronises both in one forward."""

    def __init__(self, model: ReidModel, heads: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.heads = heads

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> Any:
        """One batch → its outputs; a list of batches (one per domain) → a list of outputs, each
        batch through the model on its own (its own BatchNorm statistics; the running statistics
        are those the last batch leaves), all in one call so that DDP sees one forward pass."""
        if isinstance(x, (list, tuple)):
            return [self._one(b) for b in x]
        return self._one(x)

    def _one(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(x)
        if self.heads is not None:
            out = {**out, **self.heads(out)}
        return out


def wrapped(method: TrainingMethod, source: SourceParams | None) -> Any:
    """``method`` with the trainer's own terms around it: the camera-aware term when its
    parameters switch it on (:mod:`reidctl.train.camera`), then the joint source step when a
    source is given (:mod:`reidctl.train.joint`; outermost, so the camera term sees the target
    batch alone)."""
    inner: Any = CameraAware(method) if wants_camera_term(method) else method
    return inner if source is None else JointSource(inner, source)


class TrainSession:
    """Everything that carries over from one epoch to the next; what a checkpoint holds.

    ``epoch`` is the last completed epoch (-1 before the first), ``steps`` the optimiser steps of
    all epochs so far. Build a fresh one with the constructor, or continue a checkpoint with
    :func:`resume`.
    """

    def __init__(self, model: ReidModel, method: TrainingMethod, *, device: torch.device | str = "cpu",
                 amp: str = DEFAULT_AMP, seed: int = 1, generator: np.random.Generator | None = None,
                 epoch: int = -1, steps: int = 0, source: SourceParams | None = None) -> None:
        if method.scheduler_interval not in SCHEDULER_INTERVALS:
            raise ValueError(f"{type(method).__name__}.scheduler_interval must be one of {SCHEDULER_INTERVALS}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        #: The labelled source trained beside the target (``--aux-data``), or None; a method that
        #: learns from it itself (MAR) reads it from its parameters instead of being joined to it.
        self.source = source if source is not None and source.given and not method.learns_source else None
        self.method: Any = wrapped(method, self.source)
        self.amp = amp
        self.amp_dtype = resolve_amp(amp, self.device)
        self.heads = self.method.build_heads(model)
        if self.heads is not None:
            self.heads.to(self.device)
        self.optimizer = self.method.configure_optimizer(self.model, self.heads)
        #: Each group's hyper-parameters as configured (with the current options): every epoch
        #: starts from them, whatever a loaded optimiser state or the last schedule left.
        self.base_groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.scheduler: LRScheduler | None = None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.generator = generator if generator is not None else np.random.default_rng(seed)
        #: Why a labelled source's classifier did not start from the checkpoint's agents (:func:`resume`).
        self.source_note: str | None = None
        self.seed = seed
        self.epoch = epoch
        self.steps = steps
        self.history: list[dict[str, Any]] = []

    @property
    def params(self) -> Any:
        return self.method.params

    def state_dict(self) -> dict[str, Any]:
        """The training state (the model itself is added by ``save_checkpoint``)."""
        return {
            "epoch": self.epoch,
            "steps": self.steps,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": capture_rng(self.generator),
            "seed": self.seed,
            "method": self.method.name,
            "method_params": self.params.to_dict(),
            "method_state": self.method.state_dict(),
            "heads": None if self.heads is None else self.heads.state_dict(),
            "source": None if self.source is None else self.source.to_dict(),
            "bn_chunks": self.params.bn_chunks,
            "amp": self.amp,
            "history": list(self.history),
        }

    def save(self, path: str | Path, arrays: Mapping[str, np.ndarray] | None = None, **extra: Any) -> None:
        """Write a checkpoint atomically (call on rank 0 only under DDP).

        The method's persistent arrays (``arrays`` when the caller already has them), when it has
        any, go to a file of their own beside it (written first, so a checkpoint never names a
        file that is not there); the checkpoint records that file's name and digest as
        ``method_arrays``."""
        arrays = self.method.persistent_arrays() if arrays is None else arrays
        if arrays:
            extra["method_arrays"] = write_method_arrays(path, arrays, method=self.method.name, epoch=self.epoch)
        save_checkpoint(path, self.model, **self.state_dict(), **extra)

    def reset_optimizer(self) -> None:
        """Give every group its configured hyper-parameters back (the lr a schedule moved, the
        values a loaded optimiser state brought), so the epoch's schedule starts from them."""
        for group, base in zip(self.optimizer.param_groups, self.base_groups):
            group.pop("initial_lr", None)
            group.update(base)


def resume(payload: Mapping[str, Any], method_cls: type[TrainingMethod], *, overrides: Mapping[str, Any] | None = None,
           device: torch.device | str = "cpu", amp: str = DEFAULT_AMP, seed: int = 1,
           source: str | Path = "checkpoint", source_options: Mapping[str, Any] | None = None) -> TrainSession:
    """A session that continues a checkpoint ``payload`` (see ``load_checkpoint``) read from ``source``.

    Method options not in ``overrides`` keep the checkpoint's values when it was trained with the
    same method, else the method's defaults; so do the labelled source's (``source_options``, of
    :class:`~reidctl.train.joint.SourceParams`). A run that starts a joint source step from a
    checkpoint of another method whose heads are agents of the same source (``reidctl
    pretrain``'s) starts the source classifier from them. The training generator, optimiser, scaler, method
    state (and persistent arrays, from their file beside ``source``) and global RNG states are
    restored. A checkpoint of another method (a source pretraining, another method's run) or
    without training state (plain model weights) gives only its weights, and its heads when the
    method takes them (``method_cls.heads_from``): the session starts at epoch 0 with a fresh
    optimiser and a generator seeded with ``seed``.
    """
    model = ReidModel(ModelConfig.from_dict(payload["model_config"]))
    same = payload.get("method") == method_cls.name
    params = method_cls.resolve_params(payload.get("method_params") if same else None, overrides)
    method = method_cls(params)
    rng = (payload.get("rng") or {}) if same else {}
    generator = restore_rng(rng) if rng else None
    last = payload.get("epoch") if same else None
    joint = resolve(method_cls.Source, source_options, what=f"--method {method_cls.name}",
                    base=(payload.get("source") or {}) if same else None)
    session = TrainSession(model, method, device=device, amp=amp, seed=int(payload.get("seed", seed)) if same else seed,
                           generator=generator, epoch=-1 if last is None else int(last),
                           steps=int(payload.get("steps") or 0) if same else 0, source=joint)
    takes_heads = same or payload.get("method") in method_cls.heads_from
    if same and bool(payload.get("source")) != (session.source is not None):  # its heads and optimiser would not fit
        was = "beside a labelled source (--aux-data)" if payload.get("source") else "without a labelled source"
        raise ReidctlError(f"{source}: trained {was}; continue it as it was trained, or start a new run")
    load_training_state(payload, model=session.model, heads=session.heads if takes_heads else None, source=source,
                        optimizer=session.optimizer if same else None, scaler=session.scaler if same else None)
    if not same and isinstance(session.method, JointSource):
        session.source_note = session.method.start_agents(payload.get("heads"), session.heads)
    if same and payload.get("method_state"):
        method.load_state_dict(payload["method_state"])
    if same and payload.get("method_arrays"):
        method.load_persistent_arrays(read_method_arrays(payload["method_arrays"], source))
    if same:
        session.history = list(payload.get("history") or [])
    return session


# --------------------------------------------------------------------------------------------
# one epoch


def prepare_epoch(
    labels: np.ndarray,
    camids: np.ndarray,
    features: np.ndarray,
    parts: np.ndarray | None = None,
    extra: Mapping[str, Any] | None = None,
) -> EpochData:
    """The epoch's training set from full-split arrays: outliers (label < 0) left out, labels
    renumbered 0..K-1 in the order of their values. ``data.rows`` selects the kept samples."""
    labels = np.asarray(labels)
    n = len(labels)
    if len(camids) != n or len(features) != n or (parts is not None and len(parts) != n):
        raise ValueError("labels, camids, features (and parts) must have one row per train image")
    rows = np.flatnonzero(labels >= 0)
    uniq, remapped = np.unique(labels[rows], return_inverse=True)
    return EpochData(
        labels=remapped.astype(np.int64), camids=np.asarray(camids, dtype=np.int64)[rows],
        features=np.asarray(features, dtype=np.float32)[rows],
        parts=None if parts is None else np.asarray(parts, dtype=np.float32)[rows],
        rows=rows.astype(np.int64), num_clusters=len(uniq), extra=dict(extra or {}),
    )


@dataclass
class EpochStats:
    """What one epoch did (also appended to the checkpoint's ``history``)."""

    epoch: int
    loss: float
    iterations: int
    seconds: float
    clusters: int
    images: int
    lr: float
    batch_size: int
    bn_chunks: int
    world_size: int
    amp: str
    logs: dict[str, float] = field(default_factory=dict)
    step_losses: list[float] = field(default_factory=list)  # the loss of every iteration (mean over ranks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    """``--deterministic``: deterministic kernels for the block (cuDNN benchmark otherwise).

    Operations without a deterministic CUDA kernel (e.g. the backward of ``--pooling avg``'s
    adaptive pooling) warn instead of failing. cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when CUDA
    starts, so callers that can should call :func:`prepare_determinism` before touching CUDA.
    """
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if enabled:
        prepare_determinism()
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]


def prepare_determinism() -> None:
    """Set the cuBLAS workspace configuration deterministic kernels need (before CUDA starts)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def rank_bn_chunks(bn_chunks: int, world: int) -> int:
    """BN chunks per rank: ``bn_chunks`` counts chunks of the *global* batch, and each rank
    already normalises its own 1/world of it, so each rank splits its part ``bn_chunks/world`` ways."""
    if world == 1:
        return bn_chunks
    if bn_chunks % world:
        raise ReidctlError(
            f"--bn-chunks {bn_chunks} cannot be emulated on {world} processes: each process already computes "
            f"BatchNorm statistics on its own 1/{world} of the batch, so use a multiple of {world}"
        )
    return bn_chunks // world


def train_epoch(
    session: TrainSession,
    samples: Sequence[Sample],
    data: EpochData,
    *,
    epoch: int | None = None,
    workers: int | None = None,
    deterministic: bool = False,
    progress: Advance | None = None,
    norm: Norm | None = None,
) -> EpochStats:
    """Train ``session`` for one epoch (``method.epoch_length(data)`` steps) on the clustered ``samples``.

    ``samples[i]`` is the image of ``data.labels[i]`` (outliers already left out). Under DDP
    (a process group is up) every rank calls this with the same arguments. ``norm``: the input
    normalisation of the samples' dataset (:func:`reidctl.data.stats.input_norm`); None: ImageNet's,
    for a model with ``input_norm == "imagenet"`` only. ``progress(1, loss=...)`` is called after each
    step (:func:`reidctl.progress.progress_bar`); its loss is the mean of the last
    :data:`PROGRESS_LOSS_STEPS` steps, computed only when a progress line asks for it.
    """
    p, method = session.params, session.method
    epoch = session.epoch + 1 if epoch is None else epoch
    if len(samples) != len(data.labels):
        raise ValueError("samples and data.labels must line up")
    chunks = _check_batch(p.batch_size, p.bn_chunks, dist.world_size())
    ctx = _stream_context(session, samples, data, epoch, workers, norm)
    stream = method.train_stream(ctx)

    set_bn_chunks(session.model, chunks)
    state = method.make_state(ctx.data, session.heads)
    forward = _forward(session, _net(session))
    session.reset_optimizer()
    session.scheduler = method.configure_scheduler(session.optimizer, epoch, session.steps)
    lr = session.optimizer.param_groups[0]["lr"]

    start = time.perf_counter()
    with determinism(deterministic, session.device), _closing(stream):
        per_step, logs = _run_steps(session, stream, ctx.length, forward, state, progress)
    if method.scheduler_interval == "epoch":
        session.scheduler.step()
    seconds = time.perf_counter() - start
    step_losses = _mean_over_ranks(per_step)
    mean_loss = sum(step_losses) / ctx.length  # summed in step order, as before per-step losses were kept
    if not math.isfinite(mean_loss):
        raise ReidctlError(f"training diverged in epoch {epoch} (mean loss {mean_loss}); try a lower --lr")
    stats = EpochStats(
        epoch=epoch, loss=mean_loss, iterations=ctx.length, seconds=seconds, clusters=data.num_clusters,
        images=len(samples), lr=lr, batch_size=p.batch_size, bn_chunks=p.bn_chunks, world_size=ctx.world,
        amp=dtype_name(session.amp_dtype),
        logs={k: dist.all_reduce_mean(float(v.item()) / ctx.length) for k, v in logs.items()}
        | method.epoch_summary(state),
        step_losses=step_losses,
    )
    session.epoch = epoch
    session.steps += ctx.length
    session.history.append(stats.to_dict())
    return stats


def _stream_context(session: TrainSession, samples: Sequence[Sample], data: EpochData, epoch: int,
                    workers: int | None, norm: Norm | None = None) -> StreamContext:
    """The epoch's :class:`StreamContext`. Draws the epoch's ``data.seed`` from the session's
    generator, before the stream's own draws (the order every checkpoint so far was made with)."""
    p, method, device = session.params, session.method, session.device
    data = dataclasses.replace(data, epoch=epoch, device=device, seed=int(session.generator.integers(SEED_BOUND)))
    length = method.epoch_length(data)
    if length < 1:
        raise ReidctlError(f"--method {method.name} gives an epoch of {length} steps; it needs at least 1")
    world, cfg = dist.world_size(), session.model.config
    norm = given_norm(cfg, norm)
    return StreamContext(samples=samples, data=data, generator=session.generator, device=device, rank=dist.rank(),
                         world=world, workers=resolve_workers(workers, device), height=cfg.height, width=cfg.width,
                         batch_size=p.batch_size, per_rank=p.batch_size // world, length=length, norm=norm,
                         norm_of=lambda train: input_norm(cfg, train))


def _run_steps(session: TrainSession, stream: Iterable[Any], length: int, forward: Forward, state: Any,
               progress: Advance | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``length`` steps on the stream's inputs; each step's loss and the summed logs (tensors on
    the device, so a step costs no device sync)."""
    method, device = session.method, session.device
    per_step = torch.zeros(length, dtype=torch.float64, device=device)
    logs: dict[str, torch.Tensor] = {}
    done = 0
    for inputs in itertools.islice(stream, length):
        step = method.training_step(inputs, forward, state)
        _optimise(session, step, inputs, state)
        per_step[done] = step.loss.detach().double()
        for k, v in step.logs.items():
            logs[k] = logs.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float64, device=device).detach()
        done += 1
        if progress is not None:
            progress(1, loss=_recent_loss(per_step, done))
    if done < length:
        raise ReidctlError(f"--method {method.name}: its training stream ended after {done} of {length} steps")
    return per_step, logs


#: The steps the loss of a progress line is averaged over (fast-reid smooths over 20 too).
PROGRESS_LOSS_STEPS = 20


def _recent_loss(per_step: torch.Tensor, done: int) -> Callable[[], torch.Tensor]:
    """The mean loss of the last steps up to ``done``, as a function: a progress line calls it
    (one device sync per line), a step does not."""
    return lambda: per_step[max(0, done - PROGRESS_LOSS_STEPS):done].mean()


def _mean_over_ranks(values: torch.Tensor) -> list[float]:
    """``values`` averaged element-wise over the ranks (as they are without a process group)."""
    return dist.all_reduce_mean_tensor(values).cpu().tolist()


@contextlib.contextmanager
def _closing(stream: Any) -> Iterator[None]:
    """Close a generator stream when the epoch ends (its DataLoader workers stop now, not when
    the garbage collector gets to it, e.g. after an exception)."""
    try:
        yield
    finally:
        close = getattr(stream, "close", None)
        if callable(close):
            close()


def _check_batch(batch_size: int, bn_chunks: int, world: int) -> int:
    """The BN chunks per rank; refuse a batch that cannot be split over the ranks and chunks."""
    if batch_size % world:
        raise ReidctlError(f"--batch-size {batch_size} is not divisible by the {world} processes")
    chunks = rank_bn_chunks(bn_chunks, world)
    if chunks > 1 and min(chunk_sizes(batch_size // world, chunks)) < 2:
        raise ReidctlError(
            f"--bn-chunks {bn_chunks} splits a batch of {batch_size} into chunks of fewer than 2 images; "
            "BatchNorm needs at least 2 per chunk"
        )
    return chunks


def _net(session: TrainSession) -> nn.Module:
    """Model + heads in training mode, channels-last, wrapped by DDP under torchrun."""
    device, cuda = session.device, session.device.type == "cuda"
    net: nn.Module = _Net(session.model, session.heads).to(memory_format=memory_format(device))
    if dist.is_distributed():
        unused = bool(session.model.config.parts) and not session.method.uses_parts
        net = DistributedDataParallel(net, device_ids=[device.index] if cuda else None,
                                      find_unused_parameters=unused)
    net.train()
    return net


def _forward(session: TrainSession, net: nn.Module) -> Forward:
    """``net`` under the session's autocast: the ``forward`` a method's ``training_step`` calls."""
    device, dtype = session.device, session.amp_dtype

    def forward(images: torch.Tensor | Sequence[torch.Tensor]) -> Any:
        with autocast(device, dtype):
            return net(images)

    return forward


def _optimise(session: TrainSession, step: StepResult, inputs: Any, state: Any) -> None:
    """Backward (scaled under fp16), the method's ``after_backward``, the optimiser step, and
    the scheduler's step when it steps per iteration."""
    optimizer, scaler, method = session.optimizer, session.scaler, session.method
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(step.loss).backward()
        method.after_backward(inputs, step.outputs, state)
        scaler.step(optimizer)
        scaler.update()
    else:
        step.loss.backward()
        method.after_backward(inputs, step.outputs, state)
        optimizer.step()
    if method.scheduler_interval == "iteration":
        session.scheduler.step()
