"""Resolving ``--device`` and the defaults that depend on it (``--workers``, extraction batch)."""

from __future__ import annotations

import os

import torch

from reidctl.errors import ReidctlError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a user error."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ReidctlError(f"--device {spec}: no CUDA device is available (use --device cpu or auto)")
        try:
            device = torch.device(spec)
        except RuntimeError:
            raise ReidctlError(f"--device {spec}: not a device name (cpu, cuda, cuda:N)") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ReidctlError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    raise ReidctlError(f"--device {spec}: not a device name (auto, cpu, cuda, cuda:N)")


def resolve_workers(workers: int | None, device: torch.device) -> int:
    """DataLoader worker processes: ``workers`` when given, else 0 on a CPU and min(8, CPUs − 1)
    with CUDA.

    On a CPU the model's own threads already use every core; worker processes beside them slow
    each step down (on 2 cores, training ran at 75–80 images/s with 1 or 2 workers and at 102
    with none: ``bench/throughput.py``). With a GPU, workers decode while the GPU computes.
    """
    if workers is not None:
        return workers
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def resolve_extract_batch(batch_size: int | None, device: torch.device) -> int:
    """Images per extraction forward pass: ``batch_size`` when given, else 64 on a CPU (measured
    525 images/s against 452 at 128 and 407 at 256 for MobileNetV2 on 2 cores: the activations of
    a smaller batch stay in cache) and 256 with CUDA."""
    if batch_size is not None:
        return batch_size
    return 256 if device.type == "cuda" else 64
