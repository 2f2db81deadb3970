"""`reidctl report`: run folders read into per-epoch tables, drawn as PNG/HTML, sent to TensorBoard.

Run folders are written by hand the way `loop` writes them (``write_json`` of the summary, a
``log.jsonl``), so every expected number is known; one tiny real loop checks the real format.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from reidctl.errors import ReidctlError
from reidctl.reporting.report import (INIT_X, TENSORBOARD_MISSING, draw_figure, read_run, read_runs, report_size,
                            write_report, write_tensorboard)
from reidctl.pipeline.rundir import write_json
from tests.clitools import run_error, run_ok
from tests.looptools import CLI_ARGS


def _eval(mAP: float, rank1: float) -> dict:
    return {"mAP": mAP, "mAP_trapezoid": mAP + 0.05, "rank1": rank1, "rank5": rank1 + 0.1, "rank10": rank1 + 0.2,
            "mINP": mAP / 2, "queries": 20, "valid_queries": 20, "gallery": 80, "ap": "sklearn", "rerank": False,
            "pairs": "market", "seconds": 0.01}


def _labels(clusters: int, outliers: int, multi: int | None, f: float | None, nmi: float | None) -> dict:
    rec = {"rows": 100, "clusters": clusters, "outliers": outliers, "seconds": 0.1,
           "camera_mix": None if multi is None else {"cameras": 2, "multi_camera_clusters": multi,
                                                     "cross_camera_pairs": 0.1}}
    if f is not None:
        rec["quality"] = {"f_score": f, "nmi": nmi, "precision": 0.5, "recall": 0.5, "n_samples": 100}
    return rec


def _train(epoch: int, steps: list[float] | None, iterations: int | None = None) -> dict:
    rec = {"method": "cc", "epoch": epoch, "iterations": iterations or len(steps or []), "lr": 0.00035,
           "loss": sum(steps) / len(steps) if steps else 2.0 + epoch, "batch_size": 8, "logs": {}}
    if steps is not None:
        rec["step_losses"] = steps
    return rec


def _cc_epoch(epoch: int, *, steps: list[float] | None, evaluated: bool = True, truth: bool = True) -> dict:
    """Epoch ``epoch`` of a CC run: the cluster stage's labels differ from refine's on purpose
    (the report shows refine's, the labels training used)."""
    f, nmi = (0.40 + 0.1 * epoch, 0.70 + 0.01 * epoch) if truth else (None, None)
    rec = {"epoch": epoch, "cluster": _labels(999, 999, 999, 0.01, 0.01),
           "refine": {"method": "cc", **_labels(10 + epoch, 50 - 10 * epoch, 3 + epoch, f, nmi)},
           "train": _train(epoch, steps, iterations=None if steps else 4)}
    if evaluated:
        rec["eval"] = _eval(0.30 + 0.05 * epoch, 0.5 + 0.1 * epoch)
    return rec


def write_run(root: Path, epochs: list[dict], method: str = "cc") -> Path:
    """A run folder as `loop` leaves it: summary.json (its write_json) and a log.jsonl."""
    root.mkdir(parents=True)
    evals = [e for e in epochs if "eval" in e]
    write_json(root / "summary.json", {"run_dir": str(root), "method": method, "epochs": epochs,
                                       "last": {"epoch": evals[-1]["epoch"], **evals[-1]["eval"]},
                                       "best": None, "checkpoint": "epoch_001/model.pt"})
    with open(root / "log.jsonl", "w") as f:
        for rec in epochs:
            for stage in ("cluster", "refine", "train", "eval"):
                if stage in rec:
                    f.write(json.dumps({"epoch": rec["epoch"], "stage": stage, "cached": False}) + "\n")
    return root


def cc_run(root: Path, *, steps: bool = True, truth: bool = True) -> Path:
    """init + 2 epochs, evaluated at init and after epoch 1 only; 3 then 2 iterations."""
    epochs = [{"epoch": "init", "eval": _eval(0.10, 0.20)},
              _cc_epoch(0, steps=[3.0, 2.5, 2.0] if steps else None, evaluated=False, truth=truth),
              _cc_epoch(1, steps=[1.5, 1.0] if steps else None, truth=truth)]
    return write_run(root, epochs)


def mar_run(root: Path) -> Path:
    """No cluster stage: only train and eval records, as MAR's loop writes them."""
    epochs = [{"epoch": "init", "eval": _eval(0.20, 0.30)},
              {"epoch": 0, "train": {**_train(0, [26.0, 24.0]), "method": "mar",
                                     "mined_pairs_quality": {"pairs": 0, "judged": 0, "precision": None}},
               "eval": _eval(0.22, 0.31)}]
    return write_run(root, epochs, method="mar")


# ------------------------------------------------------------------------------------ reading

def test_series_are_read_per_epoch_in_percent(tmp_path):
    run = read_run(cc_run(tmp_path / "cc"))
    assert run.label == "cc" and run.method == "cc" and run.clusters
    xs, ys = run.series("mAP")  # epoch 0 was not evaluated
    assert xs == [INIT_X, 1] and ys == pytest.approx([10.0, 35.0])
    assert run.series("rank1")[1] == pytest.approx([20.0, 60.0])
    assert run.series("f_score") == ([0, 1], pytest.approx([40.0, 50.0]))
    assert run.series("nmi")[1] == pytest.approx([70.0, 71.0])
    # refine's labels (what training used), not the cluster stage's 999s
    assert run.series("clusters") == ([0, 1], [10, 11])
    assert run.series("outliers") == ([0, 1], [50, 40])
    assert run.series("multi_camera_clusters") == ([0, 1], [3, 4])
    table = run.table()
    assert [r["epoch"] for r in table] == ["init", 0, 1]
    assert table[0]["clusters"] is None and table[1]["mAP"] is None
    assert table[2]["loss"] == pytest.approx(1.25) and table[2]["iterations"] == 2


def test_a_methods_own_figures_are_columns_of_its_runs_only(tmp_path):
    """MAR declares its mined pairs (``PairArray``): the report shows them, in MAR's words,
    without naming MAR anywhere in the report's code; a CC run has no such column."""
    root = mar_run(tmp_path / "mar")
    summary = json.loads((root / "summary.json").read_text())
    summary["epochs"][1]["train"]["mined_pairs_quality"] = {"pairs": 40, "judged": 40, "precision": 0.75}
    (root / "summary.json").write_text(json.dumps(summary))
    run = read_run(root)
    assert [c.header for c in run.columns[-2:]] == ["mined positive pairs", "mined positive pairs: one person %"]
    table = run.table()
    assert table[1]["mined_pairs_pairs"] == 40 and table[1]["mined_pairs_precision"] == pytest.approx(75.0)
    assert table[0]["mined_pairs_pairs"] is None  # the initial evaluation trained nothing
    assert "mined_pairs_pairs" not in read_run(cc_run(tmp_path / "cc")).table()[1]


def test_step_losses_are_concatenated_over_epochs(tmp_path):
    curve = read_run(cc_run(tmp_path / "cc")).loss
    assert curve.iteration == [0, 1, 2, 3, 4]
    assert curve.loss == [3.0, 2.5, 2.0, 1.5, 1.0]
    assert curve.kind == "per-iteration" and all(curve.measured)
    assert curve.spans == {0: (0, 3), 1: (3, 5)} and curve.boundaries == [3]


def test_old_run_without_step_losses_uses_the_epoch_mean(tmp_path):
    run = read_run(cc_run(tmp_path / "old", steps=False))
    curve = run.loss
    assert curve.kind == "per-epoch mean" and not any(curve.measured)
    assert curve.iteration == list(range(8)) and curve.loss == [2.0] * 4 + [3.0] * 4  # 4 iterations each
    fig = draw_figure([run])
    assert "per-epoch mean shown: old" in fig.axes[3].get_xlabel()


def test_mixed_run_marks_only_the_epochs_without_step_losses(tmp_path):
    epochs = [_cc_epoch(0, steps=None), _cc_epoch(1, steps=[1.5, 1.0])]
    curve = read_run(write_run(tmp_path / "mixed", epochs)).loss
    assert curve.kind == "mixed" and curve.measured == [False] * 4 + [True] * 2


def test_run_without_cluster_stage(tmp_path):
    run = read_run(mar_run(tmp_path / "mar"))
    assert not run.clusters and not run.has("f_score") and not run.has("clusters")
    assert run.series("clusters") == ([], [])
    assert run.series("mAP")[1] == pytest.approx([20.0, 22.0])
    fig = draw_figure([run])
    texts = [t.get_text() for ax in fig.axes[1:3] for t in ax.texts]
    assert texts == ["no cluster stage", "no cluster stage"]


def test_clustered_run_without_ground_truth_or_cameras(tmp_path):
    epochs = [_cc_epoch(0, steps=[1.0], truth=False)]
    epochs[0]["refine"]["camera_mix"] = None  # cameras unknown
    run = read_run(write_run(tmp_path / "own", epochs))
    assert run.clusters and not run.has("f_score") and not run.has("multi_camera_clusters")
    assert run.has("clusters")
    fig = draw_figure([run])
    assert [t.get_text() for t in fig.axes[1].texts] == ["no ground truth"]


def test_same_folder_names_get_their_parent_in_the_legend(tmp_path):
    runs = read_runs([cc_run(tmp_path / "a" / "run"), mar_run(tmp_path / "b" / "run")])
    assert [r.label for r in runs] == ["a/run", "b/run"]
    legend = [t.get_text() for t in draw_figure(runs).legends[0].get_texts()]
    assert legend == ["a/run (cc)", "b/run (mar)"]


@pytest.mark.parametrize("files, message", [
    (None, "no such run folder"),
    ({}, r"is not a loop run folder: it has no summary\.json \(give a folder"),
    ({"log.jsonl": "{}\n"}, "still running or was stopped"),
    ({"summary.json": "{oops"}, "cannot read it as JSON"),
    ({"summary.json": '{"epochs": {}}'}, "not a loop summary"),
    ({"summary.json": '{"epochs": []}'}, "no epochs to report"),
    ({"summary.json": '{"epochs": [{"epoch": "x"}]}'}, "has epoch 'x'"),
    ({"summary.json": '{"epochs": [{"epoch": 0, "train": {"step_losses": ["a"]}}]}'}, "not a list of numbers"),
])
def test_a_folder_that_is_not_a_run_is_refused(tmp_path, files, message):
    folder = tmp_path / "nope"
    if files is not None:
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
    with pytest.raises(ReidctlError, match=message):
        read_run(folder)


def test_the_same_run_twice_is_refused(tmp_path):
    run = cc_run(tmp_path / "cc")
    with pytest.raises(ReidctlError, match="given twice"):
        read_runs([run, tmp_path / "." / "cc"])


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, reidctl.reporting.report; assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ------------------------------------------------------------------------------------ outputs (CLI)

def test_two_runs_overlaid_into_one_png(tmp_path):
    a, b = cc_run(tmp_path / "cc"), mar_run(tmp_path / "mar")
    out = tmp_path / "cmp.png"
    result = run_ok("report", a, b, "--out", out, "--json")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == report_size()
        img.verify()
    info = json.loads(result.stdout)
    assert info["out"] == str(out) and info["runs"] == ["cc", "mar"] and info["size"] == list(report_size())
    assert info["tables"]["cc"][0]["epoch"] == "init" and info["tables"]["cc"][0]["mAP"] == pytest.approx(10.0)
    assert info["tables"]["mar"][1]["mAP"] == pytest.approx(22.0)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_one_run_goes_to_its_folder_by_default(tmp_path):
    run = cc_run(tmp_path / "cc")
    result = run_ok("report", run)
    assert (run / "report.png").is_file() and "wrote" in result.stderr


def test_html_page_holds_the_figure_and_a_table_per_run(tmp_path):
    a, b = cc_run(tmp_path / "cc"), mar_run(tmp_path / "mar")
    out = tmp_path / "cmp.html"
    run_ok("report", a, b, "--out", out)
    page = out.read_text()
    assert page.count("<table") == 2 and "pairwise F %" in page
    rows = re.findall(r"<tr><td>(.*?)</td>.*?</tr>", page)
    assert rows == ["init", "0", "1", "init", "0"]
    assert "<td>35.00</td>" in page and "<td>—</td>" in page  # epoch 1's mAP, a not-evaluated epoch
    image = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page).group(1)
    with Image.open(io.BytesIO(base64.b64decode(image))) as img:
        assert img.format == "PNG" and img.size == report_size()


