"""`loop`: extract → cluster → refine → train-epoch (→ evaluate), epoch after epoch, cached.

The stages are those the method declares: its preludes (run once before epoch 0, into
``RUN/<name>/``), then each epoch extract, cluster and refine (unless the method does not
cluster) and train, with an evaluation every ``eval_every`` epochs. This module knows methods
only through the registry and the contracts of :mod:`reidctl.methods.prelude` and
:class:`reidctl.methods.base.Method`.

Each stage's output sits in ``RUN/epoch_XXX/`` beside a ``STAGE.done.json`` record
(:mod:`reidctl.pipeline.rundir`). A stage's key is built in one place (:meth:`StageCall.key`) from what
it declares: its resolved options, the seed, the content digests of its input artifacts, what
else it reads (a fingerprint of its images, :mod:`reidctl.data.fingerprint`; the fresh model;
the numeric precision), and the reidctl version; never a path or a timing, so a run folder can
be moved or copied. Re-running
the same command skips every stage whose record matches and whose output is intact; a stage
killed half-way left no artifact (writes are atomic) and no record, so it simply runs again.
``--force-from STAGE`` re-runs that stage and all later ones. The run folder is locked while a
process works in it.

A run always has a model to use: ``RUN/last.pt`` (the last finished epoch's checkpoint) and
``RUN/best.pt`` (the best evaluated model; when no trained epoch beats the initial model, the
initial model, saved as ``epoch_init/model.pt``), and ``summary.json``'s ``models`` says which
file is best and why. ``config.toml`` is written once every check has passed, just before the
first stage that does work (or at the end, when every stage came from the cache): a refused
run leaves the config of the results the folder holds.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping


from reidctl.artifacts import BEST_MODEL, LAST_MODEL, atomic_path, file_digest, read_ground_truth, read_meta, read_state_arrays
from reidctl.cluster.quality import pair_precision
from reidctl.cluster.clustering import ClusterParams
from reidctl.stages.cluster import run_cluster
from reidctl.pipeline.configfile import CONFIG_NAME, dumps, write_config
from reidctl.data.stats import input_norm
from reidctl.data.base import Dataset
from reidctl.data.datasets import load_dataset
from reidctl.data.fingerprint import split_fingerprint, verifying
from reidctl.runtime.device import resolve_device
from reidctl.errors import ReidctlError
from reidctl.evaluation.metrics import count_valid_queries
from reidctl.stages.evaluate import evaluate_feature_file
from reidctl.runtime.processes import check_loader_options
from reidctl.stages.extract import ExtractRequest, run_extract
from reidctl.methods import Method, get_method
from reidctl.data.source import refuse_source_is_target
from reidctl.methods.base import pair_key
from reidctl.methods.plan import refine_options
from reidctl.models.spec import ModelSpec
from reidctl.options import option_fields
from reidctl.runtime import Runtime
from reidctl.runtime.precision import precision_name
from reidctl.stages.refine import run_refine
from reidctl.pipeline.records import SUMMARY_FILE, EpochRecord, RunSummary
from reidctl.pipeline.rundir import (Notice, RunDir, StageResult, refuse_pruned, stage_key,
                            write_json)
from reidctl.methods.prelude import Prelude, RunContext
from reidctl.models.checkpoint import checkpoint_digest, method_arrays_path, save_checkpoint
from reidctl.stages.train_epoch import TrainEpochRequest, run_train_epoch

#: What ``--force-from`` accepts, in run order ("prelude": every stage a method runs before epoch 0).
STAGES = ("prelude", "extract", "cluster", "refine", "train", "evaluate")
#: How the loop's evaluation ranks (recorded in the evaluate stage's key): mAP with the sklearn
#: AP of the CC family, and ``mAP_trapezoid`` beside it (MAR's convention, ALGORITHMS.md §2.2).
EVAL_SETTINGS = {"ap": "sklearn", "pairs": "market", "rerank": False}
#: Part of the evaluate stage's key since eval.json also holds ``mAP_trapezoid``.
EVAL_RECORDS = {"also": "trapezoid"}


@dataclass
class LoopConfig:
    """Everything `loop` needs; the CLI fills it from options, notebooks can build it directly.

    ``options`` holds the method's options by their flat names, as ``loop`` takes them on the
    command line (``eps``, ``iters``, ``beta``, ``decay``, ``intra_epochs``, ``intra`` ...); the
    method routes each to its stage (:meth:`reidctl.methods.base.Method.route`).
    """

    data: str
    run_dir: Path
    method: str = "cc"
    epochs: int | None = None  # None: the method's official number (``Method.run_defaults``)
    dataset: str | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    options: Mapping[str, Any] = field(default_factory=dict)
    eval_every: int | None = None  # None: the method's official cadence (CC 10, PPLR 5, ...)
    eval_init: bool = True
    runtime: Runtime = field(default_factory=Runtime)  # device, precision, workers, seed ... of every stage
    skip_bad_images: bool = False
    force_from: str | None = None
    keep: int | None = None  # keep the artifacts of the last N epochs (and the best); None: all
    verify: bool = False  # re-hash every input and output instead of trusting size + mtime (``--verify``)


def artifact_digest(path: Path) -> str:
    """The content digest of an artifact: the HDF5 ``digest`` attribute, a checkpoint's content
    digest (timings and paths left out), or the file hash of anything else (eval.json)."""
    if path.suffix == ".h5":
        return read_meta(path).digest
    if path.suffix == ".pt":
        return checkpoint_digest(path)
    return file_digest(path)


def given_digest(path: Path, checked: str) -> str:
    """The identity of a file a user hands ``loop`` in place of a stage (``--intra FILE``, MAR's
    ``--checkpoint``): the digest its reader computed while checking it (``checked``) together
    with the sha256 of its bytes, so a file edited in place, its recorded digest attribute kept,
    is a new input and the stages that read it run again."""
    return stage_key("given", {"checked": checked, "bytes": file_digest(path)})


def location(value: Any) -> Any:
    """A path option as ``config.toml`` records it: absolute, so the file means the same run from
    any folder; a dataset name (``synthetic:tiny``) or an unset value stays as it is."""
    if value is None or value == "" or str(value).startswith("synthetic:"):
        return value
    return str(Path(value).expanduser().absolute())


def model_key(spec: ModelSpec, seed: int) -> dict[str, Any]:
    """What builds a fresh model, location-free: the options, the seed that draws its random
    weights, and the weights file's content."""
    d = {**dataclasses.asdict(spec), "seed": seed}
    d.pop("checkpoint")
    if spec.weights is not None:
        d["weights"] = file_digest(spec.weights)
    return d


