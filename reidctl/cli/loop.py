"""`reidctl loop`: the whole method, epoch after epoch, with cached stages and resume."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.table import Table

from reidctl import progress
from reidctl.cli import options as o
from reidctl.cli.method_options import loop_flags, model_flags, run_default_text, runtime_flags
from reidctl.cli.common import (command, err_console, error, given_options, multi_camera_cell, notice, out_console,
                                print_json, runtime_of, warn_about_labels)
from reidctl.errors import ReidctlError
from reidctl.models.spec import ModelSpec
from reidctl.methods.plan import model_settings, switches_of
from reidctl.methods import Method, get_method
from reidctl.pipeline.loop import STAGES, LoopConfig, resolved_config_text, run_loop
from reidctl.pipeline.records import EpochRecord, RunSummary

Opt = typer.Option


@command("loop", options=loop_flags(), model=model_flags(by_method=True),
         run=runtime_flags("extract_batch_size", "workers", "device", "amp", "deterministic", "skip_bad_images", "seed",
                           "json", "quiet"))
def loop(
    ctx: typer.Context,
    data: o.Data,
    run_dir: Annotated[Path, Opt("--run-dir", help="Folder for the run's artifacts (epoch_XXX/), log and summary.",
                                 rich_help_panel=o.RUN)],
    method: Annotated[str, Opt("--method", help="Method (see `reidctl refine --help`).", rich_help_panel=o.METHOD)] = "cc",
    epochs: Annotated[Optional[int], Opt("--epochs", help="Number of epochs " + run_default_text("epochs") + ".",
                                         rich_help_panel=o.RUN)] = None,
    dataset: o.DatasetName = None,
    model: dict = None,  # ModelSpec options (reidctl.cli.method_options)
    options: dict = None,  # clustering, refine, training and prelude options (reidctl.cli.method_options)
    eval_every: Annotated[Optional[int], Opt("--eval-every", help=(
        "Evaluate every N epochs and after the last one (0 = never) " + run_default_text("eval_every") + "."),
        rich_help_panel=o.RUN)] = None,
    no_eval_init: Annotated[bool, Opt("--no-eval-init", help="Skip evaluating the initial model.",
                                      rich_help_panel=o.RUN)] = False,
    force_from: Annotated[Optional[str], Opt("--force-from", help="Re-run this stage and later ones: " + ", ".join(STAGES) + ".",
                                             rich_help_panel=o.RUN)] = None,
    checkpoint: Annotated[Optional[Path], Opt("--checkpoint", help=(
        "Start epoch 0 from this checkpoint (a `reidctl pretrain` source model, another run's model); "
        "mar: instead of running its pretrain stage."), rich_help_panel=o.MODEL)] = None,
    keep: Annotated[Optional[int], Opt("--keep", help=(
        "Keep the artifacts (features, labels, checkpoints) of the last N epochs and of the best one; older "
        "epochs keep only their records and results."), rich_help_panel=o.RUN)] = None,
    run: dict = None,  # how it runs (reidctl.runtime.Runtime, reidctl.cli.options.CommandOptions)
    config: Annotated[Optional[Path], Opt(
        "--config", is_eager=True, callback=lambda ctx, value: _load_config(ctx, value),
        help="A TOML file of loop options (a run's config.toml); options given on the command line override it.",
        rich_help_panel=o.RUN)] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help=(
        "Print the config.toml this run would write (every option resolved: the method's official values where "
        "none is given) and exit; nothing is run, fetched or written."), rich_help_panel=o.RUN)] = False,
    verify: Annotated[bool, Opt("--verify", help=(
        "Re-hash every input (the images, files given in place of a stage) and every cached output, instead of "
        "trusting a file whose size and modification time are unchanged; slower: reads every image."),
        rich_help_panel=o.RUN)] = False,
) -> None:
    """Extract → cluster → refine → train-epoch each epoch; re-running resumes where it stopped."""
    method_cls = get_method(method)
    spec = ModelSpec(**{**model, **model_settings(method_cls, model, switches_of(method_cls, options))}, checkpoint=checkpoint)
    spec.check_given(given_options(ctx))
    cfg = LoopConfig(
        data=data, run_dir=run_dir, method=method, epochs=epochs, dataset=dataset, model=spec,
        options=options, runtime=runtime_of(run), skip_bad_images=run["skip_bad_images"],
        eval_every=eval_every, eval_init=not no_eval_init, force_from=force_from, keep=keep, verify=verify,
    )
    if dry_run:
        out_console.print(resolved_config_text(cfg), end="", markup=False, highlight=False, soft_wrap=True)
        return
    quiet = progress.is_quiet()  # --quiet: no line per epoch either, only the table at the end
    on_epoch = None if run["json"] or quiet else functools.partial(_print_epoch, method_cls)
    result = run_loop(cfg, on_epoch=on_epoch, notice=notice)
    if run["json"]:
        print_json(result)
    else:
        run_summary = RunSummary.from_json(result)
        out_console.print(summary_table(run_summary))
        print_run_files(run_summary)


def _load_config(ctx: typer.Context, path: Optional[Path]) -> None:
    """Make the file's options the command's defaults (Click's ``default_map``), so that options on
    the command line still win; an unknown option is refused in one line."""
    if path is None:
        return
    from reidctl.pipeline.configfile import check_types, read_config

    try:
        values = read_config(path)
        names = {p.name for p in ctx.command.params} - {"config"}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ReidctlError(f"{path}: unknown loop option(s) {', '.join(unknown)}")
        check_types(path, values, {p.name: kind for p in ctx.command.params if (kind := _value_kind(p))})
    except ReidctlError as exc:
        error(str(exc))
        raise typer.Exit(code=2) from None
    ctx.default_map = {**(ctx.default_map or {}), **values}


#: The kind of value a config file gives an option, by the option's Python type (Typer) or its
#: Click type's name.
_KINDS: tuple[tuple[type, str], ...] = ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"),
                                        (os.PathLike, "str"))
_CLICK_KINDS = {"boolean": "bool", "integer": "int", "integer range": "int", "float": "float",
                "float range": "float", "text": "str", "path": "str", "choice": "str"}


def _value_kind(param: Any) -> str | None:
    """The kind of value a command-line parameter takes from a config file: bool, int, float,
    str, or None where it takes several values or a type of its own (not checked by kind)."""
    if getattr(param, "multiple", False) or (getattr(param, "nargs", 1) or 1) != 1:
        return None
    if getattr(param, "is_flag", False):
        return "bool"
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if isinstance(annotation, type):
        return next((kind for cls, kind in _KINDS if issubclass(annotation, cls)), None)
    return _CLICK_KINDS.get(getattr(getattr(param, "type", None), "name", ""))


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _print_epoch(method: type[Method], rec: EpochRecord) -> None:
    ref = rec.refine
    msg = f"epoch {rec.epoch}: "
    if ref is not None:
        q = ref.get("quality", {})
        msg += (f"{ref['clusters']} clusters ({multi_camera_cell(ref)} multi-camera), "
                f"{ref['outliers']} outliers{', F ' + _pct(q.get('f_score')) if q else ''}, ")
    msg += f"loss {rec.train['loss']:.3f}"
    for array, score in _pair_figures(method, rec):
        msg += f", {score['pairs']} {array.label} ({_pct(score['precision'])}% one person)"
    if rec.eval is not None:
        msg += (f", mAP {_pct(rec.eval['mAP'])} (trapezoid {_pct(rec.eval.get('mAP_trapezoid'))}), "
                f"R1 {_pct(rec.eval['rank1'])}")
    err_console.print(msg, highlight=False)
    if ref is not None:
        warn_about_labels(ref)


def _pair_figures(method: type[Method], rec: EpochRecord) -> list[tuple[Any, dict[str, Any]]]:
    """The pairs the method claims show one person this epoch (its declared pair arrays: MAR's
    mined pairs), where ground truth scored them."""
    return [(array, score) for array, score in method.pair_figures(rec.train or {})
            if score.get("precision") is not None]


def reuse_line(stages: list[dict[str, Any]]) -> str:
    """Which stages came from the cache: "5 of 9 stages reused from cache (epoch_init: extract_test,
    evaluate; epoch_000: extract)"."""
    reused: dict[str, list[str]] = {}
    for s in stages:
        if s["cached"]:
            reused.setdefault(s["folder"], []).append(s["stage"])
    n = sum(len(v) for v in reused.values())
    if not n:
        return f"all {len(stages)} stages ran (none reused from cache)"
    where = "; ".join(f"{folder}: {', '.join(names)}" for folder, names in reused.items())
    return f"{n} of {len(stages)} stages reused from cache ({where})"


