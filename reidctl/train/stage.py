"""The `train-epoch` stage: checkpoint + dataset + labels.h5 (+ features.h5) → next checkpoint.

One call trains one epoch, the unit the ``loop`` caches. Under ``torchrun`` every rank runs it
with the same arguments; rank 0 writes the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from reidctl import dist
from reidctl.artifacts import read_features, read_labels
from reidctl.data.datasets import load_dataset
from reidctl.device import resolve_device
from reidctl.errors import ReidctlError
from reidctl.extraction import ModelSpec
from reidctl.features import extract_features
from reidctl.methods import get_method
from reidctl.models.weights import init_description
from reidctl.progress import progress_bar
from reidctl.train.checkpoint import load_checkpoint
from reidctl.train.trainer import TrainSession, prepare_determinism, prepare_epoch, resume, train_epoch


@dataclass
class TrainEpochRequest(ModelSpec):
    """Inputs and options of one training epoch.

    Model fields (``arch`` ... ``pretrained``, ``seed``) build a fresh model when ``checkpoint``
    is None. ``overrides`` holds the method options the user gave (``iters``, ``batch_size``,
    ``momentum`` ...); the others come from the checkpoint (same method) or the method's
    defaults (``reidctl.methods.<name>.Params``).
    """

    data: str = ""
    labels: Path | None = None
    dataset: str | None = None
    method: str = "cc"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    features: Path | None = None
    epoch: int | None = None
    workers: int = 4
    device: str = "auto"
    amp: str = "auto"
    deterministic: bool = False
    extract_batch_size: int = 128


def open_session(req: TrainEpochRequest, device: torch.device) -> tuple[TrainSession, dict[str, Any]]:
    """A session continuing ``req.checkpoint``, or a fresh one; and the model's provenance."""
    method_cls = get_method(req.method)
    if req.checkpoint is not None:
        payload = load_checkpoint(req.checkpoint)
        session = resume(payload, method_cls, overrides=req.overrides, device=device, amp=req.amp,
                         seed=req.seed, source=req.checkpoint)
        return session, {"init": f"checkpoint:{Path(req.checkpoint).name}", "from_epoch": session.epoch}
    model, provenance = req.build()
    params = method_cls.resolve_params(None, req.overrides)
    session = TrainSession(model, method_cls(params), device=device, amp=req.amp, seed=req.seed)
    return session, {"init": init_description(req.pretrained, req.weights)}


def run_train_epoch(req: TrainEpochRequest, out: str | Path) -> dict[str, Any]:
    """Train one epoch and write the checkpoint ``out``; returns the epoch's summary."""
    if req.labels is None:
        raise ReidctlError("--labels is required (a labels file from `reidctl cluster` or `reidctl refine`)")
    ds = load_dataset(req.data, req.dataset)
    train = ds.train
    if not train:
        raise ReidctlError(f"{ds.root}: the dataset has no train images")
    relpaths = [s.relpath for s in train]
    method_cls = get_method(req.method)
    labels = read_labels(req.labels, expect_paths=relpaths, load=method_cls.label_arrays)
    if req.deterministic:
        prepare_determinism()
    with dist.distributed(resolve_device(req.device)) as device:
        session, provenance = open_session(req, device)
        epoch = session.epoch + 1 if req.epoch is None else req.epoch
        if epoch < 0:
            raise ReidctlError("--epoch must not be negative")
        if req.features is not None:
            feats = read_features(req.features, expect_paths=relpaths)
            features, parts, feats_digest = feats.feats, feats.parts, feats.meta.digest
        else:
            with progress_bar("extract train", len(train), enabled=None if dist.is_main() else False) as adv:
                ext = extract_features(session.model, train, batch_size=req.extract_batch_size,
                                       workers=req.workers, device=device, progress=adv)
            features, parts, feats_digest = ext.feats, ext.parts, "extracted"
        if session.method.uses_parts and parts is None:
            raise ReidctlError(f"--method {req.method} needs part features: use a model with --parts")
        data = prepare_epoch(labels.labels, np.array([s.camid for s in train]), features, parts, labels.extra)
        samples = [train[i] for i in data.rows]
        with progress_bar(f"train epoch {epoch}", session.params.iters,
                          enabled=None if dist.is_main() else False) as advance:
            stats = train_epoch(session, samples, data, epoch=epoch, workers=req.workers,
                                deterministic=req.deterministic, progress=advance)
        if dist.is_main():
            session.save(out, provenance={
                **provenance, "data": str(req.data), "dataset": ds.name, "labels": str(req.labels),
                "inputs": {"labels": labels.meta.digest, "features": feats_digest},
            })
        dist.barrier()
    return {
        "out": str(out), "method": req.method, **stats.to_dict(),
        "outliers": int(np.sum(labels.labels < 0)), "params": session.params.to_dict(),
    }
