"""Outputs never destroy data (issue 27, reliability defects 2 and 3).

Defect 2: an output that is one of the command's inputs is refused in one line, for every
command that reads and writes files; an existing file that is not the command's own kind of
output is refused unless ``--force`` (an own earlier output is replaced). Defect 3: writes into a
run folder replace a symbolic link instead of writing through it (``summary.json``,
``config.toml``, ``eval.json``, a stage's output), the lock and the log refuse a link, and
``export`` never writes its ``OUT.json`` record through a link.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from reidctl.artifacts import RANKING_CSV, RANKING_CSV_START, REPORT, SHEET, existing_kind, read_features
from reidctl.models.spec import ModelSpec
from reidctl.evaluation.ranking import CSV_COLUMNS
from reidctl.models.checkpoint import save_checkpoint
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market

pytestmark = pytest.mark.usefixtures("one_thread")

RUNTIME = ["--workers", "0", "--device", "cpu"]
MODEL = ["--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32"]
CLUSTER = ["--k1", "4", "--k2", "2", "--eps", "0.5", "--min-samples", "2"]
LOOP = ["--epochs", "1", *MODEL, "--iters", "1", "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2",
        "--eval-every", "1", *CLUSTER, *RUNTIME, "--deterministic"]
PRECIOUS = b"a file of the user's, nothing reidctl wrote\n"


class Files:
    """A colour market, its train and test features, labels, a checkpoint and a weights file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = colour_market(root / "market", train_ids=4, test_ids=2)
        self.train, self.test, self.labels = root / "tr.h5", root / "te.h5", root / "labels.h5"
        run_ok("extract", "--data", self.data, "--out", self.train, *MODEL, *RUNTIME)
        run_ok("extract", "--data", self.data, "--split", "test", "--out", self.test, *MODEL, *RUNTIME)
        run_ok("cluster", self.train, "--out", self.labels, *CLUSTER, "--device", "cpu")
        model, _ = ModelSpec(arch="resnet18", pretrained="none", height=64, width=32).build()
        self.ckpt = root / "m.pt"
        save_checkpoint(self.ckpt, model)
        self.weights = root / "w.pth"
        torch.save(torchvision.models.resnet18().state_dict(), self.weights)
        self.query = sorted((self.data / "query").iterdir())[0]
        self.gallery = self.data / "bounding_box_test"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    return Files(tmp_path_factory.mktemp("outputs"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _photo(path: Path) -> Path:
    Image.new("RGB", (8, 16), (200, 30, 30)).save(path)
    return path


# ------------------------------------------------------------------- defect 2: output = input

#: Every command that reads and writes files, with an output naming one of its inputs:
#: (arguments, the input that must survive).
SAME_AS_INPUT = {
    "extract --out WEIGHTS": (lambda f: ["extract", "--data", f.data, "--arch", "resnet18", "--weights", f.weights,
                                         "--height", "64", "--width", "32", "--out", f.weights, *RUNTIME], "weights"),
    "cluster --out FEATURES": (lambda f: ["cluster", f.train, "--out", f.train, *CLUSTER], "train"),
    "refine --out LABELS": (lambda f: ["refine", f.train, "--labels", f.labels, "--out", f.labels], "labels"),
    "intra-camera --out CHECKPOINT": (lambda f: ["intra-camera", "--data", f.data, "--checkpoint", f.ckpt,
                                                 "--out", f.ckpt, *RUNTIME], "ckpt"),
    "pretrain --out WEIGHTS": (lambda f: ["pretrain", "--data", f.data, "--arch", "resnet18", "--weights", f.weights,
                                          "--height", "64", "--width", "32", "--out", f.weights, *RUNTIME], "weights"),
    "train-epoch --out CHECKPOINT": (lambda f: ["train-epoch", "--data", f.data, "--labels", f.labels,
                                                "--checkpoint", f.ckpt, "--out", f.ckpt, *RUNTIME], "ckpt"),
    "evaluate FEATURES --sheet FEATURES": (lambda f: ["evaluate", f.test, "--sheet", f.test], "test"),
    "evaluate --checkpoint --sheet CHECKPOINT": (lambda f: ["evaluate", "--data", f.data, "--checkpoint", f.ckpt,
                                                            "--sheet", f.ckpt, *RUNTIME], "ckpt"),
    "rank --out FEATURES": (lambda f: ["rank", f.test, f.test, "--top-k", "1", "--out", f.test], "test"),
    "rank --sheet FEATURES": (lambda f: ["rank", f.test, f.test, "--top-k", "1", "--sheet", f.test], "test"),
    "rank --out QUERY_IMAGE": (lambda f: ["rank", f.query, f.gallery, "--checkpoint", f.ckpt, "--out", f.query,
                                          *RUNTIME], "query"),
    "rank --sheet GALLERY_IMAGE": (lambda f: ["rank", f.query, f.gallery, "--checkpoint", f.ckpt, "--sheet",
                                              sorted(f.gallery.iterdir())[0], *RUNTIME], "first_gallery"),
    "rank --out CHECKPOINT": (lambda f: ["rank", f.query, f.gallery, "--checkpoint", f.ckpt, "--out", f.ckpt,
                                         *RUNTIME], "ckpt"),
}


@pytest.mark.parametrize("case", list(SAME_AS_INPUT))
def test_defect_2_an_output_naming_an_input_is_refused(files, case):
    args, keep = SAME_AS_INPUT[case]
    victim = sorted(files.gallery.iterdir())[0] if keep == "first_gallery" else getattr(files, keep)
    before = _digest(victim)
    run_error(*args(files), match=r"^error: --(out|sheet) .* is also an input of this command")
    assert _digest(victim) == before


def test_defect_2_rank_features_stay_features(files, tmp_path):
    """The issue's own case: `rank tq.h5 tq.h5 --top-k 1 --out tq.h5` turned the features into CSV."""
    tq = tmp_path / "tq.h5"
    shutil.copy(files.test, tq)
    run_error("rank", tq, tq, "--top-k", "1", "--out", tq, match=r"--out .*tq\.h5 is also an input")
    run_error("rank", tq, tq, "--top-k", "1", "--sheet", tmp_path / "." / "tq.h5", match=r"--sheet .* is also an input")
    link = tmp_path / "alias.h5"
    link.symlink_to(tq)
    run_error("rank", tq, tq, "--top-k", "1", "--out", link, match=r"--out .*alias\.h5 is also an input")
    assert len(read_features(tq)) == len(read_features(files.test))  # still a features file


def test_defect_2_export_over_its_checkpoint_is_refused(files, tmp_path):
    ckpt = tmp_path / "m.ts"  # a checkpoint under an export's name
    shutil.copy(files.ckpt, ckpt)
    run_error("export", ckpt, "--out", ckpt, match=r"--out .*m\.ts is also an input")
    run_error("export", ckpt, "--out", ckpt, "--force", match=r"is also an input")
    assert _digest(ckpt) == _digest(files.ckpt)


def test_rank_out_and_sheet_naming_one_file_are_refused(files, tmp_path):
    run_error("rank", files.test, files.test, "--out", tmp_path / "x", "--sheet", tmp_path / "x",
              match=r"--sheet .*x and --out .*x name the same file")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------- defect 2: existing files need --force

#: (arguments given the existing file, the flag named, what the file is)
FOREIGN = {
    "rank --out notes.csv": (lambda f, p: ["rank", f.test, f.test, "--top-k", "1", "--out", p], "--out", "notes.csv"),
    "rank --sheet photo.png": (lambda f, p: ["rank", f.test, f.test, "--top-k", "1", "--sheet", p], "--sheet",
                               "photo.png"),
    "evaluate --sheet photo.png": (lambda f, p: ["evaluate", f.test, "--sheet", p], "--sheet", "photo.png"),
    "report --out photo.png": (lambda f, p: ["report", f.run, "--out", p], "--out", "photo.png"),
    "report --out page.html": (lambda f, p: ["report", f.run, "--out", p], "--out", "page.html"),
    "export --out photo.ts": (lambda f, p: ["export", f.ckpt, "--out", p], "--out", "photo.ts"),
    "extract --out photo.h5": (lambda f, p: ["extract", "--data", f.data, "--out", p, *MODEL, *RUNTIME], "--out",
                               "photo.h5"),
    "cluster --out notes.csv": (lambda f, p: ["cluster", f.train, "--out", p, *CLUSTER], "--out", "notes.csv"),
}


@pytest.fixture(scope="module")
def run_folder(files, tmp_path_factory) -> Path:
    """A finished one-epoch loop run (its summary.json is what `report` reads)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    run_ok("loop", "--data", files.data, "--run-dir", run, *LOOP)
    files.run = run
    return run


@pytest.mark.parametrize("case", list(FOREIGN))
def test_defect_2_an_unrelated_existing_file_needs_force(files, run_folder, tmp_path, case):
    args, flag, name = FOREIGN[case]
    path = tmp_path / name
    if name.endswith(".png"):
        _photo(path)
    else:
        path.write_bytes(PRECIOUS)
    before = _digest(path)
    run_error(*args(files, path),
              match=rf"^error: {flag} .*{name} already exists and is not a reidctl artifact.*--force")
    assert _digest(path) == before


def test_defect_2_force_replaces_and_own_outputs_are_replaced_without_it(files, run_folder, tmp_path):
    notes, photo = tmp_path / "r.csv", _photo(tmp_path / "s.png")
    notes.write_bytes(PRECIOUS)
    run_ok("rank", files.test, files.test, "--top-k", "1", "--out", notes, "--sheet", photo, "--force")
    assert existing_kind(notes) == RANKING_CSV and existing_kind(photo) == SHEET
    run_ok("rank", files.test, files.test, "--top-k", "2", "--out", notes, "--sheet", photo)  # ours: replaced
    assert len(notes.read_text().splitlines()) == 1 + 2 * len(read_features(files.test).rows("query"))
    run_ok("evaluate", files.test, "--sheet", photo)  # a sheet replaces a sheet
    report = run_folder / "report.png"
    run_ok("report", run_folder)
    run_ok("report", run_folder)  # the default report.png is the report's own: replaced
    assert existing_kind(report) == REPORT
    run_error("report", run_folder, "--out", photo, match=r"is a 'reidctl/sheet' artifact, not 'reidctl/report'")
    run_ok("export", files.ckpt, "--out", tmp_path / "m.ts")
    run_ok("export", files.ckpt, "--out", tmp_path / "m.ts")  # an earlier export: replaced


def test_the_csv_signature_is_ranks_header():
    assert ",".join(CSV_COLUMNS).startswith(RANKING_CSV_START)


# ------------------------------------------------------------------- defect 3: symbolic links


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir(exist_ok=True)
    victim.write_bytes(PRECIOUS)
    return victim


def _plant(link: Path, victim: Path) -> None:
    link.unlink(missing_ok=True)
    link.symlink_to(victim)


@pytest.fixture
def own_run(files, run_folder, tmp_path) -> Path:
    """A copy of the finished run, to plant links in."""
    run = tmp_path / "run"
    shutil.copytree(run_folder, run, symlinks=True)
    return run


@pytest.mark.parametrize("name", ["summary.json", "config.toml", "epoch_000/eval.json", "epoch_000/model.pt",
                                  "epoch_000/evaluate.done.json"])
def test_defect_3_a_link_in_the_run_folder_is_replaced_not_written_through(files, own_run, tmp_path, name):
    victim = _victim(tmp_path)
    link = own_run / name
    _plant(link, victim)
    again = ["--force-from", "evaluate"] if "eval" in name else []
    run_ok("loop", "--data", files.data, "--run-dir", own_run, *LOOP, *again)
    assert victim.read_bytes() == PRECIOUS
    assert not link.is_symlink() and link.is_file()


@pytest.mark.parametrize("name", [".lock", "log.jsonl"])
def test_defect_3_the_lock_and_the_log_refuse_a_link(files, own_run, tmp_path, name):
    victim = _victim(tmp_path)
    _plant(own_run / name, victim)
    run_error("loop", "--data", files.data, "--run-dir", own_run, *LOOP, match=rf"{name} is a symbolic link")
    assert victim.read_bytes() == PRECIOUS


def test_defect_3_export_never_writes_its_record_through_a_link(files, tmp_path):
    victim = _victim(tmp_path)
    side = tmp_path / "side.ts"
    _plant(tmp_path / "side.ts.json", victim)
    run_error("export", files.ckpt, "--out", side, match=r"side\.ts\.json .* is not an export record.*--force")
    assert not side.exists() and victim.read_bytes() == PRECIOUS
    run_ok("export", files.ckpt, "--out", side, "--force")
    record = tmp_path / "side.ts.json"
    assert victim.read_bytes() == PRECIOUS and not record.is_symlink() and b"preprocessing" in record.read_bytes()


def test_defect_3_a_report_into_a_linked_file_is_refused(files, own_run, tmp_path):
    victim = _victim(tmp_path)
    _plant(own_run / "report.png", victim)
    run_error("report", own_run, match=r"report\.png already exists and is not a reidctl artifact")
    assert victim.read_bytes() == PRECIOUS
