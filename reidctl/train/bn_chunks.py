"""DataParallel emulation for BatchNorm (ALGORITHMS.md §3.8): statistics per batch chunk.

The official codes train with ``nn.DataParallel`` on 4 GPUs: the batch is split into 4
contiguous chunks (``torch.chunk`` sizes) and every BatchNorm layer normalises each chunk with
that chunk's own statistics. Only the first replica's running-statistics update reaches the
master copy (``replicate`` hands device 0 the original buffers). With an identity-grouped
sampler this changes what BN sees (4 identities per chunk instead of 16) and the results a lot,
so ``--bn-chunks K`` reproduces it on one device: in training mode every BN layer normalises K
contiguous chunks separately and updates its running statistics (and ``num_batches_tracked``)
from chunk 0 only. Eval mode is untouched.

Implemented by switching each BN module's class to a subclass with a chunked ``forward``; the
parameters, buffers and state-dict keys stay exactly the same, and :func:`set_bn_chunks` with
K = 1 switches back.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from reidctl.errors import ReidctlError


class _ChunkedBN:
    """Mixin placed in front of a BatchNorm class."""

    bn_chunks: int = 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        k = self.bn_chunks
        if not self.training or k <= 1 or input.shape[0] <= 1:
            return super().forward(input)  # type: ignore[misc]
        chunks = torch.chunk(input, k, dim=0)
        # Chunk 0 goes through the ordinary forward: batch statistics + running-stat update.
        out = [super().forward(chunks[0])]  # type: ignore[misc]
        for c in chunks[1:]:
            # The other replicas' running-stat updates are discarded by DataParallel.
            out.append(F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps))
        return torch.cat(out, dim=0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bn_chunks={self.bn_chunks}"  # type: ignore[misc]


class ChunkedBatchNorm1d(_ChunkedBN, nn.BatchNorm1d):
    _bn_base = nn.BatchNorm1d


class ChunkedBatchNorm2d(_ChunkedBN, nn.BatchNorm2d):
    _bn_base = nn.BatchNorm2d


class ChunkedBatchNorm3d(_ChunkedBN, nn.BatchNorm3d):
    _bn_base = nn.BatchNorm3d


_CLASSES: dict[type, type] = {c._bn_base: c for c in (ChunkedBatchNorm1d, ChunkedBatchNorm2d, ChunkedBatchNorm3d)}


def _chunked_class(base: type) -> type:
    if base not in _CLASSES:  # another BatchNorm subclass: made on the fly (not picklable by name)
        _CLASSES[base] = type(f"Chunked{base.__name__}", (_ChunkedBN, base), {"_bn_base": base})
    return _CLASSES[base]


def batchnorm_modules(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer (1d/2d/3d; SyncBatchNorm excluded) of ``model``."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm)]


def set_bn_chunks(model: nn.Module, chunks: int) -> int:
    """Make every BN layer of ``model`` compute training statistics on ``chunks`` chunks.

    ``chunks=1`` restores plain BatchNorm. Returns the number of layers changed.
    """
    if chunks < 1:
        raise ValueError("bn chunks must be at least 1")
    layers = batchnorm_modules(model)
    for m in layers:
        base = getattr(type(m), "_bn_base", type(m))
        if chunks == 1:
            m.__class__ = base
            m.__dict__.pop("bn_chunks", None)
        else:
            m.__class__ = _chunked_class(base)
            m.bn_chunks = chunks
    return len(layers)


def get_bn_chunks(model: nn.Module) -> int:
    """The chunk count the model's BN layers use (1 when plain)."""
    for m in batchnorm_modules(model):
        return int(getattr(m, "bn_chunks", 1))
    return 1


def chunk_sizes(n: int, chunks: int) -> list[int]:
    """Sizes ``torch.chunk`` (and DataParallel's scatter) gives a batch of ``n``."""
    return [t.shape[0] for t in torch.chunk(torch.empty(n), chunks)]


def workable(n: int, chunks: int) -> bool:
    """Whether a batch of ``n`` splits into exactly ``chunks`` chunks of at least 2 images."""
    sizes = chunk_sizes(n, chunks)
    return chunks == 1 or (len(sizes) == chunks and min(sizes) >= 2)


def check_bn_chunks(batch_size: int, chunks: int) -> None:
    """Refuse a ``--bn-chunks`` the batch cannot be split into, before anything runs.

    Why: ``torch.chunk`` (as DataParallel's scatter) cuts chunks of ``ceil(n / K)`` images, so it
    can make fewer than K of them (16 in 5: four chunks of 4). The run would then train with
    another chunk count than the one it records; and BatchNorm needs at least 2 images a chunk."""
    if chunks <= 1 or batch_size < 1 or workable(batch_size, chunks):
        return
    sizes = chunk_sizes(batch_size, chunks)
    choices = ", ".join(str(k) for k in range(1, batch_size + 1) if workable(batch_size, k))
    made = (f"torch.chunk makes {len(sizes)} chunks ({', '.join(map(str, sizes))})" if len(sizes) != chunks
            else "a chunk would hold fewer than the 2 images BatchNorm needs")
    raise ReidctlError(f"--bn-chunks {chunks} cannot split a batch of {batch_size}: {made}; choose one of {choices}")
