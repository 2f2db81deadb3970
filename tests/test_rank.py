"""`reidctl rank`, `evaluate --sheet`, the query×gallery search and the `images` layout (issue 16)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from reidctl import search
from reidctl.artifacts import write_features
from reidctl.data.datasets import load_dataset
from reidctl.errors import ReidctlError
from reidctl.evaluation.ranking import CSV_COLUMNS, RankSide, as_json, rank_gallery, records
from reidctl.evaluation.sheet import RIGHT_COLOUR, UNKNOWN_COLOUR, WRONG_COLOUR, cell_origin, sheet_size
from tests.clitools import run_error, run_ok
from tests.conftest import shared_path
from tests.fakedata import colour_market

pytestmark = pytest.mark.usefixtures("one_thread")


def _unit(rows) -> np.ndarray:
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _side(x, cams=None, pids=None, files=None, name="side") -> RankSide:
    n = len(x)
    return RankSide(np.asarray(x, np.float32), [f"{name}{i}" for i in range(n)], files,
                    np.asarray(cams if cams is not None else [-1] * n, np.int64),
                    None if pids is None else np.asarray(pids, np.int64), name)


# ------------------------------------------------------------------------------------ search


def test_search_order_ties_and_padding_by_hand():
    a, b = [1, 0], [0.6, 0.8]  # cos(a, b) = 0.6: squared distance 2 - 1.2 = 0.8
    gallery = _unit([b, a, b, [0, 1], a])  # a at 1 and 4, b at 0 and 2: ties
    dist, idx = search.search(_unit([a, b]), gallery, 3, device="cpu", block_size=1)
    assert idx.tolist() == [[1, 4, 0], [0, 2, 3]]  # equal distances: the smaller gallery index first
    np.testing.assert_allclose(dist, [[0, 0, 0.8], [0, 0, 0.4]], atol=1e-6)  # cos(b, [0,1]) = 0.8
    dist, idx = search.search(_unit([a]), gallery, 7, device="cpu")  # k > G: padded
    assert idx.tolist() == [[1, 4, 0, 2, 3, -1, -1]]
    assert np.isinf(dist[0, 5:]).all()


def test_search_matches_a_dense_reference_with_exclusions():
    rng = np.random.default_rng(3)
    q, g = _unit(rng.standard_normal((37, 8))), _unit(rng.standard_normal((101, 8)))
    g[50] = g[7]  # an exact duplicate: a tie
    qc, gc = rng.integers(0, 3, 37), rng.integers(0, 3, 101)
    ban = lambda s, e: torch.from_numpy(qc[s:e, None] == gc[None, :])  # noqa: E731
    dist, idx = search.search(q, g, 9, device="cpu", block_size=5, exclude=ban)
    ref = np.maximum(2 - 2 * q @ g.T, 0)
    ref[qc[:, None] == gc[None, :]] = np.inf
    order = np.lexsort((np.broadcast_to(np.arange(101), ref.shape), ref), axis=1)[:, :9]
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(dist, np.take_along_axis(ref, order, 1), atol=1e-5)
    assert not np.any(gc[idx] == qc[:, None])


def test_search_refuses_unnormalised_and_mismatched_features():
    with pytest.raises(ReidctlError, match="must be L2-normalised"):
        search.search(np.ones((2, 3), np.float32), _unit(np.eye(3)), 1)
    with pytest.raises(ReidctlError, match="query features have 2 dimensions but the gallery's have 3"):
        search.search(_unit(np.eye(2)), _unit(np.eye(3)), 1)


# ------------------------------------------------------------------------------- rank_gallery


def test_rank_gallery_cross_camera_same_image_and_matches(tmp_path):
    files = [tmp_path / f"{i}.jpg" for i in range(4)]
    g = _side(_unit([[1, 0], [1, 0.1], [0, 1], [1, 0.3]]), cams=[0, 1, 0, 1], pids=[5, 5, 6, 7], files=files,
              name="g")
    q = _side(_unit([[1, 0]]), cams=[0], pids=[5], files=[files[0]], name="q")  # the query is gallery row 0
    r = rank_gallery(q, g, 3, device="cpu")
    assert r.idx.tolist() == [[1, 3, 2]]  # its own image is dropped
    assert r.matches().tolist() == [[1, 0, 0]]
    r = rank_gallery(q, g, 3, same_image=True, cross_camera_only=True, device="cpu")
    assert r.idx.tolist() == [[1, 3, -1]]  # camera 0 dropped; only two remain
    assert [rec["gallery"] for rec in records(r)] == ["g1", "g3"]
    with pytest.raises(ReidctlError, match="--cross-camera-only needs every camera, but q has images of unknown"):
        rank_gallery(_side(_unit([[1, 0]]), name="q"), g, 2, cross_camera_only=True)


def test_records_csv_and_json_schema_without_identities():
    r = rank_gallery(_side(_unit([[1, 0]]), name="q"), _side(_unit([[0, 1], [1, 0]]), cams=[2, 3], name="g"), 2,
                     device="cpu")
    assert records(r) == [
        {"query": "q0", "query_camid": None, "query_pid": None, "rank": 1, "gallery": "g1", "gallery_camid": 3,
         "gallery_pid": None, "distance": 0.0, "match": None},
        {"query": "q0", "query_camid": None, "query_pid": None, "rank": 2, "gallery": "g0", "gallery_camid": 2,
         "gallery_pid": None, "distance": 2.0, "match": None},
    ]
    doc = as_json(r)
    assert doc["queries"] == [{"query": "q0", "camid": None, "pid": None, "matches": [
        {"rank": 1, "gallery": "g1", "camid": 3, "pid": None, "distance": 0.0, "match": None},
        {"rank": 2, "gallery": "g0", "camid": 2, "pid": None, "distance": 2.0, "match": None}]}]
    assert (doc["top_k"], doc["gallery_size"], doc["queries_ranked"]) == (2, 2, 1)


# ------------------------------------------------------------------------------------- images


def test_images_layout_reads_any_folder(tmp_path):
    root = tmp_path / "footage"
    for rel in ("cam2/a.jpg", "cam2/sub/b.png", "c10/x.JPG", "0007_c3s1_000001_00.jpg", "loose.jpg", ".hidden.jpg",
                "notes.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 16)).save(root / rel) if rel.lower().endswith((".jpg", ".png")) else (root / rel).write_text("x")
    ds = load_dataset(root)
    assert ds.layout == "images" and ds.query == ds.gallery == []
    assert [(s.relpath, s.pid, s.camid) for s in ds.train] == [
        ("0007_c3s1_000001_00.jpg", 7, 2),  # Market-named: pid and 0-based camera, as the folder layout reads them
        ("c10/x.JPG", -1, 10), ("cam2/a.jpg", -1, 2), ("cam2/sub/b.png", -1, 2), ("loose.jpg", -1, -1)]
    one = load_dataset(root / "cam2" / "a.jpg")
    assert [(s.relpath, s.camid) for s in one.train] == [("a.jpg", -1)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReidctlError, match="empty: no images"):
        load_dataset(tmp_path / "empty", dataset="images")


# ---------------------------------------------------------------------------------------- CLI


def _features(path, x, pids=None, cams=None, names=None, root=None, init="bench"):
    n = len(x)
    names = names or [f"img{i:03d}.jpg" for i in range(n)]
    attrs = {"sources": {"data": str(root), "dataset": "t", "dataset_root": str(root)}} if root else {}
    write_features(path, x, camids=np.asarray(cams if cams is not None else [-1] * n), paths=names,
                   split=["train"] * n, pids=None if pids is None else np.asarray(pids),
                   params={"model": {"arch": "x"}, "init": init}, attrs=attrs)
    return path


def _pixel(path, xy):
    with Image.open(path) as im:
        return im.convert("RGB").getpixel(xy)


def _match_border(row: int, col: int) -> tuple[int, int]:
    """A pixel inside the border of the ``col``-th match of sheet row ``row``."""
    x, y = cell_origin(row, col)
    return x + 1, y + 1


@pytest.fixture
def folder(tmp_path):
    """Five plain crops with their features (no identities), one colour each."""
    root = tmp_path / "crops"
    root.mkdir()
    for i in range(5):
        Image.new("RGB", (16, 32), (40 * i, 0, 0)).save(root / f"img{i:03d}.jpg")
    x = _unit(np.random.default_rng(0).standard_normal((5, 6)))
    return root, x


def test_rank_cli_csv_sheet_and_json_without_identities(tmp_path, folder):
    root, x = folder
    f = _features(tmp_path / "f.h5", x, cams=[0, 1, 0, 1, 0], root=root)
    res = run_ok("rank", f, f, "--top-k", "2", "--sheet", tmp_path / "s.png", "--queries", "3")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 10
    d = 2 - 2 * x @ x.T
    np.fill_diagonal(d, np.inf)  # a query's own image is not a match
    assert [r["gallery"] for r in rows[:2]] == [str(root / f"img{j:03d}.jpg") for j in np.argsort(d[0])[:2]]
    assert rows[0]["query_pid"] == rows[0]["gallery_pid"] == rows[0]["match"] == ""
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == sheet_size(3, 2)
    assert _pixel(tmp_path / "s.png", _match_border(0, 0)) == UNKNOWN_COLOUR
    res = run_ok("rank", f, f, "--top-k", "1", "--json", "--cross-camera-only")
    doc = json.loads(res.stdout)
    assert [q["matches"][0]["camid"] != q["camid"] for q in doc["queries"]] == [True] * 5


def test_rank_cli_colours_with_identities_and_writes_out(tmp_path, folder):
    root, x = folder
    f = _features(tmp_path / "f.h5", x, pids=[1, 1, 2, 2, 3], cams=[0, 1, 0, 1, 0], root=root)
    run_ok("rank", f, f, "--top-k", "4", "--out", tmp_path / "r.csv", "--sheet", tmp_path / "s.png")
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 20
    for r in rows[:8]:  # the first two queries: each of their 4 columns coloured by its CSV match
        q, col = int(r["query"][-7:-4]), int(r["rank"]) - 1
        want = RIGHT_COLOUR if r["match"] == "1" else WRONG_COLOUR
        assert r["match"] == ("1" if r["query_pid"] == r["gallery_pid"] else "0")
        assert _pixel(tmp_path / "s.png", _match_border(q, col)) == want


def test_rank_cli_errors(tmp_path, folder):
    root, x = folder
    f = _features(tmp_path / "f.h5", x, root=root)
    other = _features(tmp_path / "o.h5", x, root=root, init="other")
    run_error("rank", f, other, match=r"come from different models")
    # images and no model option: a fresh ImageNet model extracts them, as everywhere (offline here)
    run_error("rank", root, f, match=r"could not fetch torchvision's ImageNet weights .*--pretrained none")
    run_error("rank", f, f, "--checkpoint", f, match=r"f\.h5: not a checkpoint")
    run_error("rank", f, f, "--pretrained", "imagenet", match=r"^error: --pretrained: these choose how images are extracted, but both sides are features files")
    run_error("rank", f, f, "--arch", "resnet18", "--workers", "0", match=r"--arch, --workers: these choose")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    run_error("rank", root / "img000.jpg", root, "--checkpoint", bad, match=r"bad\.pt")
    run_error("rank", f, f, "--top-k", "0", match=r"--top-k must be at least 1")
    bare = _features(tmp_path / "bare.h5", x)  # no recorded image folder
    run_error("rank", bare, bare, "--sheet", tmp_path / "s.png", match=r"--sheet needs the images of")
    assert not (tmp_path / "s.png").exists()


def test_rank_images_with_a_model_equals_extracted_features(tmp_path):
    """A crop against a folder, extracted on the fly, ranks as `extract` + `rank` on features do."""
    weights = shared_path("weights", "mobilenet_v2_imagenet_features.pth")
    data = colour_market(tmp_path / "m", train_ids=2, test_ids=3)
    model = ["--arch", "mobilenet_v2", "--weights", weights, "--height", "64", "--width", "32"]
    gallery = data / "bounding_box_test"
    run_ok("extract", "--data", gallery, "--split", "all", "--out", tmp_path / "g.h5", *model, "--workers", "0",
           "--device", "cpu")
    query = sorted((data / "query").iterdir())[0]
    on_the_fly = run_ok("rank", query, gallery, *model, "--top-k", "5", "--workers", "0", "--device", "cpu",
                        "--sheet", tmp_path / "s.png")
    from_file = run_ok("rank", query, tmp_path / "g.h5", *model, "--top-k", "5", "--workers", "0", "--device", "cpu")
    a = list(csv.DictReader(io.StringIO(on_the_fly.stdout)))
    b = list(csv.DictReader(io.StringIO(from_file.stdout)))
    assert [r["gallery"] for r in a] == [r["gallery"] for r in b] and len(a) == 5
    np.testing.assert_allclose([float(r["distance"]) for r in a], [float(r["distance"]) for r in b], atol=1e-5)
    assert a[0]["query_pid"] == str(int(query.name[:4]))  # Market-named crops keep their identities
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == sheet_size(1, 5)
    run_error("rank", query, tmp_path / "g.h5", "--arch", "mobilenet_v2", "--weights", weights, "--height", "64",
              "--width", "32", "--pooling", "avg", "--workers", "0", "--device", "cpu",
              match="come from different models")


# ------------------------------------------------------------------------------ evaluate --sheet


def test_evaluate_sheet_draws_the_worst_queries(tmp_path):
    root = tmp_path / "imgs"
    queries = [(1, 1, 0), (2, 1, 1), (3, 1, 2)]
    gallery = [(1, 2, 3), (1, 1, 4), (2, 2, 5), (3, 2, 6), (9, 2, 7)]
    rows = sorted([(f"query/{p:04d}_c{c}s1_00000{i}_00.jpg", "query", p, c - 1) for p, c, i in queries]
                  + [(f"bounding_box_test/{p:04d}_c{c}s1_00000{i}_00.jpg", "gallery", p, c - 1) for p, c, i in gallery])
    for rel, *_ in rows:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 16)).save(root / rel)
    x = _unit(np.random.default_rng(1).standard_normal((len(rows), 6)))
    split = [r[1] for r in rows]
    pids, cams = np.array([r[2] for r in rows]), np.array([r[3] for r in rows])
    f = tmp_path / "t.h5"
    write_features(f, x, camids=cams, paths=[r[0] for r in rows], split=split, pids=pids,
                   params={"model": {}, "init": "t"},
                   attrs={"sources": {"data": str(root), "dataset": "t", "dataset_root": str(root)}})
    res = run_ok("evaluate", f, "--sheet", tmp_path / "w.png", "--queries", "2", "--top-k", "3", "--json")
    sheet = json.loads(res.stdout)["sheet"]
    # Each query's AP by hand from the gallery ranked by distance; the Market protocol ignores a gallery
    # image of the query's identity from the query's camera (0001_c1 for query 0001_c1).
    q_rows = [i for i, s in enumerate(split) if s == "query"]
    g_rows = [i for i, s in enumerate(split) if s == "gallery"]
    aps = []
    for q in q_rows:
        order = sorted(g_rows, key=lambda g: 2 - 2 * x[g] @ x[q])
        order = [g for g in order if not (pids[g] == pids[q] and cams[g] == cams[q])]
        hits = [pids[g] == pids[q] for g in order]
        aps.append(np.mean([sum(hits[: i + 1]) / (i + 1) for i, h in enumerate(hits) if h]))
    assert sheet["queries"] == list(np.argsort(aps, kind="stable")[:2])
    np.testing.assert_allclose(sheet["ap"], np.sort(aps)[:2])
    assert tuple(sheet["size"]) == sheet_size(2, 3, first_right=True)
    with Image.open(tmp_path / "w.png") as im:
        assert im.size == sheet_size(2, 3, first_right=True)
    run_error("evaluate", f, "--top-k", "3", match=r"--top-k: these shape the --sheet")
