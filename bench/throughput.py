"""Training and extraction throughput against their floors, and where a loop epoch's time goes.

    python bench/throughput.py                          # MobileNetV2 128×64 and ResNet-50 256×128 on CPU
    python bench/throughput.py --quick --json           # MobileNetV2 only, one JSON line
    python bench/throughput.py --device cuda --models resnet50 --batch-size 256 --json

For each model, in one process and interleaved, the median of ``--repeats`` runs of:

* **train**: ``train_epoch`` of Cluster Contrast on real image files (decoding, augmentation,
  the identity sampler, the memory update, the optimiser) against its *floor*: the same model,
  batch and BN chunks doing forward + backward + Adam step on a batch already in memory, in the
  layout and precision the trainer uses. Goal: ≤ 1.15× the floor's time per image.
* **extract**: ``extract_features`` on the same files against forward passes on in-memory
  tensors. Goal: ≤ 1.25×.
* the floors' achieved FLOP/s (``torch.utils.flop_counter``) as a fraction of this machine's
  float32 matrix-product FLOP/s (a 2048² GEMM) measured in the same run;
* with ``--loop`` (on by default without ``--quick``): one ``loop`` epoch on ``synthetic:small``
  and the share of its time spent outside training and extraction.

Images are written once to a temporary folder by the synthetic generator (``--images`` of them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchutil import timed  # noqa: E402
from reidctl.data.datasets import load_dataset  # noqa: E402
from reidctl.data.synthetic import write_synthetic  # noqa: E402
from reidctl.runtime.device import resolve_device  # noqa: E402

try:
    from reidctl.runtime.device import resolve_extract_batch, resolve_workers  # noqa: E402
except ImportError:  # the library before these defaults existed: its old ones
    def resolve_extract_batch(batch_size, device):  # noqa: ANN001, ANN201, D103
        return 128 if batch_size is None else batch_size

    def resolve_workers(workers, device):  # noqa: ANN001, ANN201, D103
        return 2 if workers is None else workers
from reidctl.models.features import extract_features  # noqa: E402
from reidctl.methods import CCParams, ClusterContrast  # noqa: E402
from reidctl.models.reid import ModelConfig  # noqa: E402
from reidctl.models.weights import build_model  # noqa: E402
from reidctl.train.bn_chunks import set_bn_chunks  # noqa: E402
from reidctl.train.trainer import TrainSession, prepare_epoch, train_epoch  # noqa: E402

SIZES = {"mobilenet_v2": (128, 64), "resnet50": (256, 128), "resnet18": (128, 64)}
GOALS = {"train": 1.15, "extract": 1.25}


def layout(device: torch.device) -> torch.memory_format:
    """The memory format the library trains and extracts in on ``device``."""
    try:
        from reidctl.runtime.precision import memory_format
    except ImportError:  # before channels-last was used on every device
        return torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return memory_format(device)


def autocast(device: torch.device, amp: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_flops(device: torch.device, repeats: int) -> float:
    """float32 FLOP/s of a 2048² matrix product on ``device``."""
    a = torch.randn(2048, 2048, device=device)
    b = torch.randn(2048, 2048, device=device)
    a @ b
    sync(device)

    def run() -> None:
        a @ b
        sync(device)

    seconds, _ = timed(run, max(3, repeats))
    return 2 * 2048 ** 3 / seconds


def forward_flops(model: torch.nn.Module, batch: torch.Tensor) -> float:
    """FLOPs of one eval-mode forward pass, per image (``torch.utils.flop_counter``).

    A training step is counted as 3× the forward (forward + two products per layer backward),
    the usual convention: the flop counter's own backward formulas ignore convolution groups
    and count MobileNetV2's depthwise backward ~20× too high (torch 2.x)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(batch)
    return counter.get_total_flops() / len(batch)


def per_image(work: Callable[[], None], batch: int, device: torch.device) -> Callable[[], float]:
    """After one warm-up call: a runner timing two calls of ``work`` (a batch each), seconds per image."""
    work()
    sync(device)

    def run() -> float:
        t = time.perf_counter()
        for _ in range(2):
            work()
        sync(device)
        return (time.perf_counter() - t) / (2 * batch)

    return run


def train_floor(cfg: ModelConfig, device: torch.device, batch: int, bn_chunks: int, amp: str
                ) -> Callable[[], float]:
    """One step of forward + backward + Adam on an in-memory batch; returns seconds per image."""
    torch.manual_seed(0)
    model = build_model(cfg, pretrained="none", weights=None).to(device).to(memory_format=layout(device))
    set_bn_chunks(model, bn_chunks)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3.5e-4, weight_decay=5e-4)
    x = torch.randn(batch, 3, cfg.height, cfg.width, device=device).contiguous(memory_format=layout(device))

    def step() -> None:
        with autocast(device, amp):
            loss = model(x)["global"].float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return per_image(step, batch, device)


