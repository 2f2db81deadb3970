"""`loop`: extract → cluster → refine → train-epoch (→ evaluate), epoch after epoch, cached.

Each stage's output sits in ``RUN/epoch_XXX/`` beside a ``STAGE.done.json`` record
(:mod:`reidctl.rundir`). A stage's key holds everything that can change its output: its
resolved options, the seed, the content digests of its input artifacts, a fingerprint of the
images it reads (:mod:`reidctl.data.fingerprint`), the numeric precision it runs at, and the
reidctl version; never a path or a timing, so a run folder can be moved or copied. Re-running
the same command skips every stage whose record matches and whose output is intact; a stage
killed half-way left no artifact (writes are atomic) and no record, so it simply runs again.
``--force-from STAGE`` re-runs that stage and all later ones. The run folder is locked while a
process works in it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from reidctl.artifacts import file_digest, read_meta
from reidctl.cluster.stage import run_cluster
from reidctl.data.base import Dataset
from reidctl.data.datasets import load_dataset
from reidctl.data.fingerprint import split_fingerprint
from reidctl.device import resolve_device
from reidctl.errors import ReidctlError
from reidctl.evaluation import count_valid_queries
from reidctl.evaluation_stage import evaluate_feature_file
from reidctl.extraction import ExtractRequest, check_loader_options, extraction_precision, run_extract
from reidctl.models.spec import ModelSpec
from reidctl.methods import get_method
from reidctl.methods.icrefine.intra import read_intra_labels
from reidctl.methods.icrefine.stage1 import IntraCameraRequest, loop_params, run_intra_camera
from reidctl.refine import default_cluster_params, run_refine
from reidctl.rundir import Notice, RunDir, StageResult, stage_key, write_json
from reidctl.train.checkpoint import checkpoint_digest
from reidctl.train.stage import TrainEpochRequest, run_train_epoch
from reidctl.train.trainer import precision_name

STAGES = ("intra", "extract", "cluster", "refine", "train", "evaluate")  # intra: icrefine's stage 1, once
#: How the loop's evaluation ranks (recorded in the evaluate stage's key).
EVAL_SETTINGS = {"ap": "sklearn", "pairs": "market", "rerank": False}


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
    skip_bad_images: bool = False
    force_from: str | None = None
    seed: int = 1


def artifact_digest(path: Path) -> str:
    """The content digest of an artifact: the HDF5 ``digest`` attribute, a checkpoint's content
    digest (timings and paths left out), or the file hash of anything else (eval.json)."""
    if path.suffix == ".h5":
        return read_meta(path).digest
    if path.suffix == ".pt":
        return checkpoint_digest(path)
    return file_digest(path)


def model_key(spec: ModelSpec) -> dict[str, Any]:
    """What builds a fresh model, location-free: the options, and the weights file's content."""
    d = dataclasses.asdict(spec)
    d.pop("checkpoint")
    if spec.weights is not None:
        d["weights"] = file_digest(spec.weights)
    return d


