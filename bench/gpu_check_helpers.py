"""Python parts of ``bench/gpu_check.sh``: one subcommand per check or per result to validate.

Not a test and not a library module: ``gpu_check.sh`` calls it as
``python bench/gpu_check_helpers.py SUBCOMMAND ...``. Conventions (what the shell script reads):

- exit status 0 = PASS, 77 = SKIP, anything else = FAIL;
- the last line starting with ``DETAIL:`` is the check's summary (the key figure, or why it
  failed or was skipped).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests.fakedata` is imported from the repository root
    sys.path.insert(0, str(ROOT))

SKIP = 77


def detail(text: str) -> None:
    print(f"DETAIL: {text}", flush=True)


def fail(text: str) -> NoReturn:
    detail(text)
    sys.exit(1)


def skip(text: str) -> NoReturn:
    detail(text)
    sys.exit(SKIP)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --------------------------------------------------------------------------------------------
# 1. environment


def cmd_env(device: str) -> None:
    import torch

    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        print(json.dumps(info))
        if device == "cpu":
            skip(f"cpu smoke mode: torch {torch.__version__}, CUDA available: no")
        fail(f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device")
    props = torch.cuda.get_device_properties(0)
    bf16 = torch.cuda.is_bf16_supported()
    info.update(device_count=torch.cuda.device_count(), name=props.name,
                capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                bf16=bf16, cudnn=torch.backends.cudnn.version(),
                nccl=torch.distributed.is_available() and torch.distributed.is_nccl_available())
    # something actually runs on it
    a = torch.randn(1024, 1024, device="cuda")
    ok = torch.allclose((a @ a.T).cpu(), a.cpu() @ a.cpu().T, atol=1e-2, rtol=1e-3)
    torch.cuda.synchronize()
    info["matmul_ok"] = bool(ok)
    print(json.dumps(info))
    if not ok:
        fail(f"{props.name}: a float32 matmul on the GPU disagrees with the CPU")
    detail(f"{props.name} ({info['memory_gib']} GiB, sm {info['capability']}), torch {torch.__version__}, "
           f"bf16 {'yes' if bf16 else 'no'}, {torch.cuda.device_count()} device(s)")


# --------------------------------------------------------------------------------------------
# 2. the CUDA-only tests


def cmd_pytest_result(log: str, device: str) -> None:
    """Judge a ``pytest -q -rs`` log: counts from its closing line, skip reasons."""
    import re

    text = Path(log).read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    closing = next((ln.strip("= ") for ln in reversed(lines)
                    if re.search(r"\b(passed|failed|skipped|error|errors|deselected|no tests ran)\b", ln)), "")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", closing)}
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    passed, skipped = counts.get("passed", 0), counts.get("skipped", 0)
    short = re.sub(r" in [\d.]+s.*$", "", closing)
    if failed:
        first = next((ln for ln in lines if ln.startswith(("FAILED", "ERROR", "E "))), short)
        fail(f"{short}; {first.strip()}")
    if not passed and not skipped:
        skip(f"no CUDA test selected ({short or 'no pytest summary'})")
    cuda_skips = [ln for ln in lines if ln.startswith("SKIPPED") and "needs a CUDA device" in ln]
    if device == "cpu":
        if passed == 0 or cuda_skips:
            skip(f"cpu smoke mode: {short}")
        detail(f"cpu smoke mode: {short}")
        return
    if cuda_skips:
        fail(f"{short}; CUDA tests were skipped ('needs a CUDA device')")
    if passed == 0:
        fail(f"nothing passed: {short}")
    detail(short)


# --------------------------------------------------------------------------------------------
# 3. the loop of each method


def cmd_loop_result(path: str) -> None:
    raw = Path(path).read_text()
    try:
        res = json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"loop stdout is not JSON ({exc}); starts {raw[:60]!r}")
    last = res.get("last") or {}
    m_ap = last.get("mAP")
    if not _finite(m_ap):
        fail(f"last mAP is {m_ap!r}, not a finite number")
    epochs = [e for e in res.get("epochs", []) if e.get("epoch") != "init"]
    if not epochs:
        fail("no trained epoch in the result")
    losses = [(e.get("train") or {}).get("loss") for e in epochs]
    if not all(_finite(x) for x in losses):
        fail(f"a training loss is not finite: {losses}")
    train = epochs[-1].get("train") or {}
    clusters = [(e.get("refine") or e.get("cluster") or {}).get("clusters") for e in epochs]
    detail(f"mAP {100 * m_ap:.1f} %, {len(epochs)} epochs, loss {losses[-1]:.3f}, amp {train.get('amp')}, "
           f"clusters {clusters}")


# --------------------------------------------------------------------------------------------
# 4. faiss-gpu kNN against the torch kNN


def cmd_faiss(device: str, n: int = 20000, dim: int = 256, k: int = 30) -> None:
    try:
        import faiss
    except ImportError as exc:
        skip(f"faiss not installed ({exc}); pip install -e '.[gpu]'")
    import numpy as np
    import torch

    from reidctl import search

    if device == "cpu" or not torch.cuda.is_available():
        skip("needs CUDA")
    if not search.faiss_gpu_available():
        fail(f"faiss {getattr(faiss, '__version__', '?')} imports but sees no GPU (faiss-cpu installed?)")
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for backend in ("torch", "faiss"):  # warm-up: CUDA context, faiss resources, kernels
        search.knn(x[:2000], k, backend=backend, device="cuda")
    times = {}
    out = {}
    for backend in ("torch", "faiss"):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out[backend] = search.knn(x, k, backend=backend, device="cuda")
        torch.cuda.synchronize()
        times[backend] = time.perf_counter() - t
    (dt, it), (df, if_) = out["torch"], out["faiss"]
    assert dt.shape == df.shape == (n, k) and it.shape == if_.shape == (n, k)
    same = float(np.mean(np.all(np.sort(it, axis=1) == np.sort(if_, axis=1), axis=1)))
    diff = float(np.max(np.abs(dt - df)))
    self_first = float(np.mean(if_[:, 0] == np.arange(n)))
    print(json.dumps({"n": n, "dim": dim, "k": k, "same_sets": same, "max_dist_diff": diff,
                      "faiss_self_first": self_first, "seconds": times}))
    msg = (f"{n}x{dim} k {k}: same sets {100 * same:.2f} % rows, max |dd| {diff:.1e}, "
           f"torch {times['torch']:.2f} s, faiss {times['faiss']:.2f} s")
    if same < 0.999 or diff > 1e-4:
        fail(f"MISMATCH {msg}")
    detail(f"{msg}; {_approx_on_gpu(x, k)}")


def _approx_on_gpu(x: Any, k: int) -> str:
    """The approximate backends with --device cuda (CAGRA where faiss has it, GPU k-means for IVF),
    probed against exact search: each one's probe recall, seconds and the index it used."""
    import faiss

    from reidctl import search
    from reidctl.search.approx import gpu_index_available

    parts = []
    for backend, index in (("faiss-hnsw", "GpuIndexCagra"), ("faiss-ivf", "GpuIndexIVFFlat")):
        t = time.perf_counter()
        found = search.knn_search(x, k, backend=backend, device="cuda", recall=0.98)
        seconds = time.perf_counter() - t
        if found.probe is None:
            fail(f"{backend} on cuda: no recall probe")
        where = "GPU" if gpu_index_available(faiss, index) else "CPU (this faiss has no " + index + ")"
        parts.append(f"{backend} {where} {seconds:.1f} s probe recall@{k} {found.probe.recall:.3f}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# 5. AMP training steps


def cmd_amp(mode: str, device: str) -> None:
    import numpy as np
    import torch

    from reidctl.data.datasets import load_dataset
    from reidctl.models.features import extract_features
    from reidctl.models.spec import ModelSpec
    from reidctl.runtime import Runtime
    from reidctl.stages.train_epoch import TrainEpochRequest, open_session
    from reidctl.train.trainer import prepare_epoch, train_epoch
    from tests.fakedata import colour_market

    dev = torch.device(device)
    want = {"fp16": "float16", "bf16": "bfloat16", "off": "off"}[mode]
    if mode != "off" and dev.type != "cuda":
        skip("needs CUDA")
    if mode == "bf16" and not torch.cuda.is_bf16_supported():
        skip(f"{torch.cuda.get_device_name(0)} has no bf16 support")
    with tempfile.TemporaryDirectory() as tmp:
        root = colour_market(Path(tmp) / "market", train_ids=6, test_ids=2, per_camera=4, cams=2)
        ds = load_dataset(root)
        req = TrainEpochRequest(ModelSpec(arch="resnet18", height=64, width=32, pretrained="none"),  # offline
                                Runtime(workers=0, device=device, amp=mode), data=str(root), overrides={"iters": 4, "batch_size": 16, "num_instances": 4,
                                                     "bn_chunks": 2})
        session, _ = open_session(req, dev)
        ext = extract_features(session.model, ds.train, batch_size=64, workers=0, device=dev)
        labels = np.array([s.pid - 1 for s in ds.train])
        data = prepare_epoch(labels, np.array([s.camid for s in ds.train]), ext.feats)
        samples = [ds.train[i] for i in data.rows]
        # what autocast really computes in: the dtype of the first convolution's output
        seen: set[str] = set()
        conv = next(m for m in session.model.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda mod, inp, out: seen.add(str(out.dtype).removeprefix("torch.")))
        t = time.perf_counter()
        stats = train_epoch(session, samples, data, workers=0)
        seconds = time.perf_counter() - t
        hook.remove()
    print(json.dumps(stats.to_dict()))
    conv_dtype = "float32" if want == "off" else want
    problems = []
    if stats.amp != want:
        problems.append(f"EpochStats.amp {stats.amp!r}, expected {want!r}")
    if seen != {conv_dtype}:
        problems.append(f"conv outputs {sorted(seen)}, expected {conv_dtype}")
    if not math.isfinite(stats.loss):
        problems.append(f"loss {stats.loss}")
    if (session.scaler is not None) != (mode == "fp16"):
        problems.append(f"GradScaler {'present' if session.scaler is not None else 'absent'} under {mode}")
    weights = {p.dtype for p in session.model.parameters()}
    if weights != {torch.float32}:
        problems.append(f"weights in {sorted(map(str, weights))}, expected float32 master weights")
    if problems:
        fail("; ".join(problems))
    scale = f", grad scale {session.scaler.get_scale():.0f}" if session.scaler is not None else ""
    detail(f"amp {stats.amp}, loss {stats.loss:.3f}, {stats.iterations} iters in {seconds:.1f} s{scale}")


# --------------------------------------------------------------------------------------------
# 6. torchrun train-epoch


def cmd_train_result(path: str, checkpoint: str) -> None:
    raw = Path(path).read_text()
    try:
        res = json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"train-epoch stdout is not JSON ({exc}); starts {raw[:60]!r}")
    from reidctl.models.checkpoint import load_checkpoint

    if not Path(checkpoint).is_file():
        fail(f"no checkpoint at {checkpoint}")
    ckpt = load_checkpoint(checkpoint)
    if not _finite(res.get("loss")):
        fail(f"loss {res.get('loss')!r} is not finite")
    if ckpt.get("epoch") != 0 or res.get("iterations") != 2:
        fail(f"checkpoint epoch {ckpt.get('epoch')!r}, iterations {res.get('iterations')!r} (want 0, 2)")
    detail(f"world {res.get('world_size')}, loss {res['loss']:.3f}, amp {res.get('amp')}, "
           f"{res.get('clusters')} clusters, checkpoint ok")


