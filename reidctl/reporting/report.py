"""Pictures of `loop` runs, so that ablations can be compared at a glance.

Why: a run's ``summary.json`` holds every number of every epoch, but comparing two runs (a
method against its baseline, one option against another) means reading dozens of them. This
module reads run folders into one tidy per-epoch table per run and draws them overlaid, one
colour per run, in four panels: (a) mAP and rank-1, (b) pseudo-label quality against ground
truth, (c) clusters, outliers and multi-camera clusters, (d) the training loss per iteration.
The same series can go to an HTML page (figure plus tables) or to TensorBoard.

Rates (mAP, ranks, mINP, pairwise F, NMI) are stored in the table in percent, as they are shown.
matplotlib and TensorBoard are imported only by the functions that draw or write with them, so
importing this module stays cheap (the CLI imports every command module at start).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import Any

from reidctl.artifacts import PNG_KIND_KEY, REPORT, atomic_path, check_output, html_kind_tag
from reidctl.errors import ReidctlError
from reidctl.pipeline.records import SUMMARY_FILE, EpochRecord, RunSummary

#: The x position of the evaluation before training ("init") on per-epoch axes.
INIT_X = -1
#: Figure size in inches and resolution: the PNG is always ``report_size()`` pixels.
FIGSIZE = (13.0, 9.0)
DPI = 100
#: Output formats of :func:`write_report`, by file suffix.
FORMATS = (".png", ".html")

TENSORBOARD_MISSING = "--tensorboard needs the tensorboard package: pip install 'reidctl[tensorboard]'"


@dataclass(frozen=True)
class Column:
    """One column of the per-epoch table: where it is read in an epoch record, how it is shown."""

    key: str
    header: str
    source: tuple[str, ...]  # path in the epoch record; "labels" = refine's record, else cluster's
    percent: bool = False  # a fraction 0..1 in summary.json, shown (and stored here) in percent
    integer: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("mAP", "mAP %", ("eval", "mAP"), percent=True),
    Column("rank1", "rank-1 %", ("eval", "rank1"), percent=True),
    Column("rank5", "rank-5 %", ("eval", "rank5"), percent=True),
    Column("rank10", "rank-10 %", ("eval", "rank10"), percent=True),
    Column("mINP", "mINP %", ("eval", "mINP"), percent=True),
    Column("mAP_trapezoid", "mAP trapz %", ("eval", "mAP_trapezoid"), percent=True),
    Column("f_score", "pairwise F %", ("labels", "quality", "f_score"), percent=True),
    Column("nmi", "NMI %", ("labels", "quality", "nmi"), percent=True),
    Column("clusters", "clusters", ("labels", "clusters"), integer=True),
    Column("outliers", "outliers", ("labels", "outliers"), integer=True),
    Column("multi_camera_clusters", "multi-camera clusters", ("labels", "camera_mix", "multi_camera_clusters"),
           integer=True),
    Column("loss", "mean loss", ("train", "loss")),
    Column("iterations", "iterations", ("train", "iterations"), integer=True),
)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)


@dataclass
class EpochRow:
    """One epoch of a run: ``epoch`` is "init" (the model before training) or 0, 1, ...;
    ``values`` maps every :data:`COLUMNS` key to a number or None (not measured that epoch)."""

    epoch: int | str
    values: dict[str, float | int | None]

    @property
    def x(self) -> int:
        """Position on a per-epoch axis: "init" sits at :data:`INIT_X`, before epoch 0."""
        return INIT_X if self.epoch == "init" else int(self.epoch)


@dataclass
class LossCurve:
    """The training loss of every iteration, epochs concatenated (x = global iteration from 0).

    Runs made before the trainer kept per-iteration losses only have each epoch's mean; their
    iterations carry that mean and ``measured`` is False there, so a plot can say so.
    """

    iteration: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    measured: list[bool] = field(default_factory=list)
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # epoch -> [first, end) iteration
    level: list[float] = field(default_factory=list)  # each iteration's epoch mean (the summary's "loss")

    @property
    def boundaries(self) -> list[int]:
        """The global iteration at which each epoch after the first starts."""
        return [start for start, _ in sorted(self.spans.values())][1:]

    @property
    def kind(self) -> str:
        """"per-iteration", "per-epoch mean", "mixed" or "none" (no training recorded)."""
        if not self.measured:
            return "none"
        if all(self.measured):
            return "per-iteration"
        return "per-epoch mean" if not any(self.measured) else "mixed"


@dataclass
class RunRecord:
    """One run folder as the report uses it: a per-epoch table and the loss curve."""

    path: Path
    label: str  # the run folder's name (with its parent's where two runs share a name)
    method: str
    rows: list[EpochRow]
    loss: LossCurve
    clusters: bool  # the method has a cluster stage (MAR has none)
    notes: list[str] = field(default_factory=list)  # what the reader should know (a stale summary)
    #: The table's columns: :data:`COLUMNS` and the method's own figures (:func:`method_columns`).
    columns: tuple[Column, ...] = COLUMNS

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(x, values) of one column over the epochs that measured it (x of init = :data:`INIT_X`)."""
        points = [(r.x, r.values[key]) for r in self.rows if r.values.get(key) is not None]
        return [x for x, _ in points], [v for _, v in points]

    def has(self, key: str) -> bool:
        """Whether any epoch measured column ``key``."""
        return any(r.values.get(key) is not None for r in self.rows)

    def table(self) -> list[dict[str, Any]]:
        """The tidy per-epoch table: one dict per epoch, "epoch" then every column (rates in %)."""
        return [{"epoch": r.epoch, **r.values} for r in self.rows]