@dataclass
class StageCall:
    """A stage as it declares itself. Its cache key is built from these fields, and only from
    them, in :meth:`key`: no stage can leave out its seed, its inputs' digests or the version."""

    stage: str  # the record's name (``STAGE.done.json``)
    folder: str
    output: str
    run: Callable[[Path], dict[str, Any]]
    options: Mapping[str, Any]  # its resolved options
    seed: int | None = None
    inputs: Mapping[str, StageResult | None] = field(default_factory=dict)  # artifacts it reads
    reads: Mapping[str, Any] = field(default_factory=dict)  # what else: images, a fresh model, the precision
    group: str | None = None  # its name for --force-from (default: stage)

    def key(self) -> str:
        digests = {name: None if r is None else r.digest for name, r in self.inputs.items()}
        return stage_key(self.stage, {"options": self.options, "seed": self.seed, "inputs": digests,
                                      "reads": self.reads})


class _Loop:
    """One ``loop`` run: the resolved settings and the stages, on a locked run folder."""

    def __init__(self, cfg: LoopConfig, ds: Dataset) -> None:
        self.cfg, self.ds = cfg, ds
        self.run: RunDir  # set by :meth:`epochs`
        self.config_saved = False  # config.toml is written once every check has passed (:meth:`save_config`)
        self.stages_done: list[dict[str, Any]] = []  # each stage this invocation ran or reused, in order
        self.method_cls: type[Method] = get_method(cfg.method)
        self.precision = precision_name(cfg.runtime.amp, resolve_device(cfg.runtime.device))
        # cfg.model.checkpoint: the checkpoint epoch 0 starts from (None: a fresh model)
        self.plan = plan = self.method_cls.plan(cfg.options, n_samples=len(ds.train), context={"epochs": cfg.epochs},
                                                checkpoint=cfg.model.checkpoint)
        self.train_params = plan.train.to_dict()
        source = plan.source
        refuse_source_is_target(source.aux_data, cfg.data)
        # once: the labelled source's fingerprint, part of the train stage's key ("aux", as MAR's always was)
        self.train_reads = {"aux": source.load().fingerprint()} if source.given else {}
        # the joint source step's options (a method that learns the source itself has them in its parameters)
        self.train_source = source.to_dict() if source.given and not self.method_cls.learns_source else None
        self._check_parts(self.method_cls(plan.train))
        self.model = dataclasses.replace(cfg.model, checkpoint=None)
        if cfg.model.checkpoint is None:  # a fresh model: its start is recorded (ImageNet unless told otherwise)
            self.model = self.model.resolved()
            self.model.model_config()  # a bad architecture or input size fails before the run folder is made
        self.model_key = model_key(self.model, cfg.runtime.seed)
        self.data = {"train": split_fingerprint(ds.train), "test": split_fingerprint(ds.samples("test"))}

    def resolved_config(self) -> dict[str, dict[str, Any]]:
        """Every option this run resolved to, by its ``loop`` option name, grouped for reading
        (:mod:`reidctl.pipeline.configfile`): ``loop --config`` with it re-creates the same stages, from
        any working directory (paths are absolute; :func:`run_loop` writes ``run_dir`` relative
        to the file)."""
        cfg, m = self.cfg, self.method_cls
        start = location(cfg.model.checkpoint)
        sections: dict[str, dict[str, Any]] = {
            "run": {"data": location(cfg.data), "dataset": cfg.dataset, "run_dir": location(cfg.run_dir),
                    "method": cfg.method,
                    "epochs": cfg.epochs, "eval_every": cfg.eval_every, "no_eval_init": not cfg.eval_init,
                    "checkpoint": start, "seed": cfg.runtime.seed, "keep": cfg.keep},
            "runtime": {**{k: getattr(cfg.runtime, k) for k in ("extract_batch_size", "workers", "device", "amp",
                                                                 "deterministic")},
                        "skip_bad_images": cfg.skip_bad_images},
            "model": {name: location(getattr(self.model, name)) if name == "weights" else getattr(self.model, name)
                      for name, _, _ in option_fields(ModelSpec)},
        }
        switches = {name: getattr(self.plan.switches, name) for name, _, _ in option_fields(m.Switches)}
        if switches:
            sections["switches"] = switches
        if m.clusters:
            sections["clustering"] = {name: getattr(self.plan.cluster, name)
                                      for name, _, _ in option_fields(ClusterParams)}
            fed = {p.feeds for p in m.preludes}
            refine = {**dataclasses.asdict(m.RefineOptions()), **self.plan.refine}
            sections["refine"] = {name: refine.get(name) for name, _, info in option_fields(m.RefineOptions)
                                  if info.loop and name not in fed}
        training = self.train_params
        sections["training"] = {name: location(training.get(name)) if info.path else training.get(name)
                                for name, _, info in option_fields(m.Params)}
        source = self.plan.source
        sections["source"] = {name: location(getattr(source, name)) if info.path else getattr(source, name)
                              for name, _, info in option_fields(m.Source)} if source.given else {}
        for p in m.preludes:
            given = self.plan.given.get(p.feeds)
            opts = self.plan.preludes.get(p.name)
            values = {} if opts is None else {f"{p.name}_{name}": getattr(opts, name)
                                              for name, _, info in option_fields(p.Options) if info.loop}
            if given is not None and p.feeds != "checkpoint":
                values[p.feeds] = location(given)
            sections[f"prelude.{p.name}"] = values
        return sections

    def _check_parts(self, method: Method) -> None:
        """A method whose training (as configured) reads part features needs a model with parts."""
        if method.uses_parts and not self.cfg.model.parts:
            parts = self.method_cls.official_model(self.plan.switches).get("parts")
            raise ReidctlError(f"--method {self.cfg.method} needs part features: --parts 0 leaves the model without "
                               "them" + (f" (its official model has {parts} stripes)" if parts else ""))

    # ---------------------------------------------------------------------------------- stages

    def stage(self, call: StageCall, epoch: int | str) -> StageResult:
        def run(out: Path) -> dict[str, Any]:
            refuse_pruned(call.inputs, call.stage)
            self.save_config()  # the first stage that does work: the folder now holds this config's results
            return call.run(out)

        result = self.run.stage(call.folder, call.stage, call.output, call.key(), run, artifact_digest, epoch,
                                group=call.group)
        self.stages_done.append({"folder": call.folder, "stage": call.stage, "cached": result.cached})
        return result

    def images(self, split: str) -> dict[str, Any]:
        """What a stage reading ``split``'s images depends on: their fingerprint and the layout."""
        return {"data": self.data[split], "layout": self.ds.layout}

    def model_from(self, ckpt: StageResult | None) -> ModelSpec:
        """The model a stage runs: the checkpoint ``ckpt`` when there is one, else the fresh model."""
        return self.model if ckpt is None else dataclasses.replace(self.model, checkpoint=ckpt.path)

    def fresh_model(self, ckpt: StageResult | None) -> dict[str, Any] | None:
        """The fresh model's key where a stage builds one (no checkpoint), else None."""
        return None if ckpt else self.model_key

    def prelude(self, prelude: Prelude) -> StageResult:
        """A method's stage before epoch 0, into ``RUN/<name>/`` (or the user's ready-made file)."""
        cfg, run, given = self.cfg, self.cfg.runtime, self.plan.given.get(prelude.feeds)
        if given is not None:
            digest = given_digest(Path(given), prelude.read_given(Path(given), self.ds))
            return StageResult(Path(given).absolute(), digest, {"file": str(given)}, cached=True)
        options = self.plan.preludes[prelude.name]
        # a prelude that does not make the starting model (icrefine's stage 1) starts from the
        # user's --checkpoint (a source model) when there is one, else from the fresh model
        start = None if prelude.starts_model else self.start_given()
        model = self.model_from(start)
        ctx = RunContext(data=cfg.data, dataset=cfg.dataset, model=model, runtime=run)
        call = StageCall(prelude.name, prelude.name, prelude.output, lambda out: prelude.run(ctx, options, out),
                         options=dataclasses.asdict(options), seed=run.seed, group="prelude",
                         inputs={} if start is None else {"checkpoint": start},
                         reads={**self.images("train"), "model": self.fresh_model(start), "precision": self.precision,
                                "deterministic": run.deterministic, **(prelude.reads(options) if prelude.reads else {})})
        return self.stage(call, prelude.name)

    def extract(self, folder: str, split: str, ckpt: StageResult | None, epoch: int | str) -> StageResult:
        cfg = self.cfg

        def go(out: Path) -> dict[str, Any]:
            req = ExtractRequest(self.model_from(ckpt), cfg.runtime, data=cfg.data, dataset=cfg.dataset, split=split,
                                 skip_bad_images=cfg.skip_bad_images)
            res = run_extract(req, out)
            return {"rows": res.rows, "dim": res.dim, "parts": res.parts, "skipped_images": res.skipped_images}

        images = "train" if split == "train" else "test"
        call = StageCall("extract" if split == "train" else "extract_test", folder, f"{split}.h5", go,
                         options={"split": split, "skip_bad_images": cfg.skip_bad_images},
                         inputs={"checkpoint": ckpt}, group="extract",
                         reads={**self.images(images), "precision": self.precision,
                                "model": self.fresh_model(ckpt)})
        return self.stage(call, epoch)

    def evaluate(self, folder: str, ckpt: StageResult | None, epoch: int | str) -> dict[str, Any]:
        test = self.extract(folder, "test", ckpt, epoch)

        def go(out: Path) -> dict[str, Any]:
            result = evaluate_feature_file(test.path, **EVAL_SETTINGS).to_json()  # with mAP_trapezoid beside mAP
            write_json(out, result)
            return result

        return self.stage(StageCall("evaluate", folder, "eval.json", go, options={**EVAL_SETTINGS, **EVAL_RECORDS},
                                    inputs={"test": test}), epoch).summary

    def cluster(self, folder: str, feats: StageResult, epoch: int) -> StageResult:
        params, seed = self.plan.cluster, self.cfg.runtime.seed
        call = StageCall("cluster", folder, "labels.h5",
                         lambda out: run_cluster(feats.path, out, params, seed=seed).to_json(),
                         options=dataclasses.asdict(params), seed=seed, inputs={"features": feats})
        return self.stage(call, epoch)

    def refine(self, folder: str, feats: StageResult, clus: StageResult, preludes: Mapping[str, StageResult],
               epoch: int) -> StageResult:
        """The method's refine step, given the loop values it reads and its preludes' outputs (as
        the options they feed); the outputs are keyed by their content, not by where they lie."""
        cfg, method = self.cfg, self.method_cls
        loop_values = {"epoch": epoch, "epochs": cfg.epochs}
        options = {**self.plan.refine, **{k: loop_values[k] for k in method.refine_context}}
        fed = {p.feeds: str(preludes[p.name].path) for p in method.preludes if not p.starts_model}
        resolved = {k: v for k, v in refine_options(method, {**options, **fed}).items() if k not in fed}
        seed = cfg.runtime.seed + epoch
        call = StageCall("refine", folder, "refined.h5",
                         lambda out: run_refine(cfg.method, feats.path, out, labels_path=clus.path,
                                                options={**options, **fed}, seed=seed, borrow=True).to_json(),
                         options={"method": cfg.method, **resolved}, seed=seed,
                         inputs={"features": feats, "labels": clus, **preludes})
        return self.stage(call, epoch)

    def train(self, folder: str, ckpt: StageResult | None, feats: StageResult, ref: StageResult | None,
              epoch: int) -> StageResult:
        cfg = self.cfg

        def go(out: Path) -> dict[str, Any]:
            req = TrainEpochRequest(self.model_from(ckpt), cfg.runtime, data=cfg.data, dataset=cfg.dataset,
                                    labels=ref and ref.path, method=cfg.method, overrides=self.plan.train_options(),
                                    features=feats.path, epoch=epoch)
            res = run_train_epoch(req, out)
            summary = {k: v for k, v in res.to_json().items() if k not in ("params", "out")}
            return summary | self.pair_quality(out, feats)

        options = {"method": cfg.method, "params": self.train_params}
        if self.train_source is not None:
            options["source"] = self.train_source
        call = StageCall("train", folder, "model.pt", go, options=options,
                         seed=cfg.runtime.seed, inputs={"checkpoint": ckpt, "labels": ref, "features": feats},
                         reads={**self.images("train"), "model": self.fresh_model(ckpt),
                                "precision": self.precision, "deterministic": cfg.runtime.deterministic,
                                **self.train_reads})
        return self.stage(call, epoch)

    def pair_quality(self, ckpt: Path, feats: StageResult) -> dict[str, Any]:
        """The precision of the pairs the method claims show one person (its ``pair_arrays``,
        rows of the features file), against ground truth when the dataset has it: reported only."""
        names = [array.name for array in self.method_cls.pair_arrays]
        if not names or not method_arrays_path(ckpt).is_file():
            return {}
        pids = read_ground_truth(feats.path)
        if pids is None:
            return {}
        arrays = read_state_arrays(method_arrays_path(ckpt), names)
        return {pair_key(name): pair_precision(pairs, pids) for name, pairs in arrays.items()}

    def start_checkpoint(self, preludes: Mapping[str, StageResult]) -> StageResult | None:
        """What epoch 0 starts from: a prelude's checkpoint (MAR's pretraining, or the user's
        ``--checkpoint`` in its place), the user's ``--checkpoint``, or None (a fresh model)."""
        for p in self.method_cls.preludes:
            if p.starts_model:
                return preludes[p.name]
        return self.start_given()

    def start_given(self) -> StageResult | None:
        """The user's ``--checkpoint`` as a stage input (None: a fresh model)."""
        if self.cfg.model.checkpoint is None:
            return None
        path = Path(self.cfg.model.checkpoint)
        return StageResult(path.absolute(), checkpoint_digest(path, arrays=True), {"file": str(path)}, cached=True)

    def init_model(self, start: StageResult | None) -> StageResult:
        """The initial model as a checkpoint inside the run folder, for ``best.pt`` when no trained
        epoch beats it: the start checkpoint where it lies in the run already (MAR's
        pretraining), else ``epoch_init/model.pt``: a copy of the user's ``--checkpoint``, or the
        fresh model saved, built as the first stages built it (same options, same seed)."""
        if start is not None and start.path.is_relative_to(self.run.root):
            return start
        if start is not None:
            call = StageCall("init_model", "epoch_init", "model.pt", lambda out: _copy_checkpoint(start.path, out),
                             options={"copy": "checkpoint"}, inputs={"checkpoint": start}, group="extract")
        else:
            call = StageCall("init_model", "epoch_init", "model.pt", self._save_fresh_model,
                             options={"save": "fresh model"}, seed=self.cfg.runtime.seed, group="extract",
                             reads={**self.images("train"), "model": self.model_key})
        return self.stage(call, "init")

    def _save_fresh_model(self, out: Path) -> dict[str, Any]:
        model, provenance = self.model.build(self.cfg.runtime.seed)
        norm = input_norm(model.config, self.ds.train)
        digest = save_checkpoint(out, model, provenance={
            **provenance, "data": str(self.cfg.data), "dataset": self.ds.name,
            "norm": {"mean": list(norm.mean), "std": list(norm.std)},  # the deployed model's preprocessing
            "note": "the initial model of the run (before epoch 0)"})
        return {"init": provenance["init"], "digest": digest}

    # ---------------------------------------------------------------------------- run folder

    def save_config(self) -> None:
        """``RUN/config.toml``, once per invocation: called when the first stage that does work
        has passed its checks (and at the end), never by a run refused before that."""
        if not self.config_saved:
            write_config(self.run.root / CONFIG_NAME, self.resolved_config(), header=_config_header(),
                         relative=("run_dir",))
            self.config_saved = True

    def point(self, name: str, ckpt: StageResult) -> None:
        """``RUN/<name>`` (``best.pt``, ``last.pt``): a link to ``ckpt`` inside the run folder (a
        copy where links are not allowed); removed while ``ckpt`` is absent (``--keep``)."""
        link = self.run.root / name
        if not ckpt.path.is_file():
            link.unlink(missing_ok=True)
            return
        tmp = link.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(os.path.relpath(ckpt.path, self.run.root), tmp)
        except OSError:
            shutil.copy2(ckpt.path, tmp)
        os.replace(tmp, link)  # replaces a link or file there, never writes through it

    def prune_old(self, epoch: int, best: dict[str, Any] | None) -> None:
        """``--keep N``: delete the artifacts of epochs before the last N, except the best one's."""
        keep = self.cfg.keep
        if keep is None:
            return
        spared = {best["epoch"]} if best else set()
        for old in range(0, epoch - keep + 1):
            folder = f"epoch_{old:03d}"
            if old not in spared and (self.run.root / folder).is_dir():
                self.run.prune(folder)

    def files(self, best: dict[str, Any] | None) -> dict[str, str | None]:
        """Where the run's summary, log, config and models lie (printed at the end)."""
        root = self.run.root
        best_link, last_link = root / BEST_MODEL, root / LAST_MODEL
        if best is None:
            best_link.unlink(missing_ok=True)  # a link left by an earlier run with other options
        return {"summary": str(root / SUMMARY_FILE), "log": str(root / "log.jsonl"),
                "config": str(root / CONFIG_NAME), "best": str(best_link) if best_link.exists() else None,
                "last": str(last_link) if last_link.exists() else None}

    def models(self, best: dict[str, Any] | None, best_ckpt: StageResult | None, last: StageResult | None,
               last_epoch: int | None, evaluated: int) -> dict[str, Any]:
        """``summary.json``'s ``models``: which file is the best model and why, and the last one."""
        def rel(result: StageResult | None) -> str | None:
            return None if result is None else os.path.relpath(result.path, self.run.root)

        if best is None:
            best_entry = {"file": None, "why": "no model was evaluated (--eval-every 0, or the data has no query and "
                                               "gallery images): use last.pt"}
        elif best["epoch"] == "init":
            best_entry = {"file": BEST_MODEL, "epoch": "init", "checkpoint": rel(best_ckpt), "mAP": best["mAP"],
                          "why": f"no trained epoch beat the initial model (mAP {100 * best['mAP']:.2f} %), so the "
                                 "best model is the initial one"}
        else:
            best_entry = {"file": BEST_MODEL, "epoch": best["epoch"], "checkpoint": rel(best_ckpt), "mAP": best["mAP"],
                          "why": f"the highest mAP ({100 * best['mAP']:.2f} %) of the {evaluated} evaluated models"}
        last_entry = None if last is None else {"file": LAST_MODEL, "epoch": last_epoch, "checkpoint": rel(last),
                                                "why": "the last finished epoch's checkpoint"}
        return {"best": best_entry, "last": last_entry}

    # ------------------------------------------------------------------------------------ loop

    def epochs(self, run: RunDir, on_epoch: Callable[[EpochRecord], None] | None) -> dict[str, Any]:
        cfg, self.run = self.cfg, run
        evaluating = bool(cfg.eval_every) and bool(self.ds.query and self.ds.gallery)
        preludes = {p.name: self.prelude(p) for p in self.method_cls.preludes}
        ckpt = self.start_checkpoint(preludes)
        start, best_ckpt = ckpt, None
        history: list[EpochRecord] = []
        best: dict[str, Any] | None = None
        if evaluating and cfg.eval_init:
            init_eval = self.evaluate("epoch_init", ckpt, "init")
            history.append(EpochRecord("init", eval=init_eval))
            best = {"epoch": "init", **init_eval}
        for epoch in range(cfg.epochs):
            folder = f"epoch_{epoch:03d}"
            record = EpochRecord(epoch)
            feats = self.extract(folder, "train", ckpt, epoch)
            ref = None
            if self.method_cls.clusters:
                clus = self.cluster(folder, feats, epoch)
                ref = self.refine(folder, feats, clus, preludes, epoch)
                record.cluster, record.refine = clus.summary, ref.summary
            ckpt = self.train(folder, ckpt, feats, ref, epoch)
            self.point(LAST_MODEL, ckpt)
            record.train = ckpt.summary
            last = epoch == cfg.epochs - 1
            if evaluating and ((epoch + 1) % cfg.eval_every == 0 or last):
                record.eval = self.evaluate(folder, ckpt, epoch)
                if best is None or record.eval["mAP"] > best["mAP"]:
                    best, best_ckpt = {"epoch": epoch, **record.eval}, ckpt
                    self.point(BEST_MODEL, ckpt)
            history.append(record)
            self.prune_old(epoch, best)
            if on_epoch is not None:
                on_epoch(record)
        if best is not None and best["epoch"] == "init":
            best_ckpt = self.init_model(start)
            self.point(BEST_MODEL, best_ckpt)
        self.save_config()  # every stage came from the cache, or the run went through
        evals = [h for h in history if h.eval is not None]
        summary = RunSummary(
            run_dir=str(self.run.root), method=cfg.method, epochs=history,
            last={"epoch": evals[-1].epoch, **evals[-1].eval} if evals else None, best=best,
            checkpoint=str(ckpt.path.relative_to(self.run.root)) if ckpt else None,
            models=self.models(best, best_ckpt, ckpt, cfg.epochs - 1, len(evals)), stages=self.stages_done,
            files=self.files(best), preludes={name: r.summary for name, r in preludes.items()},
            # the log's size now: a log that grew since tells `report` that a later run did not finish
            log_bytes=self.run.log_path.stat().st_size if self.run.log_path.exists() else 0)
        result = summary.to_json()
        write_json(self.run.root / SUMMARY_FILE, result)
        return result


