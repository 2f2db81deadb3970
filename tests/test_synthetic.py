"""The built-in synthetic dataset: layout, splits, determinism, caching and the `synth` command."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidctl.data import synthetic
from reidctl.data.synthetic import (
    MARKER,
    SPLIT_DIRS,
    SYNTHETIC_PRESETS,
    ensure_synthetic,
    write_synthetic,
)
from reidctl.errors import DatasetError
from tests.clitools import run_error, run_ok

MARKET = re.compile(r"([-\d]+)_c(\d)")
FULL_NAME = re.compile(r"^(\d{4}|-1)_c([1-9])s(\d)_(\d{6})_(\d{2})\.jpg$")
SMALL = dict(ids=12, cams=3, seed=7, images_per_camera=(2, 3), distractors=0.1, junk=0.1)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _index(root: Path) -> dict[str, list[tuple[int, int]]]:
    """split -> [(pid, camera)] parsed with the Market regex, as the research loaders do."""
    out = {}
    for split, folder in SPLIT_DIRS.items():
        rows = []
        for p in sorted((root / folder).iterdir()):
            m = MARKET.search(p.name)
            assert m and FULL_NAME.match(p.name), p.name
            rows.append((int(m.group(1)), int(m.group(2))))
        out[split] = rows
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "ds"
    return root, write_synthetic(root, **SMALL)


def test_layout_and_summary(dataset):
    root, summary = dataset
    assert sorted(p.name for p in root.iterdir()) == sorted([*SPLIT_DIRS.values(), MARKER])
    index = _index(root)
    assert {s: len(rows) for s, rows in index.items()} == summary["images"]
    assert summary["ids"] == {"train": 6, "test": 6} and summary["cameras"] == 3
    assert json.loads((root / MARKER).read_text())["images"] == summary["images"]
    cams = {c for rows in index.values() for _, c in rows}
    assert cams == {1, 2, 3}
    img = Image.open(next((root / "query").iterdir()))
    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 128))


def test_splits_follow_the_market_protocol(dataset):
    index = _index(dataset[0])
    train_ids = {p for p, _ in index["train"]}
    query_ids = {p for p, _ in index["query"]}
    gallery_ids = {p for p, _ in index["gallery"] if p > 0}
    assert train_ids and min(train_ids) > 0
    assert not train_ids & (query_ids | gallery_ids), "train and test identities must be disjoint"
    assert query_ids == gallery_ids

    cams_of = defaultdict(set)
    for rows in index.values():
        for pid, cam in rows:
            cams_of[pid].add(cam)
    assert all(len(cams_of[p]) >= 2 for p in train_ids | query_ids), "every identity in >= 2 cameras"

    # one query per (identity, camera), and each query has a gallery match in another camera
    assert len(index["query"]) == len(set(index["query"]))
    gallery = set(index["gallery"])
    for pid, cam in index["query"]:
        assert any(p == pid and c != cam for p, c in gallery)

    # distractors (0000) and junk (-1) live in the gallery only
    pids = [p for p, _ in index["gallery"]]
    assert pids.count(0) >= 1 and pids.count(-1) >= 1
    assert all(p > 0 for p, _ in index["train"] + index["query"])


def test_same_seed_same_bytes_other_seed_other_bytes(dataset, tmp_path):
    root, _ = dataset
    again = tmp_path / "again"
    write_synthetic(again, **SMALL, workers=2)  # worker processes must not change a byte
    assert _files(again) == _files(root)
    other = tmp_path / "other"
    write_synthetic(other, **{**SMALL, "seed": 8})
    a, b = _files(root), _files(other)
    assert a.keys() != b.keys() or any(a[k] != b[k] for k in a)


def test_images_are_not_noise(dataset):
    """Same camera + same person look alike; the person stands out from the background."""
    root = dataset[0]
    by_key = defaultdict(list)
    for p in sorted((root / "bounding_box_train").iterdir()):
        pid, cam = map(int, MARKET.search(p.name).groups())
        by_key[(pid, cam)].append(np.asarray(Image.open(p), np.float32))
    pairs = [v[:2] for v in by_key.values() if len(v) >= 2]
    same = np.mean([np.abs(a - b).mean() for a, b in pairs])
    firsts = [v[0] for v in by_key.values()]
    other = np.mean([np.abs(a - b).mean() for a, b in zip(firsts, firsts[1:])])
    assert same < other
    assert all(a.std() > 10 for a in firsts)


def test_refuses_to_overwrite(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(DatasetError, match="not empty"):
        write_synthetic(root, **SMALL)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    with pytest.raises(DatasetError, match="does not hold a dataset"):
        write_synthetic(precious, **SMALL, overwrite=True)
    assert (precious / "thesis.tex").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp folder left behind"


def test_rejects_bad_parameters(tmp_path):
    for bad, message in [
        (dict(cams=1), r"^cams must be between 2 and 9 \(got 1\)"),
        (dict(cams=10), r"^cams must be between 2 and 9 \(got 10\)"),
        (dict(ids=1), r"^ids must be between 2 and 9999 \(got 1\)$"),
        (dict(images_per_camera=(1, 3)), r"^images per camera must be MIN-MAX with 2 <= MIN <= MAX \(got 1-3\)"),
        (dict(test_fraction=1.0), r"^test fraction must be between 0 and 1 \(got 1\.0\)$"),
    ]:
        with pytest.raises(DatasetError, match=message):
            write_synthetic(tmp_path / "x", **{**SMALL, **bad})
    assert not (tmp_path / "x").exists()


def test_presets():
    tiny, small = SYNTHETIC_PRESETS["tiny"], SYNTHETIC_PRESETS["small"]
    assert tiny.ids < small.ids and 2 <= tiny.cams <= small.cams <= 9


def test_ensure_synthetic_builds_once_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(SYNTHETIC_PRESETS, "unit", synthetic.SyntheticPreset(ids=6, cams=2, images_per_camera=(2, 2)))
    root = ensure_synthetic("unit")
    assert root.parent == tmp_path / "cache" / "synthetic"
    assert root.name == f"unit-v{synthetic.GENERATOR_VERSION}-seed0"
    assert (root / MARKER).is_file()
    before = _files(root)

    def boom(*args, **kwargs):
        raise AssertionError("a complete cached dataset must be reused")

    monkeypatch.setattr(synthetic, "write_synthetic", boom)
    assert ensure_synthetic("unit") == root
    assert _files(root) == before


def test_ensure_synthetic_rebuilds_an_unfinished_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDCTL_CACHE", str(tmp_path))
    monkeypatch.setitem(SYNTHETIC_PRESETS, "unit", synthetic.SyntheticPreset(ids=6, cams=2, images_per_camera=(2, 2)))
    half = tmp_path / "synthetic" / f"unit-v{synthetic.GENERATOR_VERSION}-seed0"
    (half / "query").mkdir(parents=True)  # no marker: never finished
    assert (ensure_synthetic("unit") / MARKER).is_file()


def test_ensure_synthetic_unknown_name(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDCTL_CACHE", str(tmp_path))
    with pytest.raises(DatasetError, match="tiny, small"):
        ensure_synthetic("huge")


# ----------------------------------------------------------------------------------- CLI


def test_cli_synth_writes_and_reports(tmp_path):
    out = tmp_path / "ds"
    res = run_ok("synth", out, "--ids", "8", "--cams", "2", "--images-per-camera", "2", "--seed", "3")
    assert "bounding_box_train" in res.output
    assert (out / "query").is_dir() and (out / MARKER).is_file()

    run_error("synth", out, "--ids", "8", "--cams", "2", "--images-per-camera", "2",
              match=rf"^error: {re.escape(str(out))} already exists and is not empty \(--force")

    res = run_ok("synth", out, "--ids", "8", "--cams", "2", "--images-per-camera", "2-3", "--force", "--json")
    summary = json.loads(res.stdout)
    assert summary["root"] == str(out) and summary["cameras"] == 2
    assert summary["images"]["train"] == len(list((out / "bounding_box_train").iterdir()))


def test_cli_synth_user_errors(tmp_path):
    for args, message in [(["--cams", "12"], r"cams must be between 2 and 9 \(got 12\)"),
                          (["--images-per-camera", "two"], r"--images-per-camera must be N or MIN-MAX \(got 'two'\)"),
                          (["--images-per-camera", "1"], r"images per camera must be MIN-MAX .* \(got 1-1\)")]:
        run_error("synth", tmp_path / "x", *args, match=message)
    assert not (tmp_path / "x").exists()


def test_reader_loads_the_tiny_preset(tmp_path, monkeypatch):
    """`--data synthetic:tiny` end to end: generated into the cache, read as a Market folder."""
    from reidctl.data.datasets import load_dataset

    monkeypatch.setenv("REIDCTL_CACHE", str(tmp_path))
    ds = load_dataset("synthetic:tiny")
    summary = ds.summary()
    assert summary["train"]["ids"] == 16 and summary["query"]["ids"] == 8
    assert summary["train"]["cameras"] == 3
    assert all(s.pid >= 0 for s in ds.gallery), "junk (-1) is dropped by the reader"
    assert any(s.pid == 0 for s in ds.gallery), "distractors (0000) stay in the gallery"