# ------------------------------------------------------------------------------------ reading

def read_run(path: str | os.PathLike, label: str | None = None) -> RunRecord:
    """Read a `loop` run folder (its ``summary.json``); a folder that is not one is refused with
    a ReidctlError naming it."""
    root = Path(path)
    summary = _read_summary(root)
    records = summary.epochs
    columns = COLUMNS + method_columns(summary.method)
    rows = [EpochRow(rec.epoch, _values(rec, columns)) for rec in records]
    clusters = any(rec.labels is not None for rec in records)
    try:
        loss = loss_curve(records)
    except (TypeError, ValueError):
        raise ReidctlError(f"{root / SUMMARY_FILE}: a train record's step_losses are not a list of numbers") from None
    note = stale_summary_note(root, summary)
    return RunRecord(path=root, label=label or _name(root), method=summary.method,
                     rows=rows, loss=loss, clusters=clusters, notes=[note] if note else [], columns=columns)


def stale_summary_note(root: Path, summary: RunSummary) -> str | None:
    """A sentence when ``summary.json`` is older than the run's log, else None.

    Why: ``loop`` writes summary.json last, so a later ``loop`` in the folder that was killed,
    failed or still runs leaves the previous run's summary in place; drawn without a word, it
    looks like the state of the run. The summary records the log's size when it was written
    (``log_bytes``); a log that grew since is newer. Summaries of older reidctl versions lack
    it, and then the files' modification times decide (a copy that kept them, ``cp -a``)."""
    summary_file, log = root / SUMMARY_FILE, root / "log.jsonl"
    try:
        log_stat, summary_stat = log.stat(), summary_file.stat()
    except OSError:
        return None
    if summary.log_bytes is not None:
        newer = log_stat.st_size > summary.log_bytes
    else:
        newer = log_stat.st_mtime > summary_stat.st_mtime
    if not newer:
        return None
    epochs = [rec.epoch for rec in summary.epochs if rec.trained]
    last = f"epoch {max(epochs)}" if epochs else "the initial evaluation"
    return (f"{summary_file} is older than {log}: a later `loop` in this folder did not finish (stopped, failed "
            f"or still running); the report shows the epochs of the last finished run, up to {last}")


