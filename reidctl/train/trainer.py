"""The one-epoch trainer: identity-balanced batches → model → method loss → Adam, ``iters`` times.

:class:`TrainSession` holds what persists from one epoch to the next (model, method, optimiser,
scaler, the training generator, the epoch counter) and is what a checkpoint stores;
:func:`train_epoch` runs one epoch on it. The method (``reidctl.methods``) supplies the loss;
the trainer supplies everything else: sampling, augmentation, BN chunks, AMP, DDP, the schedule.

Randomness: every random number of an epoch comes from the session's ``numpy`` generator (the
sampler's draws and one augmentation seed per sampled image), so an epoch is a function of the
checkpoint it starts from, whatever the number of DataLoader workers or DDP ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, Dataset

from reidctl import dist
from reidctl.data.base import Sample
from reidctl.data.images import load_image
from reidctl.data.samplers import SEED_BOUND, IdentityBatchSampler, IterLoader, pass_length
from reidctl.data.transforms import train_transform
from reidctl.errors import DatasetError, ReidctlError
from reidctl.train.contract import Batch, EpochData, TrainingMethod
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.train.bn_chunks import chunk_sizes, set_bn_chunks
from reidctl.train.checkpoint import capture_rng, load_training_state, restore_rng, save_checkpoint

AMP_MODES = ("auto", "bf16", "fp16", "off")


# --------------------------------------------------------------------------------------------
# data


class TrainImages(Dataset):
    """Augmented training images, indexed by ``(position, seed)`` pairs from the batch sampler.

    The seed drives this image's augmentation (its own ``torch.Generator``). A bad image comes
    back flagged instead of raising inside a worker, so the main process fails with one message.
    """

    def __init__(self, samples: Sequence[Sample], height: int, width: int) -> None:
        self.samples = list(samples)
        self.transform = train_transform(height, width)
        self.blank = torch.zeros(3, height, width)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, str]:
        i, seed = item
        try:
            img = load_image(self.samples[i].path)
        except DatasetError as exc:
            return self.blank, i, str(exc)
        return self.transform(img, generator=torch.Generator().manual_seed(int(seed))), i, ""


# --------------------------------------------------------------------------------------------
# the session


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: AMP runs on CUDA only (``auto`` = bf16 where supported, else fp16)."""
    if amp not in AMP_MODES:
        raise ReidctlError(f"--amp {amp}: choose one of {', '.join(AMP_MODES)}")
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def precision_name(amp: str, device: torch.device) -> str:
    """The precision ``--amp`` resolves to on ``device``: off (float32), bfloat16 or float16."""
    return dtype_name(resolve_amp(amp, device))


def dtype_name(dtype: torch.dtype | None) -> str:
    return "off" if dtype is None else str(dtype).removeprefix("torch.")


def trainable_parameters(*modules: nn.Module | None) -> list[nn.Parameter]:
    """Every parameter that requires a gradient (GeM ``p`` included, the frozen BN bias not)."""
    return [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]