def with_run_defaults(cfg: LoopConfig) -> LoopConfig:
    """``cfg`` with the epochs and evaluation cadence of the method's official command where the
    user left them unset."""
    official = get_method(cfg.method).run_defaults
    return dataclasses.replace(cfg, epochs=official.epochs if cfg.epochs is None else cfg.epochs,
                               eval_every=official.eval_every if cfg.eval_every is None else cfg.eval_every)


def check_config(cfg: LoopConfig, ds: Dataset) -> None:
    """Refuse a loop that cannot work before its first stage runs (and before the run folder
    is made): bad numbers, an unknown method, a split without training images, a test split
    nothing can be evaluated on. (Options of another method, and a model without the part
    features the method needs, are refused when the loop resolves its options.)"""
    if cfg.epochs < 1:
        raise ReidctlError("--epochs must be at least 1")
    if cfg.eval_every < 0:
        raise ReidctlError("--eval-every must be 0 (never) or positive")
    if cfg.keep is not None and cfg.keep < 1:
        raise ReidctlError("--keep must be at least 1: the next epoch starts from the last one's checkpoint")
    check_loader_options(cfg.runtime.extract_batch_size, cfg.runtime.workers, batch_flag="--extract-batch-size")
    get_method(cfg.method)  # an unknown method fails here
    if not ds.train:
        raise ReidctlError(f"{ds.root}: the dataset has no train images to learn from")
    if cfg.eval_every and ds.query and ds.gallery:
        valid = count_valid_queries([s.pid for s in ds.query], [s.camid for s in ds.query],
                                    [s.pid for s in ds.gallery], [s.camid for s in ds.gallery])
        if valid == 0:
            raise ReidctlError(f"{ds.root}: no query image has a correct match in the gallery from another camera "
                               "(a single-camera test set?), so nothing can be evaluated; use --eval-every 0")


