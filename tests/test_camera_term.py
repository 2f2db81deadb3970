"""The camera-aware term any clustering method can switch on (`--camera-proxies`,
reidctl/train/camera.py): the proxies and the loss by hand, the wrapper adding exactly
λ·(L_gcam + mean_p L_pcam) to a method's own loss, its place beside the joint source step, the
commands and the errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from reidctl.errors import ReidctlError
from reidctl.methods import PPLR, get_method
from reidctl.models.checkpoint import load_checkpoint
from reidctl.models.reid import ModelConfig, ReidModel
from reidctl.train.camera import CameraAware, camera_proxies, camera_proxy_loss
from reidctl.train.contract import Batch
from reidctl.train.joint import JointSource, SourceParams
from reidctl.train.trainer import TrainSession, prepare_epoch
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = ["--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32"]
RUN = ["--workers", "0", "--device", "cpu", "--deterministic"]
SMALL = ["--batch-size", "16", "--num-instances", "4", "--iters", "2", "--bn-chunks", "2", "--k1", "6", "--k2", "2",
         "--eps", "0.6", "--epochs", "1", "--eval-every", "0", "--no-eval-init"]


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_camera_proxies_and_loss_by_hand():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [1.0, 1.0]])
    labels, cams = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 0])
    proxies, pl, pc = camera_proxies(feats, labels, cams)
    assert pl.tolist() == [0, 0, 1] and pc.tolist() == [0, 1, 0]
    r = 1 / math.sqrt(2)
    assert torch.allclose(proxies, torch.tensor([[r, r], [0.0, 1.0], [r, r]]))
    # a batch of two: sample 0 (label 0, cam 0) has the cross-camera positive proxy 1; sample 1
    # (label 1, cam 0) has no proxy of its label in another camera and is skipped
    f = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    loss = camera_proxy_loss(f, torch.tensor([0, 1]), torch.tensor([0, 0]), proxies, pl, pc,
                             temperature=tau, hard_negatives=50)
    s_pos, s_neg = 0.0 / tau, r / tau  # negatives of sample 0: proxy 2 only
    expected = -(s_pos - math.log(math.exp(s_pos) + math.exp(s_neg))) / 2  # divided by the batch size
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # hard negatives: only the most similar ones enter the softmax
    many = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    l1 = camera_proxy_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), torch.tensor([0]), many,
                           torch.tensor([0, 1, 2]), torch.tensor([1, 0, 0]), temperature=1.0, hard_negatives=1)
    assert l1.item() == pytest.approx(-(0.0 - math.log(math.exp(0.0) + math.exp(1.0))), abs=1e-6)


def _data(n=12, k=3, parts=2, dim=512, cams=None):
    rng = np.random.default_rng(0)
    cams = np.arange(n) % 2 if cams is None else cams
    data = prepare_epoch(np.arange(n) % k, cams, _unit(rng.normal(size=(n, dim))),
                         _unit(rng.normal(size=(n, parts, dim))), {"agreement": rng.random((n, parts))})
    return data, rng


def _model(parts=2):
    torch.manual_seed(0)
    return ReidModel(ModelConfig(arch="resnet18", pooling="avg", parts=parts, height=64, width=32))


@pytest.mark.parametrize("name", ["pplr", "cc"])
def test_the_wrapper_adds_lambda_times_the_proxy_loss_to_the_methods_own(name):
    """PPLR trains its parts: L_gcam + mean over the 2 parts; cc does not: the global term only.
    The method's own loss and logs are unchanged beside it."""
    cls = get_method(name)
    over = {"classifier_rows": 50} if name == "pplr" else {}
    session = TrainSession(_model(), cls(cls.resolve_params(None, {**over, "camera_proxies": True, "cam_lambda": 2.0})))
    assert isinstance(session.method, CameraAware)
    plain = cls(cls.resolve_params(None, over))
    data, rng = _data()
    state = session.method.make_state(data, session.heads)
    outputs = {"global": torch.as_tensor(_unit(rng.normal(size=(4, 512)))),
               "parts": torch.as_tensor(_unit(rng.normal(size=(4, 2, 512))))}
    out = {**outputs, **(session.heads(outputs) if session.heads is not None else {})}
    batch = Batch(images=torch.zeros(4, 3, 2, 2), labels=torch.tensor([0, 1, 2, 0]), camids=torch.tensor([0, 1, 0, 1]),
                  index=torch.tensor([0, 1, 2, 3]))
    step = session.method.training_step(batch, lambda images: out, state)
    own, own_logs = plain.loss(batch, out, state)
    y, cams = torch.as_tensor(data.labels), torch.as_tensor(data.camids)

    def term(f, x):
        return camera_proxy_loss(f, batch.labels, batch.camids, *camera_proxies(torch.as_tensor(x), y, cams))

    cam = term(outputs["global"], data.features)
    if name == "pplr":
        cam = cam + (term(outputs["parts"][:, 0], data.parts[:, 0]) + term(outputs["parts"][:, 1], data.parts[:, 1])) / 2
    assert step.logs["camera"].item() == pytest.approx(cam.item(), rel=1e-5)
    assert step.loss.item() == pytest.approx(own.item() + 2.0 * cam.item(), rel=1e-5)
    assert set(step.logs) == set(own_logs) | {"camera"}


