"""Cluster Contrast (Dai et al. 2021), the shared baseline: ClusterNCE against a cluster memory.

Per epoch (ALGORITHMS.md §3.1, §3.5): the memory is initialised with the normalised centroids
of the clustered train features, each batch is scored against it with ClusterNCE, and after the
backward pass the memory moves towards the batch's features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from reidctl.errors import ReidctlError
from reidctl.methods.base import Batch, EpochData, Method
from reidctl.options import option
from reidctl.train.camera import CameraAwareParams
from reidctl.train.memory import UPDATES, ClusterMemory


@dataclass
class CCParams(CameraAwareParams):
    """The official Market-1501 command's values (README; argparse defaults differ: batch 2,
    num-instances 4, iters 400, momentum 0.2). MSMT17 uses ``iters=400``; the shipped IBN log
    uses ``memory_update='hard'``. The shared options (iters 200, batch 256, 16 instances,
    Adam 3.5e-4 / 5e-4, StepLR 20 × 0.1, 4 BN chunks) are inherited from
    :class:`~reidctl.train.contract.TrainParams`, which holds exactly CC's values; the camera-aware
    term's (off) from :class:`~reidctl.train.camera.CameraAwareParams`."""

    momentum: float = field(default=0.1, metadata=option("Cluster memory momentum m in C = m·C + (1−m)·x."))
    temperature: float = field(default=0.05, metadata=option("ClusterNCE temperature τ."))
    memory_update: str = field(default="sample", metadata=option(
        "Memory update: sample (official), hard (the official code's use_hard: each cluster steps with its member "
        "least similar to its centroid) or mean."))

    def check(self) -> None:
        super().check()
        if self.memory_update not in UPDATES:
            raise ReidctlError(f"--memory-update {self.memory_update}: choose one of {', '.join(UPDATES)}")
        if not 0.0 <= self.momentum < 1.0:
            raise ReidctlError("--momentum must lie in [0, 1)")
        if self.temperature <= 0:
            raise ReidctlError("--temperature must be positive")


class ClusterContrast(Method):
    """``cc``: ClusterNCE on the global feature; memory update ``sample`` | ``hard`` | ``mean``."""

    name = "cc"
    Params = CCParams
    params: CCParams

    def make_state(self, data: EpochData, heads: nn.Module | None) -> ClusterMemory:
        p = self.params
        return ClusterMemory.from_features(
            data.features, data.labels, device=data.device,
            temperature=p.temperature, momentum=p.momentum, update=p.memory_update,
        )

    def loss(self, batch: Batch, outputs: dict[str, torch.Tensor], state: ClusterMemory
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        loss = state.loss(outputs["global"], batch.labels)
        return loss, {"nce": loss.detach()}

    def after_backward(self, batch: Batch, outputs: dict[str, torch.Tensor], state: ClusterMemory) -> None:
        state.update(outputs["global"], batch.labels)

    def epoch_summary(self, state: ClusterMemory) -> dict[str, Any]:
        return {"memory_size": len(state)}
