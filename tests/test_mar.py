"""MAR (`--method mar`), source pretraining (`reidctl pretrain`) and what they added to the
toolkit: the model variant (no BN neck, no last ReLU, dataset normalisation), per-domain
BatchNorm in one forward pass, SGD without decay on BatchNorm, the MultiStep schedule stepped at
the start of each epoch, the persistent memory/centres/threshold, `loop --checkpoint`, the
trapezoidal AP beside the sklearn one and `refine --method mar`. The losses themselves are
tested against hand computations in tests/test_mar_losses.py."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reidctl.artifacts import read_labels, read_method_state
from reidctl.cluster.quality import pair_precision
from reidctl.data.base import Sample
from reidctl.data.datasets import load_dataset
from reidctl.data.stats import channel_stats, dataset_norm
from reidctl.methods.mar import MAR, MARParams
from reidctl.methods.mar import losses as L
from reidctl.train.agents import AgentClassifier
from reidctl.methods.mar.pretrain import PretrainParams
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.models.checkpoint import checkpoint_digest, load_checkpoint
from reidctl.train.contract import Batch, EpochData
from reidctl.train.optim import multistep_at_epoch_start, official_milestones, sgd_no_bn_decay
from reidctl.train.trainer import _Net
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = ["--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32"]
RUN = ["--workers", "0", "--device", "cpu", "--deterministic"]
#: Small MAR steps: 8 source + 8 target images, a ratio that mines 5 of the 28 target pairs.
# the source's train split only (the default is train,test): the step counts below are of its 24 images
MAR_ARGS = ["--batch-size", "16", "--bn-chunks", "2", "--mining-ratio", "0.2", "--lr", "0.01", "--aux-splits", "train"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A labelled source (6 identities, 24 train images) and a target of other colours."""
    root = tmp_path_factory.mktemp("mar")
    source = colour_market(root / "source", train_ids=6, test_ids=2, per_camera=2)
    target = colour_market(root / "target", train_ids=5, test_ids=3, per_camera=3)
    return source, target


@pytest.fixture(scope="module")
def source_ckpt(data, tmp_path_factory):
    source, _ = data
    out = tmp_path_factory.mktemp("src") / "source.pt"
    run_ok("pretrain", "--data", source, "--out", out, *MODEL, "--epochs", "2", "--batch-size", "8", "--splits", "train",
           *RUN)
    return out


# ---------------------------------------------------------------------------------------------- model


def test_neck_none_gives_the_average_pooled_feature():
    model = ReidModel(ModelConfig(arch="resnet18", pooling="avg", neck="none", height=64, width=32)).train()
    x = torch.randn(4, 3, 64, 32)
    expected = model.backbone(x).mean(dim=(2, 3))
    assert torch.allclose(model(x)["global"], expected, atol=1e-6)


def test_without_the_last_relu_features_go_negative_and_weights_keep_their_names():
    torch.manual_seed(0)
    plain = ReidModel(ModelConfig(arch="resnet18", neck="none", pooling="avg", height=64, width=32)).eval()
    mar = ReidModel(ModelConfig(arch="resnet18", neck="none", pooling="avg", height=64, width=32,
                                last_relu=False)).eval()
    assert list(plain.state_dict()) == list(mar.state_dict())
    mar.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        a, b = plain.backbone(x), mar.backbone(x)
    assert a.min() >= 0 and b.min() < 0
    assert torch.allclose(F.relu(b), a, atol=1e-5)  # the same block, only the final ReLU is gone


def test_channel_stats_by_hand_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDCTL_CACHE", str(tmp_path / "cache"))
    paths = []
    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 51, 255))):
        Image.new("RGB", (8, 16), colour).save(tmp_path / name)
        paths.append(Sample(name, tmp_path / name, 1, 0))
    # half the pixels are 1 and half 0 in R and B, half 0 and half 0.2 in G (a channel that is 0
    # everywhere would be refused: its std is 0): mean 0.5 / 0.1 / 0.5, std 0.5 / 0.1 / 0.5
    norm = channel_stats(paths, 32, 16)
    assert np.allclose(norm.mean, (0.5, 0.1, 0.5)) and np.allclose(norm.std, (0.5, 0.1, 0.5))
    assert dataset_norm(paths, 32, 16) == norm
    assert len(list((tmp_path / "cache" / "stats").glob("*.json"))) == 1


# ------------------------------------------------------------------------------- trainer mechanisms


