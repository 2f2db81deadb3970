"""Dataset layouts, detection, manifests and image loading, on tiny fake folders."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidctl.data.datasets import DATASET_NAMES, detect_layout, load_dataset
from reidctl.data.images import IMAGE_EXTENSIONS, load_image
from reidctl.errors import DatasetError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_image(path: Path, size: tuple[int, int] = (4, 8)) -> Path:
    """A tiny JPEG/PNG (width×height = 4×8) at ``path``, folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 60)).save(path)
    return path


def make_market(root: Path, train=(), query=(), gallery=()) -> Path:
    """A Market-1501-style folder; a split given as None is left out entirely."""
    for sub, names in (("bounding_box_train", train), ("query", query), ("bounding_box_test", gallery)):
        if names is None:
            continue
        (root / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_image(root / sub / name)
    return root


MARKET = dict(
    train=["0007_c6s1_000001_01.jpg", "0002_c2s1_000100_01.jpg", "0002_c1s1_000451_03.jpg"],
    query=["0002_c3s1_000001_00.jpg"],
    gallery=["-1_c1s1_000001_00.jpg", "0000_c2s1_000002_00.jpg", "0002_c4s1_000003_01.jpg"],
)
DUKE = dict(
    train=["0005_c2_f0046985.jpg", "0005_c8_f0000001.jpg"],
    query=["0010_c1_f0000010.jpg"],
    gallery=["0010_c3_f0000011.jpg", "0000_c5_f0000012.jpg"],
)


def relpaths(rows) -> list[str]:
    return [s.relpath for s in rows]


# ----------------------------------------------------------------------------------- Market-1501


def test_market_counts_pids_cameras_and_order(tmp_path):
    root = make_market(tmp_path / "Market-1501-v15.09.15", **MARKET)
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")
    assert detect_layout(root) == "market1501"
    ds = load_dataset(root)
    assert (ds.name, ds.layout, ds.root) == ("market1501", "market1501", root.resolve())
    assert relpaths(ds.train) == [
        "bounding_box_train/0002_c1s1_000451_03.jpg",
        "bounding_box_train/0002_c2s1_000100_01.jpg",
        "bounding_box_train/0007_c6s1_000001_01.jpg",
    ]
    assert [(s.pid, s.camid) for s in ds.train] == [(2, 0), (2, 1), (7, 5)]
    assert [(s.pid, s.camid) for s in ds.query] == [(2, 2)]
    # junk (-1) dropped, distractor (0) kept
    assert [(s.pid, s.camid) for s in ds.gallery] == [(0, 1), (2, 3)]
    assert all(s.path.is_file() and s.path == ds.root / s.relpath for s in ds.train + ds.gallery)


def test_market_one_level_above_and_basename_parsing(tmp_path):
    # the parent's name contains "_c9": only the basename may be parsed
    make_market(tmp_path / "run_c9" / "Market-1501-v15.09.15", **MARKET)
    outer = tmp_path / "run_c9"
    assert detect_layout(outer) == "market1501"
    ds = load_dataset(outer)
    assert ds.root.name == "Market-1501-v15.09.15"
    assert [s.camid for s in ds.train] == [0, 1, 5]


def test_market_bad_names_and_cameras(tmp_path):
    root = make_market(tmp_path / "market", **MARKET)
    write_image(root / "query" / "person7.jpg")
    with pytest.raises(DatasetError, match=r"person7\.jpg.*pattern.*_c"):
        load_dataset(root)

    root = make_market(tmp_path / "market2", train=["0001_c7s1_000001_01.jpg"], query=MARKET["query"],
                       gallery=MARKET["gallery"])
    with pytest.raises(DatasetError, match=r"0001_c7s1_000001_01\.jpg.*c7.*c1\.\.c6"):
        load_dataset(root)
    assert load_dataset(root, dataset="folder").train[0].camid == 6


def test_forced_market_on_wrong_folder(tmp_path):
    root = make_market(tmp_path / "foo", train=MARKET["train"], query=None, gallery=None)
    with pytest.raises(DatasetError, match="not a Market-1501 layout") as err:
        load_dataset(root, dataset="market1501")
    msg = str(err.value)
    assert str(root) in msg
    assert "not a Market-1501 layout (expected bounding_box_train/, query/, bounding_box_test/)" in msg
    empty_split = make_market(tmp_path / "market", train=MARKET["train"], query=[], gallery=MARKET["gallery"])
    with pytest.raises(DatasetError, match=r"query: no images"):
        load_dataset(empty_split)


# ------------------------------------------------------------------------------------ DukeMTMC


def test_duke_detected_by_name_and_by_files(tmp_path):
    by_name = make_market(tmp_path / "DukeMTMC-reID", **DUKE)
    by_files = make_market(tmp_path / "data", **DUKE)
    assert detect_layout(by_name) == detect_layout(by_files) == "dukemtmc"
    ds = load_dataset(by_files)
    assert (ds.name, ds.layout) == ("dukemtmc", "dukemtmc")
    assert [(s.pid, s.camid) for s in ds.train] == [(5, 1), (5, 7)]
    assert [(s.pid, s.camid) for s in ds.gallery] == [(0, 4), (10, 2)]
    # Market-looking names in an anonymous folder are a generic folder, not Duke
    assert detect_layout(make_market(tmp_path / "other", **MARKET)) == "folder"


def test_duke_camera_range_checked(tmp_path):
    root = make_market(tmp_path / "duke", train=["0005_c9_f0046985.jpg"], query=DUKE["query"],
                       gallery=DUKE["gallery"])
    with pytest.raises(DatasetError, match=r"0005_c9_f0046985\.jpg.*c1\.\.c8"):
        load_dataset(root)


# -------------------------------------------------------------------------------------- MSMT17


def make_msmt_lists(root: Path, train_dir: str = "train", test_dir: str = "test") -> Path:
    files = {
        "list_train.txt": (train_dir, ["0001/0001_003_15_0303morning_0020_1.jpg", "0000/0000_000_01_0303morning_0015_0.jpg"]),
        "list_val.txt": (train_dir, ["0002/0002_001_07_0303noon_0100_0.jpg"]),
        "list_query.txt": (test_dir, ["0000/0000_004_02_0113morning_0001_0.jpg"]),
        "list_gallery.txt": (test_dir, ["0000/0000_005_03_0113noon_0002_1.jpg", "0001/0001_000_14_0113noon_0003_0.jpg"]),
    }
    for list_name, (folder, rels) in files.items():
        for rel in rels:
            write_image(root / folder / rel)
        # label column deliberately nonsense: it must be ignored
        (root / list_name).write_text("".join(f"{rel} 99\n" for rel in rels) + "\n")
    return root


@pytest.mark.parametrize("train_dir,test_dir", [("train", "test"), ("mask_train_v2", "mask_test_v2")])
def test_msmt_list_layout(tmp_path, train_dir, test_dir):
    root = make_msmt_lists(tmp_path / "MSMT17_V1", train_dir, test_dir)
    assert detect_layout(root) == "msmt17"
    ds = load_dataset(tmp_path)  # one level above works too
    assert (ds.name, ds.layout, ds.root) == ("msmt17", "msmt17", root.resolve())
    assert relpaths(ds.train) == [
        f"{train_dir}/0000/0000_000_01_0303morning_0015_0.jpg",
        f"{train_dir}/0001/0001_003_15_0303morning_0020_1.jpg",
        f"{train_dir}/0002/0002_001_07_0303noon_0100_0.jpg",
    ]
    assert [(s.pid, s.camid) for s in ds.train] == [(0, 1), (1, 15), (2, 7)]  # cameras stay 1-based
    assert [(s.pid, s.camid) for s in ds.query] == [(0, 2)]
    assert [(s.pid, s.camid) for s in ds.gallery] == [(0, 3), (1, 14)]
    assert ds.query[0].path == root.resolve() / test_dir / "0000/0000_004_02_0113morning_0001_0.jpg"


def test_msmt_list_missing_file(tmp_path):
    root = make_msmt_lists(tmp_path / "MSMT17_V1")
    (root / "test" / "0001" / "0001_000_14_0113noon_0003_0.jpg").unlink()
    with pytest.raises(DatasetError, match=r"list_gallery\.txt:2: image .*0001_000_14_0113noon_0003_0\.jpg does not exist"):
        load_dataset(root)


def test_msmt_market_style(tmp_path):
    root = make_market(tmp_path / "MSMT17_V1", train=["0000_c12_0001.jpg", "0001_c1_0002.jpg"],
                       query=["3000_c3_0003.jpg"], gallery=["3000_c15_0004.jpg"])
    assert detect_layout(root) == "msmt17"
    ds = load_dataset(root)
    assert [(s.pid, s.camid) for s in ds.train] == [(0, 11), (1, 0)]
    assert [(s.pid, s.camid) for s in ds.gallery] == [(3000, 14)]
    with pytest.raises(DatasetError, match=r"not a MSMT17 layout"):
        load_dataset(make_market(tmp_path / "x", train=["0001_c1_0002.jpg"], query=None, gallery=None),
                     dataset="msmt17")


# -------------------------------------------------------------------------------------- CUHK03


def test_cuhk03_labeled_and_detected(tmp_path):
    root = tmp_path / "cuhk03-np"
    make_market(root / "labeled", train=["0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg"],
                query=["0700_c1s1_000001_00.jpg"], gallery=["0700_c2s1_000002_00.jpg"])
    make_market(root / "detected", train=["0001_c1s1_000001_00.jpg"],
                query=["0700_c1s1_000001_00.jpg"], gallery=["0700_c2s1_000002_00.jpg"])
    assert detect_layout(root) == "cuhk03"
    ds = load_dataset(root)
    assert (ds.name, ds.layout, len(ds.train)) == ("cuhk03-labeled", "cuhk03", 2)
    assert ds.root == (root / "labeled").resolve()
    assert ds.train[0].relpath == "bounding_box_train/0001_c1s1_000001_00.jpg"
    assert len(load_dataset(root, dataset="cuhk03-labeled").train) == 2
    det = load_dataset(root, dataset="cuhk03-detected")
    assert (det.name, len(det.train), det.gallery[0].camid) == ("cuhk03-detected", 1, 1)
    # the split folder itself is a plain Market-style folder
    assert detect_layout(root / "labeled") == "folder"
    assert len(load_dataset(root / "labeled", dataset="cuhk03").train) == 2


def test_cuhk03_missing_variant(tmp_path):
    root = tmp_path / "cuhk03-np"
    make_market(root / "labeled", train=["0001_c1s1_000001_00.jpg"], query=["0700_c1s1_000001_00.jpg"],
                gallery=["0700_c2s1_000002_00.jpg"])
    with pytest.raises(DatasetError, match=r"cuhk03-np: not a CUHK03-NP layout \(expected labeled/ and/or detected/"):
        load_dataset(root, dataset="cuhk03-detected")
    with pytest.raises(DatasetError, match="not a CUHK03-NP layout"):
        load_dataset(root / "labeled", dataset="cuhk03-detected")


# -------------------------------------------------------------------------------------- folder


def test_folder_train_only_and_test_only(tmp_path):
    train_only = make_market(tmp_path / "crops", train=["0001_c11_a.jpg", "0003_c2_b.png", "-1_c1_junk.jpg"],
                             query=None, gallery=None)
    assert detect_layout(train_only) == "folder"
    ds = load_dataset(train_only)
    assert (ds.name, ds.layout) == ("crops", "folder")
    assert [(s.pid, s.camid) for s in ds.train] == [(1, 10), (3, 1)]  # c11 is camera 11, not 1
    assert ds.query == ds.gallery == []

    test_only = make_market(tmp_path / "test_only", train=None, query=["0001_c1_q.jpg"], gallery=["0001_c2_g.JPG"])
    ds = load_dataset(test_only, dataset="folder")
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (0, 1, 1)

    empty = make_market(tmp_path / "empty", train=[], query=None, gallery=None)
    with pytest.raises(DatasetError, match="empty: no usable images"):
        load_dataset(empty)


# ------------------------------------------------------------------------------- general errors


def test_missing_empty_and_non_csv(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no known dataset layout"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"notes\.txt: not a dataset folder or a manifest"):
        load_dataset(tmp_path / "notes.txt")
    with pytest.raises(DatasetError, match="unknown dataset 'market'"):
        load_dataset(tmp_path, dataset="market")
    root = make_market(tmp_path / "m", **MARKET)
    with pytest.raises(DatasetError, match="is a folder, not a manifest"):
        load_dataset(root, dataset="manifest")
    make_market(tmp_path / "two" / "a", **MARKET)
    make_market(tmp_path / "two" / "b", **MARKET)
    with pytest.raises(DatasetError, match=r"several datasets \(a/, b/\)"):
        load_dataset(tmp_path / "two")


def test_names_and_extensions():
    assert DATASET_NAMES == ("market1501", "dukemtmc", "msmt17", "cuhk03", "cuhk03-labeled",
                             "cuhk03-detected", "folder", "manifest", "images", "synthetic")
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".bmp"}


# ------------------------------------------------------------------------------------ manifest


def test_manifest(tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg")
    write_image(tmp_path / "imgs" / "b.png")
    outside = write_image(tmp_path / "elsewhere" / "c.jpg")
    csv_path = tmp_path / "set" / "list.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(
        "path,pid,camid,split\n"
        "../imgs/b.png,3,,query\n"
        "./../imgs/a.jpg,,,\n"
        f"{outside},7,2,gallery\n"
    )
    assert detect_layout(csv_path) == "manifest"
    ds = load_dataset(csv_path)
    assert (ds.name, ds.layout, ds.root) == ("list", "manifest", csv_path.parent.resolve())
    assert [(s.relpath, s.pid, s.camid) for s in ds.train] == [("../imgs/a.jpg", -1, -1)]
    assert [(s.relpath, s.pid, s.camid) for s in ds.query] == [("../imgs/b.png", 3, -1)]
    assert [(s.relpath, s.pid, s.camid) for s in ds.gallery] == [(outside.as_posix(), 7, 2)]
    assert ds.train[0].path.resolve() == (tmp_path / "imgs" / "a.jpg").resolve()


@pytest.mark.parametrize(
    "body,match",
    [
        ("path,pid\na.jpg,1\n", r"lacks column\(s\) camid"),
        ("path,pid,camid\na.jpg,1,0\na.jpg,x,0\n", r"list\.csv:3: pid 'x' is not an integer"),
        ("path,pid,camid\na.jpg,1,cam1\n", r"list\.csv:2: camid 'cam1'"),
        ("path,pid,camid\nmissing.jpg,1,0\n", r"list\.csv:2: image .*missing\.jpg does not exist"),
        ("path,pid,camid\na.jpg,1,0\n./a.jpg,2,0\n", r"list\.csv:3: duplicate path './a\.jpg' \(first listed on line 2\)"),
        ("path,pid,camid,split\na.jpg,1,0,val\n", r"list\.csv:2: unknown split 'val'"),
        ("path,pid,camid\n", "lists no images"),
        ("", r"lacks column\(s\) path, pid, camid"),
    ],
)
def test_manifest_errors(tmp_path, body, match):
    write_image(tmp_path / "a.jpg")
    (tmp_path / "list.csv").write_text(body)
    with pytest.raises(DatasetError, match=match):
        load_dataset(tmp_path / "list.csv")


# ----------------------------------------------------------------------------------- synthetic


def test_synthetic_reads_market_style_folder(tmp_path, monkeypatch):
    root = make_market(tmp_path / "synth", **MARKET)
    fake = types.ModuleType("reidctl.data.synthetic")
    fake.ensure_synthetic = lambda name: root if name == "tiny" else pytest.fail(name)
    monkeypatch.setitem(sys.modules, "reidctl.data.synthetic", fake)
    ds = load_dataset("synthetic:tiny")
    assert (ds.name, ds.layout, len(ds.train), len(ds.gallery)) == ("synthetic:tiny", "synthetic", 3, 2)
    with pytest.raises(DatasetError, match="cannot be read as market1501"):
        load_dataset("synthetic:tiny", dataset="market1501")


# -------------------------------------------------------------------------------------- images


def test_load_image_ok_and_converted(tmp_path):
    img = load_image(write_image(tmp_path / "a.jpg"))
    assert (img.mode, img.size) == ("RGB", (4, 8))
    Image.new("L", (4, 8), 9).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").mode == "RGB"


def test_load_image_bad_files(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "junk.jpg").write_bytes(b"\x00garbage" * 10)
    for name in ("cut.jpg", "junk.jpg", "missing.jpg"):
        with pytest.raises(DatasetError, match=rf"cannot read image .*{name}: "):
            load_image(tmp_path / name)


def test_corrupt_image_in_dataset_names_file(tmp_path):
    root = make_market(tmp_path / "market", **MARKET)
    bad = root / "query" / "0002_c3s1_000001_00.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    ds = load_dataset(root)  # listing does not decode; loading the row does
    with pytest.raises(DatasetError, match=r"cannot read image .*query/0002_c3s1_000001_00\.jpg"):
        load_image(ds.query[0].path)


# ------------------------------------------------------------------------------ real shared data


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the shared real-image datasets are not available here)")
    return path


def test_real_cuhk03_labeled():
    ds = load_dataset(_shared("cuhk03_labeled"))
    summary = ds.summary()
    assert summary["train"] == {"images": 6264, "ids": 643, "cameras": 2}
    assert (summary["query"]["images"], summary["gallery"]["images"]) == (200, 775)
    assert {s.camid for s in ds.query + ds.gallery} == {0, 1}
    assert relpaths(ds.train) == sorted(relpaths(ds.train))


def test_real_cuhk01():
    ds = load_dataset(_shared("cuhk01"))
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (1940, 972, 972)