def read_runs(paths: Sequence[str | os.PathLike]) -> list[RunRecord]:
    """Read several run folders; each gets a distinct label (the folder name, with its parent's
    name where two share it). The same folder twice is refused: it would hide one line."""
    roots = [Path(p) for p in paths]
    if not roots:
        raise ReidctlError("give at least one run folder")
    seen: dict[Path, Path] = {}
    for root in roots:
        real = root.resolve()
        if real in seen:
            raise ReidctlError(f"{root}: the same run folder is given twice (as {seen[real]})")
        seen[real] = root
    return [read_run(root, label) for root, label in zip(roots, run_labels(roots))]


def run_labels(roots: Sequence[Path]) -> list[str]:
    """Legend names: each folder's name, or ``parent/name`` where two runs share a name."""
    names = [_name(r) for r in roots]
    return [f"{r.resolve().parent.name}/{n}" if names.count(n) > 1 else n for r, n in zip(roots, names)]


def _name(root: Path) -> str:
    return root.resolve().name or str(root)


def _read_summary(root: Path) -> RunSummary:
    if not root.exists():
        raise ReidctlError(f"{root}: no such run folder")
    if not root.is_dir():
        raise ReidctlError(f"{root} is a file, not a run folder (give the folder `loop --run-dir` made)")
    if not (root / SUMMARY_FILE).is_file():
        why = ("log.jsonl is there: the loop is still running or was stopped before its end"
               if (root / "log.jsonl").is_file() else "give a folder `reidctl loop --run-dir` wrote")
        raise ReidctlError(f"{root} is not a loop run folder: it has no {SUMMARY_FILE} ({why})")
    summary = RunSummary.read(root)  # (a file that is not a loop's summary is refused there, in one line)
    if not summary.epochs:
        raise ReidctlError(f"{root / SUMMARY_FILE}: the run has no epochs to report")
    return summary


def method_columns(method: str) -> tuple[Column, ...]:
    """The columns of a method's own per-epoch figures, as the method declares them (its scored
    pair arrays: MAR's mined pairs and their precision); none for a method this reidctl does
    not know (a summary of a plug-in that is not installed)."""
    from reidctl.methods import METHODS  # (only to read a run: the report's import stays light)
    from reidctl.methods.base import pair_key

    declared = METHODS.get(method)
    if declared is None:
        return ()
    return tuple(col for array in declared.pair_arrays for col in (
        Column(f"{array.name}_pairs", array.label, ("train", pair_key(array.name), "pairs"), integer=True),
        Column(f"{array.name}_precision", f"{array.label}: one person %", ("train", pair_key(array.name), "precision"),
               percent=True)))


def _values(rec: EpochRecord, columns: Sequence[Column] = COLUMNS) -> dict[str, float | int | None]:
    values: dict[str, float | int | None] = {}
    for col in columns:
        head, *rest = col.source
        value = _dig(rec.stage(head), rest)
        values[col.key] = None if value is None else (
            100.0 * value if col.percent else int(value) if col.integer else value)
    return values


def _dig(node: Any, path: Iterable[str]) -> float | None:
    """The finite number at ``path`` below ``node``, or None where anything on the way is absent
    (an epoch without evaluation, ``camera_mix`` null when cameras are unknown ...)."""
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        return None
    return float(node)


def loss_curve(records: Sequence[EpochRecord]) -> LossCurve:
    """The per-iteration loss of every trained epoch in order; where an epoch has no
    ``step_losses`` (runs older than the field), its mean loss over its iterations. ``level``
    holds each epoch's mean at each of its iterations, for every epoch."""
    curve = LossCurve()
    for rec in records:
        train = rec.train
        if train is None or not rec.trained:
            continue
        steps = [float(v) for v in train.get("step_losses") or []]
        mean = _dig(train, ["loss"])
        if not steps and mean is None:
            continue
        n = len(steps) or max(int(_dig(train, ["iterations"]) or 1), 1)
        start = len(curve.iteration)
        curve.iteration.extend(range(start, start + n))
        curve.loss.extend(steps or [mean] * n)
        curve.measured.extend([bool(steps)] * n)
        curve.level.extend([mean if mean is not None else sum(steps) / n] * n)
        curve.spans[rec.epoch] = (start, start + n)
    return curve


