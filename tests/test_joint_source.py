"""The joint source step (`--aux-data` for every method, reidctl/train/joint.py): its loss by
hand, per-domain BatchNorm, the source stream's epoch, the classifier started from a pretraining's
agents, resume, the cache key, the config, and the errors."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from reidctl.data.datasets import load_dataset
from reidctl.data.source import load_source
from reidctl.errors import ReidctlError
from reidctl.methods import get_method
from reidctl.models.checkpoint import checkpoint_digest, load_checkpoint
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.models.spec import ModelSpec
from reidctl.pipeline.loop import LoopConfig, plan_loop
from reidctl.train.contract import Batch, StepResult
from reidctl.train.joint import SOURCE_AGENTS, JointSource, SourceParams
from reidctl.train.trainer import TrainSession, _Net
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = ["--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32"]
RUN = ["--workers", "0", "--device", "cpu", "--deterministic"]
#: Small CC steps on the tiny target (16 images) beside 8 source images.
SMALL = ["--batch-size", "16", "--num-instances", "4", "--iters", "2", "--bn-chunks", "2", "--k1", "6", "--k2", "2",
         "--eps", "0.6", "--aux-batch", "8", "--aux-splits", "train"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A labelled source (6 identities, 24 train images) and a target of other colours."""
    root = tmp_path_factory.mktemp("joint")
    source = colour_market(root / "source", train_ids=6, test_ids=2, per_camera=2)
    target = colour_market(root / "target", train_ids=5, test_ids=3, per_camera=3)
    return source, target


class _OneForward:
    """A method whose step makes one forward pass and returns a fixed loss of 0.5."""

    name = "fixed"
    params = SimpleNamespace(bn_chunks=1)

    def __init__(self) -> None:
        self.seen: list[object] = []

    def training_step(self, inputs, forward, state):
        outputs = forward(inputs.images)
        self.seen.append(outputs)
        return StepResult(torch.tensor(0.5), {"nce": 0.5}, outputs)

    def after_backward(self, inputs, outputs, state):
        self.seen.append(("after", inputs))


def _batch(images: torch.Tensor, labels: list[int]) -> Batch:
    n = len(labels)
    return Batch(images=images, labels=torch.tensor(labels), camids=torch.zeros(n, dtype=torch.int64),
                 index=torch.arange(n))


def test_the_joint_loss_is_the_methods_plus_the_weighted_source_softmax_by_hand():
    """Source feature (1, 0), agents (2, 0) and (0, 3), label 0, scale 1: the cosines are 1 and
    0, so the source loss is −log(e / (e + 1)) = log(1 + e⁻¹) = 0.313262; weight 2 adds 0.626523."""
    method = _OneForward()
    joint = JointSource(method, SourceParams(aux_data="x", aux_weight=2.0, aux_scale=1.0))
    agents = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    calls = []

    def forward(images):
        calls.append(images)
        return [{"global": torch.tensor([[1.0, 0.0]]), SOURCE_AGENTS: agents},
                {"global": torch.tensor([[0.0, 1.0]]), SOURCE_AGENTS: agents}]

    source, target = _batch(torch.zeros(1, 3, 2, 2), [0]), _batch(torch.ones(1, 3, 2, 2), [0])
    step = joint.training_step((target, source), forward, state=None)
    expected = math.log(1 + math.exp(-1))
    assert step.loss.item() == pytest.approx(0.5 + 2 * expected, abs=1e-6)
    assert step.logs["source"].item() == pytest.approx(expected, abs=1e-6) and step.logs["nce"] == 0.5
    assert len(calls) == 1 and [b.sum().item() for b in calls[0]] == [0.0, 12.0]  # [source, target] in one pass
    assert torch.equal(method.seen[0]["global"], torch.tensor([[0.0, 1.0]]))  # the method sees the target only
    joint.after_backward((target, source), step.outputs, None)
    assert method.seen[-1] == ("after", target)


def test_a_step_without_a_forward_pass_is_refused():
    class NoForward(_OneForward):
        def training_step(self, inputs, forward, state):
            return StepResult(torch.tensor(0.0), {}, None)

    joint = JointSource(NoForward(), SourceParams(aux_data="x"))
    with pytest.raises(ReidctlError, match="made no forward pass to join the source batch to"):
        joint.training_step((_batch(torch.zeros(1, 3, 2, 2), [0]),) * 2, lambda x: x, None)


