"""The `train-epoch` stage: checkpoint + dataset + labels.h5 (+ features.h5) → next checkpoint.

One call trains one epoch, the unit the ``loop`` caches. Under ``torchrun`` every rank runs it
with the same arguments; rank 0 writes the checkpoint, and the method's persistent arrays (when
it has any) to ``<out>.state.h5`` beside it, which the checkpoint names and a later epoch reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from reidctl.artifacts import (
    METHOD_STATE,
    check_output,
    check_rows,
    read_features,
    read_labels,
)
from reidctl.data.base import Sample
from reidctl.data.datasets import load_dataset
from reidctl.data.source import refuse_source_is_target
from reidctl.data.stats import input_norm
from reidctl.errors import ArtifactError, ReidctlError
from reidctl.methods import get_method
from reidctl.methods.plan import Plan, refuse_source_options
from reidctl.models.checkpoint import (
    CHECKPOINT_SCHEMA,
    load_checkpoint,
    method_arrays_path,
)
from reidctl.models.features import extract_features
from reidctl.models.reid import ReidModel
from reidctl.models.spec import ModelSpec
from reidctl.models.weights import init_description
from reidctl.progress import progress_bar
from reidctl.runtime import Runtime, dist
from reidctl.runtime.device import resolve_device
from reidctl.runtime.processes import check_loader_options
from reidctl.stages.summary import StageSummary
from reidctl.train.trainer import (
    EpochStats,
    TrainSession,
    prepare_determinism,
    prepare_epoch,
    resume,
    train_epoch,
)


@dataclass(frozen=True)
class TrainEpochSummary(StageSummary):
    """What one training epoch did: the checkpoint, the epoch's statistics (loss, rate, steps,
    the method's logged figures ...), the rows trained on and the parameters it ran with."""

    out: str
    method: str
    stats: EpochStats
    outliers: int  # rows of the labels left out (−1)
    rows: int  # train images the labels cover
    train_images_not_in_labels: int
    params: dict[str, Any]
    source_note: str | None = None  # why the source classifier started fresh (said to the user)

    def to_json(self) -> dict[str, Any]:
        note = {"source_note": self.source_note} if self.source_note else {}
        return {"out": self.out, "method": self.method, **self.stats.to_dict(), "outliers": self.outliers,
                "rows": self.rows, "train_images_not_in_labels": self.train_images_not_in_labels,
                "params": self.params, **note}