class _Net(nn.Module):
    """Model + method heads as one module, so DDP synchronises both in one forward."""

    def __init__(self, model: ReidModel, heads: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.heads = heads

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(x)
        if self.heads is not None:
            out = {**out, **self.heads(out)}
        return out


class TrainSession:
    """Everything that carries over from one epoch to the next; what a checkpoint holds.

    ``epoch`` is the last completed epoch (-1 before the first). Build a fresh one with the
    constructor, or continue a checkpoint with :func:`resume`.
    """

    def __init__(self, model: ReidModel, method: TrainingMethod, *, device: torch.device | str = "cpu",
                 amp: str = "auto", seed: int = 1, generator: np.random.Generator | None = None,
                 epoch: int = -1) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.method = method
        self.amp = amp
        self.amp_dtype = resolve_amp(amp, self.device)
        self.heads = method.build_heads(model)
        if self.heads is not None:
            self.heads.to(self.device)
        p = method.params
        self.optimizer = torch.optim.Adam(trainable_parameters(self.model, self.heads), lr=p.lr,
                                          weight_decay=p.weight_decay)
        self.scheduler: StepLR | None = None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.generator = generator if generator is not None else np.random.default_rng(seed)
        self.seed = seed
        self.epoch = epoch
        self.history: list[dict[str, Any]] = []

    @property
    def params(self) -> Any:
        return self.method.params

    def state_dict(self) -> dict[str, Any]:
        """The training state (the model itself is added by ``save_checkpoint``)."""
        return {
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": capture_rng(self.generator),
            "seed": self.seed,
            "method": self.method.name,
            "method_params": self.params.to_dict(),
            "method_state": self.method.state_dict(),
            "heads": None if self.heads is None else self.heads.state_dict(),
            "bn_chunks": self.params.bn_chunks,
            "amp": self.amp,
            "history": list(self.history),
        }

    def save(self, path: str | Path, **extra: Any) -> None:
        """Write a checkpoint atomically (call on rank 0 only under DDP)."""
        save_checkpoint(path, self.model, **self.state_dict(), **extra)


def resume(payload: Mapping[str, Any], method_cls: type[TrainingMethod], *, overrides: Mapping[str, Any] | None = None,
           device: torch.device | str = "cpu", amp: str = "auto", seed: int = 1,
           source: str | Path = "checkpoint") -> TrainSession:
    """A session that continues a checkpoint ``payload`` (see ``load_checkpoint``).

    Method options not in ``overrides`` keep the checkpoint's values when it was trained with the
    same method, else the method's defaults. The training generator, optimiser, scaler, method
    state and global RNG states are restored; a checkpoint without training state (plain model
    weights) starts a fresh optimiser and a generator seeded with ``seed``.
    """
    model = ReidModel(ModelConfig(**payload["model_config"]))
    same = payload.get("method") == method_cls.name
    params = method_cls.resolve_params(payload.get("method_params") if same else None, overrides)
    method = method_cls(params)
    rng = payload.get("rng") or {}
    generator = restore_rng(rng) if rng else None
    last = payload.get("epoch")
    session = TrainSession(model, method, device=device, amp=amp, seed=int(payload.get("seed", seed)),
                           generator=generator, epoch=-1 if last is None else int(last))
    load_training_state(payload, model=session.model, heads=session.heads, source=source,
                        optimizer=session.optimizer if same else None, scaler=session.scaler)
    if same and payload.get("method_state"):
        method.load_state_dict(payload["method_state"])
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


def _lr_schedule(session: TrainSession, epoch: int) -> StepLR:
    """StepLR(step_size, gamma) positioned at ``epoch``: built at the base lr and stepped
    ``epoch`` times, so the lr is bit-identical to a run that stepped once per epoch."""
    p = session.params
    for g in session.optimizer.param_groups:
        g.pop("initial_lr", None)
        g["lr"] = p.lr
        g["weight_decay"] = p.weight_decay
    sched = StepLR(session.optimizer, step_size=p.step_size, gamma=p.gamma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
        for _ in range(epoch):
            sched.step()
    return sched


def train_epoch(
    session: TrainSession,
    samples: Sequence[Sample],
    data: EpochData,
    *,
    epoch: int | None = None,
    workers: int = 4,
    deterministic: bool = False,
    progress: Callable[[int], None] | None = None,
) -> EpochStats:
    """Train ``session`` for exactly ``params.iters`` iterations on the clustered ``samples``.

    ``samples[i]`` is the image of ``data.labels[i]`` (outliers already left out). Under DDP
    (a process group is up) every rank calls this with the same arguments.
    """
    p = session.params
    epoch = session.epoch + 1 if epoch is None else epoch
    if len(samples) != len(data.labels):
        raise ValueError("samples and data.labels must line up")
    if data.num_clusters < 1:
        raise ReidctlError("no clusters to train on: every sample is an outlier")
    world, rank = dist.world_size(), dist.rank()
    device = session.device
    if p.batch_size % world:
        raise ReidctlError(f"--batch-size {p.batch_size} is not divisible by the {world} processes")
    per_rank = p.batch_size // world
    chunks = rank_bn_chunks(p.bn_chunks, world)
    if chunks > 1 and min(chunk_sizes(per_rank, chunks)) < 2:
        raise ReidctlError(
            f"--bn-chunks {p.bn_chunks} splits a batch of {p.batch_size} into chunks of fewer than 2 images; "
            "BatchNorm needs at least 2 per chunk"
        )
    if pass_length(data.labels, p.num_instances) < p.batch_size:
        raise ReidctlError(
            f"one pass over the {data.num_clusters} clusters yields only "
            f"{pass_length(data.labels, p.num_instances)} images, fewer than --batch-size {p.batch_size}: "
            "lower --batch-size (or raise --num-instances)"
        )

    gen = session.generator
    data = dataclasses.replace(data, epoch=epoch, device=device, seed=int(gen.integers(SEED_BOUND)))
    loader_seed = int(gen.integers(SEED_BOUND))
    sampler = IdentityBatchSampler(data.labels, data.camids, batch_size=p.batch_size,
                                   num_instances=p.num_instances, rng=gen, rank=rank, world_size=world)
    cfg = session.model.config
    cuda = device.type == "cuda"
    loader = DataLoader(
        TrainImages(samples, cfg.height, cfg.width), batch_sampler=sampler, num_workers=workers,
        pin_memory=cuda, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(loader_seed + rank),
    )
    labels_t = torch.as_tensor(data.labels, dtype=torch.int64)
    camids_t = torch.as_tensor(data.camids, dtype=torch.int64)

    model, method = session.model, session.method
    set_bn_chunks(model, chunks)
    state = method.make_state(data, session.heads)
    net: nn.Module = _Net(model, session.heads)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    if dist.is_distributed():
        unused = bool(cfg.parts) and not method.uses_parts
        net = DistributedDataParallel(net, device_ids=[device.index] if cuda else None,
                                      find_unused_parameters=unused)
    session.scheduler = _lr_schedule(session, epoch)
    lr = session.optimizer.param_groups[0]["lr"]
    optimizer, scaler = session.optimizer, session.scaler

    net.train()
    start = time.perf_counter()
    total = torch.zeros((), dtype=torch.float64, device=device)
    logs: dict[str, torch.Tensor] = {}
    with determinism(deterministic, device):
        for images, index, errors in IterLoader(loader, p.iters):
            _raise_bad_images(errors)
            batch = Batch(
                images=images.to(device, non_blocking=True,
                                 memory_format=torch.channels_last if cuda else torch.preserve_format),
                labels=labels_t[index].to(device, non_blocking=True),
                camids=camids_t[index].to(device, non_blocking=True),
                index=index.to(device, non_blocking=True),
            )
            with torch.autocast(device_type=device.type, dtype=session.amp_dtype or torch.float32,
                                enabled=session.amp_dtype is not None):
                outputs = net(batch.images)
            loss, values = method.loss(batch, outputs, state)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                method.after_backward(batch, outputs, state)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                method.after_backward(batch, outputs, state)
                optimizer.step()
            total += loss.detach().double()
            for k, v in values.items():
                logs[k] = logs.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float64, device=device).detach()
            if progress is not None:
                progress(1)
    session.scheduler.step()
    seconds = time.perf_counter() - start
    mean_loss = dist.all_reduce_mean(float(total.item()) / p.iters)
    if not math.isfinite(mean_loss):
        raise ReidctlError(f"training diverged in epoch {epoch} (mean loss {mean_loss}); try a lower --lr")
    stats = EpochStats(
        epoch=epoch, loss=mean_loss, iterations=p.iters, seconds=seconds, clusters=data.num_clusters,
        images=len(samples), lr=lr, batch_size=p.batch_size, bn_chunks=p.bn_chunks, world_size=world,
        amp=dtype_name(session.amp_dtype),
        logs={k: dist.all_reduce_mean(float(v.item()) / p.iters) for k, v in logs.items()}
        | method.epoch_summary(state),
    )
    session.epoch = epoch
    session.history.append(stats.to_dict())
    return stats


def _raise_bad_images(errors: Sequence[str]) -> None:
    """Fail on an unreadable image; under DDP every rank learns of it (no rank waits forever)."""
    bad = next((e for e in errors if e), "")
    if dist.any_rank(bool(bad)):
        others = dist.all_gather_object(bad) if dist.is_distributed() else [bad]
        raise DatasetError(next(e for e in others if e))
