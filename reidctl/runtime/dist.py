"""Distributed helpers: one process or ``torchrun`` (gloo on CPU, nccl on GPU), nothing home-made.

Every helper is a no-op (or the identity) in a single process, so library code calls them
unconditionally. The process group is created from torchrun's environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist

from reidctl.errors import ReidctlError


def env_world_size() -> int:
    """World size torchrun announced in the environment (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """This process's rank as torchrun announced it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    """True when a process group with more than one process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun on GPUs each process uses ``cuda:LOCAL_RANK``; otherwise ``device`` as given."""
    if device.type == "cuda" and device.index is None and env_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextlib.contextmanager
def distributed(device: torch.device) -> Iterator[torch.device]:
    """Join the torchrun process group for the block (when launched by torchrun).

    Yields the device this process should use. Creates the group only if none exists and tears
    down only a group it created, so a caller (e.g. the ``loop``) may hold one across stages.
    """
    device = local_device(device)
    created = False
    if env_world_size() > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise ReidctlError("this PyTorch build has no torch.distributed support")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        kwargs: dict[str, Any] = {"backend": backend, "timeout": _dt.timedelta(minutes=30)}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
        created = True
    try:
        yield device
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _comm_device(t: torch.Tensor) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors of all ranks along dim 0, in rank order (identity alone)."""
    if not is_distributed():
        return t
    src = t.detach().contiguous().to(_comm_device(t))
    parts = [torch.empty_like(src) for _ in range(world_size())]
    dist.all_gather(parts, src)
    return torch.cat(parts).to(t.device)


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather_cat` for tensors whose first dimension differs between ranks."""
    if not is_distributed():
        return t
    dev = _comm_device(t)
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.empty_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.detach().to(dev)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(t.device)


def all_gather_object(obj: Any) -> list[Any]:
    """Small picklable objects of every rank, in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on any rank (``flag`` alone in a single process)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device(torch.empty(0)))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_mean(value: float) -> float:
    """Mean of a Python number over ranks."""
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(torch.empty(0)))
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def all_reduce_mean_tensor(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of a tensor over ranks (``values`` itself without a process group)."""
    if not is_distributed():
        return values
    t = values.detach().to(_comm_device(values), copy=True)
    dist.all_reduce(t)
    return t / world_size()


def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """The contiguous block ``[lo, hi)`` of ``n`` items this rank handles (blocks differ by ≤ 1)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return (r * n) // w, ((r + 1) * n) // w