@dataclass
class TrainEpochRequest:
    """Inputs and options of one training epoch.

    ``model`` builds a fresh model when its ``checkpoint`` is None. ``overrides`` holds the
    method options the user gave (``iters``, ``batch_size``, ``momentum`` ..., the method's
    switches that training reads, as NCPLR's ``global_local``, and the labelled source's
    ``aux_*``); the others come from the checkpoint (same method) or the method's defaults
    (``reidctl.methods.<name>.Params``, ``Source``).
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    runtime: Runtime = field(default_factory=Runtime)
    data: str = ""
    labels: Path | None = None
    dataset: str | None = None
    method: str = "cc"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    features: Path | None = None
    epoch: int | None = None
    force: bool = False  # overwrite an existing --out that is not a reidctl checkpoint


def open_session(req: TrainEpochRequest, device: torch.device, plan: Plan | None = None
                 ) -> tuple[TrainSession, dict[str, Any]]:
    """A session continuing ``req.model.checkpoint``, or a fresh one, with the options ``plan``
    (default: the method's plan of ``req.overrides``) says were given (the training's and the
    labelled source's); and the model's provenance."""
    plan = plan if plan is not None else get_method(req.method).plan(req.overrides, stage="train")
    method_cls, spec, run = plan.method, req.model, req.runtime
    if spec.checkpoint is not None:
        payload = load_checkpoint(spec.checkpoint)
        session = resume(payload, method_cls, overrides=plan.train_given, device=device, amp=run.amp, seed=run.seed,
                         source=spec.checkpoint, source_options=plan.source_given)
        return session, {"init": f"checkpoint:{Path(spec.checkpoint).name}", "from_epoch": session.epoch}
    refuse_source_options(method_cls, plan.source_given, plan.source)  # (a checkpoint may hold the source)
    model, provenance = spec.build(run.seed)
    session = TrainSession(model, method_cls(plan.train), device=device, amp=run.amp, seed=run.seed, source=plan.source)
    return session, {"init": init_description(spec.pretrained, spec.weights)}


def train_rows(train: Sequence[Sample], paths: Sequence[str], source: Path) -> list[Sample]:
    """The train samples of a labels file's rows, in its order.

    Its rows must be images of the train split; they may be a subset of it (images that
    ``--skip-bad-images`` left out at extraction), never a row the split does not have.
    """
    by_path = {s.relpath: s for s in train}
    rows = []
    for i, p in enumerate(paths):
        sample = by_path.get(p)
        if sample is None:
            raise ArtifactError(f"{source}: row {i} is '{p}', which is not an image of the train split "
                                "(made from another dataset, or the folder changed since?)")
        rows.append(sample)
    return rows


def check_features(path: Path, meta_model: Mapping[str, Any] | None, dim: int, parts: np.ndarray | None,
                   model: ReidModel) -> None:
    """Refuse centroid features that the model could not have made: another feature size, part
    count or structure than the model being trained (checked before any training step)."""
    want_parts = model.config.parts
    have_parts = 0 if parts is None else parts.shape[1]
    if dim != model.channels or have_parts != want_parts:
        raise ArtifactError(f"{path}: holds {dim}-d features with {have_parts} parts, but the model being trained "
                            f"({model.config.arch}, --parts {want_parts}) makes {model.channels}-d features with "
                            f"{want_parts} parts; extract them with this model")
    if meta_model:
        differ = [f"{f} {meta_model.get(f)} vs {getattr(model.config, f)}" for f in ("arch", "pooling", "parts",
                  "last_stride") if f in meta_model and meta_model[f] != getattr(model.config, f)]
        if differ:
            raise ArtifactError(f"{path}: was extracted with another model than the one being trained "
                                f"({'; '.join(differ)}); extract them with this model")


@dataclass
class EpochRows:
    """The train rows of an epoch, their labels (-1 = outlier) and the labels file's arrays."""

    train: list[Sample]
    labels: np.ndarray
    paths: list[str] | None  # the rows' relative paths, when a labels file fixes them
    extra: Mapping[str, Any]
    digest: str | None  # the labels file's


def _epoch_rows(req: TrainEpochRequest, split: Sequence[Sample], label_arrays: Sequence[str],
                feature_paths: Sequence[str] | None) -> EpochRows:
    """The rows of the labels file; for a method without pseudo labels, every train image
    (those of ``--features``, ``feature_paths``, when given) numbered 0..N-1."""
    if req.labels is None:
        paths = None if feature_paths is None else list(feature_paths)
        train = list(split) if paths is None else train_rows(split, paths, Path(req.features))
        return EpochRows(train, np.arange(len(train), dtype=np.int64), paths, {}, None)
    labels = read_labels(req.labels, load=label_arrays)
    missing = [name for name in label_arrays if name not in labels.extra]
    if missing:
        raise ArtifactError(f"{req.labels}: has no {', '.join(repr(m) for m in missing)} array, which --method "
                            f"{req.method} trains with; make the labels with `reidctl refine --method {req.method}`")
    return EpochRows(train_rows(split, labels.paths, Path(req.labels)), labels.labels, list(labels.paths),
                     labels.extra, labels.meta.digest)


def check_state_output(arrays: Mapping[str, Any], req: TrainEpochRequest, out: str | Path) -> None:
    """Refuse to write the method's persistent ``arrays`` over a file that is not a method state
    (unless ``--force``), or over the state of the checkpoint this epoch continues."""
    if not arrays:
        return
    inputs = (req.labels, req.features, req.model.checkpoint,
              None if req.model.checkpoint is None else method_arrays_path(req.model.checkpoint))
    check_output(method_arrays_path(out), schema=METHOD_STATE, inputs=inputs, force=req.force)


def trained_source(session: TrainSession) -> str:
    """The labelled source this epoch trains on ('' for none): the joint step's (given now or held
    by the checkpoint), or the one a method that learns the source itself (MAR) reads from its
    parameters of that name."""
    if session.source is not None:
        return session.source.aux_data
    return getattr(session.params, "aux_data", "")


def run_train_epoch(req: TrainEpochRequest, out: str | Path) -> TrainEpochSummary:
    """Train one epoch and write the checkpoint ``out``; returns the epoch's summary."""
    method_cls, spec, run = get_method(req.method), req.model, req.runtime
    # every bad option fails before any work (another method's, NCPLR's --lambda1 that only its clustering reads)
    plan = method_cls.plan(req.overrides, stage="train")
    if req.labels is None and method_cls.clusters:
        raise ReidctlError("--labels is required (a labels file from `reidctl cluster` or `reidctl refine`)")
    if req.labels is not None and not method_cls.clusters:
        raise ReidctlError(f"--method {req.method} trains on every train image without pseudo labels: drop --labels")
    check_loader_options(run.extract_batch_size, run.workers, batch_flag="--extract-batch-size")
    check_output(out, schema=CHECKPOINT_SCHEMA, inputs=(req.labels, req.features, spec.checkpoint, spec.weights),
                 force=req.force)
    ds = load_dataset(req.data, req.dataset)
    if not ds.train:
        raise ReidctlError(f"{ds.root}: the dataset has no train images")
    feats = read_features(req.features) if req.features is not None else None
    rows = _epoch_rows(req, ds.train, method_cls.label_arrays, feats and feats.paths)
    if feats is not None:
        check_rows(feats.path, feats.paths, rows.paths)
    train, labels = rows.train, rows.labels
    if run.deterministic:
        prepare_determinism()
    with dist.distributed(resolve_device(run.device)) as device:
        session, provenance = open_session(req, device, plan)
        refuse_source_is_target(trained_source(session), req.data)
        epoch = session.epoch + 1 if req.epoch is None else req.epoch
        if epoch < 0:
            raise ReidctlError("--epoch must not be negative")
        norm = input_norm(session.model.config, ds.train)
        if feats is not None:
            check_features(feats.path, feats.meta.params.get("model"), feats.feats.shape[1], feats.parts,
                           session.model)
            features, parts, feats_digest = feats.feats, feats.parts, feats.meta.digest
        else:
            with progress_bar("extract train", len(train), enabled=None if dist.is_main() else False,
                              unit="img") as adv:
                ext = extract_features(session.model, train, batch_size=run.extract_batch_size, workers=run.workers,
                                       device=device, amp=run.amp, progress=adv, norm=norm)
            features, parts, feats_digest = ext.feats, ext.parts, "extracted"
        if session.method.uses_parts and parts is None:
            source = req.features if req.features is not None else spec.checkpoint or "the fresh model"
            raise ReidctlError(f"--method {req.method} needs part features, and {source} has none: "
                               "train a model with --parts")
        data = prepare_epoch(labels, np.array([s.camid for s in train]), features, parts, rows.extra)
        samples = [train[i] for i in data.rows]
        steps = session.method.epoch_length(dataclasses.replace(data, epoch=epoch, device=device))
        with progress_bar(f"train epoch {epoch}", steps, enabled=None if dist.is_main() else False) as advance:
            stats = train_epoch(session, samples, data, epoch=epoch, workers=run.workers,
                                deterministic=run.deterministic, progress=advance, norm=norm)
        if dist.is_main():
            arrays = session.method.persistent_arrays()  # once: a MAR memory is hundreds of MB
            check_state_output(arrays, req, out)
            session.save(out, arrays=arrays, provenance={
                **provenance, "data": str(req.data), "dataset": ds.name, "labels": str(req.labels),
                "norm": {"mean": list(norm.mean), "std": list(norm.std)},  # the deployed model's preprocessing
                "inputs": {"labels": rows.digest, "features": feats_digest},
            })
        dist.barrier()
    return TrainEpochSummary(str(out), req.method, stats, int(np.sum(labels < 0)), len(train),
                             len(ds.train) - len(train), session.params.to_dict(), session.source_note)
