"""`loop`: extract → cluster → refine → train-epoch (→ evaluate), epoch after epoch, cached.

Each stage's output sits in ``RUN/epoch_XXX/`` beside a ``STAGE.done.json`` record holding a key
made of the stage, its resolved parameters and the digests of its inputs. Re-running the same
command skips every stage whose record matches; a stage killed half-way left no artifact (writes
are atomic) and no record, so it simply runs again. ``--force-from STAGE`` re-runs that stage and
all later ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from reidctl.artifacts import atomic_path, file_digest, read_meta
from reidctl.cluster.stage import run_cluster
from reidctl.data.base import Dataset
from reidctl.data.datasets import load_dataset
from reidctl.errors import ReidctlError
from reidctl.evaluation_stage import evaluate_feature_file
from reidctl.extraction import ExtractRequest, ModelSpec, run_extract
from reidctl.methods import get_method
from reidctl.methods.icrefine.intra import read_intra_labels
from reidctl.methods.icrefine.stage1 import IntraCameraRequest, loop_params, run_intra_camera
from reidctl.refine import default_cluster_params, run_refine
from reidctl.train.stage import TrainEpochRequest, run_train_epoch

STAGES = ("intra", "extract", "cluster", "refine", "train", "evaluate")  # intra: icrefine's stage 1, once


@dataclass
class LoopConfig:
    """Everything `loop` needs; the CLI fills it from options, notebooks can build it directly."""

    data: str
    run_dir: Path
    method: str = "cc"
    epochs: int = 50
    dataset: str | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    cluster: Mapping[str, Any] = field(default_factory=dict)  # overrides of the method's clustering
    refine: Mapping[str, Any] = field(default_factory=dict)  # method options of `refine`
    train: Mapping[str, Any] = field(default_factory=dict)  # overrides of the method's Params
    intra: Mapping[str, Any] = field(default_factory=dict)  # icrefine stage 1: IntraCameraParams overrides
    eval_every: int = 10
    eval_init: bool = True
    extract_batch_size: int = 128
    workers: int = 2
    device: str = "auto"
    amp: str = "auto"
    deterministic: bool = False
    force_from: str | None = None
    seed: int = 1


def artifact_digest(path: Path) -> str:
    """The content digest of an HDF5 artifact, or a file hash for anything else (checkpoints)."""
    return read_meta(path).digest if path.suffix == ".h5" else file_digest(path)


class Run:
    """A run folder: cached stage records and the JSON-lines log."""

    def __init__(self, root: Path, force_from: str | None) -> None:
        if force_from is not None and force_from not in STAGES:
            raise ReidctlError(f"--force-from {force_from}: choose one of {', '.join(STAGES)}")
        self.root = root
        self.forced = set(STAGES[STAGES.index(force_from):]) if force_from else set()
        root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "log.jsonl"
        for stale in root.rglob(".*.tmp"):  # left by a stage killed mid-write (kill -9)
            stale.unlink(missing_ok=True)

    def log(self, record: Mapping[str, Any]) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def stage(self, epoch_dir: str, stage: str, out_name: str, params: Mapping[str, Any],
              inputs: Mapping[str, str], run: Callable[[Path], dict[str, Any]], epoch: int | str) -> dict[str, Any]:
        """Run ``run(out_path)`` unless a matching record says its output is already there."""
        folder = self.root / epoch_dir
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / out_name
        record_path = folder / f"{stage}.done.json"
        key = hashlib.sha256(json.dumps({"stage": stage, "params": params, "inputs": inputs},
                                        sort_keys=True, default=str).encode()).hexdigest()[:32]
        if stage not in self.forced and record_path.exists() and out.exists():
            record = json.loads(record_path.read_text())
            if record.get("key") == key:
                self.log({"epoch": epoch, "stage": stage, "cached": True, **record["summary"]})
                return record
        t0 = time.perf_counter()
        summary = run(out)
        summary = {**summary, "seconds": round(time.perf_counter() - t0, 2)}
        record = {"key": key, "output": str(out), "digest": artifact_digest(out), "summary": summary}
        with atomic_path(record_path) as tmp:
            tmp.write_text(json.dumps(record, indent=1, default=str))
        self.log({"epoch": epoch, "stage": stage, "cached": False, **summary})
        return record


def _model_params(spec: ModelSpec) -> dict[str, Any]:
    d = dataclasses.asdict(spec)
    d.pop("checkpoint")
    return d


def _intra_stage(run: Run, cfg: LoopConfig, ds: Dataset, model: ModelSpec, common: Mapping[str, Any]
                 ) -> dict[str, Any]:
    """icrefine's stage 1, run once before epoch 0 into ``RUN/intra/`` (cached like any stage);
    or the user's own stage-1 file (``refine`` option ``intra``). Returns its record."""
    given = cfg.refine.get("intra")
    if given is not None:
        if cfg.intra:
            raise ReidctlError("--intra FILE replaces stage 1, so the --intra-* options do not apply with it")
        _, digest = read_intra_labels(given, paths=[s.relpath for s in ds.train],
                                      camids=np.array([s.camid for s in ds.train]))
        return {"output": str(given), "digest": digest, "summary": {"file": str(given)}}
    params = loop_params(cfg.intra, cfg.train)
    req = IntraCameraRequest(**dataclasses.asdict(model), data=cfg.data, dataset=cfg.dataset, params=params,
                             workers=cfg.workers, device=cfg.device, amp=cfg.amp, deterministic=cfg.deterministic,
                             extract_batch_size=cfg.extract_batch_size)
    key = {**common, "model": _model_params(model), "intra": dataclasses.asdict(params),
           "deterministic": cfg.deterministic}
    return run.stage("intra", "intra", "intra.h5", key, {}, lambda out: run_intra_camera(req, out), "intra")


