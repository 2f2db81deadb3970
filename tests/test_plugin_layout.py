"""A dataset layout plugs in without touching reidctl: the test-only ``pidcam``
(tests/plugin_layout.py) is registered with one line, then detected, read, forced, refused with
its own one-line message, and listed by ``--dataset`` in the CLI's help."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from reidctl.data import datasets
from reidctl.data.datasets import detect_layout, load_dataset
from reidctl.data.layouts import LAYOUTS
from reidctl.errors import DatasetError
from tests.plugin_layout import PidCam

REPO = Path(__file__).resolve().parents[1]
NAMES = ["0003_2_train.jpg", "0001_1_train.jpg", "0001_3_train_b.png", "0007_1_query.jpg", "0007_2_gallery.jpg",
         "0000_4_gallery.jpg"]


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(LAYOUTS, "pidcam", PidCam())  # the one registry line a new layout adds


def make_pidcam(root: Path, names=NAMES, marker: bool = True) -> Path:
    root.mkdir(parents=True)
    if marker:
        (root / "layout.txt").write_text("pidcam\n")
    for name in names:
        Image.new("RGB", (4, 8), (10, 200, 30)).save(root / name)
    return root


def rows(samples) -> list[tuple[str, int, int]]:
    return [(s.relpath, s.pid, s.camid) for s in samples]


def test_detected_and_read(tmp_path, registered):
    root = make_pidcam(tmp_path / "cams")
    assert detect_layout(root) == "pidcam"
    ds = load_dataset(root)
    assert (ds.name, ds.layout, ds.root, ds.distractor_pid) == ("cams", "pidcam", root.resolve(), None)
    assert rows(ds.train) == [("0001_1_train.jpg", 1, 0), ("0001_3_train_b.png", 1, 2), ("0003_2_train.jpg", 3, 1)]
    assert rows(ds.query) == [("0007_1_query.jpg", 7, 0)]
    assert rows(ds.gallery) == [("0000_4_gallery.jpg", 0, 3), ("0007_2_gallery.jpg", 7, 1)]
    assert all(s.path == ds.root / s.relpath for s in ds.samples("all"))
    # one level above, as an extracted archive adds
    assert detect_layout(tmp_path) == "pidcam"
    assert load_dataset(tmp_path).root == root.resolve()
    assert datasets.DATASET_NAMES[-1] == "pidcam"  # read when asked for: plug-ins included


def test_unregistered_it_is_a_plain_folder_of_images(tmp_path):
    root = make_pidcam(tmp_path / "cams")
    assert "pidcam" not in datasets.DATASET_NAMES
    assert detect_layout(root) == "images"
    with pytest.raises(DatasetError, match=r"unknown dataset 'pidcam' \(choose one of market1501, .*, synthetic\)$"):
        load_dataset(root, dataset="pidcam")


def test_forced(tmp_path, registered):
    # a split folder makes detection take it for a built-in Market-style folder (asked first)
    root = make_pidcam(tmp_path / "cams")
    (root / "query").mkdir()
    assert detect_layout(root) == "folder"
    ds = load_dataset(root, dataset="pidcam")
    assert (ds.layout, len(ds.train), len(ds.query), len(ds.gallery)) == ("pidcam", 3, 1, 2)


def test_a_folder_that_does_not_fit(tmp_path, registered):
    plain = make_pidcam(tmp_path / "plain", marker=False)
    expected = rf"^{re.escape(str(plain.resolve()))}: not a {re.escape(PidCam.expects)}$"
    with pytest.raises(DatasetError, match=expected):
        load_dataset(plain, dataset="pidcam")
    with pytest.raises(DatasetError, match=rf"is a file, not a folder in the {re.escape(PidCam.expects)}$"):
        load_dataset(plain / NAMES[0], dataset="pidcam")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no known dataset layout \(expected .*; image files directly in "
                                           r"the folder; or a pidcam folder with layout\.txt\)$"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"unknown dataset 'x' \(choose one of .*, synthetic, pidcam\)$"):
        load_dataset(plain, dataset="x")


def test_listed_in_the_dataset_help_when_registered_before_the_cli():
    code = ("import tests.plugin_layout as p; p.register()\n"
            "from typer.testing import CliRunner\nfrom reidctl.cli import app\n"
            "result = CliRunner().invoke(app, ['extract', '--help'], env={'COLUMNS': '300'})\n"
            "assert result.exception is None and result.exit_code == 0, result.output\n"
            "print(result.output)\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "--dataset" in proc.stdout
    assert "(market1501, dukemtmc, msmt17, cuhk03, cuhk03-labeled, cuhk03-detected, folder, manifest, images, " \
           "pidcam)" in proc.stdout
