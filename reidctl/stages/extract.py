"""The `extract` stage: resolve the model and the dataset, extract, write features.h5."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from reidctl.artifacts import FEATURES, check_output, non_finite_rows, write_features
from reidctl.data.base import SPLIT_CHOICES, Dataset, Sample
from reidctl.data.datasets import load_dataset
from reidctl.data.stats import input_norm
from reidctl.errors import ReidctlError
from reidctl.models.checkpoint import checkpoint_digest
from reidctl.models.features import Extracted, extract_features
from reidctl.models.reid import ReidModel
from reidctl.models.spec import ModelSpec
from reidctl.models.weights import model_digest
from reidctl.progress import progress_bar
from reidctl.runtime import Runtime, dist
from reidctl.runtime.device import resolve_device
from reidctl.runtime.precision import DEFAULT_AMP, precision_name
from reidctl.runtime.processes import check_loader_options
from reidctl.stages.summary import StageSummary


@dataclass(frozen=True)
class ExtractSummary(StageSummary):
    """What ``extract`` wrote: the features file, the split, its rows and feature sizes, and the
    unreadable images it skipped (``--skip-bad-images``)."""

    out: str
    split: str
    rows: int
    dim: int
    parts: int  # part stripes per row (0: global features only)
    skipped_images: int
    skipped: list[str]


@dataclass
class ExtractRequest:
    """One split of a dataset through a model: what to read (``data``, ``dataset``, ``split``),
    the model (``model``), how to run (``runtime``) and the stage's own options."""

    model: ModelSpec = field(default_factory=ModelSpec)
    runtime: Runtime = field(default_factory=Runtime)
    data: str = ""
    dataset: str | None = None
    split: str = "train"
    skip_bad_images: bool = False
    force: bool = False  # overwrite an existing --out that is not a features file


def extract_split(
    model: ReidModel, ds: Dataset, split: str, *, batch_size: int | None = None, workers: int | None = None,
    device: str = "auto", amp: str = DEFAULT_AMP, skip_bad_images: bool = False,
) -> tuple[Extracted, list]:
    """Features of one split, with a progress bar; returns them and the rows that were kept."""
    if split not in SPLIT_CHOICES:
        raise ReidctlError(f"unknown split '{split}' (choose one of {', '.join(SPLIT_CHOICES)})")
    check_loader_options(batch_size, workers)
    samples = ds.samples(split)
    if not samples:
        raise ReidctlError(f"{ds.root}: the dataset has no images in split '{split}'")
    dev = resolve_device(device)
    norm = input_norm(model.config, ds.train or samples)
    with progress_bar(f"extract {split}", len(samples), unit="img") as advance:
        ext = extract_features(model, samples, batch_size=batch_size, workers=workers, device=dev, amp=amp,
                               skip_bad_images=skip_bad_images, progress=advance, norm=norm)
    rows = [s for s, k in zip(samples, ext.keep) if k]
    check_finite_features(ext, rows)
    return ext, rows


def check_finite_features(ext: Extracted, rows: Sequence[Sample]) -> None:
    """Refuse features that are not finite instead of writing them (with exit 0): NaN or Inf in
    a row poisons every distance it enters. The weights were checked before extraction
    (:func:`reidctl.models.weights.check_weights`), so what is left is a forward pass that
    overflows: weights too large to use."""
    bad = non_finite_rows(ext.feats, ext.parts)
    if bad.any():
        first = rows[int(np.argmax(bad))].relpath
        raise ReidctlError(f"the model gives features that are not finite (NaN or Inf) for {int(bad.sum())} of "
                           f"{len(bad)} images (e.g. {first}); its weights are unusable (they overflow the "
                           "forward pass)")


def run_extract(req: ExtractRequest, out: str | Path) -> ExtractSummary:
    """Extract ``req.split`` of ``req.data`` and write a features artifact to ``out``."""
    model_spec, run = req.model, req.runtime
    check_output(out, schema=FEATURES, inputs=(model_spec.checkpoint, model_spec.weights), force=req.force)
    ds = load_dataset(req.data, req.dataset)
    wanted = resolve_device(run.device)  # a missing GPU fails before any weights are fetched
    model, provenance = model_spec.build(run.seed)
    # Under torchrun every rank extracts its block; rank 0 writes the file.
    with dist.distributed(wanted) as device:
        ext, rows = extract_split(model, ds, req.split, batch_size=run.extract_batch_size, workers=run.workers,
                                  device=str(device), amp=run.amp, skip_bad_images=req.skip_bad_images)
        main = dist.is_main()
    split_names = [n for n, k in zip(ds.split_of(req.split), ext.keep) if k]
    # ground truth: `all` joins train and test, whose identities are keyed by split (Dataset.pids)
    pids = [p for p, k in zip(ds.pids(req.split), ext.keep) if k]
    params = {**provenance, "layout": ds.layout, "split": req.split, "skip_bad_images": req.skip_bad_images,
              "precision": precision_name(run.amp, device),
              "weights_digest": model_digest(model)}  # the model's identity (``rank`` compares it)
    inputs = {"checkpoint": checkpoint_digest(model_spec.checkpoint)} if model_spec.checkpoint else {}
    if main:
        write_features(
            out, ext.feats, parts=ext.parts,
            camids=np.array([s.camid for s in rows], dtype=np.int64),
            pids=np.array(pids, dtype=np.int64),
            paths=[s.relpath for s in rows], split=split_names,
            params=params, inputs=inputs, seed=run.seed,
            attrs={"skipped_images": len(ext.bad), "sources": {"data": str(req.data), "dataset": ds.name, "dataset_root": str(ds.root)}},
        )
    return ExtractSummary(str(out), req.split, len(rows), int(ext.feats.shape[1]),
                          0 if ext.parts is None else int(ext.parts.shape[1]), len(ext.bad), list(ext.bad))