def test_several_runs_need_out(tmp_path):
    a, b = cc_run(tmp_path / "cc"), mar_run(tmp_path / "mar")
    run_error("report", a, b, match="2 runs: give --out FILE.png or FILE.html")
    assert not (a / "report.png").exists()


def test_out_must_be_png_or_html(tmp_path):
    run_error("report", cc_run(tmp_path / "cc"), "--out", tmp_path / "r.pdf", match=r"must end in \.png or \.html")


def test_not_a_run_is_one_error_line(tmp_path):
    (tmp_path / "empty").mkdir()
    run_error("report", tmp_path / "empty", match=r"empty is not a loop run folder: it has no summary\.json")


def test_write_report_replaces_an_old_report(tmp_path):
    out = tmp_path / "r.png"
    out.write_bytes(b"old")
    write_report(read_runs([cc_run(tmp_path / "cc")]), out)
    with Image.open(out) as img:
        assert img.size == report_size()


# ------------------------------------------------------------------------------------ tensorboard

def test_tensorboard_missing_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without the package
    run = cc_run(tmp_path / "cc")
    run_error("report", run, "--tensorboard", tmp_path / "tb", match=re.escape(TENSORBOARD_MISSING))
    assert not (run / "report.png").exists() and not (tmp_path / "tb").exists()  # refused before writing


