"""Numeric precision and memory layout of training and extraction.

**float32 by default**, as the official codes train and extract: mixed precision changes the
numbers, so it is an option (``--amp bf16|fp16``, or ``auto`` = bf16 where the GPU supports it,
else fp16), and only on CUDA; on a CPU every mode computes in float32.

Images and weights are kept **channels-last** on every device: the convolutions of oneDNN
(CPU) and cuDNN (CUDA) run faster in that layout and compute the same values up to float
rounding. Measured with ``bench/throughput.py`` on 2 CPU cores, MobileNetV2 at 128×64 runs its
forward pass about 1.4–1.9× and its training step about 1.25× faster than in the default layout.
"""

from __future__ import annotations

import torch

from reidctl.errors import ReidctlError
from reidctl.runtime import DEFAULT_AMP  # noqa: F401 (the default of --amp, re-exported)

AMP_MODES = ("off", "auto", "bf16", "fp16")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device``; None = float32 (always on a CPU)."""
    if amp not in AMP_MODES:
        raise ReidctlError(f"--amp {amp}: choose one of {', '.join(AMP_MODES)}")
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def dtype_name(dtype: torch.dtype | None) -> str:
    """"off" for float32, else the autocast dtype's name (bfloat16, float16)."""
    return "off" if dtype is None else str(dtype).removeprefix("torch.")


def precision_name(amp: str, device: torch.device) -> str:
    """The precision ``amp`` resolves to on ``device``: off (float32), bfloat16 or float16."""
    return dtype_name(resolve_amp(amp, device))


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout of images and convolution weights on ``device`` (channels-last everywhere)."""
    return torch.channels_last


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``, or a disabled one for float32."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