# ------------------------------------------------------------------------------------ outputs

def report_size() -> tuple[int, int]:
    """(width, height) in pixels of the report figure, whatever the runs (tests check it)."""
    return round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI)


def output_path(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None, *,
                force: bool = False) -> Path:
    """Where the report goes: ``out``, or ``RUN_DIR/report.png`` for a single run. Several runs
    have no obvious home, so they need ``out``; a suffix other than .png/.html is refused, and so
    is a file the report would destroy: a run's own record, or (without ``force``) an existing
    file that is not a reidctl report (:func:`reidctl.artifacts.check_output`)."""
    if out is None:
        if len(run_dirs) != 1:
            raise ReidctlError(f"{len(run_dirs)} runs: give --out FILE.png or FILE.html "
                               "(a report of one run goes into its folder by default)")
        path = Path(run_dirs[0]) / "report.png"
    else:
        path = Path(out)
        if path.suffix.lower() not in FORMATS:
            raise ReidctlError(f"--out {path}: the name must end in .png or .html")
    read = [Path(d) / name for d in run_dirs for name in (SUMMARY_FILE, "log.jsonl")]
    return check_output(path, schema=REPORT, inputs=read, force=force)


def write_report(runs: Sequence[RunRecord], out: str | os.PathLike) -> dict[str, Any]:
    """Write the figure (``.png``) or the HTML page (``.html``) atomically; returns what was
    written: ``out``, ``format``, ``size`` (pixels of the figure) and the runs' labels."""
    path = Path(out)
    png = render_png(runs)
    data = html_page(runs, png).encode() if path.suffix.lower() == ".html" else png
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {"out": str(path), "format": path.suffix.lower().lstrip("."), "size": list(report_size()),
            "runs": [r.label for r in runs]}


def render_png(runs: Sequence[RunRecord]) -> bytes:
    """The report figure as PNG bytes (:data:`FIGSIZE` at :data:`DPI`)."""
    buf = io.BytesIO()
    draw_figure(runs).savefig(buf, format="png", dpi=DPI, metadata={PNG_KIND_KEY: REPORT})  # ours to replace
    return buf.getvalue()


def html_page(runs: Sequence[RunRecord], png: bytes) -> str:
    """A self-contained page: the figure embedded as base64 PNG, then each run's table."""
    image = base64.b64encode(png).decode("ascii")
    title = "reidctl report: " + ", ".join(r.label for r in runs)
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">{html_kind_tag(REPORT)}<title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<img alt=\"report figure\" src=\"data:image/png;base64,{image}\">"]
    parts += [_html_table(run) for run in runs]
    parts.append("</body></html>\n")
    return "\n".join(parts)


