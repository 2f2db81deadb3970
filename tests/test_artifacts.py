import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from reidctl import artifacts as A
from reidctl.errors import ArtifactError


def _features(path, n=5, paths=None, **kw):
    paths = paths or [f"bounding_box_train/{i:04d}_c1s1_000000_00.jpg" for i in range(n)]
    feats = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    return A.write_features(path, feats, camids=np.zeros(n), paths=paths, split=["train"] * n,
                            pids=np.arange(n), params={"arch": "x"}, seed=3, **kw), paths


def test_features_round_trip_and_no_pids(tmp_path):
    digest, paths = _features(tmp_path / "f.h5")
    f = A.read_features(tmp_path / "f.h5", expect_paths=paths)
    assert f.feats.shape == (5, 4) and f.paths == paths and f.meta.seed == 3
    assert f.meta.schema == A.FEATURES and f.meta.params == {"arch": "x"} and f.meta.digest == digest
    assert not hasattr(f, "pids")  # ground truth only through read_ground_truth
    assert A.read_ground_truth(tmp_path / "f.h5").tolist() == [0, 1, 2, 3, 4]


def test_digest_is_content_based(tmp_path):
    d1, _ = _features(tmp_path / "a.h5")
    d2, _ = _features(tmp_path / "b.h5")
    assert d1 == d2
    d3, _ = _features(tmp_path / "c.h5", n=4)
    assert d3 != d1


def test_row_order_checks(tmp_path):
    _, paths = _features(tmp_path / "f.h5")
    with pytest.raises(ArtifactError, match="rows do not line up"):
        A.read_features(tmp_path / "f.h5", expect_paths=paths[::-1])
    with pytest.raises(ArtifactError, match="has 5 rows but 4"):
        A.read_features(tmp_path / "f.h5", expect_paths=paths[:4])
    with pytest.raises(ValueError, match="sorted"):
        _features(tmp_path / "g.h5", paths=["b.jpg", "a.jpg", "c.jpg", "d.jpg", "e.jpg"])


def test_wrong_schema_version_and_garbage(tmp_path):
    _, paths = _features(tmp_path / "f.h5")
    with pytest.raises(ArtifactError, match="expected 'reidctl/labels'"):
        A.read_labels(tmp_path / "f.h5")
    with h5py.File(tmp_path / "f.h5", "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(ArtifactError, match="version 99"):
        A.read_features(tmp_path / "f.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(ArtifactError, match="not a readable HDF5"):
        A.read_features(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ArtifactError, match="not a reidctl artifact"):
        A.read_features(tmp_path / "plain.h5")
    with pytest.raises(ArtifactError, match="no such file"):
        A.read_features(tmp_path / "missing.h5")


def test_tampered_paths_are_refused(tmp_path):
    _features(tmp_path / "f.h5")
    with h5py.File(tmp_path / "f.h5", "a") as f:
        del f["paths"]
        f.create_dataset("paths", data=np.array([f"x{i}" for i in range(5)], dtype=object),
                         dtype=h5py.string_dtype())
    with pytest.raises(ArtifactError, match="digest"):
        A.read_features(tmp_path / "f.h5")


def test_labels_with_sparse_explicit_zeros(tmp_path):
    m = sp.csr_matrix((np.array([0.0, 0.0, 0.5], np.float32), np.array([0, 1, 2]), np.array([0, 2, 3, 3])),
                      shape=(3, 3))
    assert m.nnz == 3
    A.write_labels(tmp_path / "l.h5", np.array([0, 0, -1]), paths=["a", "b", "c"],
                   extra={"jaccard": m, "nn": np.arange(6).reshape(3, 2)}, params={"eps": 0.6})
    lab = A.read_labels(tmp_path / "l.h5", expect_paths=["a", "b", "c"])
    assert lab.labels.tolist() == [0, 0, -1]
    assert lab.extra["jaccard"].nnz == 3 and lab.extra["jaccard"].data.tolist() == [0.0, 0.0, 0.5]
    assert lab.extra["nn"].shape == (3, 2)
    only = A.read_labels(tmp_path / "l.h5", load=["nn"])
    assert set(only.extra) == {"nn"}
    info = A.describe(tmp_path / "l.h5")
    assert "3 stored entries" in info["datasets"]["jaccard"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    _features(tmp_path / "f.h5")
    before = (tmp_path / "f.h5").read_bytes()
    with pytest.raises(RuntimeError, match="^killed$"):
        with A.atomic_path(tmp_path / "f.h5") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert (tmp_path / "f.h5").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.h5"]