def run_loop(cfg: LoopConfig, on_epoch: Callable[[EpochRecord], None] | None = None,
             notice: Notice | None = None) -> dict[str, Any]:
    """Run (or resume) the loop; returns per-epoch records plus the best and the last evaluation.

    ``notice(message)`` receives what the run folder reports (a changed artifact re-run, an
    unreadable stage record); by default it goes to the ``reidctl`` logger.
    """
    loop = plan_loop(cfg)  # resolves and checks every option before the run folder is made
    if cfg.model.checkpoint is None:
        loop.model.check_start()  # ImageNet weights fetched now (into torch's cache), or refused in one line
    force_from = "prelude" if cfg.force_from in {p.name for p in loop.method_cls.preludes} else cfg.force_from
    run_dir = RunDir(cfg.run_dir, stages=STAGES, force_from=force_from, notice=notice, verify=cfg.verify)
    with run_dir as run:
        return loop.epochs(run, on_epoch)  # config.toml: written once every check has passed


def plan_loop(cfg: LoopConfig) -> _Loop:
    """The loop ``cfg`` describes, every option resolved (the method's official values where the
    user gave none) and checked, without running or writing anything: its
    :meth:`~_Loop.resolved_config` is what the run records in ``config.toml``."""
    ds = load_dataset(cfg.data, cfg.dataset)
    cfg = with_run_defaults(cfg)
    check_config(cfg, ds)
    with verifying(cfg.verify):  # --verify: every split's images re-hashed (the target's, a source's)
        return _Loop(cfg, ds)


def resolved_config_text(cfg: LoopConfig) -> str:
    """The ``config.toml`` a run of ``cfg`` would write (``loop --dry-run``)."""
    return dumps(plan_loop(cfg).resolved_config(), header=_config_header())


def _copy_checkpoint(source: Path, out: Path) -> dict[str, Any]:
    """A copy of the checkpoint a run started from, inside the run (a link could break)."""
    with atomic_path(out, replace_link=True) as tmp:
        shutil.copyfile(source, tmp)
    return {"copied_from": str(source)}


def _config_header() -> str:
    from reidctl.version import __version__

    return (f"The options this `reidctl loop` run resolved to (reidctl {__version__}).\n"
            "Re-run it with: reidctl loop --config THIS_FILE (options given on the command line override the file).")