def test_each_domain_is_normalised_by_its_own_batch_statistics():
    """In one forward pass of [source, target], the target's features are those of the target
    alone (its own BatchNorm statistics), not those of the two batches normalised together."""
    torch.manual_seed(0)
    net = _Net(ReidModel(ModelConfig(arch="resnet18", height=64, width=32)), None).train()
    source, target = torch.randn(4, 3, 64, 32) + 3.0, torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        joint = net([source, target])[1]["global"]
        alone = net(target)["global"]
        together = net(torch.cat([source, target]))["global"][4:]
    assert torch.allclose(joint, alone, atol=1e-5) and not torch.allclose(joint, together, atol=1e-3)


def test_the_source_stream_takes_the_methods_epoch_and_restarts_its_passes(data, tmp_path):
    """A method epoch of 7 steps beside a source of 24 images in batches of 8: 3 full passes
    (each image once per pass) and one more batch."""
    source_root, target_root = data
    target = load_dataset(str(target_root)).train
    session_source = SourceParams(aux_data=str(source_root), aux_batch=8, aux_splits="train")
    cc = get_method("cc")
    params = cc.resolve_params(None, {"batch_size": 8, "num_instances": 4, "iters": 7, "bn_chunks": 2})
    session = TrainSession(ReidModel(ModelConfig(arch="resnet18", height=64, width=32)), cc(params),
                           source=session_source)
    assert isinstance(session.method, JointSource) and session.method.name == "cc"
    from reidctl.train.trainer import _stream_context, prepare_epoch

    labels = np.array([s.pid for s in target]) % 3
    data_ = prepare_epoch(labels, np.array([s.camid for s in target]), np.random.rand(len(target), 512))
    ctx = _stream_context(session, target, data_, 0, 0)
    steps = list(session.method.train_stream(ctx))
    assert len(steps) == 7 == ctx.length
    indices = [s.index.tolist() for _, s in steps]
    passes = [sorted(sum(indices[i:i + 3], [])) for i in (0, 3)]
    assert passes == [list(range(24))] * 2 and len(set(indices[6])) == 8
    assert all(t.images.shape[0] == 8 and s.images.shape[0] == 8 for t, s in steps)


def test_a_loop_trains_cc_beside_the_source_and_resumes_bit_exactly(data, tmp_path):
    source, target = data
    args = ["loop", "--data", target, "--method", "cc", "--aux-data", source, "--epochs", "2", "--eval-every", "0",
            "--no-eval-init", *SMALL, *MODEL, *RUN]
    run_ok(*args, "--run-dir", tmp_path / "a")
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert all(e["train"]["logs"]["source"] > 0 for e in summary["epochs"])
    ckpt = load_checkpoint(tmp_path / "a" / "epoch_001" / "model.pt")
    assert ckpt["source"]["aux_data"] == str(source) and ckpt["source"]["aux_batch"] == 8
    assert ckpt["heads"]["source.pids"].tolist() == list(range(1, 7))
    config = (tmp_path / "a" / "config.toml").read_text()
    assert "[source]" in config and f'aux_data = "{source}"' in config and "aux_weight = 1.0" in config

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "epoch_001")  # killed before epoch 1
    run_ok(*args, "--run-dir", tmp_path / "b")
    assert checkpoint_digest(tmp_path / "b" / "epoch_001" / "model.pt") == \
        checkpoint_digest(tmp_path / "a" / "epoch_001" / "model.pt")


def test_the_train_key_holds_the_source_and_its_options(data, tmp_path):
    source, target = data
    other = colour_market(tmp_path / "other", train_ids=4, test_ids=1, per_camera=2)
    cfg = LoopConfig(data=str(target), run_dir=tmp_path / "run", method="cc", model=ModelSpec(pretrained="none"),
                     options={"aux_data": str(source), "aux_splits": "train", "k1": 6})
    loop = plan_loop(cfg)
    assert loop.train_reads == {"aux": load_source(str(source), splits="train").fingerprint()}
    assert loop.train_source["aux_weight"] == 1.0 and loop.train_source["aux_batch"] == 64
    assert plan_loop(dataclasses.replace(cfg, options={"aux_data": str(other), "k1": 6})).train_reads != loop.train_reads
    plain = plan_loop(dataclasses.replace(cfg, options={"k1": 6}))
    assert plain.train_reads == {} and plain.train_source is None