def test_the_camera_term_sits_inside_the_joint_source_step():
    """With a source too, the joint step is outermost: the camera term sees the target batch only."""
    cc = get_method("cc")
    session = TrainSession(_model(0), cc(cc.resolve_params(None, {"camera_proxies": True})),
                           source=SourceParams(aux_data="synthetic:tiny-source"))
    assert isinstance(session.method, JointSource) and isinstance(session.method.method, CameraAware)
    assert TrainSession(_model(0), cc(cc.resolve_params(None, {}))).method.__class__ is cc


def test_the_proxies_need_two_cameras_and_known_camera_ids():
    pplr = CameraAware(PPLR(PPLR.resolve_params(None, {"camera_proxies": True, "classifier_rows": 50})))
    with pytest.raises(ReidctlError, match="needs images of two or more cameras: this train split has one"):
        pplr.make_state(_data(cams=np.zeros(12, dtype=np.int64))[0], None)
    with pytest.raises(ReidctlError, match="needs camera ids, and some images have none"):
        pplr.make_state(_data(cams=np.array([0, 1] * 5 + [-1, -1]))[0], None)
    with pytest.raises(ReidctlError, match="--cam-temperature must be positive"):
        get_method("ncplr").resolve_params(None, {"cam_temperature": 0.0})


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return colour_market(tmp_path_factory.mktemp("camera") / "target", train_ids=5, test_ids=3, per_camera=3)


@pytest.mark.parametrize("method", ["cc", "ncplr"])
def test_loop_trains_any_method_with_the_camera_term(target, tmp_path, method):
    out = run_ok("loop", "--data", target, "--method", method, "--camera-proxies", "--run-dir", tmp_path / "run",
                 *SMALL, *MODEL, *RUN, "--json")
    train = json.loads(out.stdout)["epochs"][0]["train"]
    assert "camera" in train["logs"] and math.isfinite(train["logs"]["camera"])
    params = load_checkpoint(tmp_path / "run" / "epoch_000" / "model.pt")["method_params"]
    assert params["camera_proxies"] is True and params["cam_lambda"] == 0.5  # a resumed epoch keeps the term


def test_the_camera_term_is_refused_where_it_cannot_act(target, tmp_path):
    base = ("loop", "--data", target, "--run-dir", tmp_path / "run", *SMALL, *MODEL, *RUN)
    run_error("loop", "--data", target, "--run-dir", tmp_path / "mar", *MODEL, *RUN, "--method", "mar",
              "--aux-data", target, "--camera-proxies",
              match=r"^error: --camera-proxies does not apply to --method mar \(an option of cc, gl-ncplr, icrefine")
    run_error(*base, "--method", "icrefine", "--intra-camera-proxies", match="No such option: --intra-camera-proxies")
    run_error(*base, "--camera-proxies", "--cam-lambda", "-1", match="--cam-lambda must not be negative")
