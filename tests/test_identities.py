"""Identities keyed by split (issue 26): wherever train and test rows are joined into one
labelled set (MAR's source, `pretrain --splits train,test`, `extract --split all`), a test pid
is numbered after the train identities, `pid + (largest train pid + 1)` — MSMT17's official
+1,041 — so train id k and test id k stay two people. Which pid shows nobody is the layout's:
−1 never is an identity, pid 0 is a distractor only in the query/gallery of the Market-1501
convention, and a person in MSMT17 and in manifests. Every expected value is worked out by hand
in the comments."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidctl.artifacts import read_ground_truth
from reidctl.data.base import Dataset, Sample
from reidctl.data.datasets import load_dataset
from reidctl.errors import ArtifactError, DatasetError, ReidctlError
from reidctl.train.agents import AgentClassifier
from reidctl.data.source import load_source
from reidctl.models.checkpoint import load_checkpoint
from reidctl.models.spec import ModelSpec
from reidctl.pipeline.loop import LoopConfig, plan_loop
from tests.clitools import run_error, run_ok
from tests.fakedata import colour, colour_market

MODEL = ["--arch", "resnet18", "--height", "64", "--width", "32", "--pretrained", "none"]
RUN = ["--workers", "0", "--device", "cpu", "--deterministic"]


def write_image(path: Path, pid: int = 0) -> Path:
    """A tiny 16×32 image, one colour per pid, folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 32), tuple(colour(pid + 1))).save(path)
    return path