def test_a_pretraining_of_the_same_source_starts_the_source_classifier(data, tmp_path):
    source, target = data
    ckpt = tmp_path / "source.pt"
    run_ok("pretrain", "--data", source, "--splits", "train", "--out", ckpt, "--epochs", "1", "--batch-size", "8",
           *MODEL, *RUN)
    agents = load_checkpoint(ckpt)["heads"]["weight"]
    run_ok("loop", "--data", target, "--method", "cc", "--aux-data", source, "--checkpoint", ckpt, "--epochs", "1",
           "--eval-every", "0", "--no-eval-init", *SMALL, *RUN, "--run-dir", tmp_path / "run", "--lr", "1e-12")
    trained = load_checkpoint(tmp_path / "run" / "epoch_000" / "model.pt")["heads"]["source.weight"]
    assert torch.allclose(trained, agents, atol=1e-6)  # started from them (a 1e-12 lr barely moves them)
    # agents of another source (its 4 identities) do not fit: the classifier starts fresh
    joint = JointSource(get_method("cc")(), SourceParams(aux_data=str(source), aux_splits="train"))
    heads = joint.build_heads(ReidModel(ModelConfig(arch="resnet18", height=64, width=32)))
    note = joint.start_agents({"weight": torch.zeros(4, 512), "pids": torch.arange(4)}, heads)
    assert note.startswith("the checkpoint's source classifier holds 4 identities, --aux-data's --aux-splits train ")
    assert note.endswith("starts fresh (give --aux-splits the splits the model was pretrained on, e.g. train,test)")
    assert joint.start_agents({"weight": torch.zeros(4, 512)}, heads) is None  # no agents: nothing to say


def test_agents_of_other_splits_are_said_in_the_loop(data, tmp_path):
    source, target = data
    ckpt = tmp_path / "source.pt"
    run_ok("pretrain", "--data", source, "--splits", "train,test", "--out", ckpt, "--epochs", "1", "--batch-size", "8",
           *MODEL, *RUN)
    res = run_ok("loop", "--data", target, "--method", "cc", "--aux-data", source, "--checkpoint", ckpt, "--epochs",
                 "1", "--eval-every", "0", "--no-eval-init", *SMALL, *RUN, "--run-dir", tmp_path / "run")
    assert "the source classifier starts fresh (give --aux-splits the splits the model was pretrained on" in res.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("--aux-splits train" in r.get("source_note", "") for r in records if r.get("stage") == "train")


def test_source_errors_are_one_line(data, tmp_path):
    source, target = data
    base = ["loop", "--data", target, "--run-dir", tmp_path / "run", *MODEL, "--dry-run"]
    run_error(*base, "--k1", "6", "--aux-weight", "2", match="--aux-weight set how a labelled source is trained beside the target: "
              "give it with --aux-data")
    run_error(*base, "--method", "mar", "--aux-data", source, "--aux-weight", "2",
              match=r"--aux-weight does not apply to --method mar \(an option of cc")
    run_error(*base, "--k1", "6", "--aux-data", source, "--aux-batch", "6", "--bn-chunks", "4",
              match="--bn-chunks 4 cannot split a batch of 6")
    run_error(*base, "--k1", "6", "--aux-data", source, "--aux-splits", "test", match="--aux-splits test: choose train or train,test")
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for i in range(3):
        (unlabelled / f"img{i}.jpg").write_bytes((target / "bounding_box_train").glob("*.jpg").__next__().read_bytes())
    run_error(*base, "--k1", "6", "--aux-data", unlabelled, match="no labelled images")


