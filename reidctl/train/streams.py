"""Streams of training batches: augmented images → DataLoader → device, for any set of samples.

The default epoch (:func:`identity_stream`, the CC family's) and a method's further streams (a
labelled source dataset: :func:`labelled_stream`) are built from the same parts, so every
stream has the same augmentation, the same device transfer and the same handling of an
unreadable image.

Randomness: a stream draws a loader seed, then its sampler's draws (the order of the samples
and one augmentation seed per sampled image), from the session's generator (``ctx.generator``);
the augmentation of an image therefore depends neither on DataLoader workers nor on DDP ranks.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from reidctl.runtime import dist
from reidctl.data.base import Sample
from reidctl.data.images import load_image
from reidctl.data.samplers import SEED_BOUND, IdentityBatchSampler, IterLoader, pass_length
from reidctl.data.transforms import train_transform
from reidctl.errors import DatasetError, ReidctlError
from reidctl.runtime.precision import memory_format
from reidctl.train.epoch import Batch, StreamContext

#: An augmentation: PIL image + its own generator → tensor (``reidctl.data.transforms.TrainTransform``).
Transform = Callable[..., torch.Tensor]


class TrainImages(Dataset):
    """Augmented training images, indexed by ``(position, seed)`` pairs from a batch sampler.

    The seed drives this image's augmentation (its own ``torch.Generator``). A bad image comes
    back flagged instead of raising inside a worker, so the main process fails with one message.
    """

    def __init__(self, samples: Sequence[Sample], height: int, width: int, transform: Transform | None = None
                 ) -> None:
        self.samples = list(samples)
        self.transform = transform if transform is not None else train_transform(height, width)
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


class ShuffledBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(row index, augmentation seed)`` over a random permutation of ``n`` rows
    (``shuffle=True, drop_last=True``), drawn from ``rng``; each ``iter()`` is a new pass.

    As :class:`~reidctl.data.samplers.IdentityBatchSampler`, ``batch_size`` is the global batch
    and each of ``world_size`` ranks yields its contiguous slice of every global batch.
    """

    def __init__(self, n: int, *, batch_size: int, rng: np.random.Generator, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < 1 or batch_size % world_size:
            raise ReidctlError(f"a batch of {batch_size} cannot be split evenly over {world_size} processes")
        self.n, self.batch_size, self.rng = n, batch_size, rng
        self.rank, self.per_rank = rank, batch_size // world_size

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.rng.permutation(self.n).tolist()
        seeds = self.rng.integers(0, SEED_BOUND, size=self.n).tolist()
        lo = self.rank * self.per_rank
        for b in range(len(self)):
            start = b * self.batch_size + lo
            yield list(zip(order[start:start + self.per_rank], seeds[start:start + self.per_rank]))


def image_loader(ctx: StreamContext, samples: Sequence[Sample], batch_sampler: Sampler, seed: int,
                 transform: Transform | None = None) -> DataLoader:
    """A DataLoader of augmented ``samples`` at the model's input size, batched by
    ``batch_sampler`` (yielding ``(position, seed)`` pairs); ``seed`` seeds its workers (per rank)."""
    return DataLoader(
        TrainImages(samples, ctx.height, ctx.width, transform), batch_sampler=batch_sampler,
        num_workers=ctx.workers, pin_memory=ctx.device.type == "cuda", persistent_workers=ctx.workers > 0,
        generator=torch.Generator().manual_seed(seed + ctx.rank),
    )


def device_batches(loader: Iterable[Any], labels: np.ndarray, camids: np.ndarray, device: torch.device,
                   steps: int | None = None) -> Iterator[Batch]:
    """The loader's batches as :class:`Batch` on ``device`` (``index``: positions in ``labels``).

    ``steps``: exactly that many, starting the loader again when a pass ends; None: one pass.
    An unreadable image fails on every rank with its one-line message.
    """
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    camids_t = torch.as_tensor(camids, dtype=torch.int64)
    layout = memory_format(device)
    for images, index, errors in (loader if steps is None else IterLoader(loader, steps)):
        raise_bad_images(errors)
        yield Batch(
            images=images.to(device, non_blocking=True, memory_format=layout),
            labels=labels_t[index].to(device, non_blocking=True),
            camids=camids_t[index].to(device, non_blocking=True),
            index=index.to(device, non_blocking=True),
        )


def raise_bad_images(errors: Sequence[str]) -> None:
    """Fail on an unreadable image; under DDP every rank learns of it (no rank waits forever)."""
    bad = next((e for e in errors if e), "")
    if dist.any_rank(bool(bad)):
        others = dist.all_gather_object(bad) if dist.is_distributed() else [bad]
        raise DatasetError(next(e for e in others if e))


def check_identity_batches(ctx: StreamContext, num_instances: int, anchor: str = "first") -> None:
    """Refuse an epoch whose clusters cannot fill one identity-balanced batch."""
    data = ctx.data
    if data.num_clusters < 1:
        raise ReidctlError("no clusters to train on: every sample is an outlier")
    yielded = pass_length(data.labels, num_instances, anchor)
    if yielded < ctx.batch_size:
        raise ReidctlError(
            f"one pass over the {data.num_clusters} clusters yields only {yielded} images, fewer than "
            f"--batch-size {ctx.batch_size}: lower --batch-size (or raise --num-instances)"
        )


def identity_stream(ctx: StreamContext, num_instances: int, anchor: str = "first") -> Iterator[Batch]:
    """The CC family's epoch: ``ctx.length`` identity-balanced batches of ``ctx.samples``
    (``num_instances`` per identity, the anchor ``first`` or ``last``:
    :func:`~reidctl.data.samplers.identity_balanced_order`), the sampler starting a new pass when
    one is exhausted."""
    check_identity_batches(ctx, num_instances, anchor)
    data = ctx.data
    seed = int(ctx.generator.integers(SEED_BOUND))
    sampler = IdentityBatchSampler(data.labels, data.camids, batch_size=ctx.batch_size,
                                   num_instances=num_instances, rng=ctx.generator, rank=ctx.rank,
                                   world_size=ctx.world, anchor=anchor)
    transform = train_transform(ctx.height, ctx.width, ctx.norm.mean, ctx.norm.std)
    return device_batches(image_loader(ctx, ctx.samples, sampler, seed, transform), data.labels, data.camids,
                          ctx.device, ctx.length)


def zip_streams(*streams: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    """Steps that take one item of each stream (a source and a target batch ...), ending with the
    shortest; closing it closes every stream (their DataLoader workers stop)."""
    try:
        yield from zip(*streams)
    finally:
        for stream in streams:
            close = getattr(stream, "close", None)
            if callable(close):
                close()


def labelled_stream(ctx: StreamContext, samples: Sequence[Sample], labels: np.ndarray, *, batch_size: int,
                    camids: np.ndarray | None = None, steps: int | None = None,
                    transform: Transform | None = None) -> Iterator[Batch]:
    """Shuffled batches of other ``samples`` with their own ``labels`` (a labelled source
    dataset), ``batch_size`` global (each rank its part), with the epoch's augmentation, device
    transfer and bad-image handling. ``steps``: that many batches, reshuffling when a pass ends;
    None: one pass (``len(samples) // batch_size`` batches)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(samples):
        raise ValueError("samples and labels must line up")
    if len(samples) < batch_size:
        raise ReidctlError(f"{len(samples)} labelled images cannot fill a batch of {batch_size}")
    camids = np.array([s.camid for s in samples], dtype=np.int64) if camids is None else camids
    seed = int(ctx.generator.integers(SEED_BOUND))
    sampler = ShuffledBatchSampler(len(samples), batch_size=batch_size, rng=ctx.generator, rank=ctx.rank,
                                   world_size=ctx.world)
    return device_batches(image_loader(ctx, samples, sampler, seed, transform), labels, camids, ctx.device, steps)