def make_market(root: Path, train=(), query=(), gallery=()) -> Path:
    for sub, names in (("bounding_box_train", train), ("query", query), ("bounding_box_test", gallery)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_image(root / sub / name, max(int(name.split("_")[0]), 0))
    return root


def keyed(rows) -> list[tuple[str, int]]:
    """(basename, pid) of each row."""
    return [(s.relpath.rsplit("/", 1)[-1], s.pid) for s in rows]


# ------------------------------------------------------------------------- MSMT17 list layout

#: Train ids 0–2 (list_train: 4 images each, cameras 1–4), list_val 2 more train images (ids 1
#: and 2), test ids 0–3 again from 0 (one query each, two gallery images each): 12 + 4 + 8 = 24
#: images of the source, 3 + 4 = 7 identities (test id t is agent 3 + t).
MSMT_TRAIN = [f"{p:04d}/{p:04d}_{k:03d}_{k + 1:02d}_0303morning_{k:04d}_0.jpg" for p in range(3) for k in range(4)]
MSMT_VAL = ["0001/0001_010_05_0303noon_0100_0.jpg", "0002/0002_011_06_0303noon_0101_0.jpg"]
MSMT_QUERY = [f"{p:04d}/{p:04d}_000_07_0113morning_0001_0.jpg" for p in range(4)]
MSMT_GALLERY = [f"{p:04d}/{p:04d}_{k:03d}_{k + 8:02d}_0113noon_0002_0.jpg" for p in range(4) for k in (1, 2)]


def make_msmt_lists(root: Path, train_dir: str = "train", test_dir: str = "test") -> Path:
    for list_name, folder, rels in (("list_train.txt", train_dir, MSMT_TRAIN), ("list_val.txt", train_dir, MSMT_VAL),
                                    ("list_query.txt", test_dir, MSMT_QUERY),
                                    ("list_gallery.txt", test_dir, MSMT_GALLERY)):
        for rel in rels:
            write_image(root / folder / rel, int(rel[:4]))
        (root / list_name).write_text("".join(f"{rel} {int(rel[:4])}\n" for rel in rels))
    return root


@pytest.fixture(scope="module")
def msmt(tmp_path_factory) -> Path:
    return make_msmt_lists(tmp_path_factory.mktemp("ids") / "MSMT17_V1")


@pytest.mark.parametrize("train_dir,test_dir", [("train", "test"), ("mask_train_v2", "mask_test_v2")])
def test_msmt_lists_key_test_ids_after_train_and_keep_test_id_0(tmp_path, train_dir, test_dir):
    ds = load_dataset(make_msmt_lists(tmp_path / "MSMT17_V2", train_dir, test_dir))
    assert ds.distractor_pid is None and ds.test_offset == 3  # train ids 0..2
    # the target's train split keeps list_val (PPLR/ICSR: list_train + list_val) and records its rows
    assert len(ds.train) == 14 and ds.validation == {f"{train_dir}/{rel}" for rel in MSMT_VAL}
    source = ds.labelled("train,test", validation=False)
    assert len(source) == 24 and not {s.relpath for s in source} & ds.validation
    assert sorted({s.pid for s in source}) == [0, 1, 2, 3, 4, 5, 6]
    by_name = dict(keyed(source))
    assert by_name["0000_000_01_0303morning_0000_0.jpg"] == 0  # train id 0
    assert by_name["0000_000_07_0113morning_0001_0.jpg"] == 3  # query id 0 = 0 + 3, not train id 0
    assert by_name["0000_001_09_0113noon_0002_0.jpg"] == 3  # gallery id 0: the same test person
    assert by_name["0003_002_10_0113noon_0002_0.jpg"] == 6
    assert len(ds.labelled("train")) == 14 and len(ds.labelled("train", validation=False)) == 12
    # single splits and `test` keep the layout's numbering (query and gallery share it)
    assert ds.pids("query") == [0, 1, 2, 3] and ds.pids("test")[:3] == [0, 0, 0]


def test_load_source_msmt_train_test_gives_every_identity_without_list_val(msmt):
    """The issue's acceptance case: 7 agents (not 4), all 24 train and test images (not 20)."""
    source = load_source(str(msmt), splits="train,test")
    assert source.identities == 7 and source.pids.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert len(source.samples) == 24
    assert np.bincount(source.labels).tolist() == [4, 4, 4, 3, 3, 3, 3]  # train 4 each; test 1 query + 2 gallery
    assert all(not s.relpath.startswith("train/") or s.relpath.split("/", 1)[1] in MSMT_TRAIN for s in source.samples)
    train_only = load_source(str(msmt), splits="train")
    assert train_only.identities == 3 and len(train_only.samples) == 12  # list_train only
    assert len(train_only.train) == 14  # normalisation statistics: the dataset's train split


def test_pretrain_cli_on_msmt_lists_learns_seven_agents(msmt, tmp_path, one_thread):
    out = tmp_path / "source.pt"
    result = run_ok("pretrain", "--data", msmt, "--splits", "train,test", "--out", out, "--epochs", "1",
                    "--batch-size", "8", *MODEL, *RUN, "--json")
    summary = json.loads(result.stdout)
    assert (summary["identities"], summary["images"]) == (7, 24)
    payload = load_checkpoint(out)
    assert payload["heads"]["pids"].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert payload["heads"]["weight"].shape == (7, 512)


def test_mar_aux_splits_train_test_reads_the_keyed_source(msmt, tmp_path, one_thread):
    """`--aux-splits train,test`: the source MAR reads (and fingerprints for its cache) has the 7
    keyed identities; the agents of a `pretrain --splits train,test` match it, a train-only
    pretraining's do not."""
    source = load_source(str(msmt), splits="train,test")
    agents = AgentClassifier(8, torch.as_tensor(source.pids))
    agents.check_source(torch.arange(7), "keyed")  # a checkpoint of the same source
    with pytest.raises(ArtifactError, match="its 3 agents belong to another source"):
        agents.check_source(torch.arange(3), "train-only")

    ckpt = tmp_path / "source.pt"
    run_ok("pretrain", "--data", msmt, "--splits", "train,test", "--out", ckpt, "--epochs", "1", "--batch-size", "8",
           *MODEL, *RUN)
    target = colour_market(tmp_path / "target", train_ids=3, test_ids=2, per_camera=2)
    cfg = LoopConfig(data=str(target), run_dir=tmp_path / "plan", method="mar", model=ModelSpec(checkpoint=ckpt),
                     options={"aux_data": str(msmt), "aux_splits": "train,test"})
    reads = plan_loop(cfg).train_reads  # the train stage's key holds the source the loop trains on
    assert reads == {"aux": load_source(str(msmt), splits="train,test").fingerprint()}
    assert reads != plan_loop(dataclasses.replace(cfg, options={**cfg.options, "aux_splits": "train"})).train_reads
    loop = ["loop", "--data", target, "--method", "mar", "--aux-data", msmt, "--checkpoint", ckpt, "--epochs", "1",
            "--eval-every", "0", "--batch-size", "16", "--bn-chunks", "2", "--mining-ratio", "0.2", *RUN]
    run_ok(*loop, "--aux-splits", "train,test", "--run-dir", tmp_path / "run")
    trained = load_checkpoint(tmp_path / "run" / "epoch_000" / "model.pt")
    assert trained["heads"]["pids"].tolist() == [0, 1, 2, 3, 4, 5, 6]
    run_error(*loop, "--aux-splits", "train", "--run-dir", tmp_path / "other", match="another source")


# ------------------------------------------------------------------- every other layout


def _market(root):
    """Train ids 1, 2; test ids 1 (query and gallery), 3; a gallery distractor 0000 and junk."""
    make_market(root / "Market-1501", train=["0001_c1s1_000001_01.jpg", "0002_c2s1_000002_01.jpg"],
                query=["0001_c3s1_000003_00.jpg"],
                gallery=["0000_c1s1_000004_01.jpg", "0001_c4s1_000005_01.jpg", "0003_c2s1_000006_01.jpg",
                         "-1_c1s1_000007_01.jpg"])
    return root / "Market-1501", None


def _duke(root):
    make_market(root / "DukeMTMC-reID", train=["0001_c1_f0000001.jpg", "0002_c8_f0000002.jpg"],
                query=["0001_c3_f0000003.jpg"],
                gallery=["0000_c1_f0000004.jpg", "0001_c4_f0000005.jpg", "0003_c2_f0000006.jpg"])
    return root / "DukeMTMC-reID", None


def _folder(root):
    make_market(root / "mine", train=["0001_c1_000001.jpg", "0002_c12_000002.jpg"],
                query=["0001_c3_000003.jpg"],
                gallery=["0000_c1_000004.jpg", "0001_c4_000005.jpg", "0003_c2_000006.jpg"])
    return root / "mine", None


def _synthetic(root, monkeypatch):
    folder, _ = _market(root)
    fake = types.ModuleType("reidctl.data.synthetic")
    fake.ensure_synthetic = lambda name: folder
    monkeypatch.setitem(sys.modules, "reidctl.data.synthetic", fake)
    return "synthetic:fake", None


#: layout → (builder, expected keyed source (basename, pid) rows, basenames of nobody in `all`)
MARKET_LIKE = {
    # offset 3 (train ids 1, 2): query/gallery 1 → 4, 3 → 6; the distractor 0 is nobody
    "market1501": (_market, [("0001_c1s1_000001_01.jpg", 1), ("0002_c2s1_000002_01.jpg", 2),
                             ("0001_c4s1_000005_01.jpg", 4), ("0003_c2s1_000006_01.jpg", 6),
                             ("0001_c3s1_000003_00.jpg", 4)], {"0000_c1s1_000004_01.jpg"}),
    "dukemtmc": (_duke, [("0001_c1_f0000001.jpg", 1), ("0002_c8_f0000002.jpg", 2), ("0001_c4_f0000005.jpg", 4),
                         ("0003_c2_f0000006.jpg", 6), ("0001_c3_f0000003.jpg", 4)], {"0000_c1_f0000004.jpg"}),
    "folder": (_folder, [("0001_c1_000001.jpg", 1), ("0002_c12_000002.jpg", 2), ("0001_c4_000005.jpg", 4),
                         ("0003_c2_000006.jpg", 6), ("0001_c3_000003.jpg", 4)], {"0000_c1_000004.jpg"}),
}


@pytest.mark.parametrize("layout", ["market1501", "dukemtmc", "folder", "synthetic"])
def test_market_style_layouts_key_test_ids_and_leave_distractors_out(tmp_path, monkeypatch, layout):
    if layout == "synthetic":
        data, dataset = _synthetic(tmp_path, monkeypatch)
        _, expected, nobody = MARKET_LIKE["market1501"]
    else:
        build, expected, nobody = MARKET_LIKE[layout]
        data, dataset = build(tmp_path)
    ds = load_dataset(data, dataset)
    assert ds.layout == layout and ds.distractor_pid == 0 and ds.test_offset == 3
    assert keyed(ds.labelled("train,test")) == expected
    source = load_source(str(data), dataset, "train,test")
    assert source.pids.tolist() == [1, 2, 4, 6] and len(source.samples) == 5  # 6 labelled rows less the distractor
    # `all` (train, query and gallery in one ground truth): keyed, the distractor has no identity
    all_ids = dict(zip([s.relpath.rsplit("/", 1)[-1] for s in ds.samples("all")], ds.pids("all")))
    assert all_ids == {**dict(expected), **{name: -1 for name in nobody}}
    # the gallery alone and `test` keep the distractor's pid 0 (a negative in evaluation)
    assert sorted(ds.pids("gallery")) == [0, 1, 3] and sorted(ds.pids("test")) == [0, 1, 1, 3]


def test_cuhk03_train_id_0_is_a_person_and_test_id_0_a_distractor(tmp_path):
    """CUHK03-NP (as the shared cuhk03_labeled): train ids start at 0. Train ids 0, 1 → offset 2;
    test ids 1 → 3 and 2 → 4; the gallery's 0000 is a Market-style distractor."""
    make_market(tmp_path / "cuhk03-np" / "labeled", train=["0000_c1_001.png", "0001_c2_002.png"],
                query=["0001_c1_003.png"], gallery=["0000_c2_004.png", "0001_c2_005.png", "0002_c1_006.png"])
    ds = load_dataset(tmp_path / "cuhk03-np")
    assert (ds.layout, ds.distractor_pid, ds.test_offset) == ("cuhk03", 0, 2)
    assert keyed(ds.labelled("train,test")) == [("0000_c1_001.png", 0), ("0001_c2_002.png", 1),
                                                ("0001_c2_005.png", 3), ("0002_c1_006.png", 4),
                                                ("0001_c1_003.png", 3)]
    assert load_source(str(tmp_path / "cuhk03-np"), splits="train").pids.tolist() == [0, 1]  # train id 0 kept
    assert ds.pids("all") == [-1, 3, 4, 0, 1, 3]  # bounding_box_test, bounding_box_train, query


def test_msmt_market_style_keeps_test_id_0(tmp_path):
    """MSMT17 re-arranged Market-style: test ids from 0 too, pid 0 a person everywhere. Train ids
    0, 1 → offset 2: query 0 → 2, gallery 0 → 2 and 2 → 4; 5 rows, 4 identities."""
    root = make_market(tmp_path / "MSMT17_V1", train=["0000_c1_0001.jpg", "0001_c12_0002.jpg"],
                       query=["0000_c3_0003.jpg"], gallery=["0000_c15_0004.jpg", "0002_c2_0005.jpg"])
    ds = load_dataset(root)
    assert (ds.layout, ds.distractor_pid, ds.test_offset, ds.validation) == ("msmt17", None, 2, frozenset())
    assert keyed(ds.labelled("train,test")) == [("0000_c1_0001.jpg", 0), ("0001_c12_0002.jpg", 1),
                                                ("0000_c15_0004.jpg", 2), ("0002_c2_0005.jpg", 4),
                                                ("0000_c3_0003.jpg", 2)]
    source = load_source(str(root), splits="train,test")
    assert source.pids.tolist() == [0, 1, 2, 4] and len(source.samples) == 5
    assert ds.pids("all") == [2, 4, 0, 1, 2]


def test_manifest_ids_in_several_splits_are_keyed_and_pid_0_is_a_person(tmp_path):
    """A manifest's split column puts ids 0, 1 in train and 0, 5 in the test (and an unknown pid
    in the gallery): offset 2, test 0 → 2 and 5 → 7; the unknown row is nobody."""
    rows = [("a.jpg", 0, "train"), ("b.jpg", 1, "train"), ("c.jpg", 0, "query"), ("d.jpg", 0, "gallery"),
            ("e.jpg", 5, "gallery"), ("f.jpg", "", "gallery")]
    for name, pid, _ in rows:
        write_image(tmp_path / "img" / name, pid or 0)
    csv = tmp_path / "crops.csv"
    csv.write_text("path,pid,camid,split\n" + "".join(f"img/{n},{p},0,{s}\n" for n, p, s in rows))
    ds = load_dataset(csv)
    assert (ds.layout, ds.distractor_pid, ds.test_offset) == ("manifest", None, 2)
    assert keyed(ds.labelled("train,test")) == [("a.jpg", 0), ("b.jpg", 1), ("c.jpg", 2), ("d.jpg", 2), ("e.jpg", 7)]
    assert ds.pids("all") == [0, 1, 2, 2, 7, -1]
    assert ds.pids("gallery") == [0, 5, -1]  # a single split keeps the manifest's numbering
    assert load_source(str(csv), splits="train,test").identities == 4


def test_keyed_pid_rules_by_hand():
    """Dataset alone: −1 is nobody in every split, the distractor pid only in query/gallery;
    without train identities the offset is 0; an unknown split name is refused."""
    s = lambda rel, pid: Sample(rel, Path(rel), pid, 0)  # noqa: E731
    market = Dataset("m", Path("."), "folder", train=[s("t0", 0), s("t7", 7)], gallery=[s("g0", 0)],
                     distractor_pid=0)
    assert [market.keyed_pid(split, pid) for split, pid in
            (("train", 0), ("train", -1), ("query", 0), ("gallery", 0), ("gallery", 4), ("query", 4))] == \
        [0, -1, -1, -1, 12, 12]
    assert Dataset("t", Path("."), "folder", query=[s("q", 3)]).test_offset == 0
    assert [x.pid for x in Dataset("t", Path("."), "manifest", query=[s("q", 3)]).labelled(["query"])] == [3]
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        market.labelled("train,val")
    with pytest.raises(DatasetError, match="unknown split 'test'"):
        market.keyed_pid("test", 1)
    with pytest.raises(ReidctlError, match="choose train or train,test"):
        load_source("synthetic:tiny", splits="train,query")


def test_extract_all_writes_keyed_ground_truth(tmp_path, one_thread):
    """`extract --split all` on the Market case above: train 1, 2; test 1 → 4, 3 → 6; the
    distractor −1 (no identity), in row order bounding_box_test, bounding_box_train, query."""
    data, _ = _market(tmp_path)
    out = tmp_path / "all.h5"
    run_ok("extract", "--data", data, "--split", "all", "--out", out, *MODEL, "--workers", "0", "--device", "cpu")
    assert read_ground_truth(out).tolist() == [-1, 4, 6, 1, 2, 4]
    run_ok("extract", "--data", data, "--split", "test", "--out", tmp_path / "test.h5", *MODEL,
           "--workers", "0", "--device", "cpu")
    assert read_ground_truth(tmp_path / "test.h5").tolist() == [0, 1, 3, 1]  # test: the layout's numbering
