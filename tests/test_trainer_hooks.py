"""The trainer's hooks on TrainingMethod: their defaults are the CC family's loop, and a method
(tests/toy_method.py, shaped like MAR) can replace the optimiser, the schedule, the stream of
batches, the step and keep large persistent state beside the checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import StepLR

from reidctl.artifacts import read_features, read_labels, read_method_state, write_features, write_labels
from reidctl.data.datasets import load_dataset
from reidctl.data.samplers import SEED_BOUND, IdentityBatchSampler
from reidctl.errors import ArtifactError
from reidctl.methods import METHODS, CCParams, ClusterContrast
from reidctl.models.spec import ModelSpec
from reidctl.models.checkpoint import checkpoint_digest, load_checkpoint
from reidctl.train.contract import Batch, StreamContext, trainable_parameters
from reidctl.stages.train_epoch import TrainEpochRequest, open_session, run_train_epoch
from tests.requests import split_request
from reidctl.train.trainer import TrainSession, prepare_epoch, train_epoch
from tests.fakedata import colour_market
from tests.toy_method import Toy, ToyParams, is_bn

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = ModelSpec(arch="resnet18", height=64, width=32, pretrained="none")
SMALL = {"iters": 3, "batch_size": 8, "num_instances": 4, "bn_chunks": 2}
LR, DECAY = 0.01, 0.5
TRAIN = Path(__file__).resolve().parents[1] / "reidctl" / "train"


@pytest.fixture
def source(tmp_path):
    """A labelled source: 5 identities × 2 cameras × 2 images = 20 images (2 steps of 8)."""
    return colour_market(tmp_path / "source", train_ids=5, test_ids=1, per_camera=2)


@pytest.fixture
def target(tmp_path):
    """The unlabelled target (24 train images) with labels = its identities, row 0 an outlier,
    and random 512-d features (resnet18's)."""
    root = colour_market(tmp_path / "target", train_ids=4, test_ids=1)
    train = load_dataset(root).train
    paths = [s.relpath for s in train]
    labels = np.array([s.pid - 1 for s in train], dtype=np.int32)
    labels[0] = -1
    write_labels(tmp_path / "labels.h5", labels, paths=paths)
    feats = np.random.default_rng(1).normal(size=(len(paths), 512)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    write_features(tmp_path / "feats.h5", feats, camids=np.array([s.camid for s in train]), paths=paths,
                   split=["train"] * len(paths))
    return root


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", Toy)
    return Toy


def toy_params(source) -> dict:
    return {**SMALL, "source": str(source), "lr": LR, "decay": DECAY}


def epoch_inputs(target, tmp_path):
    """What the stage trains on: the clustered samples and their EpochData."""
    train = load_dataset(target).train
    data = prepare_epoch(read_labels(tmp_path / "labels.h5").labels, np.array([s.camid for s in train]),
                         read_features(tmp_path / "feats.h5").feats)
    return [train[i] for i in data.rows], data


def request(target, tmp_path, source, **kw) -> TrainEpochRequest:
    base = dict(data=str(target), labels=tmp_path / "labels.h5", features=tmp_path / "feats.h5", method="toy",
                arch="resnet18", pretrained="none", height=64, width=32, workers=0, device="cpu",
                deterministic=True, overrides=toy_params(source))
    return split_request(TrainEpochRequest, **{**base, **kw})


def arrays_in(value, found=None) -> list:
    """Every tensor and array inside a nested checkpoint payload."""
    found = [] if found is None else found
    if isinstance(value, dict):
        for v in value.values():
            arrays_in(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            arrays_in(v, found)
    elif isinstance(value, (torch.Tensor, np.ndarray)):
        found.append(value)
    return found


# --------------------------------------------------------------------------------------------
# the defaults


def test_default_hooks_are_the_cc_loop(target, tmp_path):
    model, _ = MODEL.build()
    method = ClusterContrast(CCParams(**SMALL, step_size=2, gamma=0.5))
    session = TrainSession(model, method)
    opt = session.optimizer
    assert type(opt) is torch.optim.Adam and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert [id(q) for q in group["params"]] == [id(q) for q in trainable_parameters(model, session.heads)]
    assert (group["lr"], group["weight_decay"]) == (3.5e-4, 5e-4)
    sched = method.configure_scheduler(opt, 5, 123)  # per-epoch StepLR: the step count plays no part
    assert type(sched) is StepLR and sched.last_epoch == 5 and method.scheduler_interval == "epoch"
    assert group["lr"] == 3.5e-4 * 0.5 ** 2
    samples, data = epoch_inputs(target, tmp_path)
    assert method.epoch_length(data) == 3 and method.persistent_arrays() == {}
    # the stream draws a loader seed, then the sampler's draws, from the session generator
    ctx = StreamContext(samples=samples, data=data, generator=np.random.default_rng(5), device=torch.device("cpu"),
                        rank=0, world=1, workers=0, height=64, width=32, batch_size=8, per_rank=8, length=3)
    first = next(iter(method.train_stream(ctx)))
    ref = np.random.default_rng(5)
    ref.integers(SEED_BOUND)
    sampler = IdentityBatchSampler(data.labels, data.camids, batch_size=8, num_instances=4, rng=ref)
    assert isinstance(first, Batch) and first.images.shape == (8, 3, 64, 32)
    assert first.index.tolist() == [i for i, _ in next(iter(sampler))]
    assert torch.equal(first.labels, torch.as_tensor(data.labels)[first.index])


def test_the_trainer_knows_no_method():
    for path in sorted(TRAIN.glob("*.py")):
        text = path.read_text()
        assert not re.search(r"pplr|icrefine|intra_camera", text, re.IGNORECASE), path.name
        if path.name != "stage.py":  # the stage picks the method from the registry
            assert not re.search(r"^\s*(from|import) reidctl\.methods", text, re.MULTILINE), path.name


# --------------------------------------------------------------------------------------------
# a method with hooks of its own


def test_toy_trains_with_its_optimiser_schedule_streams_and_epoch(source, target, tmp_path):
    model, _ = MODEL.build()
    session = TrainSession(model, Toy(ToyParams(**toy_params(source))))
    opt = session.optimizer
    assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 2
    decayed, bn = opt.param_groups
    bn_params = {id(q) for m in model.modules() if is_bn(m) for q in m.parameters() if q.requires_grad}
    assert {id(q) for q in bn["params"]} == bn_params and bn["weight_decay"] == 0.0
    assert decayed["weight_decay"] == 5e-4 and not bn_params & {id(q) for q in decayed["params"]}
    assert len(decayed["params"]) + len(bn["params"]) == len(trainable_parameters(model, session.heads))

    samples, data = epoch_inputs(target, tmp_path)
    stats = [train_epoch(session, samples, data, workers=0, deterministic=True) for _ in range(2)]
    # one epoch = one pass over the 20 source images in batches of 8, not --iters 3
    assert [s.iterations for s in stats] == [2, 2] and session.steps == 4
    trace = session.method.trace
    lrs = np.array(trace["lr"])  # both groups, every step
    assert lrs.shape == (4, 2) and lrs == pytest.approx(np.repeat(LR * DECAY ** np.arange(4.0), 2).reshape(4, 2))
    assert [s.lr for s in stats] == pytest.approx([LR, LR * DECAY ** 2])
    for epoch in (trace["source"][:2], trace["source"][2:]):  # a pass without repeats
        seen = [i for batch in epoch for i in batch]
        assert len(seen) == len(set(seen)) == 16 and set(seen) <= set(range(20))
    assert [len(b) for b in trace["target"]] == [8] * 4
    assert {i for b in trace["target"] for i in b} <= set(range(len(samples)))
    assert session.method.visits.sum() == 32 and session.method.visits[0] == 0  # row 0 is the outlier
    assert set(stats[1].logs) == {"source_ce", "target"} and stats[1].logs["target"] > 0


def test_toy_state_lies_beside_the_checkpoint_and_continues(toy, source, target, tmp_path):
    r0 = run_train_epoch(request(target, tmp_path, source), tmp_path / "e0.pt")
    state0 = tmp_path / "e0.state.h5"
    payload = load_checkpoint(tmp_path / "e0.pt")
    memory0, digest0 = read_method_state(state0)
    assert payload["method_arrays"] == {"file": "e0.state.h5", "digest": digest0}
    assert memory0["memory"].shape == (24, 5) and memory0["visits"].sum() == 16
    assert not [a for a in arrays_in(payload) if tuple(a.shape) in {(24, 5), (24,)}]  # not in the checkpoint
    assert open_session(request(target, tmp_path, source, checkpoint=tmp_path / "e0.pt"),
                        torch.device("cpu"))[0].method.visits.sum() == 16  # reloaded on resume

    r1 = run_train_epoch(request(target, tmp_path, source, checkpoint=tmp_path / "e0.pt"), tmp_path / "e1.pt")
    assert (r0.stats.iterations, r1.stats.iterations) == (2, 2) and r1.stats.lr == pytest.approx(LR * DECAY ** 2)
    # the same two epochs in one session: the memory continued exactly through the state file
    session, _ = open_session(request(target, tmp_path, source), torch.device("cpu"))
    samples, data = epoch_inputs(target, tmp_path)
    losses = [train_epoch(session, samples, data, workers=0, deterministic=True).loss for _ in range(2)]
    assert losses == [r0.stats.loss, r1.stats.loss]
    memory1, _ = read_method_state(tmp_path / "e1.state.h5")
    assert memory1["visits"].sum() == 32
    assert np.array_equal(memory1["memory"], session.method.memory)
    assert load_checkpoint(tmp_path / "e1.pt")["steps"] == 4


def test_a_checkpoint_read_through_a_link_finds_its_state_file(toy, source, target, tmp_path):
    """``RUN/best.pt`` and ``RUN/last.pt`` are links into an epoch folder: the state file lies
    beside the file they point at, not beside the link (issue 27)."""
    (tmp_path / "epoch_000").mkdir()
    run_train_epoch(request(target, tmp_path, source), tmp_path / "epoch_000" / "model.pt")
    (tmp_path / "best.pt").symlink_to(tmp_path / "epoch_000" / "model.pt")
    resumed = open_session(request(target, tmp_path, source, checkpoint=tmp_path / "best.pt"), torch.device("cpu"))
    assert resumed[0].method.visits.sum() == 16


def test_a_linked_checkpoint_has_the_digest_of_the_file_it_points_at(toy, source, target, tmp_path):
    """``checkpoint_digest(..., arrays=True)`` (what ``loop --checkpoint`` keys its stages on)
    finds the state file beside the link's target too: before, ``otherrun/best.pt`` of a method
    with persistent arrays failed with "no such file"."""
    (tmp_path / "epoch_000").mkdir()
    model_pt = tmp_path / "epoch_000" / "model.pt"
    run_train_epoch(request(target, tmp_path, source), model_pt)
    (tmp_path / "best.pt").symlink_to(model_pt)
    assert checkpoint_digest(tmp_path / "best.pt", arrays=True) == checkpoint_digest(model_pt, arrays=True)
    (tmp_path / "epoch_000" / "model.state.h5").unlink()
    with pytest.raises(ArtifactError, match="model.state.h5: no such file"):
        checkpoint_digest(tmp_path / "best.pt", arrays=True)


def test_a_missing_or_changed_state_file_is_refused(toy, source, target, tmp_path):
    run_train_epoch(request(target, tmp_path, source), tmp_path / "e0.pt")
    state = tmp_path / "e0.state.h5"
    resume = request(target, tmp_path, source, checkpoint=tmp_path / "e0.pt")
    with h5py.File(state, "r+") as f:  # edited in place, its recorded digest left alone
        f["memory"][0, 0] += 1
    with pytest.raises(ArtifactError, match=r"e0\.state\.h5: holds other method state \(digest \w+\) than "
                                            r"\S*e0\.pt was saved with \(digest \w+\); it was changed") as exc:
        run_train_epoch(resume, tmp_path / "e1.pt")
    assert "\n" not in str(exc.value) and not (tmp_path / "e1.pt").exists()
    state.unlink()
    with pytest.raises(ArtifactError, match=r"e0\.state\.h5: no such file; it holds the method state that "
                                            r"\S*e0\.pt was saved with \(keep it beside the checkpoint\)$"):
        open_session(resume, torch.device("cpu"))


def test_the_checkpoint_digest_follows_the_state_not_its_file_name(source, tmp_path):
    model, _ = MODEL.build()
    session = TrainSession(model, Toy(ToyParams(**toy_params(source))))
    session.save(tmp_path / "a.pt")
    session.save(tmp_path / "b.pt")
    session.method.memory[3, 1] = 0.5
    session.save(tmp_path / "c.pt")
    a, b, c = (checkpoint_digest(tmp_path / f"{n}.pt") for n in "abc")
    assert a == b != c


def test_the_state_file_does_not_overwrite_a_foreign_file(toy, source, target, tmp_path):
    (tmp_path / "e0.state.h5").write_text("notes\n")
    with pytest.raises(ArtifactError, match=r"e0\.state\.h5 already exists and is not a reidctl artifact"):
        run_train_epoch(request(target, tmp_path, source), tmp_path / "e0.pt")
    assert not (tmp_path / "e0.pt").exists() and (tmp_path / "e0.state.h5").read_text() == "notes\n"
