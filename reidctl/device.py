"""Resolving ``--device`` and the CUDA-only speed-ups (AMP, channels-last)."""

from __future__ import annotations

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
