"""Where and how work runs: the device, mixed precision, ``torchrun`` processes and the number
of loader processes the machine allows. Every layer may use it; it imports only the errors and
the option declarations (and, in its modules, torch).

:class:`Runtime` is the one description of *how* a stage runs, apart from *what* it computes:
every stage request takes one, the loop builds one from its configuration, and the command
line only spells its fields as flags (``--device``, ``--amp`` ...). Nothing in it changes a
result except ``seed`` (and ``amp`` on CUDA); ``deterministic`` makes repeat runs bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reidctl.options import option

#: The default ``--amp``: float32, as the official codes (:mod:`reidctl.runtime.precision`).
DEFAULT_AMP = "off"


@dataclass(frozen=True)
class Runtime:
    """How a stage runs: its device, precision, loader processes, kernels, seed and extraction batch."""

    device: str = field(default="auto", metadata=option("auto, cpu, cuda or cuda:N."))
    amp: str = field(default=DEFAULT_AMP, metadata=option(
        "Mixed precision on CUDA: off (float32, as the official codes), bf16, fp16, or auto (bf16 where the GPU "
        "supports it, else fp16). A CPU always computes in float32."))
    workers: int | None = field(default=None, metadata=option(
        "Data-loading worker processes (default: none on a CPU, whose cores the model already uses; "
        "min(8, CPUs − 1) with CUDA)."))
    deterministic: bool = field(default=False, metadata=option(
        "Deterministic kernels: bit-exact resume and repeat runs (slower on GPU)."))
    seed: int = field(default=1, metadata=option(
        "Random seed: the same seed gives the same result (random initialisation, sampling, drawing)."))
    extract_batch_size: int | None = field(default=None, metadata=option(
        "Images per forward pass when extracting (default: 64 on a CPU, 256 with CUDA)."))