def inference(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model as extraction runs it (BatchNorm folded where the library does that)."""
    try:
        from reidctl.models.inference import inference_model
    except ImportError:
        return model.to(device).to(memory_format=layout(device)).eval()
    return inference_model(model, device, layout(device))


def extract_floor(cfg: ModelConfig, device: torch.device, batch: int, amp: str) -> Callable[[], float]:
    """Eval-mode forward passes of the extraction model on an in-memory batch; seconds per image."""
    torch.manual_seed(0)
    model = inference(build_model(cfg, pretrained="none", weights=None), device)
    x = torch.randn(batch, 3, cfg.height, cfg.width, device=device).contiguous(memory_format=layout(device))

    def forward() -> None:
        with torch.inference_mode(), autocast(device, amp):
            model.embed(x)

    return per_image(forward, batch, device)


def train_pipeline(cfg: ModelConfig, device: torch.device, samples: list, labels: np.ndarray, batch: int,
                   bn_chunks: int, amp: str, workers: int, iters: int) -> Callable[[], float]:
    """``train_epoch`` of Cluster Contrast for ``iters`` steps; returns seconds per image."""
    torch.manual_seed(0)
    model = build_model(cfg, pretrained="none", weights=None)
    params = CCParams(iters=iters, batch_size=batch, num_instances=4, bn_chunks=bn_chunks)
    session = TrainSession(model, ClusterContrast(params), device=device, amp=amp, seed=1)
    feats = np.random.default_rng(0).normal(size=(len(samples), model.channels)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    data = prepare_epoch(labels, np.array([s.camid for s in samples]), feats)
    rows = [samples[i] for i in data.rows]

    def run() -> float:
        stats = train_epoch(session, rows, data, workers=workers)
        return stats.seconds / (stats.iterations * batch)

    return run


def extract_pipeline(cfg: ModelConfig, device: torch.device, samples: list, batch: int, workers: int
                     ) -> Callable[[], float]:
    """``extract_features`` over the image files; returns seconds per image."""
    torch.manual_seed(0)
    model = build_model(cfg, pretrained="none", weights=None)

    def run() -> float:
        t = time.perf_counter()
        extract_features(model, samples, batch_size=batch, workers=workers, device=device)
        return (time.perf_counter() - t) / len(samples)

    return run


def measure_model(name: str, args: argparse.Namespace, device: torch.device, samples: list,
                  labels: np.ndarray, gemm: float) -> dict[str, Any]:
    height, width = (args.height, args.width) if args.height else SIZES[name]
    cfg = ModelConfig(name, "gem", 0, 1, height, width)
    batch = args.batch_size
    runners = {
        "train": train_pipeline(cfg, device, samples, labels, batch, args.bn_chunks, args.amp, args.workers,
                                args.iters),
        "train_floor": train_floor(cfg, device, batch, args.bn_chunks, args.amp),
        "extract": extract_pipeline(cfg, device, samples[:args.extract_images], args.extract_batch_size,
                                    args.workers),
        "extract_floor": extract_floor(cfg, device, resolve_extract_batch(args.extract_batch_size, device), args.amp),
    }
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.repeats):  # interleaved, so that load on the machine hits all alike
        for key, run in runners.items():
            times[key].append(run())
    med = {k: statistics.median(v) for k, v in times.items()}
    probe = build_model(cfg, pretrained="none", weights=None).to(device)
    x = torch.randn(8, 3, height, width, device=device)
    fwd = forward_flops(probe, x)
    row = {
        "model": name, "size": f"{height}x{width}", "device": str(device), "amp": args.amp, "batch": batch,
        "workers": resolve_workers(args.workers, device), "threads": torch.get_num_threads(),
        "train_img_s": 1 / med["train"], "train_floor_img_s": 1 / med["train_floor"],
        "train_ratio": med["train"] / med["train_floor"],
        "extract_img_s": 1 / med["extract"], "extract_floor_img_s": 1 / med["extract_floor"],
        "extract_ratio": med["extract"] / med["extract_floor"],
        "gflops_per_image": fwd / 1e9,
        "train_floor_flop_frac": 3 * fwd / med["train_floor"] / gemm,
        "extract_floor_flop_frac": fwd / med["extract_floor"] / gemm,
        "gemm_gflop_s": gemm / 1e9,
    }
    return row


def loop_share(args: argparse.Namespace, device: torch.device, root: Path) -> dict[str, Any]:
    """One ``loop`` epoch (no evaluation): seconds per stage and the share outside train+extract."""
    from reidctl.models.spec import ModelSpec
    from reidctl.runtime import Runtime
    from reidctl.pipeline.loop import LoopConfig, run_loop

    name = args.models[0]
    height, width = (args.height, args.width) if args.height else SIZES[name]
    cfg = LoopConfig(data=args.loop_data, run_dir=root / "loop", epochs=1, eval_every=0,
                     model=ModelSpec(arch=name, height=height, width=width,
                                     weights=Path(args.weights) if args.weights else None),
                     options={"iters": args.loop_iters, "batch_size": args.batch_size, "num_instances": 4},
                     runtime=Runtime(workers=args.workers, device=str(device), amp=args.amp))
    t = time.perf_counter()
    run_loop(cfg)
    total = time.perf_counter() - t
    log = [json.loads(x) for x in (root / "loop" / "log.jsonl").read_text().splitlines()]
    stages = {r["stage"]: r.get("seconds", 0.0) for r in log if r.get("epoch") == 0 and "seconds" in r}
    inside = stages.get("train", 0.0) + stages.get("extract", 0.0)
    return {"loop_data": args.loop_data, "loop_total_s": total, "loop_stages_s": stages,
            "loop_outside_share": 1 - inside / total}


def print_table(rows: list[dict[str, Any]], loop: dict[str, Any] | None) -> None:
    print(f"{'model':13} {'device':6} {'amp':4} {'what':8} {'img/s':>8} {'floor img/s':>12} {'ratio':>6} "
          f"{'goal':>5} {'floor FLOP/s of GEMM':>21}")
    for r in rows:
        for what in ("train", "extract"):
            ok = "ok" if r[f"{what}_ratio"] <= GOALS[what] else "MISS"
            print(f"{r['model'] + ' ' + r['size']:13} {r['device']:6} {r['amp']:4} {what:8} "
                  f"{r[f'{what}_img_s']:8.1f} {r[f'{what}_floor_img_s']:12.1f} {r[f'{what}_ratio']:6.2f} "
                  f"{GOALS[what]:5.2f} {100 * r[f'{what}_floor_flop_frac']:20.0f}% {ok}")
    r = rows[0]
    print(f"\nGEMM 2048² float32: {r['gemm_gflop_s']:.0f} GFLOP/s; forward FLOPs per image: "
          + ", ".join(f"{x['model']} {x['gflops_per_image']:.3f} G" for x in rows)
          + f"; batch {r['batch']}, workers {r['workers']}, threads {r['threads']}")
    if loop:
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in loop["loop_stages_s"].items())
        print(f"loop epoch on {loop['loop_data']}: {loop['loop_total_s']:.1f} s ({stages}); "
              f"{100 * loop['loop_outside_share']:.0f}% outside train and extract")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="MobileNetV2 only, fewer repeats, no loop epoch")
    ap.add_argument("--json", action="store_true", help="one JSON line (the first model's row, plus the others)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="mobilenet_v2,resnet50")
    ap.add_argument("--height", type=int, default=0)
    ap.add_argument("--width", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--extract-batch-size", type=int, default=None, help="default: the library's (64 CPU, 256 CUDA)")
    ap.add_argument("--bn-chunks", type=int, default=4)
    ap.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    ap.add_argument("--workers", type=int, default=None, help="default: the library's (0 on a CPU)")
    ap.add_argument("--iters", type=int, default=10, help="training steps per measured run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, default=600, help="synthetic images written for the runs (about)")
    ap.add_argument("--extract-images", type=int, default=512)
    ap.add_argument("--loop", dest="loop", action="store_true", default=None)
    ap.add_argument("--no-loop", dest="loop", action="store_false")
    ap.add_argument("--loop-data", default="synthetic:small")
    ap.add_argument("--loop-iters", type=int, default=25)
    ap.add_argument("--weights", default=None,
                    help="backbone weights for the loop epoch (a random network may find a single cluster), "
                         "e.g. ../shared/weights/mobilenet_v2_imagenet_features.pth")
    args = ap.parse_args(argv)
    args.models = ["mobilenet_v2"] if args.quick else args.models.split(",")
    if args.quick:
        args.repeats = min(args.repeats, 3)
    if args.loop is None:
        args.loop = not args.quick
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic(root / "data", ids=max(8, args.images // 12), cams=4, seed=0,
                        images_per_camera=(2, 4), test_fraction=0.1)
        samples = load_dataset(root / "data").train
        labels = np.unique([s.pid for s in samples], return_inverse=True)[1]  # bench only: ground truth
        gemm = gemm_flops(device, args.repeats)
        rows = [measure_model(m, args, device, samples, labels, gemm) for m in args.models]
        loop = loop_share(args, device, root) if args.loop else None
    if args.json:
        out = {**rows[0], "rows": rows}
        if loop:
            out.update(loop)
        print(json.dumps(out, default=float))
    else:
        print_table(rows, loop)


if __name__ == "__main__":
    main()