def test_tensorboard_scalars_per_run(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = read_runs([cc_run(tmp_path / "cc"), mar_run(tmp_path / "mar")])
    folders = write_tensorboard(runs, tmp_path / "tb")
    assert folders == [tmp_path / "tb" / "cc", tmp_path / "tb" / "mar"]
    acc = EventAccumulator(str(folders[0]))
    acc.Reload()
    scalars = {tag: [(e.step, round(e.value, 4)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert scalars["eval/mAP_pct"] == [(0, 10.0), (5, 35.0)]  # init at step 0, epoch 1 ends at iteration 5
    assert scalars["labels/clusters"] == [(0, 10.0), (3, 11.0)]  # at each epoch's first iteration
    assert scalars["train/loss"] == [(1, 3.0), (2, 2.5), (3, 2.0), (4, 1.5), (5, 1.0)]
    assert scalars["epoch"] == [(3, 0.0), (5, 1.0)]
    assert not list((tmp_path / "tb").glob(".*"))  # no temporary folder left
    with pytest.raises(ReidctlError, match="already exists and is not empty"):
        write_tensorboard(runs, tmp_path / "tb")


def test_tensorboard_from_the_cli(tmp_path):
    pytest.importorskip("tensorboard")
    run = cc_run(tmp_path / "cc")
    result = run_ok("report", run, "--tensorboard", tmp_path / "tb", "--json")
    assert json.loads(result.stdout)["tensorboard"] == [str(tmp_path / "tb" / "cc")]
    assert list((tmp_path / "tb" / "cc").glob("events.out.tfevents.*"))


# ------------------------------------------------------------------------------------ a real run

def test_report_of_a_real_loop_run(tmp_path, one_thread):
    """The summary a real loop writes (with the trainer's step_losses) reads as the hand-made ones."""
    args = [a for a in CLI_ARGS if a != "--deterministic"]
    run_ok("loop", "--data", "synthetic:tiny", "--run-dir", tmp_path / "r", "--epochs", "1", *args)
    run = read_run(tmp_path / "r")
    assert [r.epoch for r in run.rows] == ["init", 0] and run.clusters and run.has("f_score")
    assert run.loss.kind == "per-iteration" and len(run.loss.loss) == run.rows[1].values["iterations"] == 2
    assert 0 <= run.rows[1].values["mAP"] <= 100
    run_ok("report", tmp_path / "r", "--out", tmp_path / "r.html")