class _Loop:
    """One ``loop`` run: the resolved settings and the stages, on a locked run folder."""

    def __init__(self, cfg: LoopConfig, ds: Dataset) -> None:
        self.cfg, self.ds = cfg, ds
        self.run: RunDir  # set by :meth:`epochs`
        self.method_cls = get_method(cfg.method)
        device = resolve_device(cfg.device)
        self.extract_precision = extraction_precision(device)
        self.train_precision = precision_name(cfg.amp, device)
        self.cluster_params = default_cluster_params(cfg.method, n_samples=len(ds.train), **cfg.cluster)
        self.train_params = self.method_cls.resolve_params(None, cfg.train).to_dict()
        self.refine_options = self.method_cls.refine_options(cfg.refine)
        self.model = dataclasses.replace(cfg.model, checkpoint=None, seed=cfg.seed)
        self.model_key = model_key(self.model)
        self.data = {"train": split_fingerprint(ds.train), "test": split_fingerprint(ds.samples("test"))}

    # ---------------------------------------------------------------------------------- stages

    def stage(self, folder: str, stage: str, out_name: str, spec: Mapping[str, Any],
              go: Callable[[Path], dict[str, Any]], epoch: int | str) -> StageResult:
        return self.run.stage(folder, stage, out_name, stage_key(stage, spec), go, artifact_digest, epoch)

    def intra(self) -> StageResult:
        """icrefine's stage 1, run once before epoch 0 into ``RUN/intra/`` (cached like any stage);
        or the user's own stage-1 file (``refine`` option ``intra``)."""
        cfg, ds = self.cfg, self.ds
        given = cfg.refine.get("intra")
        if given is not None:
            if cfg.intra:
                raise ReidctlError(f"--intra FILE replaces stage 1, so {_intra_flags(cfg.intra)} do not apply with it")
            _, digest = read_intra_labels(given, paths=[s.relpath for s in ds.train],
                                          camids=np.array([s.camid for s in ds.train]))
            return StageResult(Path(given).absolute(), digest, {"file": str(given)}, cached=True)
        params = loop_params(cfg.intra, cfg.train)
        req = IntraCameraRequest(**dataclasses.asdict(self.model), data=cfg.data, dataset=cfg.dataset, params=params,
                                 workers=cfg.workers, device=cfg.device, amp=cfg.amp,
                                 deterministic=cfg.deterministic, extract_batch_size=cfg.extract_batch_size)
        spec = {"data": self.data["train"], "layout": ds.layout, "model": self.model_key,
                "intra": dataclasses.asdict(params), "deterministic": cfg.deterministic,
                "precision": self.train_precision}
        return self.stage("intra", "intra", "intra.h5", spec, lambda out: run_intra_camera(req, out), "intra")

    def extract(self, folder: str, split: str, ckpt: StageResult | None, epoch: int | str) -> StageResult:
        cfg = self.cfg

        def go(out: Path) -> dict[str, Any]:
            req = ExtractRequest(**{**dataclasses.asdict(self.model), "checkpoint": ckpt and ckpt.path},
                                 data=cfg.data, dataset=cfg.dataset, split=split,
                                 batch_size=cfg.extract_batch_size, workers=cfg.workers, device=cfg.device,
                                 skip_bad_images=cfg.skip_bad_images)
            res = run_extract(req, out)
            return {k: res[k] for k in ("rows", "dim", "parts", "skipped_images")}

        spec = {"split": split, "layout": self.ds.layout, "data": self.data["train" if split == "train" else "test"],
                "skip_bad_images": cfg.skip_bad_images, "precision": self.extract_precision,
                "model": None if ckpt else self.model_key, "inputs": {"checkpoint": ckpt and ckpt.digest}}
        name = "extract" if split == "train" else "extract_test"
        return self.stage(folder, name, f"{split}.h5", spec, go, epoch)

    def evaluate(self, folder: str, ckpt: StageResult | None, epoch: int | str) -> dict[str, Any]:
        test = self.extract(folder, "test", ckpt, epoch)

        def go(out: Path) -> dict[str, Any]:
            result = evaluate_feature_file(test.path, **EVAL_SETTINGS)
            write_json(out, result)
            return result

        spec = {**EVAL_SETTINGS, "inputs": {"test": test.digest}}
        return self.stage(folder, "evaluate", "eval.json", spec, go, epoch).summary

    def cluster(self, folder: str, feats: StageResult, epoch: int) -> StageResult:
        params, seed = self.cluster_params, self.cfg.seed
        spec = {"params": dataclasses.asdict(params), "seed": seed, "inputs": {"features": feats.digest}}
        return self.stage(folder, "cluster", "labels.h5", spec,
                          lambda out: run_cluster(feats.path, out, params, seed=seed), epoch)

    def refine(self, folder: str, feats: StageResult, clus: StageResult, intra: StageResult | None,
               epoch: int) -> StageResult:
        cfg = self.cfg
        options, key_options = dict(cfg.refine), self.refine_options
        inputs = {"features": feats.digest, "labels": clus.digest}
        if intra is not None:  # icrefine: p(e) needs the epoch; the intra-camera labels of stage 1
            options.update(epoch=epoch, epochs=cfg.epochs, intra=str(intra.path))
            key_options = {k: v for k, v in self.method_cls.refine_options(options).items() if k != "intra"}
            inputs["intra"] = intra.digest  # the file by its content, not by where it lies
        seed = cfg.seed + epoch
        spec = {"method": cfg.method, "options": key_options, "seed": seed, "inputs": inputs}
        return self.stage(folder, "refine", "refined.h5", spec,
                          lambda out: run_refine(cfg.method, feats.path, out, labels_path=clus.path,
                                                 options=options, seed=seed), epoch)

    def train(self, folder: str, ckpt: StageResult | None, feats: StageResult, ref: StageResult,
              epoch: int) -> StageResult:
        cfg = self.cfg

        def go(out: Path) -> dict[str, Any]:
            req = TrainEpochRequest(**{**dataclasses.asdict(self.model), "checkpoint": ckpt and ckpt.path},
                                    data=cfg.data, dataset=cfg.dataset, labels=ref.path, method=cfg.method,
                                    overrides=cfg.train, features=feats.path, epoch=epoch, workers=cfg.workers,
                                    device=cfg.device, amp=cfg.amp, deterministic=cfg.deterministic)
            res = run_train_epoch(req, out)
            return {k: v for k, v in res.items() if k not in ("params", "out")}

        spec = {"method": cfg.method, "params": self.train_params, "deterministic": cfg.deterministic,
                "precision": self.train_precision, "seed": cfg.seed, "layout": self.ds.layout,
                "data": self.data["train"], "model": None if ckpt else self.model_key,
                "inputs": {"checkpoint": ckpt and ckpt.digest, "labels": ref.digest, "features": feats.digest}}
        return self.stage(folder, "train", "model.pt", spec, go, epoch)

    # ------------------------------------------------------------------------------------ loop

    def epochs(self, run: RunDir, on_epoch: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        cfg, self.run = self.cfg, run
        evaluating = bool(cfg.eval_every) and bool(self.ds.query and self.ds.gallery)
        intra = self.intra() if self.method_cls.intra_camera else None
        history: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        if evaluating and cfg.eval_init:
            init_eval = self.evaluate("epoch_init", None, "init")
            history.append({"epoch": "init", "eval": init_eval})
            best = {"epoch": "init", **init_eval}
        ckpt: StageResult | None = None
        for epoch in range(cfg.epochs):
            folder = f"epoch_{epoch:03d}"
            feats = self.extract(folder, "train", ckpt, epoch)
            clus = self.cluster(folder, feats, epoch)
            ref = self.refine(folder, feats, clus, intra, epoch)
            ckpt = self.train(folder, ckpt, feats, ref, epoch)
            record = {"epoch": epoch, "cluster": clus.summary, "refine": ref.summary, "train": ckpt.summary}
            last = epoch == cfg.epochs - 1
            if evaluating and ((epoch + 1) % cfg.eval_every == 0 or last):
                record["eval"] = self.evaluate(folder, ckpt, epoch)
                if best is None or record["eval"]["mAP"] > best["mAP"]:
                    best = {"epoch": epoch, **record["eval"]}
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
        evals = [h for h in history if "eval" in h]
        result = {"run_dir": str(self.run.root), "method": cfg.method, "epochs": history,
                  "last": {"epoch": evals[-1]["epoch"], **evals[-1]["eval"]} if evals else None,
                  "best": best, "checkpoint": str(ckpt.path.relative_to(self.run.root)) if ckpt else None}
        if intra is not None:
            result["intra"] = intra.summary
        write_json(self.run.root / "summary.json", result)
        return result


def _intra_flags(intra: Mapping[str, Any]) -> str:
    """The loop's stage-1 options that were given, as flags: "--intra-epochs, --intra-iters"."""
    return ", ".join(f"--intra-{name.replace('_', '-')}" for name in intra)


def check_config(cfg: LoopConfig, ds: Dataset) -> None:
    """Refuse a loop that cannot work before its first stage runs (and before the run folder
    is made): bad numbers, options of another method, a test split nothing can be evaluated on."""
    if cfg.epochs < 1:
        raise ReidctlError("--epochs must be at least 1")
    if cfg.eval_every < 0:
        raise ReidctlError("--eval-every must be 0 (never) or positive")
    check_loader_options(cfg.extract_batch_size, cfg.workers, batch_flag="--extract-batch-size")
    method_cls = get_method(cfg.method)
    if not ds.train:
        raise ReidctlError(f"{ds.root}: the dataset has no train images to learn from")
    if method_cls.uses_parts and not cfg.model.parts:
        raise ReidctlError(f"--method {cfg.method} needs part features: --parts 0 leaves the model without them "
                           "(PPLR: 3 average-pooled stripes, its default)")
    if cfg.intra and not method_cls.intra_camera:
        raise ReidctlError(f"{_intra_flags(cfg.intra)} apply to --method icrefine, not {cfg.method}")
    if cfg.eval_every and ds.query and ds.gallery:
        valid = count_valid_queries([s.pid for s in ds.query], [s.camid for s in ds.query],
                                    [s.pid for s in ds.gallery], [s.camid for s in ds.gallery])
        if valid == 0:
            raise ReidctlError(f"{ds.root}: no query image has a correct match in the gallery from another camera "
                               "(a single-camera test set?), so nothing can be evaluated; use --eval-every 0")


def run_loop(cfg: LoopConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None,
             notice: Notice | None = None) -> dict[str, Any]:
    """Run (or resume) the loop; returns per-epoch records plus the best and the last evaluation.

    ``notice(message)`` receives what the run folder reports (a changed artifact re-run, an
    unreadable stage record); by default it goes to the ``reidctl`` logger.
    """
    ds = load_dataset(cfg.data, cfg.dataset)
    check_config(cfg, ds)
    run_dir = RunDir(cfg.run_dir, stages=STAGES, force_from=cfg.force_from, notice=notice)
    loop = _Loop(cfg, ds)  # resolves and checks every option before the run folder is made
    with run_dir as run:
        return loop.epochs(run, on_epoch)
