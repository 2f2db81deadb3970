"""The training stage: memory updates, ClusterNCE, sampler, BN chunks, augmentation, checkpoints,
the train-epoch command (one process and two torchrun processes)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from reidctl.artifacts import write_features, write_labels
from reidctl.data.datasets import load_dataset
from reidctl.data.samplers import IdentityBatchSampler, IterLoader, identity_balanced_order, pass_length
from reidctl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomErasing, train_transform
from reidctl.methods import CCParams, get_method
from reidctl.train.bn_chunks import get_bn_chunks, set_bn_chunks
from reidctl.models.checkpoint import load_checkpoint, model_from_checkpoint
from reidctl.train.memory import ClusterMemory, cluster_centroids, update_hard, update_mean, update_sample
from reidctl.stages.train_epoch import TrainEpochRequest, open_session, run_train_epoch
from tests.requests import split_request
from reidctl.train.trainer import prepare_epoch, train_epoch
from tests.clitools import run_error, run_ok

pytestmark = pytest.mark.usefixtures("one_thread")


FAST = ["--arch", "mobilenet_v2", "--pretrained", "none", "--height", "64", "--width", "32", "--workers", "0", "--device", "cpu"]
SMALL = ["--iters", "2", "--batch-size", "8", "--num-instances", "4", "--bn-chunks", "2"]


# --------------------------------------------------------------------------------------------
# cluster memory


def _unit(*v):
    t = torch.tensor(v, dtype=torch.float32)
    return t / t.norm()


@pytest.fixture
def toy_memory():
    """C0 = (1,0), C1 = (0,1); batch: (0,1)→0, (1,0)→0, (1,0)→1; momentum 0.5."""
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    return memory, x, y


def test_update_sample_by_hand(toy_memory):
    memory, x, y = toy_memory
    update_sample(memory, x, y, 0.5)
    # C0: (1,0) → normalize((.5,.5)) = 45° → normalize(.5·45° + .5·(1,0)) = 22.5°
    assert torch.allclose(memory[0], torch.tensor([math.cos(math.pi / 8), math.sin(math.pi / 8)]), atol=1e-6)
    assert torch.allclose(memory[1], _unit(1, 1), atol=1e-6)


def test_update_hard_by_hand(toy_memory):
    memory, x, y = toy_memory
    update_hard(memory, x, y, 0.5)
    # the label-0 sample least similar to C0 = (1,0) is (0,1): one step with it only
    assert torch.allclose(memory[0], _unit(1, 1), atol=1e-6)
    assert torch.allclose(memory[1], _unit(1, 1), atol=1e-6)


def test_update_mean_by_hand(toy_memory):
    memory, x, y = toy_memory
    update_mean(memory, x, y, 0.5)
    # mean of label 0 = (.5,.5); .5·(1,0) + .5·(.5,.5) = (.75,.25)
    assert torch.allclose(memory[0], _unit(3, 1), atol=1e-6)
    assert torch.allclose(memory[1], _unit(1, 1), atol=1e-6)


def test_momentum_semantics_new_sample_dominates():
    memory = torch.tensor([[1.0, 0.0]])
    update_sample(memory, torch.tensor([[0.0, 1.0]]), torch.tensor([0]), 0.1)
    assert torch.allclose(memory[0], _unit(0.1, 0.9), atol=1e-6)


@pytest.mark.parametrize("rule", ["sample", "hard"])
def test_vectorised_updates_match_sequential_reference(rule):
    g = torch.Generator().manual_seed(0)
    memory = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    x = F.normalize(torch.randn(40, 8, generator=g), dim=1)
    y = torch.randint(0, 5, (40,), generator=g)
    ref = memory.clone()
    m = 0.2
    if rule == "sample":  # the official CM backward, one sample at a time in batch order
        for xi, yi in zip(x, y):
            ref[yi] = m * ref[yi] + (1 - m) * xi
            ref[yi] /= ref[yi].norm()
        got = update_sample(memory.clone(), x, y, m)
    else:  # the official CM_Hard backward
        for k in dict.fromkeys(y.tolist()):
            idx = torch.nonzero(y == k).flatten()
            j = idx[int(np.argmin([float(x[i] @ memory[k]) for i in idx]))]
            ref[k] = m * ref[k] + (1 - m) * x[j]
            ref[k] /= ref[k].norm()
        got = update_hard(memory.clone(), x, y, m)
    assert torch.allclose(got, ref, atol=1e-6)


def test_cluster_nce_value_and_gradient_use_the_old_memory():
    memory = ClusterMemory(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), temperature=0.5, momentum=0.0)
    f = torch.tensor([[2.0, 0.0]], requires_grad=True)  # normalised: (1, 0) → logits (2, 0)
    loss = memory.loss(f, torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    old = memory.features.clone()
    loss.backward()
    memory.update(f, torch.tensor([0]))
    # reference gradient with the memory before the update
    f2 = f.detach().clone().requires_grad_(True)
    F.cross_entropy(F.normalize(f2, dim=1) @ old.t() / 0.5, torch.tensor([0])).backward()
    assert torch.allclose(f.grad, f2.grad)
    assert torch.allclose(memory.features[0], torch.tensor([1.0, 0.0]))  # m = 0: replaced by the sample


def test_centroids_are_normalised_means():
    feats = np.array([[1, 0], [0, 1], [0, 1], [1, 1]], dtype=np.float32)
    c = cluster_centroids(feats, np.array([0, 0, 1, -1]))
    assert torch.allclose(c[0], _unit(1, 1)) and torch.allclose(c[1], torch.tensor([0.0, 1.0]))


# --------------------------------------------------------------------------------------------
# sampler


def test_sampler_prefers_other_cameras_and_replacement_rules():
    # id 0: one image in cam 0, five in cam 1; id 1: a single image; id 2: three images, all cam -1
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 2, 2, 2])
    camids = np.array([0, 1, 1, 1, 1, 1, 0, -1, -1, -1])
    rng = np.random.default_rng(0)
    seen_anchor_cam0 = seen_anchor_cam1 = False
    for _ in range(50):
        order = identity_balanced_order(labels, camids, 4, rng)
        assert len(order) == 4 + 1 + 4 == pass_length(labels, 4)
        groups = {}
        for i in order:
            groups.setdefault(labels[i], []).append(i)
        assert groups[1] == [6]  # a single-image id contributes only its anchor
        anchor, *comp = groups[0]
        if camids[anchor] == 0:  # five images in other cameras ≥ K: without replacement
            seen_anchor_cam0 = True
            assert all(camids[c] == 1 for c in comp) and len(set(comp)) == 3
        else:  # one image in another camera < K: with replacement, all of them that one
            seen_anchor_cam1 = True
            assert comp == [0, 0, 0]
        anchor, *comp = groups[2]  # unknown cameras = one camera: the other images, with replacement
        assert anchor not in comp and set(comp) <= {7, 8, 9} - {anchor}
    assert seen_anchor_cam0 and seen_anchor_cam1


def test_sampler_is_deterministic_for_a_seed_and_shards_global_batches():
    labels = np.repeat(np.arange(6), 5)
    camids = np.tile(np.arange(5), 6) % 2

    def batches(seed, rank=0, world=1):
        s = IdentityBatchSampler(labels, camids, batch_size=8, num_instances=4,
                                 rng=np.random.default_rng(seed), rank=rank, world_size=world)
        return [list(s) for _ in range(2)]  # two passes

    a, b, c = batches(3), batches(3), batches(4)
    assert a == b and a != c
    assert all(len(batch) == 8 for p in a for batch in p) and len(a[0]) == 3  # 24 images, drop_last
    r0, r1 = batches(3, 0, 2), batches(3, 1, 2)
    for p in range(2):
        assert [x + y for x, y in zip(r0[p], r1[p])] == a[p]


def test_iter_loader_restarts_for_exactly_iters_batches():
    assert list(IterLoader([1, 2, 3], 7)) == [1, 2, 3, 1, 2, 3, 1]


# --------------------------------------------------------------------------------------------
# BN chunks


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.BatchNorm1d(4))


def _manual_chunked(net, x, k):
    conv, bn2, bn1 = net[0], net[1], net[5]
    outs = []
    for c in torch.chunk(x, k):
        h = F.batch_norm(conv(c), None, None, bn2.weight, bn2.bias, True, 0.0, bn2.eps)
        h = net[4](net[3](net[2](h)))
        outs.append(F.batch_norm(h, None, None, bn1.weight, bn1.bias, True, 0.0, bn1.eps))
    return torch.cat(outs)


def test_bn_chunks_match_manual_per_chunk_statistics():
    net = _bn_net()
    x = torch.randn(10, 3, 6, 6)
    ref_net = _bn_net()
    assert set_bn_chunks(net, 3) == 2 and get_bn_chunks(net) == 3  # chunks of 4, 4, 2
    net.train()
    out = net(x)
    ref = _manual_chunked(ref_net, x, 3)
    assert torch.allclose(out, ref, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    assert torch.allclose(net[0].weight.grad, ref_net[0].weight.grad, atol=1e-4)
    # running statistics from chunk 0 only, once per forward
    first = x[:4]
    plain = _bn_net().train()
    plain(first)
    for a, b in ((net[1], plain[1]), (net[5], plain[5])):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
        assert torch.allclose(a.running_var, b.running_var, atol=1e-6)
        assert int(a.num_batches_tracked) == 1
    # eval mode is plain BatchNorm; chunks=1 switches back; state-dict keys unchanged
    net.eval()
    plain.eval()
    assert torch.allclose(net(x), plain(x), atol=1e-5)
    assert set(net.state_dict()) == set(plain.state_dict())
    set_bn_chunks(net, 1)
    assert type(net[1]) is nn.BatchNorm2d and get_bn_chunks(net) == 1


# --------------------------------------------------------------------------------------------
# augmentation


def test_random_erasing_fills_normalised_space_with_imagenet_mean():
    img = torch.full((3, 64, 32), 5.0)
    out = RandomErasing(p=1.0)(img.clone(), generator=torch.Generator().manual_seed(0))
    erased = out[0] != 5.0
    frac = erased.float().mean().item()
    assert 0.015 < frac < 0.45
    for c in range(3):
        assert torch.all(out[c][erased] == torch.tensor(IMAGENET_MEAN[c]))
        assert torch.all(out[c][~erased] == 5.0)
    assert torch.equal(RandomErasing(p=0.0)(img.clone()), img)


def test_train_transform_erases_after_normalisation():
    colour = (200, 40, 90)
    pil = Image.new("RGB", (16, 32), colour)
    tf = train_transform(64, 32)
    normed = [(colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c] for c in range(3)]
    padding = [(0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c] for c in range(3)]
    erased_seen = 0
    for seed in range(12):
        out = tf(pil, generator=torch.Generator().manual_seed(seed))
        assert out.shape == (3, 64, 32)
        assert torch.equal(out, tf(pil, generator=torch.Generator().manual_seed(seed)))  # seeded
        erased = (out[0] - IMAGENET_MEAN[0]).abs() < 1e-7
        if erased.any():
            erased_seen += 1
            for c in range(3):
                assert torch.allclose(out[c][erased], torch.tensor(IMAGENET_MEAN[c]))
        rest = out[:, ~erased]
        ok = [((rest[c] - normed[c]).abs() < 1e-2) | ((rest[c] - padding[c]).abs() < 1e-2) for c in range(3)]
        assert torch.stack(ok).all()  # the image colour or the zero padding, both normalised
    assert 0 < erased_seen < 12


# --------------------------------------------------------------------------------------------
# the stage on a tiny dataset


def _img(path, colour, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.clip(np.array(colour)[None, None] + rng.integers(-20, 20, (32, 16, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture
def market(tmp_path):
    """4 train identities (colours) × 2 cameras × 3 images; a minimal query/gallery."""
    root = tmp_path / "market"
    rng = np.random.default_rng(0)
    for pid in range(1, 5):
        colour = [(pid * 67) % 256, (pid * 151) % 256, (pid * 29) % 256]
        for cam in (1, 2):
            for k in range(3):
                _img(root / "bounding_box_train" / f"{pid:04d}_c{cam}s1_{k:06d}_01.jpg", colour, rng)
    _img(root / "query" / "0005_c1s1_000000_00.jpg", (10, 10, 10), rng)
    _img(root / "bounding_box_test" / "0005_c2s1_000000_01.jpg", (10, 10, 10), rng)
    return root


@pytest.fixture
def labelled(market, tmp_path):
    """Labels = the colours' identities with one outlier; features = random unit vectors."""
    ds = load_dataset(market)
    paths = [s.relpath for s in ds.train]
    labels = np.array([s.pid - 1 for s in ds.train], dtype=np.int32)
    labels[0] = -1
    labels_path = tmp_path / "labels.h5"
    write_labels(labels_path, labels, paths=paths)
    feats = np.random.default_rng(1).normal(size=(len(paths), 1280)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    feats_path = tmp_path / "feats.h5"
    write_features(feats_path, feats, camids=np.array([s.camid for s in ds.train]), paths=paths,
                   split=["train"] * len(paths))
    return market, labels_path, feats_path


def _request(market, labels_path, feats_path, **kw):
    base = dict(data=str(market), labels=labels_path, features=feats_path, arch="mobilenet_v2", pretrained="none",
                height=64, width=32,
                workers=0, device="cpu", deterministic=True,
                overrides={"iters": 2, "batch_size": 8, "num_instances": 4, "bn_chunks": 2})
    base.update(kw)
    return split_request(TrainEpochRequest, **base)


def test_checkpoint_round_trip_continues_exactly(labelled, tmp_path):
    market, labels_path, feats_path = labelled
    # two epochs of two iterations through checkpoints ...
    r0 = run_train_epoch(_request(market, labels_path, feats_path), tmp_path / "e0.pt")
    r1 = run_train_epoch(_request(market, labels_path, feats_path, checkpoint=tmp_path / "e0.pt"), tmp_path / "e1.pt")
    assert (r0.stats.epoch, r1.stats.epoch) == (0, 1) and r0.stats.iterations == 2
    # ... equal four iterations straight in one session
    req = _request(market, labels_path, feats_path)
    session, _ = open_session(req, torch.device("cpu"))
    ds = load_dataset(market)
    from reidctl.artifacts import read_features, read_labels

    lab = read_labels(labels_path).labels
    feats = read_features(feats_path).feats
    data = prepare_epoch(lab, np.array([s.camid for s in ds.train]), feats)
    samples = [ds.train[i] for i in data.rows]
    losses = [train_epoch(session, samples, data, workers=0, deterministic=True).loss for _ in range(2)]
    assert losses == [r0.stats.loss, r1.stats.loss]
    saved = load_checkpoint(tmp_path / "e1.pt")
    for k, v in session.model.state_dict().items():
        assert torch.equal(v, saved["model"][k]), k
    opt = session.optimizer.state_dict()["state"]
    for i, st in opt.items():
        assert torch.equal(st["exp_avg"], saved["optimizer"]["state"][i]["exp_avg"])
    assert saved["epoch"] == 1 and saved["method"] == "cc" and saved["bn_chunks"] == 2
    assert saved["scheduler"]["last_epoch"] == 2 and len(saved["history"]) == 2
    assert {"python", "numpy", "torch", "generator"} <= set(saved["rng"])
    assert saved["method_params"]["iters"] == 2  # options carry over to the next epoch


def test_result_does_not_depend_on_dataloader_workers(labelled, tmp_path):
    market, labels_path, feats_path = labelled
    over = {"iters": 2, "batch_size": 8, "num_instances": 4, "bn_chunks": 1}
    for w in (0, 2):
        run_train_epoch(_request(market, labels_path, feats_path, overrides=over, workers=w), tmp_path / f"w{w}.pt")
    a, b = load_checkpoint(tmp_path / "w0.pt")["model"], load_checkpoint(tmp_path / "w2.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_prepare_epoch_drops_outliers_and_renumbers():
    data = prepare_epoch(np.array([5, -1, 9, 5, 2]), np.array([0, 1, 0, 1, 0]), np.eye(5, dtype=np.float32))
    assert data.labels.tolist() == [1, 2, 1, 0] and data.rows.tolist() == [0, 2, 3, 4]
    assert data.num_clusters == 3 and data.camids.tolist() == [0, 0, 1, 0] and data.features.shape == (4, 5)


def test_lr_follows_step_schedule(labelled, tmp_path):
    market, labels_path, feats_path = labelled
    over = {"iters": 1, "batch_size": 8, "num_instances": 4, "bn_chunks": 1, "step_size": 2, "gamma": 0.5}
    r = run_train_epoch(_request(market, labels_path, feats_path, overrides=over, epoch=4), tmp_path / "e4.pt")
    assert r.stats.lr == pytest.approx(3.5e-4 * 0.25)
    assert load_checkpoint(tmp_path / "e4.pt")["optimizer"]["param_groups"][0]["weight_decay"] == 5e-4


def test_method_params_and_errors():
    cc = get_method("cc")
    p = cc.resolve_params({"iters": 7, "foo": 1}, {"momentum": 0.2})
    assert isinstance(p, CCParams) and p.iters == 7 and p.momentum == 0.2 and p.batch_size == 256
    from reidctl.errors import ReidctlError

    with pytest.raises(ReidctlError, match="--alpha does not apply"):
        cc.resolve_params(None, {"alpha": 0.1})
    with pytest.raises(ReidctlError, match="memory-update"):
        cc.resolve_params(None, {"memory_update": "median"})
    with pytest.raises(ReidctlError, match="unknown --method"):
        get_method("nope")


# --------------------------------------------------------------------------------------------
# the command


def _trainable(checkpoint):
    """The weights a training step changes (BatchNorm's running statistics left out)."""
    model = model_from_checkpoint(checkpoint)
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_cli_train_epoch_end_to_end(labelled, tmp_path):
    market, labels_path, _ = labelled
    out0, out1 = tmp_path / "e0.pt", tmp_path / "e1.pt"
    # no --features: the centroids come from features extracted with the fresh model
    r = run_ok("train-epoch", "--data", market, "--labels", labels_path, "--out", out0, *FAST, *SMALL,
               "--memory-update", "hard", "--json")
    res = json.loads(r.stdout)
    assert res["epoch"] == 0 and res["clusters"] == 4 and res["images"] == 23 and res["outliers"] == 1
    assert math.isfinite(res["loss"]) and res["params"]["memory_update"] == "hard"
    r = run_ok("train-epoch", "--data", market, "--labels", labels_path, "--out", out1, "--checkpoint", out0,
               "--workers", "0", "--device", "cpu", "--json")
    res = json.loads(r.stdout)
    assert res["epoch"] == 1 and res["params"]["batch_size"] == 8 and res["params"]["memory_update"] == "hard"
    # it trained: the optimiser moved the learnable weights (a forward pass in train mode alone
    # would change BatchNorm's running statistics, which are buffers, not parameters)
    before, after = _trainable(out0), _trainable(out1)
    assert before.keys() == after.keys() and len(before) > 100
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > 0.9 * len(before), sorted(set(before) - set(changed))


def test_cli_refuses_mismatched_labels(labelled, tmp_path):
    market, labels_path, _ = labelled
    bad = tmp_path / "bad.h5"
    write_labels(bad, np.zeros(3, dtype=np.int32), paths=["a.jpg", "b.jpg", "c.jpg"])
    # the file and the row that does not fit (3 rows for the 23 train images; row 0 not one of them)
    run_error("train-epoch", "--data", market, "--labels", bad, "--out", tmp_path / "x.pt", *FAST, *SMALL,
              match=r"bad\.h5: .*\brows?\b")
    assert not (tmp_path / "x.pt").exists()
    run_error("train-epoch", "--data", market, "--labels", labels_path, "--out", tmp_path / "x.pt", *FAST,
              *SMALL, "--batch-size", "64", match=r"fewer than --batch-size 64: lower --batch-size")
    assert not (tmp_path / "x.pt").exists()


# --------------------------------------------------------------------------------------------
# error paths: each a user error (one line, exit 2) that writes no checkpoint


def _saved_session(market, labels_path, feats_path, path):
    """A fresh (untrained) cc session written as a checkpoint; returns its payload."""
    session, _ = open_session(_request(market, labels_path, feats_path), torch.device("cpu"))
    session.save(path)
    return load_checkpoint(path)


def _tampered(payload, path, change):
    payload = {**payload}
    change(payload)
    torch.save(payload, path)
    return path


def _drop_last_param(payload):
    opt = payload["optimizer"]
    group = opt["param_groups"][0]
    payload["optimizer"] = {**opt, "param_groups": [{**group, "params": group["params"][:-1]}]}


def _wrong_first_weight(payload):
    weights = dict(payload["model"])
    first = next(k for k, v in weights.items() if v.ndim == 4)
    weights[first] = weights[first][:1]  # one output channel instead of 32
    payload["model"] = weights


BAD_CHECKPOINTS = [
    ("missing", r"missing\.pt: no such checkpoint$"),
    ("text", r"bad\.pt: not a checkpoint \(not a file written by torch\.save"),
    ("plain_dict", r"bad\.pt: not a reidctl checkpoint \(for plain weights use --weights\)$"),
    ("state_dict", r"bad\.pt: not a reidctl checkpoint \(for plain weights use --weights\)$"),
    ("version", r"bad\.pt: checkpoint version 99 is not supported \(this reidctl reads version 1\)$"),
    ("weights", r"bad\.pt: weights do not fit the recorded model \("),
    ("optimizer", r"bad\.pt: the saved optimiser state does not fit this model/method \(checkpoint method 'cc'\)"),
]


@pytest.mark.parametrize(("make", "message"), BAD_CHECKPOINTS, ids=[make for make, _ in BAD_CHECKPOINTS])
def test_cli_refuses_bad_checkpoints(labelled, tmp_path, make, message):
    market, labels_path, feats_path = labelled
    bad = tmp_path / "bad.pt"
    if make == "missing":
        bad = tmp_path / "missing.pt"
    elif make == "text":
        bad.write_text("these are not the weights you are looking for\n")
    elif make == "plain_dict":
        torch.save({"epoch": 3, "weights": torch.zeros(2)}, bad)
    else:
        payload = _saved_session(market, labels_path, feats_path, tmp_path / "good.pt")
        if make == "state_dict":  # the bare weights of a reidctl model
            torch.save(payload["model"], bad)
        else:
            change = {"version": lambda d: d.update(schema_version=99), "weights": _wrong_first_weight,
                      "optimizer": _drop_last_param}[make]
            _tampered(payload, bad, change)
    out = tmp_path / "next.pt"
    r = run_error("train-epoch", "--data", market, "--labels", labels_path, "--features", feats_path,
                  "--checkpoint", bad, "--out", out, "--workers", "0", "--device", "cpu", *SMALL, match=message)
    if make == "weights":  # torch's own explanation follows (on further lines)
        assert "size mismatch" in r.stderr
    assert not out.exists()


def test_checkpoint_loaders_refuse_what_does_not_fit(labelled, tmp_path):
    """The library functions behind the CLI errors: load_checkpoint, model_from_payload (via
    model_from_checkpoint) and load_training_state (via resume), with a PPLR checkpoint whose
    classifier heads do not fit the model it records."""
    from reidctl.errors import ArtifactError
    from reidctl.methods import PPLR, PPLRParams
    from reidctl.models.reid import ModelConfig, ReidModel
    from reidctl.train.trainer import TrainSession, resume

    market, labels_path, feats_path = labelled
    payload = _saved_session(market, labels_path, feats_path, tmp_path / "good.pt")
    wrong = _tampered(payload, tmp_path / "wrong.pt", _wrong_first_weight)
    with pytest.raises(ArtifactError, match=r"(?s)wrong\.pt: weights do not fit the recorded model \(.*size mismatch"):
        model_from_checkpoint(wrong)
    with pytest.raises(ArtifactError, match=r"wrong\.pt: weights do not fit the recorded model"):
        resume(load_checkpoint(wrong), get_method("cc"), source=wrong)
    with pytest.raises(ArtifactError, match=r"nowhere\.pt: no such checkpoint$"):
        load_checkpoint(tmp_path / "nowhere.pt")

    model = ReidModel(ModelConfig(arch="mobilenet_v2", pooling="avg", parts=3, height=64, width=32))
    TrainSession(model, PPLR(PPLRParams(classifier_rows=50))).save(tmp_path / "pplr.pt")
    pplr = load_checkpoint(tmp_path / "pplr.pt")
    assert pplr["heads"]["classifier.weight"].shape[0] == 50
    resume(pplr, PPLR)  # the untouched checkpoint continues

    def fewer_rows(d):
        d["heads"] = {k: v[:10] if k.endswith("weight") and v.shape[0] == 50 else v for k, v in d["heads"].items()}

    heads = _tampered(pplr, tmp_path / "heads.pt", fewer_rows)
    with pytest.raises(ArtifactError, match=r"(?s)heads\.pt: the method's heads do not fit \(.*size mismatch"):
        resume(load_checkpoint(heads), PPLR, source=heads)
    opt = _tampered(pplr, tmp_path / "opt.pt", _drop_last_param)
    with pytest.raises(ArtifactError, match=r"opt\.pt: the saved optimiser state does not fit this model/method "
                                            r"\(checkpoint method 'pplr'\)"):
        resume(load_checkpoint(opt), PPLR, source=opt)


def _nan_loss(monkeypatch):
    """Make cc's loss NaN (still differentiable, so backward and the step run as usual)."""
    from reidctl.methods.cc import ClusterContrast

    real = ClusterContrast.loss

    def loss(self, batch, outputs, state):
        value, logs = real(self, batch, outputs, state)
        return value * float("nan"), logs

    monkeypatch.setattr(ClusterContrast, "loss", loss)


@pytest.mark.parametrize("cause", ["nan-loss", "huge-lr"])
def test_cli_diverged_training_is_a_user_error(labelled, tmp_path, monkeypatch, cause):
    market, labels_path, feats_path = labelled
    extra = []
    if cause == "nan-loss":
        _nan_loss(monkeypatch)
    else:  # Adam steps by about lr: weights of 1e30 overflow float32 in the second iteration's forward
        extra = ["--lr", "1e30"]
    out = tmp_path / "e0.pt"
    run_error("train-epoch", "--data", market, "--labels", labels_path, "--features", feats_path, "--out", out,
              *FAST, *SMALL, *extra, match=r"training diverged in epoch 0 \(mean loss nan\); try a lower --lr$")
    assert not out.exists()


def test_train_epoch_raises_when_the_mean_loss_is_not_finite(labelled, monkeypatch):
    market, labels_path, feats_path = labelled
    session, _ = open_session(_request(market, labels_path, feats_path), torch.device("cpu"))
    from reidctl.artifacts import read_features, read_labels
    from reidctl.errors import ReidctlError

    ds = load_dataset(market)
    data = prepare_epoch(read_labels(labels_path).labels, np.array([s.camid for s in ds.train]),
                         read_features(feats_path).feats)
    samples = [ds.train[i] for i in data.rows]
    _nan_loss(monkeypatch)
    with pytest.raises(ReidctlError, match=r"^training diverged in epoch 0 \(mean loss nan\); try a lower --lr$"):
        train_epoch(session, samples, data, workers=0)
    assert session.epoch == -1 and session.history == []  # the epoch did not count


def test_cli_all_outlier_labels(labelled, tmp_path):
    market, labels_path, feats_path = labelled
    paths = [s.relpath for s in load_dataset(market).train]
    outliers = tmp_path / "outliers.h5"
    write_labels(outliers, np.full(len(paths), -1, dtype=np.int32), paths=paths)
    out = tmp_path / "e0.pt"
    run_error("train-epoch", "--data", market, "--labels", outliers, "--features", feats_path, "--out", out,
              *FAST, *SMALL, match=r"no clusters to train on: every sample is an outlier$")
    assert not out.exists()


def test_cli_image_corrupted_after_clustering(labelled, tmp_path):
    """The labels were made while the images were fine; then identity 2's images broke. Every
    identity is sampled in the first pass, so training meets one of them."""
    market, labels_path, feats_path = labelled
    broken = sorted((market / "bounding_box_train").glob("0002_*.jpg"))
    assert len(broken) == 6
    for path in broken:
        path.write_bytes(path.read_bytes()[:40])  # a truncated JPEG
    out = tmp_path / "e0.pt"
    names = "|".join(re.escape(p.name) for p in broken)
    run_error("train-epoch", "--data", market, "--labels", labels_path, "--features", feats_path, "--out", out,
              *FAST, *SMALL, match=rf"cannot read image \S*bounding_box_train/({names}): ")
    assert not out.exists()


@pytest.mark.slow
def test_torchrun_two_processes(labelled, tmp_path):
    market, labels_path, _ = labelled
    common = ["--data", market, "--labels", labels_path, *FAST, *SMALL, "--deterministic"]
    ddp_out, single_out = tmp_path / "ddp.pt", tmp_path / "single.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "reidctl", "train-epoch", "--out", ddp_out, "--json", *common]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)  # rank 0 alone prints
    assert res["world_size"] == 2 and res["iterations"] == 2 and math.isfinite(res["loss"])
    ddp = load_checkpoint(ddp_out)
    assert ddp["epoch"] == 0
    # the global batch, its augmentation and the BN chunks equal the single-process run's
    r = run_ok("train-epoch", "--out", single_out, "--json", *common)
    single = load_checkpoint(single_out)
    assert json.loads(r.stdout)["loss"] == pytest.approx(res["loss"], rel=1e-4)
    # Gradients agree up to float summation order. Adam turns the sign of a numerically-zero
    # gradient (e.g. a BN bias followed by another BN) into a full ±lr step, so a few weights
    # may differ by up to lr per iteration; the rest must agree closely.
    close = total = 0
    for k, v in single["model"].items():
        if not v.is_floating_point():
            assert torch.equal(v, ddp["model"][k]), k
            continue
        diff = (v - ddp["model"][k]).abs()
        assert diff.max() <= 2 * 1.25 * 3.5e-4, k
        close += int((diff <= 1e-5).sum())
        total += diff.numel()
    assert close / total > 0.98