def print_run_files(run: RunSummary) -> None:
    """The end of a run: what came from the cache, and where its files are."""
    err_console.print(reuse_line(run.stages), highlight=False)
    files, models = run.files, run.models
    for name in ("summary", "log", "config"):
        err_console.print(f"{name + ':':9}{files[name]}", highlight=False)
    for name in ("best", "last"):  # a run always has a model: best.pt (the initial one included), last.pt
        entry = models.get(name) or {}
        if files.get(name) and entry.get("checkpoint"):
            err_console.print(f"{name + ':':9}{files[name]} → {entry['checkpoint']} ({entry['why']})", highlight=False)
        elif name == "best" and entry.get("why"):
            err_console.print(f"{'best:':9}none: {entry['why']}", highlight=False)


def summary_table(run: RunSummary) -> Table:
    """Per epoch: the labels (clustering methods) or the mined pairs (MAR), the loss, and mAP
    with both AP conventions (sklearn, the CC family's; trapezoid, MAR's), rank-1 and rank-10;
    rates in percent. Narrow enough for an 80-column terminal (rank-5 is in ``summary.json``)."""
    clusters = any(rec.refine is not None for rec in run.epochs)
    method = get_method(run.method)
    arrays = method.pair_arrays
    label_cols = (("clus-\nters", "multi-\ncam", "out-\nliers", "pair\nF %", "NMI\n%") if clusters
                  else tuple(col for array in arrays for col in (array.column, "pair\nprec. %")))
    table = Table(title=f"{run.run_dir} ({run.method})", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  padding=(0, 0, 0, 1), pad_edge=False, caption="rates in %; mAP trapz: MAR's trapezoid AP",
                  caption_justify="left")
    for col in ("epoch", *label_cols, "loss", "mAP\n%", "mAP\ntrapz", "R1\n%", "R10\n%"):
        table.add_column(col, justify="right", no_wrap=True)
    for rec in run.epochs:
        ref, ev = rec.refine or {}, rec.eval or {}
        if clusters:
            q = ref.get("quality", {})
            cells = (str(ref.get("clusters", "—")), multi_camera_cell(ref), str(ref.get("outliers", "—")),
                     _pct(q.get("f_score")), _pct(q.get("nmi")))
        else:
            scored = {array.name: score for array, score in _pair_figures(method, rec)}
            cells = tuple(cell for array in arrays for cell in (
                (str(scored[array.name]["pairs"]), _pct(scored[array.name]["precision"])) if array.name in scored
                else ("—", "—")))
        table.add_row(str(rec.epoch), *cells, f"{rec.train['loss']:.3f}" if rec.train is not None else "—",
                      _pct(ev.get("mAP")), _pct(ev.get("mAP_trapezoid")), _pct(ev.get("rank1")), _pct(ev.get("rank10")))
    for label, ev in (("best", run.best), ("last", run.last)):
        if ev:
            table.add_row(f"[bold]{label}[/] {ev['epoch']}", *[""] * (len(label_cols) + 1), _pct(ev["mAP"]),
                          _pct(ev.get("mAP_trapezoid")), _pct(ev["rank1"]), _pct(ev["rank10"]))
    return table
