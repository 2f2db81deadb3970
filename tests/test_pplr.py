"""PPLR: cross-agreement parity, each loss against hand computations, the classifier re-initialisation,
and the refine / train-epoch / loop commands on tiny data."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidctl.artifacts import read_labels, write_features, write_labels
from reidctl.data.datasets import load_dataset
from reidctl.errors import ReidctlError
from reidctl.methods.plan import refine_options
from reidctl.methods import PPLR, PPLRParams, get_method
from reidctl.methods.pplr import PPLRHeads, cross_agreement, list_jaccard, top_k_lists
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.methods.pplr import losses as pplr_losses
from reidctl.train import losses
from reidctl.train.memory import cluster_centroids
from reidctl.train.trainer import TrainSession, prepare_epoch
from tests.clitools import run_error, run_ok
from tests.conftest import shared_path
from tests.fakedata import colour_market


pytestmark = pytest.mark.usefixtures("one_thread")


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# cross-agreement


def test_cross_agreement_matches_the_official_vectors():
    ref = np.load(shared_path("vectors", "agree_n1500_p3_k20.npz"))
    scores = cross_agreement(ref["global_feats"], ref["part_feats"], k=int(ref["k"]))
    assert scores.shape == ref["scores"].shape and scores.dtype == np.float32
    np.testing.assert_array_equal(scores, ref["scores"])


def test_list_jaccard_and_the_rank0_quirk_with_duplicates():
    a = np.array([[1, 2, 3], [0, 2, 3]])
    b = np.array([[3, 2, 1], [4, 5, 0]])
    assert list_jaccard(a, b).tolist() == [1.0, pytest.approx(1 / 5)]
    # rows 0 and 1 are the same image: row 1's "self" column is its duplicate 0, so 1 stays in its own list
    x = _unit(np.array([[1, 0], [1, 0], [1, 0.1], [0, 1], [0.1, 1]], dtype=np.float32))
    lists = top_k_lists(x, 2)
    assert lists[0].tolist() == [1, 2] and lists[1].tolist() == [1, 2]
    with pytest.raises(ReidctlError, match="--k 5"):
        top_k_lists(x, 5)


# --------------------------------------------------------------------------------------------
# losses by hand


def test_pglr_target_and_loss_by_hand():
    y = torch.tensor([0])
    part_logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0]]], requires_grad=True)  # softmax .5/.5, .75/.25
    s = torch.tensor([[0.3, 0.3]])  # equal agreement → weights 1/2
    target = pplr_losses.pglr_target(y, part_logits, s, beta=0.5)
    assert target.tolist() == [[pytest.approx(0.5 + 0.5 * 0.625), pytest.approx(0.5 * 0.375)]]
    s2 = torch.tensor([[1.0, 0.0]])
    w = math.e / (math.e + 1)  # softmax([1, 0]); with T = 0.5: softmax([2, 0])
    assert pplr_losses.agreement_weights(s2)[0, 0].item() == pytest.approx(w)
    assert pplr_losses.agreement_weights(s2, 0.5)[0, 0].item() == pytest.approx(math.e ** 2 / (math.e ** 2 + 1))
    t2 = pplr_losses.pglr_target(y, part_logits, s2, beta=0.2)
    assert t2[0, 1].item() == pytest.approx(0.8 * (w * 0.5 + (1 - w) * 0.25))
    logits = torch.tensor([[0.0, math.log(3)]], requires_grad=True)  # probabilities .25, .75
    loss = losses.soft_cross_entropy(logits, target)
    assert loss.item() == pytest.approx(-(0.8125 * math.log(0.25) + 0.1875 * math.log(0.75)))
    loss.backward()
    assert part_logits.grad is None  # the part ensemble is a detached target
    assert logits.grad.tolist() == [[pytest.approx(0.25 - 0.8125), pytest.approx(0.75 - 0.1875)]]


def test_aals_and_warmup_label_smoothing_by_hand():
    y = torch.tensor([0])
    logits = torch.tensor([[[0.0, math.log(3)]]])  # one part, p = (.25, .75)
    s = torch.tensor([[0.6]])
    kl_uniform = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert pplr_losses.aals_loss(logits, y, s).item() == pytest.approx(0.6 * math.log(4) + 0.4 * kl_uniform)
    assert pplr_losses.aals_loss(logits, y, torch.ones(1, 1)).item() == pytest.approx(math.log(4))
    ls = losses.label_smoothing_cross_entropy(logits[:, 0], y, 0.1)
    assert ls.item() == pytest.approx(-(0.95 * math.log(0.25) + 0.05 * math.log(0.75)))


def test_soft_triplet_by_hand():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    y = torch.tensor([0, 0, 1])
    # anchors: (d_ap, d_an) = (3, 4), (3, 5), (1e-6: itself, 4)
    expected = (F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(-2.0))
                + F.softplus(torch.tensor(1e-6 - 4.0))) / 3
    assert losses.soft_triplet_loss(x, y).item() == pytest.approx(expected.item(), abs=1e-6)
    assert losses.soft_triplet_loss(x, torch.zeros(3, dtype=torch.long)).item() == 0.0  # no negatives


# --------------------------------------------------------------------------------------------
# classifiers and parameters


def _session(rows=3000, parts=2):
    torch.manual_seed(0)
    model = ReidModel(ModelConfig(arch="resnet18", pooling="avg", parts=parts, height=64, width=32))
    return TrainSession(model, PPLR(PPLRParams(classifier_rows=rows)))


def _epoch_data(n=12, k=3, parts=2, dim=512, epoch=0):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % k
    data = prepare_epoch(labels, np.arange(n) % 2, _unit(rng.normal(size=(n, dim))),
                         _unit(rng.normal(size=(n, parts, dim))), {"agreement": rng.random((n, parts))})
    data.epoch = epoch
    return data


def test_classifiers_are_reinitialised_from_centroids_and_keep_adam_state():
    session = _session()
    heads = session.heads
    assert isinstance(heads, PPLRHeads) and heads.classifier.weight.shape == (3000, 512)
    weight = heads.classifier.weight
    data = _epoch_data()
    session.method.make_state(data, heads)
    out = heads({"global": torch.randn(4, 512), "parts": torch.randn(4, 2, 512)})
    assert out["logits"].shape == (4, 3) and out["part_logits"].shape == (4, 2, 3)
    (out["logits"].sum() + out["part_logits"].sum()).backward()
    old = weight.detach().clone()
    session.optimizer.step()
    state = {k: v.clone() for k, v in session.optimizer.state[weight].items()}
    # rows >= K get no loss gradient, only Adam's weight decay (as with the official sliced logits)
    assert torch.allclose(state["exp_avg"][3:], 0.1 * 5e-4 * old[3:], atol=1e-12)
    assert state["exp_avg"][:3].abs().min() > 1e-3
    session.method.make_state(data, heads)  # the next epoch
    assert heads.classifier.weight is weight  # the same parameter: the optimiser still holds it
    assert torch.allclose(weight[:3], cluster_centroids(data.features, data.labels, 3))
    assert torch.allclose(heads.part_classifiers[1].weight[:3], cluster_centroids(data.parts[:, 1], data.labels, 3))
    for key, value in state.items():
        assert torch.equal(session.optimizer.state[weight][key], value), key


def test_errors_and_params():
    small = _session(rows=3)
    with pytest.raises(ReidctlError, match="4 clusters exceed the 3 classifier rows"):
        small.method.make_state(_epoch_data(k=4), small.heads)
    data = _epoch_data()
    data.extra = {}
    with pytest.raises(ReidctlError, match="no 'agreement'"):
        small.method.make_state(data, small.heads)
    with pytest.raises(ReidctlError, match="--parts 3 --pooling avg"):
        PPLR().build_heads(ReidModel(ModelConfig(arch="resnet18", height=64, width=32)))
    p = PPLRParams()
    assert (p.iters, p.batch_size, p.num_instances, p.bn_chunks, p.beta, p.aals_epoch, p.classifier_rows,
            p.cam_lambda, p.cam_temperature, p.cam_hard_negatives) == (400, 64, 4, 4, 0.5, 5, 3000, 0.5, 0.07, 50)
    assert PPLR.RefineOptions().k == 20 and PPLR.cluster_defaults == {"eps": 0.5} and "k" not in p.to_dict()
    with pytest.raises(ReidctlError, match="^--k does not apply to --method pplr$"):  # a refine option
        PPLR.resolve_params(None, {"k": 10})
    with pytest.raises(ReidctlError, match="--beta does not apply to --method cc"):
        get_method("cc").resolve_params(None, {"beta": 0.3})
    with pytest.raises(ReidctlError, match="--beta"):
        PPLR.resolve_params(None, {"beta": 1.5})
    assert refine_options(PPLR, {}) == {"k": 20}
    with pytest.raises(ReidctlError, match=r"^--k does not apply to `refine --method cc`$"):
        refine_options(get_method("cc"), {"k": 5})


def test_loss_switches_pglr_and_aals():
    outputs = {"global": torch.randn(8, 512), "parts": torch.randn(8, 2, 512)}
    from reidctl.methods.base import Batch

    batch = Batch(images=torch.empty(0), labels=torch.tensor([0, 0, 1, 1, 2, 2, 0, 1]),
                  camids=torch.tensor([0, 1] * 4), index=torch.arange(8))
    results = {}
    for name, over, epoch in [("warmup", {}, 0), ("aals", {}, 5), ("no_aals", {"aals": False}, 5),
                              ("no_pglr", {"pglr": False}, 0), ("beta1", {"beta": 1.0}, 0)]:
        session = _session()
        session.method = PPLR(PPLR.resolve_params(None, {"classifier_rows": 3000, **over}))
        state = session.method.make_state(_epoch_data(epoch=epoch), session.heads)
        out = {**outputs, **session.heads(outputs)}
        results[name] = session.method.loss(batch, out, state)
    logs = {name: {k: float(v) for k, v in res[1].items()} for name, res in results.items()}
    assert logs["warmup"]["part_ce"] != logs["aals"]["part_ce"]
    assert logs["no_aals"]["part_ce"] == logs["warmup"]["part_ce"]  # label smoothing in every epoch
    assert logs["no_pglr"]["global_ce"] == pytest.approx(logs["beta1"]["global_ce"])
    assert logs["no_pglr"]["global_ce"] != pytest.approx(logs["warmup"]["global_ce"])


# --------------------------------------------------------------------------------------------
# commands


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """6 colour identities × 2 cameras × 2 images; features with 3 parts; labels from the colours."""
    root = tmp_path_factory.mktemp("pplr")
    market = colour_market(root / "market", train_ids=6, test_ids=2, per_camera=2)
    ds = load_dataset(market)
    paths, n = [s.relpath for s in ds.train], len(ds.train)
    rng = np.random.default_rng(3)
    feats = root / "feats.h5"
    write_features(feats, _unit(rng.normal(size=(n, 512))), parts=_unit(rng.normal(size=(n, 3, 512))),
                   camids=np.array([s.camid for s in ds.train]), paths=paths, split=["train"] * n)
    flat = root / "flat.h5"
    write_features(flat, _unit(rng.normal(size=(n, 512))), camids=np.array([s.camid for s in ds.train]),
                   paths=paths, split=["train"] * n)
    labels = root / "labels.h5"
    write_labels(labels, np.array([s.pid - 1 for s in ds.train], dtype=np.int32), paths=paths)
    return market, feats, flat, labels


def test_refine_command_stores_the_agreement(tiny, tmp_path):
    market, feats, flat, labels = tiny
    out = tmp_path / "refined.h5"
    r = run_ok("refine", feats, "--method", "pplr", "--labels", labels, "--k", "5", "--out", out, "--json")
    lab = read_labels(out)
    assert lab.extra["agreement"].shape == (24, 3) and lab.extra["agreement"].dtype == np.float32
    assert lab.labels.tolist() == read_labels(labels).labels.tolist()  # PPLR does not change the labels
    assert lab.meta.params["options"] == {"k": 5} and len(json.loads(r.stdout)["agreement_mean"]) == 3
    # without --labels: PPLR's default clustering (eps 0.5) on all rows, outliers included
    run_ok("refine", feats, "--method", "pplr", "--k1", "4", "--k2", "2", "--out", out, "--json")
    meta = read_labels(out).meta.params
    assert meta["cluster"]["eps"] == 0.5 and meta["options"] == {"k": 20}
    assert read_labels(out).extra["agreement"].shape == (24, 3)
    for args, message in [
        (("--method", "cc", "--labels", labels, "--k", "5"), "--k does not apply to --method cc"),
        (("--method", "pplr", "--labels", labels, "--k", "30"), "--k 30"),
    ]:
        run_error("refine", feats, *args, "--out", tmp_path / "x.h5", match=re.escape(message))
    run_error("refine", flat, "--method", "pplr", "--labels", labels, "--out", tmp_path / "x.h5",
              match="no part features")


FAST = ["--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32", "--workers", "0", "--device", "cpu"]
SMALL = ["--iters", "2", "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2"]


def test_train_epoch_command(tiny, tmp_path):
    market, feats, _, labels = tiny
    refined = tmp_path / "refined.h5"
    run_ok("refine", feats, "--method", "pplr", "--labels", labels, "--k", "5", "--out", refined)
    e0, e1 = tmp_path / "e0.pt", tmp_path / "e1.pt"
    common = ["--data", market, "--method", "pplr", "--features", feats, *FAST, *SMALL]
    r = run_ok("train-epoch", *common, "--labels", refined, "--out", e0, "--parts", "3", "--pooling", "avg",
               "--camera-proxies", "--classifier-rows", "50", "--json")
    res = json.loads(r.stdout)
    assert res["clusters"] == 6 and math.isfinite(res["loss"]) and res["logs"]["aals"] is False
    assert {"global_ce", "part_ce", "triplet", "camera"} <= set(res["logs"])
    assert res["params"]["camera_proxies"] is True and res["params"]["batch_size"] == 8
    continued = [a for a in common if a not in ("--pretrained", "none")]  # the checkpoint is the start
    r = run_ok("train-epoch", *continued, "--labels", refined, "--out", e1, "--checkpoint", e0, "--no-pglr",
               "--aals-epoch", "1", "--json")
    res = json.loads(r.stdout)
    assert res["epoch"] == 1 and res["logs"]["aals"] is True
    assert res["params"]["pglr"] is False and res["params"]["classifier_rows"] == 50  # carried over
    for args, message in [
        (("--labels", refined, "--out", tmp_path / "x.pt", "--parts", "0"), "--parts 3 --pooling avg"),
        (("--labels", labels, "--out", tmp_path / "x.pt", "--parts", "3"), "no 'agreement'"),
        (("--labels", refined, "--out", tmp_path / "x.pt", "--parts", "3", "--classifier-rows", "4"),
         "6 clusters exceed"),
    ]:
        run_error("train-epoch", *common, *args, match=re.escape(message))
    run_error("train-epoch", "--data", market, "--labels", refined, "--out", tmp_path / "x.pt", *FAST, "--beta", "0.3",
              match="--beta does not apply to --method cc")
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_loop_runs_pplr_on_synthetic_tiny(tmp_path):
    run_dir = tmp_path / "run"
    base = ["loop", "--data", "synthetic:tiny", "--run-dir", run_dir, "--epochs", "1", *FAST, *SMALL,
            "--k1", "10", "--no-eval-init", "--eval-every", "1"]
    run_ok(*base, "--method", "pplr", "--k", "10", "--aals-epoch", "0", "--json")  # its model: 3 avg stripes
    config = torch.load(run_dir / "epoch_000" / "model.pt", weights_only=False)["model_config"]
    assert (config["parts"], config["pooling"]) == (3, "avg")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "pplr" and summary["last"]["epoch"] == 0
    assert len(summary["epochs"][0]["refine"]["agreement_mean"]) == 3
    assert read_labels(run_dir / "epoch_000" / "refined.h5").extra["agreement"].shape[1] == 3
    for args, message in [(("--method", "pplr", "--parts", "0"), "--parts 0"), (("--method", "cc", "--k", "5"), "--k does not apply")]:
        run_error(*base[:4], tmp_path / "bad", *base[5:], *args, match=re.escape(message))
        assert not (tmp_path / "bad" / "epoch_000").exists()  # refused before any stage ran