def test_one_forward_of_two_domains_normalises_each_with_its_own_statistics():
    torch.manual_seed(0)
    model = ReidModel(ModelConfig(arch="resnet18", height=64, width=32))
    reference = copy.deepcopy(model).train()
    net = _Net(model, None).train()
    source, target = torch.randn(4, 3, 64, 32), torch.randn(4, 3, 64, 32) + 1.0
    out_s, out_t = net([source, target])
    ref_s, ref_t = reference(source), reference(target)  # source first, then target, as MAR's two passes
    assert torch.allclose(out_s["global"], ref_s["global"], atol=1e-5)
    assert torch.allclose(out_t["global"], ref_t["global"], atol=1e-5)
    # the running statistics are those the target pass left
    assert torch.allclose(model.neck.running_mean, reference.neck.running_mean)
    # one pass over both batches would have mixed the domains' statistics
    joint = copy.deepcopy(reference).train()(torch.cat([source, target]))["global"][4:]
    assert not torch.allclose(joint, ref_t["global"], atol=1e-3)


def test_sgd_groups_leave_batchnorm_without_weight_decay():
    model = ReidModel(ModelConfig(arch="resnet18", height=64, width=32))
    heads = AgentClassifier(model.channels, torch.arange(5))
    opt = sgd_no_bn_decay((model, heads), lr=0.1, momentum=0.9, weight_decay=0.025)
    decayed, free = opt.param_groups
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d)
          for p in m.parameters() if p.requires_grad}
    assert decayed["weight_decay"] == 0.025 and free["weight_decay"] == 0.0
    assert {id(p) for p in free["params"]} == bn
    assert id(heads.weight) in {id(p) for p in decayed["params"]}
    trainable = [p for m in (model, heads) for p in m.parameters() if p.requires_grad]
    assert len(decayed["params"]) + len(free["params"]) == len(trainable)


def test_multistep_is_stepped_at_the_start_of_each_epoch():
    assert official_milestones(20) == [12, 17]
    lrs = []
    for epoch in range(20):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
        lrs.append(multistep_at_epoch_start(opt, epoch, [12, 17], 0.1).optimizer.param_groups[0]["lr"])
    # the decays land one epoch before the milestones, as in the official loop (PyTorch >= 1.1)
    assert np.allclose(lrs, [2e-4] * 11 + [2e-5] * 5 + [2e-6] * 4)


def test_pair_precision_by_hand():
    pids = np.array([1, 1, 2, 2, -1])
    q = pair_precision(np.array([[0, 1], [0, 2], [2, 3], [3, 4]]), pids)
    assert q == {"pairs": 4, "judged": 3, "precision": 2 / 3}


# -------------------------------------------------------------------------------------- one step


def _step_inputs(k: int = 4):
    torch.manual_seed(3)
    zs, zt = F.normalize(torch.randn(6, 8), dim=1), F.normalize(torch.randn(8, 8), dim=1)
    weight = torch.randn(k, 8)
    source = Batch(torch.zeros(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1]), torch.zeros(6, dtype=torch.long),
                   torch.arange(6))
    target = Batch(torch.zeros(8, 3, 4, 4), torch.arange(8), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
                   torch.tensor([9, 2, 4, 6, 8, 1, 3, 5]))
    return zs, zt, weight, source, target


def test_a_step_writes_the_memory_before_the_loss_reads_it_and_then_moves_the_threshold(data):
    source_root, _ = data
    method = MAR(MARParams(aux_data=str(source_root), batch_size=16, mining_ratio=0.2, mdl_from_epoch=0))
    zs, zt, weight, source, target = _step_inputs(k=method.source.identities)
    heads = AgentClassifier(8, torch.as_tensor(method.source.pids))
    heads.weight.data.copy_(weight[:method.source.identities] if len(weight) >= method.source.identities
                            else torch.randn(method.source.identities, 8))
    n = 10
    feats = F.normalize(torch.randn(n, 8), dim=1).numpy()
    data_ = EpochData(labels=np.arange(n), camids=np.array([0, 1] * 5), features=feats, parts=None,
                      rows=np.arange(n), num_clusters=n)
    state = method.make_state(data_, heads)
    t0 = method.threshold
    assert t0 == L.initial_threshold(L.soft_multilabels(torch.as_tensor(feats), L.normalized_agents(heads.weight),
                                                        30.0), 0.2)
    source.labels = source.labels % method.source.identities
    forward = lambda images: [{"global": zs, "agents": heads.weight}, {"global": zt, "agents": heads.weight}]  # noqa: E731
    step = method.training_step((source, target), forward, state)
    agents = L.normalized_agents(heads.weight)
    ml = L.soft_multilabels(zt, agents)
    assert torch.allclose(method.memory[target.index], ml) and method.visited[target.index].all()
    assert not method.visited[[0, 7]].any()
    # the loss mined with the rows just written and the threshold *before* this batch's update
    pairs = L.mine_pairs(zt, ml, t0, 0.2)
    assert step.logs["positives"] == len(pairs.positive) and step.logs["negatives"] == len(pairs.negative)
    assert method.threshold == pytest.approx(0.9 * t0 + 0.1 * float(L.top_agreement(L.pair_agreements(ml), 0.2)))
    l_mdl = L.mdl_loss(zt, pairs)
    assert float(step.logs["mdl"]) == pytest.approx(float(l_mdl))
    assert state.positives and torch.equal(state.positives[0], target.index[pairs.positive])


