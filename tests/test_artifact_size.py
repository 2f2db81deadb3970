"""Artifacts sized to what they hold (issue 27): `refine`'s output borrows the arrays it leaves
unchanged from the labels file beside it instead of copying them (for `cc`: all of them), is
read back equal through the one reader, and refuses a source that changed, went missing or was
swapped; label arrays are compressed.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from reidctl.artifacts import (BORROWED, LABELS, ArtifactError, content_digest, describe, read_labels, write_features,
                               write_labels)
from reidctl.cluster.clustering import ClusterParams
from reidctl.stages.cluster import run_cluster
from reidctl.pipeline.loop import run_loop
from reidctl.stages.refine import run_refine
from tests.clitools import run_ok
from tests.fakedata import colour_market
from tests.looptools import loop_config, read_log

pytestmark = pytest.mark.usefixtures("one_thread")

CLUSTERED = ("labels", "knn_index", "knn_dist", "jaccard")  # what the cluster stage writes besides paths


@pytest.fixture
def epoch(tmp_path):
    """An epoch folder as `loop` leaves it before refinement: train.h5 and labels.h5 (6 groups)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 16))
    x = np.repeat(centres, 10, axis=0) + 0.05 * rng.standard_normal((60, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    folder = tmp_path / "epoch_000"
    folder.mkdir()
    paths = [f"train/{i:03d}.jpg" for i in range(60)]
    write_features(folder / "train.h5", x, camids=np.arange(60) % 2, paths=paths, split=["train"] * 60,
                   pids=np.repeat(np.arange(6), 10))
    run_cluster(folder / "train.h5", folder / "labels.h5", ClusterParams(k1=8, k2=3, eps=0.5, min_samples=3))
    return folder


def _datasets(path) -> set[str]:
    with h5py.File(path, "r") as f:
        return set(f)


def _assert_same(a, b) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.paths == b.paths and set(a.extra) == set(b.extra)
    for name, value in a.extra.items():
        if hasattr(value, "toarray"):
            assert (value != b.extra[name]).nnz == 0 and value.dtype == b.extra[name].dtype
        else:
            np.testing.assert_array_equal(value, b.extra[name])


def test_cc_refined_holds_no_copy_of_the_labels_and_reads_back_equal(epoch):
    run_refine("cc", epoch / "train.h5", epoch / "refined.h5", labels_path=epoch / "labels.h5", borrow=True)
    assert _datasets(epoch / "refined.h5") == set()  # nothing copied, not even the row paths
    given, refined = read_labels(epoch / "labels.h5"), read_labels(epoch / "refined.h5")
    _assert_same(refined, given)
    # the recorded digest is that of the full content, as if the arrays had been copied
    arrays = {"labels": refined.labels, "paths": refined.paths, **refined.extra}
    assert refined.meta.digest == content_digest(LABELS, arrays, refined.meta.params)
    only = read_labels(epoch / "refined.h5", load=["knn_index"])  # a reader asking for less reads less
    assert set(only.extra) == {"knn_index"}
    np.testing.assert_array_equal(only.labels, given.labels)
    info = describe(epoch / "refined.h5")  # what `inspect` prints
    assert info["datasets"]["jaccard"].startswith("not copied: read from labels.h5 beside it")
    assert set(info["datasets"]) == {"labels", "paths", *CLUSTERED}


def test_changed_labels_under_a_referencing_refined_file_is_detected(epoch):
    run_refine("cc", epoch / "train.h5", epoch / "refined.h5", labels_path=epoch / "labels.h5", borrow=True)
    given = read_labels(epoch / "labels.h5")
    changed = given.labels.copy()
    changed[0] = changed[0] + 1
    write_labels(epoch / "labels.h5", changed, paths=given.paths, extra=given.extra)  # edited in place
    with pytest.raises(ArtifactError, match=r"refined\.h5: labels\.h5 beside it changed since refined\.h5 was made "
                                            r"from it \(its 'labels' differ\)"):
        read_labels(epoch / "refined.h5")
    run_ok("inspect", epoch / "refined.h5")  # inspecting it still works: it describes, reads nothing borrowed
    (epoch / "labels.h5").unlink()
    with pytest.raises(ArtifactError, match=r"refined\.h5: its labels, .* are kept in labels\.h5 beside it, which is "
                                            r"missing"):
        read_labels(epoch / "refined.h5")


def test_swapped_labels_of_other_rows_are_refused(epoch, tmp_path):
    run_refine("cc", epoch / "train.h5", epoch / "refined.h5", labels_path=epoch / "labels.h5", borrow=True)
    given = read_labels(epoch / "labels.h5")
    write_labels(epoch / "labels.h5", given.labels, paths=[f"x/{i:03d}" for i in range(60)], extra=given.extra)
    with pytest.raises(ArtifactError, match=r"labels\.h5 beside it has other rows than refined\.h5"):
        read_labels(epoch / "refined.h5")
    write_labels(epoch / "labels.h5", given.labels, paths=given.paths)  # the same labels, no neighbours
    with pytest.raises(ArtifactError, match=r"refined\.h5: labels\.h5 beside it has no jaccard, knn_dist, knn_index "
                                            r"any more"):
        read_labels(epoch / "refined.h5")


def test_refined_file_written_elsewhere_or_by_the_command_is_self_contained(epoch, tmp_path):
    out = tmp_path / "elsewhere" / "r.h5"
    run_refine("cc", epoch / "train.h5", out, labels_path=epoch / "labels.h5", borrow=True)
    run_ok("refine", "--method", "cc", epoch / "train.h5", "--labels", epoch / "labels.h5", "--out", epoch / "r.h5")
    for standalone in (out, epoch / "r.h5"):  # another folder; `reidctl refine`, which a later cluster may overwrite
        assert set(CLUSTERED) <= _datasets(standalone)
    given = read_labels(epoch / "labels.h5")
    (epoch / "labels.h5").unlink()
    _assert_same(read_labels(out), given)
    _assert_same(read_labels(epoch / "r.h5"), given)


def test_changed_labels_are_copied_and_unchanged_neighbours_borrowed(epoch):
    given = read_labels(epoch / "labels.h5")
    other = given.labels.copy()
    other[:5] = -1  # a method that discards some rows (icrefine)
    write_labels(epoch / "r.h5", other, paths=given.paths, extra={**given.extra, "agreement": np.ones((60, 3))},
                 borrow_from=given)
    stored = _datasets(epoch / "r.h5")
    assert {"labels", "agreement"} <= stored and not stored & {"knn_index", "knn_dist", "jaccard"}
    back = read_labels(epoch / "r.h5")
    np.testing.assert_array_equal(back.labels, other)
    np.testing.assert_array_equal(back.extra["knn_index"], given.extra["knn_index"])
    # a file that borrows is never a source: what is written from it is self-contained
    write_labels(epoch / "r2.h5", back.labels, paths=back.paths, extra=back.extra, borrow_from=back)
    assert BORROWED not in read_labels(epoch / "r2.h5").meta.attrs


def test_label_arrays_are_compressed(tmp_path):
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n = 5000  # labels of 20 kB: over the size worth compressing
    extra = {"knn_index": rng.integers(0, n, (n, 30)).astype(np.int32), "knn_dist": rng.random((n, 30), np.float32),
             "jaccard": sp.random(n, n, density=0.01, format="csr", dtype=np.float32, random_state=0),
             "small": np.arange(10)}
    write_labels(tmp_path / "l.h5", rng.integers(-1, 50, n), paths=[f"{i:05d}" for i in range(n)], extra=extra)
    with h5py.File(tmp_path / "l.h5", "r") as f:
        for name in ("labels", "knn_index", "knn_dist", "jaccard/data", "jaccard/indices"):
            assert f[name].compression == "gzip" and f[name].shuffle, name
        assert f["small"].compression is None  # too small to pay for chunks
    back = read_labels(tmp_path / "l.h5")
    np.testing.assert_array_equal(back.extra["knn_dist"], extra["knn_dist"])
    assert (back.extra["jaccard"] != extra["jaccard"]).nnz == 0


def test_loop_reads_borrowed_labels_and_reruns_a_changed_labels_file(tmp_path):
    data = colour_market(tmp_path / "market", train_ids=6, test_ids=3)
    run_dir = tmp_path / "run"
    first = run_loop(loop_config(data, run_dir, epochs=1, eval_every=0))
    folder = run_dir / "epoch_000"
    assert not _datasets(folder / "refined.h5") & set(CLUSTERED)  # training read it through the reference
    given = read_labels(folder / "labels.h5")
    write_labels(folder / "labels.h5", given.labels[::-1].copy(), paths=given.paths, extra=given.extra)
    n = len(read_log(run_dir))
    again = run_loop(loop_config(data, run_dir, epochs=1, eval_every=0))
    stages = {r["stage"]: r["cached"] for r in read_log(run_dir)[n:] if "cached" in r}
    assert stages["cluster"] is False  # the changed labels.h5 was seen, and made again
    _assert_same(read_labels(folder / "refined.h5"), read_labels(folder / "labels.h5"))
    assert again["epochs"][-1]["train"]["loss"] == first["epochs"][-1]["train"]["loss"]
