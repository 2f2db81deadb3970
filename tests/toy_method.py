"""``toy``: a test-only method that uses every hook of the trainer, shaped like MAR (ALGORITHMS.md §6).

* its own optimiser: SGD with two parameter groups (no weight decay on BatchNorm parameters);
* a per-iteration lr schedule: ``lr · decay^step``, positioned at the session's step count;
* two streams per step: a labelled source dataset (``source``: a dataset folder; labels = its
  ground-truth identities) and the clustered target, in two forward passes;
* its own epoch: one pass over the source (``len(source) // source_batch`` steps);
* a persistent ``memory_rows × K_source`` multilabel memory of the target rows, updated after
  every backward pass and saved through ``persistent_arrays``;
* a prelude, ``stats``, run once before epoch 0: the per-channel mean and std of the train
  images (MAR normalises with dataset statistics); its output reaches ``refine`` as the option
  ``stats``, which reports it (``loop --stats FILE`` hands a ready-made one).

Registering it is one line (``METHODS["toy"] = Toy``); nothing else in reidctl knows of it.

It records what it saw (``trace``) so that the tests can check the trainer fed it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from reidctl.artifacts import file_digest
from reidctl.data.base import Dataset
from reidctl.data.datasets import load_dataset
from reidctl.data.images import load_image
from reidctl.errors import ReidctlError
from reidctl.methods.base import EpochData, Method, Refined, TrainParams
from reidctl.options import option, resolve
from reidctl.pipeline.rundir import write_json
from reidctl.methods.prelude import Prelude, RunContext
from reidctl.train.contract import Forward, StepResult, StreamContext, positioned
from reidctl.train.streams import labelled_stream, zip_streams


@dataclass
class ToyParams(TrainParams):
    source: str = field(default="", metadata=option("toy: a labelled dataset folder (its train split)."))
    source_batch: int = field(default=8, metadata=option("toy: source images per step."))
    memory_rows: int = field(default=24, metadata=option("toy: memory rows, at least the train images."))
    decay: float = field(default=0.5, metadata=option("toy: the lr's factor per step."))
    momentum: float = field(default=0.9, metadata=option("toy: SGD momentum."))

    def check(self) -> None:
        super().check()
        if not self.source:
            raise ReidctlError("--source is required")
        if self.source_batch < 1 or self.memory_rows < 1 or not 0 < self.decay <= 1:
            raise ReidctlError("bad toy options")


@dataclass
class StatsOptions:
    images: int = field(default=0, metadata=option("toy: train images the statistics read (0 = all)."))


@dataclass
class ToyRefineOptions:
    stats: str | None = field(default=None, metadata=option("toy: a statistics file of the stats prelude.",
                                                            loop=False))


def image_stats(ctx: RunContext, options: StatsOptions, out: Path) -> dict[str, Any]:
    """The prelude: per-channel mean and std of the train images, as JSON."""
    train = load_dataset(ctx.data, ctx.dataset).train
    chosen = train[:options.images] if options.images else train
    pixels = np.concatenate([np.asarray(load_image(s.path), np.float64).reshape(-1, 3) for s in chosen]) / 255
    stats = {"images": len(chosen), "mean": pixels.mean(0).round(6).tolist(), "std": pixels.std(0).round(6).tolist()}
    write_json(out, stats)
    return stats


def read_stats(path: Path, ds: Dataset) -> str:
    if "mean" not in json.loads(Path(path).read_text()):
        raise ReidctlError(f"{path}: not a statistics file")
    return file_digest(path)


STATS = Prelude(name="stats", output="stats.json", Options=StatsOptions, run=image_stats, feeds="stats",
                read_given=read_stats, resolve=lambda given, train: resolve(StatsOptions, given, what="stats"),
                help="per-channel image statistics")


class Agents(nn.Module):
    """One agent per source identity; logits = 10 · cos(feature, agent)."""

    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.agents = nn.Linear(channels, k, bias=False)

    def forward(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = F.normalize(outputs["global"].float(), dim=1)
        return {"logits": 10 * z @ F.normalize(self.agents.weight, dim=1).t()}


@dataclass
class ToyState:
    rows: torch.Tensor  # the epoch's target rows in the train split


def is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


class Toy(Method):
    name = "toy"
    Params = ToyParams
    params: ToyParams
    scheduler_interval = "iteration"
    RefineOptions = ToyRefineOptions
    preludes = (STATS,)

    @classmethod
    def refine(cls, features: Any, labels: np.ndarray, extra: Mapping[str, Any], options: Mapping[str, Any],
               *, seed: int = 1) -> Refined:
        """Labels unchanged; reports the prelude's statistics it was handed."""
        opts = resolve(ToyRefineOptions, options, what="`refine --method toy`")
        stats = json.loads(Path(opts.stats).read_text()) if opts.stats else {}
        return Refined(np.asarray(labels, np.int32), summary={"stats_mean": stats.get("mean")},
                       options={"stats": bool(opts.stats)})

    def __init__(self, params: ToyParams | None = None) -> None:
        super().__init__(params)
        self.source = load_dataset(self.params.source).train
        _, self.source_labels = np.unique([s.pid for s in self.source], return_inverse=True)
        k = int(self.source_labels.max()) + 1
        self.memory = np.zeros((self.params.memory_rows, k), dtype=np.float32)
        self.visits = np.zeros(self.params.memory_rows, dtype=np.int64)
        self.scheduler: LRScheduler | None = None
        self.trace: dict[str, list[Any]] = {"lr": [], "source": [], "target": []}

    # ---- optimisation

    def build_heads(self, model: nn.Module) -> Agents:
        return Agents(model.channels, self.memory.shape[1])

    def configure_optimizer(self, model: nn.Module, heads: nn.Module | None) -> torch.optim.Optimizer:
        p = self.params
        bn = {id(q) for m in (model, heads) for mod in m.modules() if is_bn(mod) for q in mod.parameters()}
        trainable = [q for m in (model, heads) for q in m.parameters() if q.requires_grad]
        return torch.optim.SGD([
            {"params": [q for q in trainable if id(q) not in bn], "weight_decay": p.weight_decay},
            {"params": [q for q in trainable if id(q) in bn], "weight_decay": 0.0},
        ], lr=p.lr, momentum=p.momentum)

    def configure_scheduler(self, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> LRScheduler:
        decay = self.params.decay
        self.scheduler = positioned(LambdaLR(optimizer, lambda s: decay ** s), step)
        return self.scheduler

    # ---- the epoch

    def epoch_length(self, data: EpochData) -> int:
        return len(self.source) // self.params.source_batch

    def train_stream(self, ctx: StreamContext) -> Iterator[Any]:
        target = super().train_stream(ctx)  # ctx.length identity-balanced target batches
        source = labelled_stream(ctx, self.source, self.source_labels, batch_size=self.params.source_batch)
        return zip_streams(source, target)

    def make_state(self, data: EpochData, heads: nn.Module | None) -> ToyState:
        if data.rows.max() >= self.params.memory_rows:
            raise ReidctlError(f"--memory-rows {self.params.memory_rows} is fewer than the train images")
        return ToyState(torch.as_tensor(data.rows, device=data.device))

    def training_step(self, inputs: Any, forward: Forward, state: ToyState) -> StepResult:
        source, target = inputs
        out_s, out_t = forward([source.images, target.images])  # per-domain BN statistics, one DDP pass
        l_source = F.cross_entropy(out_s["logits"], source.labels)
        rows = state.rows[target.index].cpu().numpy()
        seen = torch.as_tensor(self.visits[rows] > 0, device=target.images.device)
        prior = torch.as_tensor(self.memory[rows], device=target.images.device)
        soft = -(prior * F.log_softmax(out_t["logits"], dim=1)).sum(1)
        l_target = (soft * seen).sum() / seen.sum().clamp(min=1)
        self.trace["lr"].append([g["lr"] for g in self.scheduler.optimizer.param_groups])
        self.trace["source"].append(source.index.tolist())
        self.trace["target"].append(target.index.tolist())
        return StepResult(l_source + 0.1 * l_target, {"source_ce": l_source.detach(), "target": l_target.detach()},
                          {"logits": out_t["logits"].detach(), "rows": rows})

    def after_backward(self, batch: Any, outputs: dict[str, Any], state: ToyState) -> None:
        """The memory: a row's first visit stores its multilabel, later visits move towards it."""
        rows = outputs["rows"]
        label = F.softmax(outputs["logits"].float(), dim=1).cpu().numpy()
        first = self.visits[rows] == 0
        self.memory[rows] = np.where(first[:, None], label, 0.9 * self.memory[rows] + 0.1 * label)
        np.add.at(self.visits, rows, 1)

    # ---- persistent state

    def persistent_arrays(self) -> dict[str, np.ndarray]:
        return {"memory": self.memory, "visits": self.visits}

    def load_persistent_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.memory = np.array(arrays["memory"], dtype=np.float32)
        self.visits = np.array(arrays["visits"], dtype=np.int64)