# -------------------------------------------------------------------------------------------- CLI


def test_pretrain_learns_agents_of_the_source_identities(data, source_ckpt):
    source, _ = data
    payload = load_checkpoint(source_ckpt)
    train_pids = sorted({s.pid for s in load_dataset(source).train})
    assert payload["method"] == "pretrain" and payload["heads"]["pids"].tolist() == train_pids
    assert payload["model_config"]["neck"] == "none" and payload["model_config"]["input_norm"] == "dataset"
    assert payload["heads"]["weight"].shape == (len(train_pids), 512)
    assert PretrainParams().epochs == 20  # the default the README documents


def test_cc_starts_from_a_pretrained_checkpoint(data, source_ckpt, tmp_path):
    _, target = data
    run = tmp_path / "cc"
    run_ok("loop", "--data", target, "--run-dir", run, "--method", "cc", "--checkpoint", source_ckpt, "--epochs", "1",
           "--iters", "2", "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2", "--k1", "6", "--k2", "2",
           "--eps", "0.5", "--min-samples", "3", *RUN)
    summary = json.loads((run / "summary.json").read_text())
    direct = json.loads(run_ok("evaluate", "--checkpoint", source_ckpt, "--data", target, "--device", "cpu",
                               "--json").stdout)
    assert summary["epochs"][0]["eval"]["mAP"] == pytest.approx(direct["mAP"])  # the init eval is the checkpoint's
    trained = load_checkpoint(run / "epoch_000" / "model.pt")
    assert trained["method"] == "cc" and trained["epoch"] == 0 and len(trained["history"]) == 1
    assert trained["heads"] is None  # the agents stay with the pretraining


def test_mar_loop_resumes_bit_exactly_from_its_state_file(data, source_ckpt, tmp_path):
    source, target = data
    args = ["loop", "--data", target, "--method", "mar", "--aux-data", source, "--checkpoint", source_ckpt,
            "--epochs", "2", *MAR_ARGS, *RUN]
    run_ok(*args, "--run-dir", tmp_path / "a")
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    first, second = summary["epochs"][1], summary["epochs"][2]
    assert "mdl" not in first["train"]["logs"] and "mdl" in second["train"]["logs"]  # L_MDL from epoch 1
    quality = second["train"]["mined_pairs_quality"]
    assert quality["pairs"] > 0 and 0 <= quality["precision"] <= 1
    assert set(second["eval"]) >= {"mAP", "mAP_trapezoid", "rank1"}
    state, _ = read_method_state(tmp_path / "a" / "epoch_001" / "model.state.h5")
    # one epoch = one pass over the 24 source images = 3 steps, each writing 8 distinct target rows
    assert state["memory"].shape == (30, 6) and state["visited"].sum() == 24
    assert len(state["mined_pairs"]) == quality["pairs"]

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "epoch_001")  # killed before epoch 1
    run_ok(*args, "--run-dir", tmp_path / "b")
    assert checkpoint_digest(tmp_path / "b" / "epoch_001" / "model.pt") == \
        checkpoint_digest(tmp_path / "a" / "epoch_001" / "model.pt")


def test_mar_without_checkpoint_pretrains_once_as_its_prelude(data, tmp_path):
    source, target = data
    args = ["loop", "--data", target, "--run-dir", tmp_path / "run", "--method", "mar", "--aux-data", source,
            "--pretrain-epochs", "1", "--pretrain-batch-size", "8", "--epochs", "1", "--eval-every", "0",
            *MAR_ARGS, *MODEL, *RUN]
    run_ok(*args)
    ckpt = tmp_path / "run" / "pretrain" / "source.pt"
    assert load_checkpoint(ckpt)["method"] == "pretrain"
    before = checkpoint_digest(ckpt)
    log = (tmp_path / "run" / "log.jsonl").read_text()
    run_ok(*args)  # every stage cached
    assert checkpoint_digest(ckpt) == before
    new = (tmp_path / "run" / "log.jsonl").read_text()[len(log):]
    assert '"pretrain"' in new and '"cached": true' in new.replace(" ", "").replace('"cached":true', '"cached": true')