def cmd_pg_smoke(backend: str) -> None:
    """Under torchrun: a process group of ``backend`` and an all-reduce on the device.

    reidctl itself creates a process group only for WORLD_SIZE > 1 (``reidctl.runtime.dist``), which one
    GPU cannot host with NCCL (one process per GPU), so this is the NCCL check that fits here."""
    import torch
    import torch.distributed as dist

    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=dev)
    else:
        dev = torch.device("cpu")
        dist.init_process_group(backend)
    try:
        t = torch.full((4,), float(dist.get_rank() + 1), device=dev)
        dist.all_reduce(t)
        dist.barrier()
        want = sum(range(1, dist.get_world_size() + 1))
        if not torch.all(t == want):
            fail(f"{backend} all_reduce gave {t.tolist()}, expected {want}")
        detail(f"{backend} all_reduce ok (world {dist.get_world_size()})")
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# 7. throughput


THROUGHPUT_KEYS = ("train_img_s", "extract_img_s")


def _find_record(obj: Any) -> dict | None:
    """The first dict (depth first) holding the throughput keys: top level or per model."""
    if isinstance(obj, dict):
        if all(k in obj for k in THROUGHPUT_KEYS):
            return obj
        children = obj.values()
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        found = _find_record(child)
        if found is not None:
            return found
    return None