def run_loop(cfg: LoopConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the loop; returns per-epoch records plus the best and the last evaluation."""
    if cfg.epochs < 1:
        raise ReidctlError("--epochs must be at least 1")
    if cfg.eval_every < 0:
        raise ReidctlError("--eval-every must be 0 (never) or positive")
    method_cls = get_method(cfg.method)
    ds = load_dataset(cfg.data, cfg.dataset)
    if not ds.train:
        raise ReidctlError(f"{ds.root}: the dataset has no train images to learn from")
    can_eval = bool(ds.query and ds.gallery)
    run = Run(Path(cfg.run_dir), cfg.force_from)
    cluster_params = default_cluster_params(cfg.method, n_samples=len(ds.train), **cfg.cluster)
    train_params = method_cls.resolve_params(None, cfg.train).to_dict()
    refine_options = method_cls.refine_options(cfg.refine)  # another method's options fail here, not at epoch 0
    if method_cls.uses_parts and not cfg.model.parts:
        raise ReidctlError(f"--method {cfg.method} needs part features: --parts 0 leaves the model without them "
                           "(PPLR: 3 average-pooled stripes, its default)")
    if cfg.intra and not method_cls.intra_camera:
        raise ReidctlError(f"the --intra-* options apply to --method icrefine, not {cfg.method}")
    model = dataclasses.replace(cfg.model, checkpoint=None, seed=cfg.seed)
    model_params = _model_params(model)
    common = {"data": str(cfg.data), "dataset": ds.name}
    intra = _intra_stage(run, cfg, ds, model, common) if method_cls.intra_camera else None
    history: list[dict[str, Any]] = []

    def extract(epoch_dir: str, split: str, ckpt: Path | None, ckpt_digest: str, epoch: int | str) -> dict:
        def go(out: Path) -> dict[str, Any]:
            req = ExtractRequest(**{**dataclasses.asdict(model), "checkpoint": ckpt}, data=cfg.data,
                                 dataset=cfg.dataset, split=split, batch_size=cfg.extract_batch_size,
                                 workers=cfg.workers, device=cfg.device)
            res = run_extract(req, out)
            return {k: res[k] for k in ("rows", "dim", "parts", "skipped_images")}

        name = "extract" if split == "train" else "extract_test"
        params = {**common, "split": split, **({} if ckpt else {"model": model_params})}
        return run.stage(epoch_dir, name, f"{split}.h5", params, {"checkpoint": ckpt_digest}, go, epoch)

    def evaluate(epoch_dir: str, ckpt: Path | None, ckpt_digest: str, epoch: int | str) -> dict[str, Any]:
        test = extract(epoch_dir, "test", ckpt, ckpt_digest, epoch)
        def go(out: Path) -> dict[str, Any]:
            result = evaluate_feature_file(test["output"])
            with atomic_path(out) as tmp:
                tmp.write_text(json.dumps(result, indent=1))
            return result

        return run.stage(epoch_dir, "evaluate", "eval.json", {"ap": "sklearn"}, {"test": test["digest"]},
                         go, epoch)["summary"]

    best: dict[str, Any] | None = None
    if can_eval and cfg.eval_init and cfg.eval_every:
        init_eval = evaluate("epoch_init", None, "none", "init")
        history.append({"epoch": "init", "eval": init_eval})
        best = {"epoch": "init", **init_eval}

    ckpt: Path | None = None
    ckpt_digest = "none"
    for epoch in range(cfg.epochs):
        d = f"epoch_{epoch:03d}"
        feats = extract(d, "train", ckpt, ckpt_digest, epoch)
        clus = run.stage(d, "cluster", "labels.h5", dataclasses.asdict(cluster_params),
                         {"features": feats["digest"]},
                         lambda out: run_cluster(feats["output"], out, cluster_params, seed=cfg.seed), epoch)
        ref_options, ref_inputs = dict(cfg.refine), {"features": feats["digest"], "labels": clus["digest"]}
        if intra is not None:  # icrefine: p(e) needs the epoch; the intra-camera labels of stage 1
            ref_options.update(epoch=epoch, epochs=cfg.epochs, intra=intra["output"])
            ref_inputs["intra"] = intra["digest"]
            refine_options = method_cls.refine_options(ref_options)
        ref = run.stage(d, "refine", "refined.h5", {"method": cfg.method, "options": refine_options}, ref_inputs,
                        lambda out: run_refine(cfg.method, feats["output"], out, labels_path=clus["output"],
                                               options=ref_options, seed=cfg.seed + epoch), epoch)

        def train(out: Path) -> dict[str, Any]:
            req = TrainEpochRequest(**{**dataclasses.asdict(model), "checkpoint": ckpt}, data=cfg.data,
                                    dataset=cfg.dataset, labels=Path(ref["output"]), method=cfg.method,
                                    overrides=cfg.train, features=Path(feats["output"]), epoch=epoch,
                                    workers=cfg.workers, device=cfg.device, amp=cfg.amp,
                                    deterministic=cfg.deterministic)
            res = run_train_epoch(req, out)
            return {k: v for k, v in res.items() if k not in ("params", "out")}

        tr = run.stage(d, "train", "model.pt", {"method": cfg.method, "params": train_params,
                                                 "deterministic": cfg.deterministic, **common},
                       {"checkpoint": ckpt_digest, "labels": ref["digest"], "features": feats["digest"]},
                       train, epoch)
        ckpt, ckpt_digest = Path(tr["output"]), tr["digest"]
        record = {"epoch": epoch, "cluster": clus["summary"], "refine": ref["summary"], "train": tr["summary"]}
        last = epoch == cfg.epochs - 1
        if can_eval and cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or last):
            record["eval"] = evaluate(d, ckpt, ckpt_digest, epoch)
            if best is None or record["eval"]["mAP"] > best["mAP"]:
                best = {"epoch": epoch, **record["eval"]}
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    evals = [h for h in history if "eval" in h]
    result = {"run_dir": str(run.root), "method": cfg.method, "epochs": history,
              "last": {"epoch": evals[-1]["epoch"], **evals[-1]["eval"]} if evals else None,
              "best": best, "checkpoint": str(ckpt)}
    if intra is not None:
        result["intra"] = intra["summary"]
    with atomic_path(run.root / "summary.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=str))
    return result

