"""Benchmark of the clustering stage: exact kNN → sparse Jaccard → DBSCAN.

    python bench/cluster.py                       # Market-1501 and MSMT17 scale
    python bench/cluster.py --n 100000 --runs 1   # any N

Features are synthetic (random identity centres + noise, L2-normalised, D = 2048), made block
by block inside a fresh process per N, so the peak resident memory of one scale does not leak
into the next. Each stage's peak is measured on its own (Linux: VmHWM reset through
/proc/self/clear_refs; elsewhere a sampling thread). The floor is one plain N×N×D product
X @ Xᵀ (in blocks of rows where the full result would not fit), timed after each run of the
stages in the same process (same machine conditions): an exact kNN cannot be cheaper.
Goals: total ≤ 2 × floor, peak ≤ 2 GB at MSMT17 scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

PRESETS = {12936: ("Market-1501", 751), 32621: ("MSMT17", 1041)}


def features(n: int, dim: int, ids: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic re-ID-like features: identity centre + camera offset + noise, L2-normalised.

    Identity sizes are skewed (gamma-distributed weights), 6 cameras. The constants match the
    statistics of shared/vectors/jaccard_n2000_k30_k6.npz (same-identity cosine ≈ 0.5,
    same-camera other-identity ≈ 0.15, J ≈ 420 entries per row, ~110 DBSCAN clusters for 117
    identities at N = 2000), so the Jaccard matrix has a plausible density.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cams = rng.standard_normal((6, dim), dtype=np.float32)
    cams /= np.linalg.norm(cams, axis=1, keepdims=True)
    weight = rng.gamma(2.0, size=ids)
    pid = rng.choice(ids, n, p=weight / weight.sum())
    cam = rng.integers(0, 6, n)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 4096):  # in blocks: no N×D temporaries
        e = min(n, s + 4096)
        noise = rng.standard_normal((e - s, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        x[s:e] = centres[pid[s:e]] + 0.6 * cams[cam[s:e]] + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, pid


class PeakRSS:
    """Peak resident memory over a code region."""

    def __init__(self) -> None:
        self.peak = 0
        self._proc = Path("/proc/self/clear_refs")
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        try:
            self._proc.write_text("5")  # reset VmHWM to the current RSS
            self._thread = None
        except OSError:
            import psutil

            me = psutil.Process()

            def sample() -> None:
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, me.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = int(line.split()[1]) * 1024
        else:
            self._stop.set()
            self._thread.join()


def floor(x: np.ndarray, max_bytes: int) -> tuple[float, bool]:
    """Seconds for one plain X @ Xᵀ (float32, torch's threads); in row blocks when the full
    N×N result would exceed max_bytes. The output buffer is touched first: no page faults."""
    import torch

    n = len(x)
    xt = torch.from_numpy(x)
    step = n if 4 * n * n <= max_bytes else max(1, max_bytes // (4 * n))
    out = torch.zeros((step, n))
    t0 = time.perf_counter()
    for s in range(0, n, step):
        torch.mm(xt[s : s + step], xt.T, out=out[: min(n, s + step) - s])
    return time.perf_counter() - t0, step < n


def worker(args: argparse.Namespace) -> dict:
    """One N, in its own process. Each run: the three stages (each with its own peak RSS),
    then the floor product, so both see the same machine conditions; medians over runs."""
    import torch

    from reidctl import search
    from reidctl.cluster import dbscan, jaccard_distance, label_quality

    x, pid = features(args.n, args.dim, args.ids)
    rows: dict[str, list[float]] = {"knn": [], "jaccard": [], "dbscan": [], "floor": []}
    peaks = {"knn": 0, "jaccard": 0, "dbscan": 0}
    with PeakRSS() as base:
        pass
    for _ in range(args.runs):
        with PeakRSS() as p:
            t0 = time.perf_counter()
            knn = search.knn(x, args.k1, backend=args.knn_backend, device=args.device)
            rows["knn"].append(time.perf_counter() - t0)
        peaks["knn"] = max(peaks["knn"], p.peak)
        with PeakRSS() as p:
            t0 = time.perf_counter()
            j = jaccard_distance(x, args.k1, args.k2, knn=knn)
            rows["jaccard"].append(time.perf_counter() - t0)
        peaks["jaccard"] = max(peaks["jaccard"], p.peak)
        with PeakRSS() as p:
            t0 = time.perf_counter()
            labels = dbscan(j, args.eps, 4)
            rows["dbscan"].append(time.perf_counter() - t0)
        peaks["dbscan"] = max(peaks["dbscan"], p.peak)
        nnz = j.nnz
        del knn, j
        seconds, blockwise = floor(x, args.floor_bytes)
        rows["floor"].append(seconds)
    q = label_quality(labels, pid)
    return {
        **{k: statistics.median(v) for k, v in rows.items()},
        "floor_blockwise": blockwise,
        "peak": peaks,
        "features_rss": base.peak,
        "nnz_per_row": nnz / args.n,
        "clusters": q["n_clusters"],
        "outliers": q["n_outliers"],
        "threads": torch.get_num_threads(),
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
    }


def run_child(argv: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *argv], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[12936, 32621], help="sample counts")
    ap.add_argument("--dim", type=int, default=2048, help="feature dimension")
    ap.add_argument("--ids", type=int, default=0, help="identities (0: preset or N // 17)")
    ap.add_argument("--runs", type=int, default=0, help="runs per N (0: 3 up to 20k, else 1)")
    ap.add_argument("--k1", type=int, default=30)
    ap.add_argument("--k2", type=int, default=6)
    ap.add_argument("--eps", type=float, default=0.6)
    ap.add_argument("--device", default="cpu", help="kNN device: cpu, cuda, auto")
    ap.add_argument("--knn-backend", default="torch",
                    help="torch (exact, default), faiss, faiss-ivf or faiss-hnsw (recall: bench/knn_approx.py)")
    ap.add_argument("--floor-bytes", type=int, default=4 << 30,
                    help="largest N×N float32 product timed in one piece")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.n = args.n[0]
        print(json.dumps(worker(args)))
        return

    print(f"# bench/cluster.py  (CPU threads: torch default, {os.cpu_count()} cores; "
          f"k1={args.k1} k2={args.k2} eps={args.eps}, D={args.dim}, kNN {args.knn_backend})")
    header = ("| scale | N | runs | floor X@Xᵀ (s) | kNN (s) | Jaccard (s) | DBSCAN (s) | total (s) "
              "| total / floor | peak RSS kNN / Jaccard / DBSCAN (GB) | J nnz/row | clusters "
              "| outliers |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    notes: list[str] = []
    for n in args.n:
        name, ids = PRESETS.get(n, (f"{n:,}", n // 17))
        ids = args.ids or ids
        runs = args.runs or (3 if n <= 20000 else 1)
        common = ["--worker", "--n", str(n), "--dim", str(args.dim), "--ids", str(ids),
                  "--runs", str(runs), "--k1", str(args.k1), "--k2", str(args.k2),
                  "--eps", str(args.eps), "--device", args.device, "--knn-backend", args.knn_backend,
                  "--floor-bytes", str(args.floor_bytes)]
        r = run_child(common)
        total = r["knn"] + r["jaccard"] + r["dbscan"]
        gb = [r["peak"][k] / 1e9 for k in ("knn", "jaccard", "dbscan")]
        fl = f"{r['floor']:.1f}" + (" (blocks)" if r["floor_blockwise"] else "")
        print(f"| {name} | {n:,} | {runs} | {fl} | {r['knn']:.1f} | {r['jaccard']:.1f} "
              f"| {r['dbscan']:.2f} | {total:.1f} | {total / r['floor']:.2f} "
              f"| {gb[0]:.2f} / {gb[1]:.2f} / {gb[2]:.2f} | {r['nnz_per_row']:.0f} "
              f"| {r['clusters']} ({ids} ids) | {r['outliers']} |", flush=True)
        notes.append(f"{name}: CPU load average {r['load']:.1f} at the end (cores: {os.cpu_count()}); "
                     f"features alone {r['features_rss'] / 1e9:.2f} GB resident (torch + X)")
    print()
    for line in notes:
        print(f"- {line}")


if __name__ == "__main__":
    main()