_CSS = ("body{font-family:sans-serif;margin:1.5em}img{max-width:100%}table{border-collapse:collapse;"
        "margin-bottom:2em}th,td{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "th{background:#f2f2f2}caption{text-align:left;font-weight:bold;padding:4px 0}")


def _html_table(run: RunRecord) -> str:
    note = {"per-epoch mean": " (no per-iteration losses recorded)", "mixed": " (some epochs without "
            "per-iteration losses)"}.get(run.loss.kind, "")
    caption = f"{run.label} — {run.method}, {run.path}{note}"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("epoch", *(c.header for c in run.columns)))
    body = "".join("<tr><td>" + html.escape(str(r.epoch)) + "</td>"
                   + "".join(f"<td>{format_cell(c, r.values[c.key])}</td>" for c in run.columns) + "</tr>"
                   for r in run.rows)
    return (f"<table class=\"epochs\"><caption>{html.escape(caption)}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def format_cell(col: Column, value: float | None) -> str:
    """A table cell: rates with two decimals (already in %), counts as integers, — when absent."""
    if value is None:
        return "—"
    if col.integer:
        return str(int(value))
    return f"{value:.2f}" if col.percent else f"{value:.4f}"


# ------------------------------------------------------------------------------------ figure

#: Line style of each metric within a panel (colour tells the run).
STYLES = {"mAP": ("-", "o"), "rank1": ("--", "s"), "f_score": ("-", "o"), "nmi": ("--", "s"),
          "clusters": ("-", "o"), "outliers": ("--", "s"), "multi_camera_clusters": (":", "^")}
NAMES = {"mAP": "mAP", "rank1": "rank-1", "f_score": "pairwise F", "nmi": "NMI", "clusters": "clusters",
         "outliers": "outliers", "multi_camera_clusters": "multi-camera clusters"}


def draw_figure(runs: Sequence[RunRecord]) -> Any:
    """The four-panel matplotlib Figure of ``runs`` (one colour per run, legend at the bottom).

    Drawn on a Figure with the Agg canvas, not through pyplot, so it neither needs a display
    nor changes the backend of a notebook that calls it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    (a, b), (c, d) = fig.subplots(2, 2)
    colours = [_colour(i) for i in range(len(runs))]
    _panel_eval(a, runs, colours)
    _panel_quality(b, runs, colours)
    _panel_counts(c, runs, colours)
    _panel_loss(d, runs, colours)
    xs = [row.x for run in runs for row in run.rows]
    for ax in (a, b, c):  # the same epochs line up across the per-epoch panels
        ax.set_xlim(min(xs) - 0.3, max(xs) + 0.3)
    _run_legend(fig, runs, colours)
    return fig


def _colour(i: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10"](i % 10)


def _panel_eval(ax: Any, runs: Sequence[RunRecord], colours: list[Any]) -> None:
    _per_epoch(ax, runs, colours, ("mAP", "rank1"))
    ax.set_title("(a) mAP and rank-1 on the test split")
    ax.set_ylabel("%")
    honest_ylim(ax, _drawn(runs, ("mAP", "rank1")), zero=True)
    _note(ax, [f"not evaluated: {r.label}" for r in runs if not r.has("mAP")])
    if not any(r.has("mAP") for r in runs):
        _empty(ax, "no evaluation (--eval-every 0, or no query/gallery split)")


def _panel_quality(ax: Any, runs: Sequence[RunRecord], colours: list[Any]) -> None:
    _per_epoch(ax, runs, colours, ("f_score", "nmi"))
    ax.set_title("(b) pseudo labels vs ground truth (reported only)")
    ax.set_ylabel("%")
    honest_ylim(ax, _drawn(runs, ("f_score", "nmi")), zero=True)
    _note(ax, [f"no cluster stage: {r.label}" if not r.clusters else f"no ground truth: {r.label}"
               for r in runs if not r.has("f_score")])
    if not any(r.has("f_score") for r in runs):
        _empty(ax, "no ground truth" if any(r.clusters for r in runs) else "no cluster stage")


def _panel_counts(ax: Any, runs: Sequence[RunRecord], colours: list[Any]) -> None:
    from matplotlib.ticker import FuncFormatter

    keys = ("clusters", "outliers", "multi_camera_clusters")
    _per_epoch(ax, runs, colours, keys)
    ax.set_title("(c) pseudo labels: clusters, outliers, multi-camera clusters")
    ax.set_yscale("symlog", linthresh=1)  # outliers outnumber clusters 10-100×; 0 must show
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("count (symlog)")
    if _drawn(runs, keys):
        ax.set_ylim(bottom=0)  # counts start at 0, so a count of 0 (no multi-camera cluster) shows
    _note(ax, [f"no cluster stage: {r.label}" for r in runs if not r.clusters])
    if not any(r.clusters for r in runs):
        _empty(ax, "no cluster stage")


def _drawn(runs: Sequence[RunRecord], keys: Sequence[str]) -> list[float]:
    """Every value of columns ``keys`` a panel draws."""
    return [v for run in runs for key in keys for v in run.series(key)[1]]


#: The smallest y span of a panel whose values may be negative, as a share of its largest
#: magnitude: a 2.42 → 2.40 change is drawn as the 1 % change it is, not stretched across the panel.
MIN_RELATIVE_SPAN = 0.5


def honest_ylim(ax: Any, values: Sequence[float], *, zero: bool) -> None:
    """Y limits that do not exaggerate small changes: from 0 when ``zero`` and no value is
    negative (percentages, losses), else at least :data:`MIN_RELATIVE_SPAN` of the largest
    magnitude around the values. Left to matplotlib when there is nothing to draw."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    if zero and lo >= 0:
        ax.set_ylim(0, hi * 1.06 if hi > 0 else 1.0)
        return
    span = MIN_RELATIVE_SPAN * max(abs(lo), abs(hi))
    if hi - lo < span:
        middle = (lo + hi) / 2
        ax.set_ylim(middle - span / 2, middle + span / 2)


def _per_epoch(ax: Any, runs: Sequence[RunRecord], colours: list[Any], keys: Sequence[str]) -> None:
    """Plot columns ``keys`` of every run against the epoch ("init" left of epoch 0)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    for run, colour in zip(runs, colours):
        for key in keys:
            xs, ys = run.series(key)
            if not xs:
                continue  # nothing measured (an empty unclipped line would break the layout)
            ls, marker = STYLES[key]
            # unclipped: a point at 0 (no multi-camera cluster) sits on the axis and must show whole
            ax.plot(xs, ys, color=colour, linestyle=ls, marker=marker, markersize=4, clip_on=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "init" if round(v) == INIT_X else f"{v:.0f}"))
    ax.set_xlabel("epoch (init = before training)")
    ax.grid(alpha=0.3)
    _legend_outside(ax, [Line2D([], [], color="0.3", linestyle=STYLES[k][0], marker=STYLES[k][1], markersize=4,
                                label=NAMES[k]) for k in keys])


def _legend_outside(ax: Any, handles: list[Any]) -> None:
    """A panel's legend to the right of its axes, where no data point can hide under it; the
    handles long enough to show a dashed or dotted line's pattern."""
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              handlelength=3.2)


def _panel_loss(ax: Any, runs: Sequence[RunRecord], colours: list[Any]) -> None:
    """Loss against the global iteration, thin, and each epoch's mean loss over its iterations,
    thick dashed; an epoch's start is a dotted line in the run's colour. Epochs known only by
    their mean loss (older runs) have only the dashed level."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    for run, colour in zip(runs, colours):
        curve = run.loss
        exact = [v if m else math.nan for v, m in zip(curve.loss, curve.measured)]
        ax.plot(curve.iteration, exact, color=colour, linewidth=0.8, alpha=0.8)
        ax.plot(curve.iteration, curve.level, color=colour, linewidth=2, linestyle="--", drawstyle="steps-mid")
        for x in curve.boundaries:
            ax.axvline(x - 0.5, color=colour, linestyle=":", linewidth=0.8, alpha=0.6)
    ax.set_title("(d) training loss per iteration (dotted: epoch starts)")
    ax.set_xlabel("global iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    losses = [v for run in runs for v in run.loss.loss]
    wide = bool(losses) and min(losses) > 0 and max(losses) >= 10 * min(losses)
    if wide:  # methods' losses differ by orders of magnitude (MAR's vs CC's): keep both readable
        ax.set_yscale("log")
    else:
        honest_ylim(ax, losses, zero=True)
    ax.set_ylabel("loss (log)" if wide else "loss")
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], color="0.3", linewidth=2, linestyle="--", label="per-epoch mean")]
    if any(any(r.loss.measured) for r in runs):
        handles.insert(0, Line2D([], [], color="0.3", linewidth=0.8, label="per iteration"))
    _legend_outside(ax, handles)
    _note(ax, [f"{'no' if r.loss.kind == 'per-epoch mean' else 'some epochs without'} per-iteration losses "
               f"recorded, per-epoch mean shown: {r.label}" for r in runs if r.loss.kind in ("per-epoch mean", "mixed")]
          + [f"no training recorded: {r.label}" for r in runs if r.loss.kind == "none"])


def _run_legend(fig: Any, runs: Sequence[RunRecord], colours: list[Any]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, linewidth=3, label=f"{r.label} ({r.method})") for r, c in zip(runs, colours)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(runs), 4), title="run")


def _note(ax: Any, lines: list[str]) -> None:
    """Lines under a panel's x label saying what some runs lack, so a missing line is explained
    (below the axes, where no data point can hide them)."""
    if lines:
        ax.set_xlabel("\n".join([ax.get_xlabel(), *lines]))


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", fontsize=13, color="0.4")
    ax.set_yticks([])
    ax.get_legend().remove()


# ------------------------------------------------------------------------------------ tensorboard

def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or the one-line error naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ReidctlError(TENSORBOARD_MISSING) from None
    return SummaryWriter


def tensorboard_folders(runs: Sequence[RunRecord], folder: str | os.PathLike) -> list[Path]:
    """One sub-folder of ``folder`` per run; one that already holds something is refused, since
    TensorBoard would overlay the old events with the new ones."""
    targets = [Path(folder) / run.label for run in runs]
    for target in targets:
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ReidctlError(f"--tensorboard: {target} already exists and is not empty "
                               "(remove it or give another folder)")
    return targets


def write_tensorboard(runs: Sequence[RunRecord], folder: str | os.PathLike) -> list[Path]:
    """Write each run's series as TensorBoard scalars under ``folder/<run label>``.

    The step is the global training iteration, TensorBoard's usual x axis: "init" at 0, an
    epoch's pseudo-label numbers where it starts, its evaluation and mean loss where it ends,
    each iteration's loss at its own step; the scalar ``epoch`` maps steps back to epochs. Each
    run is written to a temporary folder renamed into place, so a failure leaves no half run.
    """
    writer_class = summary_writer_class()
    targets = tensorboard_folders(runs, folder)
    for run, target in zip(runs, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            writer = writer_class(log_dir=str(tmp))
            try:
                _write_scalars(writer, run)
            finally:
                writer.close()
            if target.is_dir():
                target.rmdir()  # empty (checked above); os.replace needs it gone on some systems
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return targets


#: TensorBoard tag of each column, grouped as the figure's panels.
TB_TAGS = {"mAP": "eval/mAP_pct", "rank1": "eval/rank1_pct", "rank5": "eval/rank5_pct", "rank10": "eval/rank10_pct",
           "mINP": "eval/mINP_pct", "mAP_trapezoid": "eval/mAP_trapezoid_pct", "f_score": "labels/pairwise_F_pct",
           "nmi": "labels/NMI_pct", "clusters": "labels/clusters", "outliers": "labels/outliers",
           "multi_camera_clusters": "labels/multi_camera_clusters", "loss": "train/loss_epoch_mean"}
#: Columns measured before an epoch trains (its pseudo labels), logged at the epoch's first step.
AT_EPOCH_START = {"f_score", "nmi", "clusters", "outliers", "multi_camera_clusters"}


def _write_scalars(writer: Any, run: RunRecord) -> None:
    for row in run.rows:
        start, end = (0, 0) if row.epoch == "init" else run.loss.spans.get(row.epoch, (None, None))
        if start is None:
            continue  # an epoch that did not train has no place on the iteration axis
        if row.epoch != "init":
            writer.add_scalar("epoch", row.epoch, end)
        for key, tag in TB_TAGS.items():
            value = row.values[key]
            if value is not None:
                writer.add_scalar(tag, value, start if key in AT_EPOCH_START else end)
    for it, loss, measured in zip(run.loss.iteration, run.loss.loss, run.loss.measured):
        if measured:
            writer.add_scalar("train/loss", loss, it + 1)  # step = iterations done after it