def _read_throughput(path: str) -> dict:
    lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        try:
            rec = _find_record(json.loads(ln))
        except json.JSONDecodeError:
            continue
        if rec is not None:
            return rec
    fail(f"no JSON line with {', '.join(THROUGHPUT_KEYS)} in its stdout ({len(lines)} lines)")


def _fmt(x: Any, spec: str) -> str:
    return format(x, spec) if _finite(x) else str(x)


def cmd_throughput_result(path: str, baseline: str = "") -> None:
    rec = _read_throughput(path)
    bad = [k for k in THROUGHPUT_KEYS if not _finite(rec.get(k)) or rec[k] <= 0]
    if bad:
        fail(f"not a positive number: {', '.join(f'{k}={rec.get(k)!r}' for k in bad)}")
    text = (f"train {_fmt(rec['train_img_s'], '.0f')} img/s (ratio {_fmt(rec.get('train_ratio'), '.2f')}), "
            f"extract {_fmt(rec['extract_img_s'], '.0f')} img/s (ratio {_fmt(rec.get('extract_ratio'), '.2f')})")
    if baseline and Path(baseline).is_file():
        try:
            base = _read_throughput(baseline)
        except SystemExit:
            base = None
        if base and _finite(base.get("train_img_s")) and _finite(base.get("extract_img_s")):
            text += (f"; x{rec['train_img_s'] / base['train_img_s']:.2f} train, "
                     f"x{rec['extract_img_s'] / base['extract_img_s']:.2f} extract vs default precision")
    detail(text)


COMMANDS = {
    "env": cmd_env,
    "pytest-result": cmd_pytest_result,
    "loop-result": cmd_loop_result,
    "faiss": cmd_faiss,
    "amp": cmd_amp,
    "train-result": cmd_train_result,
    "pg-smoke": cmd_pg_smoke,
    "throughput-result": cmd_throughput_result,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(COMMANDS)}}} ARGS...")
    try:
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001  one summary line for the table, the traceback for the log
        import traceback

        traceback.print_exc()
        fail(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