def test_mar_user_errors(data, source_ckpt, tmp_path):
    source, target = data
    base = ["loop", "--data", target, "--run-dir", tmp_path / "r", "--method", "mar", *RUN]
    run_error(*base, "--checkpoint", source_ckpt, match="--aux-data is required")
    run_error(*base, "--aux-data", source, "--checkpoint", source_ckpt, "--batch-size", "15", match="must be even")
    run_error(*base, "--aux-data", source, "--checkpoint", source_ckpt, "--pretrain-epochs", "2",
              match="--checkpoint FILE replaces the pretrain stage")
    other = colour_market(tmp_path / "other", train_ids=3, test_ids=1, per_camera=2)
    run_error(*base, "--aux-data", other, "--checkpoint", source_ckpt, *MAR_ARGS, match="another source")
    run_error("pretrain", "--data", target, "--out", tmp_path / "x.pt", "--splits", "all", *RUN,
              match="choose train or train,test")
    cc_ckpt = tmp_path / "cc.pt"
    run_ok("train-epoch", "--data", target, "--checkpoint", source_ckpt, "--method", "cc", "--out", cc_ckpt,
           "--labels", _labels_of(target, tmp_path), "--iters", "1", "--batch-size", "8", "--num-instances", "4",
           "--bn-chunks", "2", *RUN)
    run_error(*base, "--aux-data", source, "--checkpoint", cc_ckpt, *MAR_ARGS, match="has no agents")


def _labels_of(root, tmp_path):
    """A labels file of the target's train split: its identities (a stand-in for clustering)."""
    from reidctl.artifacts import write_labels

    train = load_dataset(root).train
    path = tmp_path / "labels.h5"
    write_labels(path, np.array([s.pid for s in train], dtype=np.int32), paths=[s.relpath for s in train])
    return path


def test_refine_mar_writes_multilabels_and_the_agreement_pairs(data, source_ckpt, tmp_path):
    _, target = data
    feats = tmp_path / "train.h5"
    run_ok("extract", "--data", target, "--checkpoint", source_ckpt, "--out", feats, "--device", "cpu")
    out = tmp_path / "mar.h5"
    run_ok("refine", "--method", "mar", feats, "--agents", source_ckpt, "--top", "3", "--mining-ratio", "0.1",
           "--out", out)
    lab = read_labels(out, load=("multilabels", "agreement_pairs"))
    assert (lab.labels == -1).all()
    # dense reference: every image's multilabel, then every pair above the top-10 % agreement
    from reidctl.artifacts import read_features
    z = torch.as_tensor(read_features(feats).feats)
    agents = L.normalized_agents(load_checkpoint(source_ckpt)["heads"]["weight"])
    ml = L.soft_multilabels(z, agents)
    multilabels = lab.extra["multilabels"].toarray()
    assert (np.count_nonzero(multilabels, axis=1) == 3).all()
    top = torch.topk(ml, 3, dim=1)
    assert np.allclose(np.take_along_axis(multilabels, top.indices.numpy(), 1), top.values.numpy(), atol=1e-6)
    n = len(z)
    agree = L.agreement(ml, ml).numpy()
    i, j = np.triu_indices(n, 1)
    t = np.sort(agree[i, j])[-int(len(i) * 0.1)]
    expected = {(a, b) for a, b in zip(i, j) if agree[a, b] > t}
    got = lab.extra["agreement_pairs"].tocoo()
    assert set(zip(got.row.tolist(), got.col.tolist())) == expected
    run_error("refine", "--method", "mar", feats, "--out", tmp_path / "y.h5", match="--agents CHECKPOINT is required")


def test_the_pair_quality_example_ranks_pairs_both_ways(data, source_ckpt, tmp_path):
    import subprocess
    import sys

    _, target = data
    feats = tmp_path / "train.h5"
    run_ok("extract", "--data", target, "--checkpoint", source_ckpt, "--out", feats, "--device", "cpu")
    script = Path(__file__).resolve().parents[1] / "examples" / "mar_pair_quality.py"
    out = subprocess.run([sys.executable, script, feats, source_ckpt, "0.1"], capture_output=True, text=True,
                         check=True).stdout
    n_pairs = int(30 * 29 / 2 * 0.1)
    assert f"top 10.000% = {n_pairs} pairs" in out
    assert out.count(f"{n_pairs} pairs, precision") == 2