def test_a_source_that_is_the_target_is_refused_before_the_run_folder_is_made(data, tmp_path):
    """However spelt (here with a trailing slash), the target as its own source is a user error:
    the run would learn the target's identity labels."""
    _, target = data
    run_error("loop", "--data", target, "--run-dir", tmp_path / "run", "--aux-data", f"{target}/", "--epochs", "1",
              "--eval-every", "0", "--no-eval-init", *SMALL, *MODEL, *RUN,
              match=rf"^error: --aux-data is the target --data \({re.escape(str(target))}\): training would learn "
                    "the target's own identity labels")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_uda_example_runs_every_method_with_and_without_the_source(tmp_path):
    """examples/uda_cuhk01_to_cuhk03.sh on synthetic:tiny-source → synthetic:tiny: one
    pretraining, each clustering method plain and with --aux-data, MAR; one table row each."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    wrapper = tmp_path / "reidctl"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m reidctl "$@"\n')
    wrapper.chmod(0o755)
    script = Path(__file__).parents[1] / "examples" / "uda_cuhk01_to_cuhk03.sh"
    run = "--device cpu --workers 0"
    env = {**os.environ, "REIDCTL": str(wrapper), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PRETRAIN_ARGS": f"--arch resnet18 --pretrained none --height 64 --width 32 --parts 3 --last-stride 1 {run} --splits train --epochs 1 "
                            "--batch-size 8",
           "MAR_ARGS": f"--aux-splits train --epochs 1 --batch-size 16 --mining-ratio 0.2 --eval-every 1 {run}",
           "AUX_ARGS": "--aux-batch 8 --aux-splits train",
           "ICREFINE_ARGS": "--n-clusters 12 --intra-epochs 1 --intra-iters 2 --intra-clusters images/3"}
    proc = subprocess.run(["bash", str(script), "synthetic:tiny-source", "synthetic:tiny", str(tmp_path / "out"),
                           "--epochs", "1", "--eval-every", "1", "--iters", "2", "--batch-size", "8",
                           "--num-instances", "4", "--bn-chunks", "2", "--k1", "6", "--k2", "2", "--eps", "0.6",
                           *run.split()],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" | ")[0] for line in proc.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| run")]
    assert rows == ["| cc", "| cc_aux", "| pplr", "| pplr_aux", "| icrefine", "| icrefine_aux", "| ncplr",
                    "| ncplr_aux", "| mar"]
    for name in ("cc", "pplr", "icrefine", "ncplr"):
        plain = json.loads((tmp_path / "out" / name / "summary.json").read_text())["epochs"][-1]["train"]["logs"]
        aux = json.loads((tmp_path / "out" / f"{name}_aux" / "summary.json").read_text())["epochs"][-1]["train"]
        assert "source" not in plain and aux["logs"]["source"] > 0, name
    cells = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| cc |")][0]
    assert len(cells) == 7 and cells[4].count("→") == 1  # cross-camera mAP of the initial model and epoch 0
    table = subprocess.run([sys.executable, str(script.parent / "ablation_table.py"), "--labels", str(tmp_path / "out"),
                            "cc", "ncplr_aux"], capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr
    quality = json.loads((tmp_path / "out" / "cc" / "summary.json").read_text())["epochs"][-1]["refine"]["quality"]
    assert f"| cc | {100 * quality['precision']:.1f} / {100 * quality['recall']:.1f} | " in table.stdout


def test_an_epoch_continues_a_checkpoint_only_as_it_was_trained(data, tmp_path):
    """A checkpoint trained without a source is not continued with one (its heads and optimiser
    state would not fit), and one trained beside a source keeps it when none is given."""
    source, target = data
    labels = tmp_path / "labels.h5"
    run_ok("extract", "--data", target, "--split", "train", "--out", tmp_path / "f.h5", *MODEL, *RUN[:4])
    run_ok("cluster", tmp_path / "f.h5", "--out", labels, "--k1", "6", "--k2", "2", "--eps", "0.6")
    args = ["train-epoch", "--data", target, "--labels", labels, "--batch-size", "16", "--num-instances", "4",
            "--iters", "1", "--bn-chunks", "2", *RUN]
    run_error(*args, "--out", tmp_path / "plain.pt", *MODEL, "--aux-batch", "8",
              match="--aux-batch set how a labelled source is trained beside the target: give it with --aux-data")
    run_ok(*args, "--out", tmp_path / "plain.pt", *MODEL)
    run_error(*args, "--out", tmp_path / "self.pt", *MODEL, "--aux-data", target, "--aux-batch", "8",
              match=r"^error: --aux-data is the target --data .*: training would learn the target's own identity")
    assert not (tmp_path / "self.pt").exists()
    run_error(*args, "--checkpoint", tmp_path / "plain.pt", "--out", tmp_path / "x.pt", "--aux-data", source,
              "--aux-batch", "8", match="plain.pt: trained without a labelled source; continue it as it was trained")
    run_ok(*args, "--out", tmp_path / "joint.pt", *MODEL, "--aux-data", source, "--aux-batch", "8")
    run_ok(*args, "--checkpoint", tmp_path / "joint.pt", "--out", tmp_path / "joint1.pt")
    resumed = load_checkpoint(tmp_path / "joint1.pt")
    assert resumed["source"]["aux_data"] == str(source) and resumed["epoch"] == 1
    assert resumed["history"][-1]["logs"]["source"] > 0
