"""Supervised source pretraining: a model and its agents learnt on a labelled dataset.

MAR starts from a model trained with a softmax over the source identities (the authors ship an
MSMT17 one, ``pretrained_MSMT17.pth``; ALGORITHMS.md §6.2), whose classifier rows become the
agents. Here that training is a normalised softmax, ``CE(scale · cos(z, a_k), label)``, the very
loss MAR keeps optimising on the source (L_AL), so the agents MAR starts from are the ones that
loss shapes. The optimiser and schedule are MAR's (SGD, no decay on BatchNorm, MultiStep at
5/8 and 7/8 stepped at the start of each epoch); the lr is higher, as for any training from
ImageNet weights. The official pretraining command is not published: these defaults are ours.

``reidctl pretrain`` runs it alone; ``loop --method mar`` without ``--checkpoint`` runs it once
as its ``pretrain`` prelude. Its checkpoint starts any method (``loop --checkpoint source.pt``):
the domain-adaptive setting.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LRScheduler

from reidctl import progress
from reidctl.runtime import dist
from reidctl.artifacts import check_output
from reidctl.data.stats import input_norm
from reidctl.runtime.device import resolve_device
from reidctl.errors import ReidctlError
from reidctl.train.agents import AgentClassifier
from reidctl.methods.mar.losses import agent_learning_loss, normalized_agents
from reidctl.data.source import DEFAULT_SOURCE_SPLITS, SOURCE_SPLITS, SourceData, load_source
from reidctl.data.stats import Norm
from reidctl.data.transforms import TrainTransform
from reidctl.models.reid import ReidModel
from reidctl.models.spec import ModelSpec
from reidctl.options import option, resolve, unused
from reidctl.runtime import Runtime
from reidctl.progress import progress_bar
from reidctl.methods.prelude import Prelude, RunContext
from reidctl.models.checkpoint import CHECKPOINT_SCHEMA, load_checkpoint, payload_digest
from reidctl.train.contract import Batch, EpochData, StreamContext, TrainingMethod, TrainParams
from reidctl.train.optim import LR_DROPS, multistep_at_epoch_start, official_milestones, sgd_no_bn_decay
from reidctl.train.streams import labelled_stream
from reidctl.train.trainer import TrainSession, prepare_determinism, train_epoch


def mar_transform(height: int, width: int, norm: Norm) -> TrainTransform:
    """MAR's training augmentation (§6.4): flip, resize, pad 7 + random crop, the dataset's own
    normalisation, no random erasing."""
    return TrainTransform(height, width, pad=7, mean=norm.mean, std=norm.std, erasing=False)


@dataclass
class PretrainParams(TrainParams):
    """Our defaults for supervised source pretraining (no official command exists)."""

    epochs: int = field(default=20, metadata=option("Pretraining epochs (passes over the source)."))
    batch_size: int = field(default=64, metadata=option("Source images per step."))
    # shuffled batches, one pass per epoch, a MultiStep schedule: these shared options do not apply
    iters: int = field(default=200, metadata=unused())
    num_instances: int = field(default=1, metadata=unused())
    step_size: int = field(default=20, metadata=unused())
    sampler_anchor: str = field(default="first", metadata=unused())
    lr: float = field(default=0.01, metadata=option("SGD learning rate."))
    weight_decay: float = field(default=5e-4, metadata=option("Weight decay (none on BatchNorm parameters)."))
    momentum: float = field(default=0.9, metadata=option("SGD momentum."))
    gamma: float = field(default=0.1, metadata=option("MultiStep lr factor (at 5/8 and 7/8 of the run)."))
    lr_drops: str = field(default="early", metadata=option(
        "When the lr drops: early (one epoch before 5/8 and 7/8 of the run, reidctl's pretraining recipe) or "
        "milestones (at them, as MAR's authors ran their schedule)."))
    scale: float = field(default=30.0, metadata=option("Normalised softmax scale (MAR's scala_ce)."))
    bn_chunks: int = field(default=1, metadata=option("BatchNorm statistics per chunk of the batch (1 = plain)."))

    def check(self) -> None:
        super().check()
        if self.epochs < 1:
            raise ReidctlError("--epochs must be at least 1")
        if self.lr_drops not in LR_DROPS:
            raise ReidctlError(f"--lr-drops {self.lr_drops}: choose one of {', '.join(LR_DROPS)}")
        if self.momentum < 0 or self.scale <= 0:
            raise ReidctlError("--momentum must not be negative and --scale must be positive")


class AgentTraining:
    """What source pretraining and MAR share (a mixin before ``TrainingMethod``): the agents as
    trainer heads over the source's identities, and MAR's SGD and MultiStep schedule laid out
    over ``schedule_length()`` epochs."""

    params: Any
    source: SourceData | None

    def schedule_length(self) -> int:
        raise NotImplementedError

    def build_heads(self, model: ReidModel) -> AgentClassifier:
        if self.source is None:
            raise ReidctlError("training the agents needs their labelled source dataset")
        return AgentClassifier(model.channels, torch.as_tensor(self.source.pids))

    def configure_optimizer(self, model: nn.Module, heads: nn.Module | None) -> torch.optim.Optimizer:
        p = self.params
        return sgd_no_bn_decay((model, heads), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)

    def configure_scheduler(self, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> LRScheduler:
        return multistep_at_epoch_start(optimizer, epoch, official_milestones(self.schedule_length()),
                                        self.params.gamma, self.params.lr_drops)


class SourcePretraining(AgentTraining, TrainingMethod):
    """Normalised softmax over the source identities (not a registered unsupervised method:
    it trains on ground-truth labels of a *labelled* dataset)."""

    name = "pretrain"
    Params = PretrainParams
    params: PretrainParams
    clusters = False

    def __init__(self, params: PretrainParams | None = None, source: SourceData | None = None) -> None:
        super().__init__(params)
        self.source = source

    def schedule_length(self) -> int:
        return self.params.epochs

    def epoch_length(self, data: EpochData) -> int:
        return len(data.labels) // self.params.batch_size

    def train_stream(self, ctx: StreamContext) -> Iterable[Batch]:
        return labelled_stream(ctx, ctx.samples, ctx.data.labels, batch_size=ctx.batch_size,
                               transform=mar_transform(ctx.height, ctx.width, ctx.norm))

    def make_state(self, data: EpochData, heads: nn.Module | None) -> None:
        return None

    def loss(self, batch: Batch, outputs: dict[str, torch.Tensor], state: None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        z = torch.nn.functional.normalize(outputs["global"].float(), dim=1)
        loss = agent_learning_loss(z, outputs["agents"], batch.labels, self.params.scale)
        nearest = (z.detach() @ normalized_agents(outputs["agents"].detach()).t()).argmax(1)
        return loss, {"ce": loss.detach(), "accuracy": (nearest == batch.labels).float().mean()}


@dataclass
class PretrainRequest:
    """``reidctl pretrain``: a labelled dataset and the fresh model to train on it."""

    model: ModelSpec = field(default_factory=ModelSpec)
    runtime: Runtime = field(default_factory=Runtime)
    data: str = ""
    dataset: str | None = None
    splits: str = DEFAULT_SOURCE_SPLITS
    params: PretrainParams = field(default_factory=PretrainParams)
    force: bool = False


def run_pretrain(req: PretrainRequest, out: str | Path) -> dict[str, Any]:
    """Train ``req.params.epochs`` epochs on the source's identities; write the checkpoint ``out``
    (model + agents, method ``pretrain``) and return a summary."""
    p, spec, run = req.params, req.model, req.runtime
    p.check()
    if req.splits not in SOURCE_SPLITS:  # (in `loop`, the prelude refused it as --aux-splits already)
        raise ReidctlError(f"--splits {req.splits}: choose train or train,test")
    check_output(out, schema=CHECKPOINT_SCHEMA, inputs=(spec.checkpoint, spec.weights), force=req.force)
    source = load_source(req.data, req.dataset, req.splits)
    if len(source.samples) < p.batch_size:
        raise ReidctlError(f"{source.root}: {len(source.samples)} labelled images cannot fill a batch of "
                           f"{p.batch_size}; lower --batch-size")
    if run.deterministic:
        prepare_determinism()
    model, provenance = spec.build(run.seed)
    n = len(source.samples)
    data = EpochData(labels=source.labels, camids=np.array([s.camid for s in source.samples], np.int64),
                     features=np.zeros((n, 0), np.float32), parts=None, rows=np.arange(n, dtype=np.int64),
                     num_clusters=source.identities)
    start = time.perf_counter()
    with dist.distributed(resolve_device(run.device)) as device:
        session = TrainSession(model, SourcePretraining(p, source), device=device, amp=run.amp, seed=run.seed)
        norm = input_norm(model.config, source.train or source.samples)
        history = []
        for epoch in range(p.epochs):
            steps = session.method.epoch_length(data)
            with progress_bar(f"pretrain epoch {epoch}", steps, enabled=None if dist.is_main() else False) as adv:
                stats = train_epoch(session, source.samples, data, epoch=epoch, workers=run.workers,
                                    deterministic=run.deterministic, progress=adv, norm=norm)
            history.append({"epoch": epoch, "loss": stats.loss, **stats.logs, "lr": stats.lr})
            if dist.is_main():
                _epoch_line(history[-1], p.epochs, stats.seconds, time.perf_counter() - start)
        if dist.is_main():
            session.save(out, provenance={**provenance, "data": str(req.data), "splits": req.splits,
                                          "source_images": n, "source_identities": source.identities,
                                          "norm": {"mean": list(norm.mean), "std": list(norm.std)}})
        dist.barrier()
    return {"out": str(out), "images": n, "identities": source.identities, "splits": req.splits,
            "epochs": p.epochs, "seconds": round(time.perf_counter() - start, 1), "history": history,
            "params": p.to_dict(), "norm": {"mean": norm.mean, "std": norm.std}}


def _epoch_line(h: Mapping[str, Any], epochs: int, seconds: float, elapsed: float) -> None:
    """The line of a finished epoch (stderr, and a run folder's log.jsonl as a progress record):
    ``pretrain epoch 3: loss 2.345, accuracy 45.6%, lr 0.00035, 61.2 s; 4/20 epochs done, ETA 16:19``."""
    done, accuracy = h["epoch"] + 1, h.get("accuracy")
    eta = elapsed / done * (epochs - done)
    event = {"step": "pretrain", "epoch": h["epoch"], "done": done, "total": epochs, "unit": "epoch",
             "loss": float(f"{h['loss']:.6g}"), "accuracy": None if accuracy is None else float(f"{accuracy:.6g}"),
             "lr": float(f"{h['lr']:.6g}"), "seconds": round(seconds, 1), "eta_s": round(eta, 1), "elapsed_s": round(elapsed, 1)}
    line = (f"pretrain epoch {h['epoch']}: loss {h['loss']:.3f}"
            + ("" if accuracy is None else f", accuracy {100 * accuracy:.1f}%")
            + f", lr {h['lr']:.3g}, {seconds:.1f} s; {done}/{epochs} epochs done"
            + (f", ETA {progress.format_clock(eta)}" if done < epochs else ""))
    progress.report(line, event)


# --------------------------------------------------------------------------------------------
# as MAR's prelude in `loop`


#: The prelude's name: its options are ``loop --pretrain-<option>``.
PRETRAIN_NAME = "pretrain"


@dataclass
class PretrainOptions(PretrainParams):
    """The ``pretrain`` prelude's options (``loop --pretrain-epochs`` ...); the source comes from
    MAR's ``--aux-data``/``--aux-dataset``/``--aux-splits`` (fields without flags here)."""

    data: str = ""
    dataset: str | None = None
    splits: str = DEFAULT_SOURCE_SPLITS


def _resolve(given: Mapping[str, Any], train: Mapping[str, Any]) -> PretrainOptions:
    options = resolve(PretrainOptions, given, what="the pretrain stage", prefix=f"{PRETRAIN_NAME}_")
    options.data = str(train.get("aux_data") or "")
    options.dataset = train.get("aux_dataset")
    options.splits = str(train.get("aux_splits") or DEFAULT_SOURCE_SPLITS)
    if options.splits not in SOURCE_SPLITS:
        raise ReidctlError(f"--aux-splits {options.splits}: choose train or train,test")
    return options


def _run(ctx: RunContext, options: PretrainOptions, out: Path) -> dict[str, Any]:
    params = PretrainParams(**{f.name: getattr(options, f.name) for f in dataclasses.fields(PretrainParams)})
    req = PretrainRequest(ctx.model, ctx.runtime, data=options.data, dataset=options.dataset, splits=options.splits,
                          params=params)
    summary = run_pretrain(req, out)
    return {k: summary[k] for k in ("images", "identities", "splits", "epochs", "seconds")} | {
        "final": summary["history"][-1]}


def _read_given(path: Path, ds: Any) -> str:
    """A user's ``--checkpoint`` in place of the stage: a checkpoint with agents (of ``pretrain``
    or of a MAR run); its digest."""
    payload = load_checkpoint(path, mmap=True)
    if payload.get("method") not in ("pretrain", "mar"):
        raise ReidctlError(f"{path}: a checkpoint of --method {payload.get('method')} has no agents; MAR starts from "
                           "one of `reidctl pretrain` (or leave out --checkpoint to pretrain first)")
    return payload_digest(payload, path, arrays=True)  # its content, and that of the method state beside it


def _reads(options: PretrainOptions) -> dict[str, Any]:
    """What the stage reads beyond the target: the source images (their fingerprint)."""
    return {"source": load_source(options.data, options.dataset, options.splits).fingerprint()}


PRETRAIN = Prelude(
    name=PRETRAIN_NAME, output="source.pt", Options=PretrainOptions, run=_run, feeds="checkpoint",
    read_given=_read_given, resolve=_resolve, starts_model=True, reads=_reads,
    help="supervised pretraining on --aux-data, whose checkpoint starts epoch 0",
)
