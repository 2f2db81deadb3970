"""Issue 27's reliability attack, defects 5, 8, 10 and 11 (the parts not about checkpoints,
disk-full writes or export formats), and docs items 1 and 2. Each test is named after its
defect and failed on the code before the fix."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from reidctl.artifacts import write_features
from reidctl.pipeline.configfile import read_config
from reidctl.models.spec import ModelSpec
from tests.clitools import run_error, run_ok
from tests.fakedata import colour_market
from tests.looptools import CLI_ARGS

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    return colour_market(tmp_path_factory.mktemp("r27") / "market")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _features(path: Path, n: int = 60, d: int = 32) -> Path:
    """Six tight groups of unit vectors: InfoMap links them into clusters."""
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((6, d))[np.arange(n) % 6] + 0.3 * rng.standard_normal((n, d)))
    write_features(path, x, camids=np.tile([0, 1], n // 2), paths=[f"{i:02d}.jpg" for i in range(n)],
                   split=["train"] * n)
    return path


# ------------------------------------------------------------------------------------------
# 5. InfoMap crashed (SIGSEGV) once faiss was imported after it


def _needs_faiss_and_infomap() -> None:
    pytest.importorskip("infomap")
    pytest.importorskip("faiss")


def test_5_infomap_after_a_later_faiss_import_does_not_crash():
    _needs_faiss_and_infomap()
    code = ("import infomap, faiss, numpy as np\n"
            "from reidctl.cluster.infomap import infomap_cluster\n"
            "rng = np.random.default_rng(0)\n"
            "x = rng.standard_normal((6, 16))[np.arange(60) % 6] + 0.3 * rng.standard_normal((60, 16))\n"
            "x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype('float32')\n"
            "print(len(set(infomap_cluster(x, k1=10, k2=2, device='cpu').tolist()) - {-1}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert int(done.stdout) == 6


@pytest.mark.parametrize("backend", ["faiss-hnsw", "faiss", "faiss-ivf"])
def test_5_cluster_infomap_with_a_faiss_backend_does_not_crash(backend, tmp_path):
    _needs_faiss_and_infomap()
    feats = _features(tmp_path / "f.h5")
    cmd = [sys.executable, "-m", "reidctl", "cluster", str(feats), "--algo", "infomap", "--knn-backend", backend,
           "--k1", "10", "--k2", "2", "--out", str(tmp_path / "l.h5"), "--device", "cpu", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # was -11 (SIGSEGV)
    assert json.loads(done.stdout)["clusters"] == 6


# ------------------------------------------------------------------------------------------
# 8. tracebacks: numbers checked late, malformed features files, a broken onnx, a huge synth


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--temperature", "nan"), ("--weight-decay", "inf"),
                                        ("--eps", "nan")])
def test_8_non_finite_numbers_are_refused_before_any_stage(market, tmp_path, flag, value):
    run_dir = tmp_path / "run"
    run_error("loop", "--data", market, "--run-dir", run_dir, "--epochs", "1", *CLI_ARGS, flag, value,
              match=rf"^error: {flag} {value}: must be a finite number")
    assert not run_dir.exists()  # refused before the run folder, extract, cluster and refine


def _damaged(src: Path, dst: Path, name: str, value: np.ndarray) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        del f[name]
        f.create_dataset(name, data=value)
    return dst


@pytest.mark.parametrize("name,value,match", [
    ("global", np.ones(60, np.float32), r"'global' must be an N×D matrix of floats \(it is 1-D float32\)"),
    ("paths", np.arange(60), r"'paths' must be a list of strings \(it is 1-D int64\)"),
    ("camids", np.array([b"c1"] * 60), r"'camids' must be a vector of integers \(it is 1-D strings\)"),
    ("split", np.zeros((60, 2)), r"'split' must be a list of strings \(it is 2-D float64\)"),
])
def test_8_malformed_features_file_is_one_line(tmp_path, name, value, match):
    bad = _damaged(_features(tmp_path / "good.h5"), tmp_path / "bad.h5", name, value)
    run_error("cluster", bad, "--out", tmp_path / "l.h5", "--k1", "10", "--k2", "2",
              match=rf"^error: {bad}: corrupt features file, {match}")


def test_8_an_onnx_that_fails_to_import_is_one_line_naming_the_install(tmp_path, monkeypatch):
    import torch

    from reidctl.models.reid import ModelConfig, ReidModel
    from reidctl.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, ReidModel(ModelConfig("resnet18", height=64, width=32)))
    broken = tmp_path / "site" / "onnx"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('libonnx.so.1: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(broken.parent))
    for name in [m for m in sys.modules if m == "onnx" or m.startswith("onnx.")]:
        monkeypatch.delitem(sys.modules, name)
    out = tmp_path / "m.onnx"
    run_error("export", ckpt, "--format", "onnx", "--out", out,
              match=r"^error: ONNX export needs a working onnx package \(importing it failed: libonnx\.so\.1: "
                    r"cannot open shared object file\): pip install 'reidctl\[onnx\]'")
    assert not out.exists()


def test_8_synth_of_huge_images_is_refused_up_front(tmp_path):
    run_error("synth", tmp_path / "big", "--height", "100000", "--width", "50000",
              match=r"^error: images must be at most 2048×2048 pixels \(got 100000×50000\)")
    assert not (tmp_path / "big").exists()


# ------------------------------------------------------------------------------------------
# 10. misuse accepted silently


def test_10_workers_beyond_the_cpus_are_refused(market, tmp_path):
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = max(8, 4 * cpus)
    args = ["loop", "--data", market, "--run-dir", tmp_path / "run", "--dry-run", *CLI_ARGS]
    run_error(*args, "--workers", "1000",
              match=rf"^error: --workers 1000 is more than this machine can use: at most {limit} "
                    rf"\(4 per CPU, {cpus} CPUs\)")
    run_ok(*args, "--workers", str(limit))


def test_10_bn_chunks_that_the_batch_cannot_make_are_refused(market, tmp_path):
    from reidctl.errors import ReidctlError
    from reidctl.methods.cc import CCParams

    args = ["loop", "--data", market, "--run-dir", tmp_path / "run", "--dry-run", *CLI_ARGS, "--batch-size", "16"]
    run_error(*args, "--bn-chunks", "5",
              match=r"^error: --bn-chunks 5 cannot split a batch of 16: torch\.chunk makes 4 chunks \(4, 4, 4, 4\); "
                    r"choose one of 1, 2, 3, 4, 8$")
    run_ok(*args, "--bn-chunks", "3")  # 6, 6, 4: three chunks, as DataParallel on 3 GPUs splits 16
    with pytest.raises(ReidctlError, match=r"--bn-chunks 9 cannot split a batch of 32: torch\.chunk makes 8 "):
        CCParams(batch_size=32, num_instances=4, bn_chunks=9).check()


@pytest.mark.parametrize("line,match", [
    ("epochs = true", r"epochs = true: expected an integer, not a boolean"),
    ("eps = \"0.5\"", r'eps = "0.5": expected a number, not a string'),
    ("deterministic = 1", r"deterministic = 1: expected true or false, not an integer"),
    ("method = 3", r"method = 3: expected a string, not an integer"),
])
def test_10_config_values_are_type_checked(market, tmp_path, line, match):
    config = tmp_path / "c.toml"
    config.write_text(f"[run]\n{line}\n")
    run_error("loop", "--config", config, "--data", market, "--run-dir", tmp_path / "run", "--dry-run",
              match=rf"^error: {config}: {match}")


def test_10_config_values_of_the_right_types_still_load(market, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[run]\nepochs = 2\ndeterministic = true\n[training]\nlr = 1\n")  # an int where a float goes
    out = run_ok("loop", "--config", config, "--data", market, "--run-dir", tmp_path / "run", "--dry-run").stdout
    assert "epochs = 2" in out and "lr = 1.0" in out


def test_10_synth_jobs_below_one_is_refused(tmp_path):
    run_error("synth", tmp_path / "s", "--jobs", "0", match=r"^error: --jobs must be at least 1 \(got 0\)")
    assert not (tmp_path / "s").exists()


def test_10_mar_with_its_target_as_source_is_refused(market, tmp_path):
    from reidctl.models.reid import ModelConfig, ReidModel
    from reidctl.models.checkpoint import save_checkpoint

    ckpt = tmp_path / "cc.pt"
    save_checkpoint(ckpt, ReidModel(ModelConfig("resnet18", height=64, width=32)), method="cc")
    run_error("loop", "--method", "mar", "--data", market, "--aux-data", str(market) + "/",
              "--checkpoint", ckpt, "--run-dir", tmp_path / "run", "--epochs", "1", "--batch-size", "8",
              "--workers", "0", "--device", "cpu",
              match=rf"^error: --aux-data is the target --data \({re.escape(str(market))}\): training would learn")
    assert not (tmp_path / "run").exists()
    # train-epoch checks the source mar reads from its own parameters too, and writes nothing
    run_error("train-epoch", "--method", "mar", "--data", market, "--aux-data", market, "--arch", "resnet18",
              "--pretrained", "none", "--height", "64", "--width", "32", "--out", tmp_path / "m.pt",
              "--batch-size", "8", "--workers", "0", "--device", "cpu",
              match=rf"^error: --aux-data is the target --data \({re.escape(str(market))}\): training would learn")
    assert not (tmp_path / "m.pt").exists()


def _png16(path: Path, arr: np.ndarray, colour_type: int) -> Path:
    """A 16-bit PNG written by hand (Pillow cannot write one of every kind)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_10_a_16_bit_png_is_read_scaled_to_8_bits(tmp_path):
    from reidctl.data.images import load_image

    grey = (np.arange(32).reshape(8, 4) * 2000).astype(np.uint16)
    img = np.asarray(load_image(_png16(tmp_path / "g.png", grey, 0)))
    assert img.shape == (8, 4, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[..., 0], grey >> 8)  # was 255 (white) everywhere but the 0 pixel
    np.testing.assert_array_equal(img[..., 0], img[..., 2])
    rgb = np.asarray(load_image(_png16(tmp_path / "c.png", np.stack([grey, grey // 2, grey // 4], -1), 2)))
    np.testing.assert_array_equal(rgb[..., 1], (grey // 2) >> 8)  # colour: Pillow's own 16 → 8 bits


# ------------------------------------------------------------------------------------------
# 11. small


def test_11_pretrain_splits_error_names_the_pretrain_flag(market, tmp_path):
    run_error("pretrain", "--data", market, "--out", tmp_path / "s.pt", "--splits", "test",
              match=r"^error: --splits test: choose train or train,test$")


def test_11_zero_clusters_says_at_least_one(tmp_path):
    feats = _features(tmp_path / "f.h5")
    run_error("cluster", feats, "--algo", "agglomerative", "--n-clusters", "0", "--out", tmp_path / "l.h5",
              match=r"^error: --n-clusters must be at least 1 \(got 0\)$")


def test_11_report_says_when_the_summary_is_older_than_the_log(market, tmp_path):
    run_dir = tmp_path / "run"
    run_ok("loop", "--data", market, "--run-dir", run_dir, "--epochs", "1", *CLI_ARGS, "--eval-every", "0",
           "--no-eval-init")
    fresh = run_ok("report", run_dir, "--out", tmp_path / "a.png")
    assert "older" not in fresh.stderr
    with open(run_dir / "log.jsonl", "a") as log:  # a continuation that was killed in its next epoch
        log.write(json.dumps({"epoch": 1, "stage": "extract", "progress": {"done": 3}}) + "\n")
    stale = run_ok("report", run_dir, "--out", tmp_path / "b.png", "--json")
    lines = [line for line in stale.stderr.splitlines() if "older" in line]
    assert lines == [f"note: {run_dir / 'summary.json'} is older than {run_dir / 'log.jsonl'}: a later `loop` in "
                     "this folder did not finish (stopped, failed or still running); the report shows the epochs "
                     "of the last finished run, up to epoch 0"], stale.stderr
    assert json.loads(stale.stdout)["notes"] == [lines[0].removeprefix("note: ")]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc (Linux)")
def test_11_a_killed_synth_leaves_no_workers_and_the_next_run_no_temp_folder(tmp_path):
    out = tmp_path / "syn"
    cmd = [sys.executable, "-m", "reidctl", "synth", str(out), "--ids", "3000", "--height", "32", "--width", "16",
           "--jobs", "2"]
    workers: list[int] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(workers) < 2:
            temps = list(tmp_path.glob(".syn.*.tmp"))
            if temps and any(temps[0].rglob("*.jpg")):
                workers = _children(proc.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, "the build never started its two workers"
        proc.kill()  # SIGKILL: no handler, no cleanup in the parent
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "workers outlived their killed parent"
    finally:
        proc.kill()
        for w in workers:  # never leave a process behind, whatever failed
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    assert list(tmp_path.glob(".syn.*.tmp"))
    run_ok("synth", out, "--ids", "4", "--height", "32", "--width", "16")
    assert not list(tmp_path.glob(".syn.*.tmp")), "the next run left the killed build's temporary folder"


# ------------------------------------------------------------------------------------------
# docs items 1 and 2


def test_docs_1_quickstart_config_takes_the_offline_weights(tmp_path):
    import torch
    import torchvision

    config = ROOT / "examples" / "configs" / "quickstart_cpu.toml"
    assert "--weights FILE" in config.read_text()  # the advice the file gives
    weights = tmp_path / "mobilenet_v2.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None).features.state_dict(), weights)
    out = run_ok("loop", "--config", config, "--weights", weights, "--data", "synthetic:tiny", "--run-dir",
                 tmp_path / "run", "--dry-run").stdout
    assert f'weights = "{weights}"' in out and "pretrained" not in out
    (tmp_path / "printed.toml").write_text(out)
    printed = read_config(tmp_path / "printed.toml")
    model, provenance = ModelSpec(**{k: printed[k] for k in ("arch", "height", "width", "weights")}).build()
    assert provenance["init"] == "weights:mobilenet_v2.pth"  # the file's weights, loaded into the model


def test_docs_2_guide_does_not_call_rank_future():
    guide = (ROOT / "docs" / "guide.md").read_text()
    assert "is still to come" not in guide
    assert "`reidctl rank QUERY GALLERY --checkpoint model.pt`" in guide
