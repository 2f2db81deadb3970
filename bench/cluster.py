"""Benchmark of the clustering stage: exact kNN → sparse Jaccard → DBSCAN.

    python bench/cluster.py                       # Market-1501 and MSMT17 scale
    python bench/cluster.py --n 100000 --runs 1   # any N
    python bench/cluster.py --n 1000000 --knn-backend faiss-hnsw --like FEATURES.h5   # a million

Features are synthetic (random identity centres + noise, L2-normalised, D = 2048; with ``--like``,
drawn from a real features file's identity statistics), made block by block inside a fresh
process per N, so the peak resident memory of one scale does not leak into the next. Each
stage's peak is measured on its own (Linux: VmHWM reset through /proc/self/clear_refs;
elsewhere a sampling thread). The floor is one plain N×N×D product
X @ Xᵀ (in blocks of rows where the full result would not fit), timed after each run of the
stages in the same process (same machine conditions): an exact kNN cannot be cheaper. Beyond
N = 200k it is estimated from 2,048 rows. Approximate backends also report their steps' times
and recall@k1 on 2,000 query rows against exact search.
Goals: total ≤ 2 × floor, peak ≤ 2 GB at MSMT17 scale (exact); at N = 1M, D = 2,048 the
whole stage ≤ 15 minutes and ≤ 16 GB (approximate, issue 18).
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
    for s in range(0, n, 4096):  # in blocks: no N×D temporaries (8 GB each at N = 1M)
        e = min(n, s + 4096)
        noise = rng.standard_normal((e - s, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        block = centres[pid[s:e]] + 0.6 * cams[cam[s:e]] + noise
        x[s:e] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, pid


def features_like(source: str, n: int, dim: int, ids: int = 0, seed: int = 0,
                  axes: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic features with the identity statistics of a real features file (with pids).

    Why: :func:`features` draws identities as random directions, close to isotropic, which real
    CNN features are not (bench/README.md § knn_approx.py: they hold 80-90 % of their variance in
    256 principal axes), and graph and reduced-dimension indexes behave differently on the two.
    The model, estimated on ``source``: the mean feature; identity centres from the between-
    identity covariance; one mean offset per camera; each image's deviation from the within-
    identity covariance. Each covariance keeps its top ``axes`` principal axes exactly and the
    rest as isotropic noise of the same total variance. The source's dimensions are embedded in
    ``dim`` ≥ theirs by a random orthonormal map (distances unchanged). ``ids`` (0: the source's
    images per identity) identities of gamma-skewed sizes; rows are L2-normalised.
    """
    import torch

    from reidctl.artifacts import read_features, read_ground_truth

    fe = read_features(source)
    pid = read_ground_truth(source)
    if pid is None:
        raise SystemExit(f"--like {source}: the file has no identities to estimate the model from")
    src = torch.from_numpy(fe.feats).double()
    d0 = src.shape[1]
    if dim < d0:
        raise SystemExit(f"--dim {dim} is below the {d0} dimensions of {source}")
    uniq, inv = np.unique(pid, return_inverse=True)
    inv_t = torch.from_numpy(inv)
    centre = torch.zeros((len(uniq), d0), dtype=torch.float64).index_add_(0, inv_t, src)
    centre /= torch.from_numpy(np.bincount(inv)).double()[:, None]
    mean = src.mean(0)
    within = src - centre[inv_t]
    cams = torch.from_numpy(fe.camids.astype(np.int64))
    n_cams = int(cams.max()) + 1
    cam_off = torch.zeros((n_cams, d0), dtype=torch.float64).index_add_(0, cams, within)
    cam_off /= torch.bincount(cams, minlength=n_cams).clamp(min=1).double()[:, None]
    within -= cam_off[cams]
    rng = np.random.default_rng(seed)
    q = torch.from_numpy(np.linalg.qr(rng.standard_normal((dim, d0)))[0])  # dim × d0, orthonormal columns

    def model(dev: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(axes × dim) principal axes scaled by their standard deviation, and the residual per-dim std."""
        cov = dev.T @ dev / max(1, len(dev) - 1)
        val, vec = torch.linalg.eigh(cov)
        val, vec = val.flip(0).clamp(min=0), vec.flip(1)
        top = (vec[:, :axes] * val[:axes].sqrt()).T @ q.T
        return top.float(), float((val[axes:].sum() / dim).sqrt())

    between, b_res = model(centre - mean)
    inside, w_res = model(within)
    ids = ids or max(1, round(n * len(uniq) / len(src)))
    g = torch.Generator().manual_seed(seed)
    centres = (torch.randn((ids, between.shape[0]), generator=g) @ between
               + b_res * torch.randn((ids, dim), generator=g) + (q @ mean).float())
    cam_lift = (cam_off @ q.T).float()
    weight = rng.gamma(2.0, size=ids)
    out_pid = rng.choice(ids, n, p=weight / weight.sum())
    out_cam = torch.from_numpy(rng.integers(0, n_cams, n))
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 8192):  # in blocks: no N×D temporaries
        e = min(n, s + 8192)
        block = (centres[torch.from_numpy(out_pid[s:e])] + cam_lift[out_cam[s:e]]
                 + torch.randn((e - s, inside.shape[0]), generator=g) @ inside
                 + w_res * torch.randn((e - s, dim), generator=g))
        x[s:e] = torch.nn.functional.normalize(block, dim=1).numpy()
    return x, out_pid


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


def floor(x: np.ndarray, max_bytes: int, rows: int = 0) -> tuple[float, str]:
    """Seconds for one plain X @ Xᵀ (float32, torch's threads); in row blocks when the full
    N×N result would exceed max_bytes. The output buffer is touched first: no page faults.
    ``rows`` > 0: time only that many rows against all of X and scale by N / rows (an estimate,
    for N where the whole product takes hours). Returns the seconds and how they were got."""
    import torch

    n = len(x)
    xt = torch.from_numpy(x)
    step = n if 4 * n * n <= max_bytes else max(1, max_bytes // (4 * n))
    todo = min(n, rows) if rows else n
    step = min(step, todo)
    out = torch.zeros((step, n))
    t0 = time.perf_counter()
    for s in range(0, todo, step):
        torch.mm(xt[s : s + step], xt.T, out=out[: min(todo, s + step) - s])
    seconds = (time.perf_counter() - t0) * n / todo
    how = f"est. from {todo:,} rows" if todo < n else ("blocks" if step < n else "")
    return seconds, how


def feature_options(ap: argparse.ArgumentParser, n: int) -> None:
    """The options :func:`bench_features` reads: the row count and dimension of synthetic features,
    k1, and a features file to read (``--features``) or to draw like (``--like``)."""
    ap.add_argument("--n", type=int, default=n)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--k1", type=int, default=30)
    ap.add_argument("--features", help="a reidctl features file to measure instead of synthetic features")
    ap.add_argument("--like", help="draw synthetic features with the identity statistics of this features file "
                                   "(features_like)")


def bench_features(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """The features a kNN benchmark measures, with an identity per row: a reidctl features file
    (``args.features``; each row its own identity when the file has none), ones drawn
    :func:`features_like` ``args.like``, or :func:`features`. ``args.n`` and ``args.dim`` become
    the file's shape when a file is read."""
    if args.features:
        from reidctl.artifacts import read_features, read_ground_truth

        x, pid = read_features(args.features).feats, read_ground_truth(args.features)
        args.n, args.dim = x.shape
        return np.ascontiguousarray(x, dtype=np.float32), np.arange(len(x)) if pid is None else pid
    if args.like:
        return features_like(args.like, args.n, args.dim)
    return features(args.n, args.dim, args.n // 17)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """recall@k: the mean share of each row's exact k neighbours that ``found`` holds."""
    return float(np.mean([len(np.intersect1d(a, e)) for a, e in zip(found, exact)])) / exact.shape[1]


def sample_recall(x: np.ndarray, idx: np.ndarray, k: int, rows: int, seed: int = 0) -> float:
    """recall@k of the lists ``idx`` on ``rows`` random query rows, against their exact search
    (the cluster stage's probe, reidctl.search.probe, on another number of rows)."""
    from reidctl.search.probe import probe_recall

    return probe_recall(x, idx, k, rows=rows, seed=seed).recall


def worker(args: argparse.Namespace) -> dict:
    """One N, in its own process. Each run: the three stages (each with its own peak RSS),
    then the floor product, so both see the same machine conditions; medians over runs."""
    import torch

    from reidctl import search
    from reidctl.cluster import dbscan, jaccard_distance, label_quality

    from reidctl.cluster.clustering import ClusterParams, jaccard_bound
    from reidctl.search.approx import APPROX_BACKENDS

    x, pid = features_like(args.like, args.n, args.dim, args.ids) if args.like else features(args.n, args.dim, args.ids)
    rows: dict[str, list[float]] = {"knn": [], "jaccard": [], "dbscan": [], "floor": []}
    steps: dict[str, float] = {}
    approx = args.knn_backend in APPROX_BACKENDS
    keep, _ = jaccard_bound(ClusterParams(eps=args.eps), args.n)  # what the cluster stage stores
    peaks = {"knn": 0, "jaccard": 0, "dbscan": 0}
    with PeakRSS() as base:
        pass
    probe: dict = {}
    for _ in range(args.runs):
        with PeakRSS() as p:
            t0 = time.perf_counter()
            if approx:  # the cluster stage's search: tuned as auto tunes it (unless --fixed), then probed
                found = search.knn_search(torch.from_numpy(x), args.k1, backend=args.knn_backend, device=args.device,
                                          recall=args.knn_recall, adapt=args.knn_recall > 0 and not args.fixed,
                                          times=steps)
                knn = (found.dist, found.idx)
                probe = {"probe": found.probe and found.probe.to_json(), "backend": found.backend,
                         "tuning": found.tuning and found.tuning.to_json()}
            else:
                knn = search.knn(x, args.k1, backend=args.knn_backend, device=args.device)
            rows["knn"].append(time.perf_counter() - t0)
        peaks["knn"] = max(peaks["knn"], p.peak)
        with PeakRSS() as p:
            t0 = time.perf_counter()
            j = jaccard_distance(x, args.k1, args.k2, knn=knn, keep=keep)
            rows["jaccard"].append(time.perf_counter() - t0)
        peaks["jaccard"] = max(peaks["jaccard"], p.peak)
        with PeakRSS() as p:
            t0 = time.perf_counter()
            labels = dbscan(j, args.eps, 4)
            rows["dbscan"].append(time.perf_counter() - t0)
        peaks["dbscan"] = max(peaks["dbscan"], p.peak)
        nnz = j.nnz
        recall = sample_recall(x, knn[1], args.k1, args.recall_rows) if approx and args.recall_rows else None
        del knn, j
        seconds, how = floor(x, args.floor_bytes, args.floor_rows)
        rows["floor"].append(seconds)
    q = label_quality(labels, pid)
    return {
        **{k: statistics.median(v) for k, v in rows.items()},
        "floor_how": how,
        "steps": {k: v / args.runs for k, v in steps.items()},
        "recall": recall,
        **probe,
        "ids": int(len(np.unique(pid))),
        "keep": keep,
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
    ap.add_argument("--floor-rows", type=int, default=-1,
                    help="estimate the floor from this many rows (0: the whole product; default: whole up to "
                         "N = 200k, else 2,048 rows)")
    ap.add_argument("--like", help="features with the identity statistics of this features file "
                                   "(features_like) instead of near-isotropic ones")
    ap.add_argument("--recall-rows", type=int, default=2000,
                    help="approximate backends: recall@k1 measured on this many query rows (0: skip)")
    ap.add_argument("--knn-recall", type=float, default=0.98,
                    help="approximate backends: tune to this recall on the probe's sample, as --knn-backend auto "
                         "does (0: the default settings, no probe)")
    ap.add_argument("--fixed", action="store_true",
                    help="approximate backends: keep the default settings (as an explicit --knn-backend does) and "
                         "only probe them")
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
        floor_rows = args.floor_rows if args.floor_rows >= 0 else (0 if n <= 200_000 else 2048)
        common = ["--worker", "--n", str(n), "--dim", str(args.dim), "--ids", str(args.ids if args.like else ids),
                  "--runs", str(runs), "--k1", str(args.k1), "--k2", str(args.k2),
                  "--eps", str(args.eps), "--device", args.device, "--knn-backend", args.knn_backend,
                  "--floor-bytes", str(args.floor_bytes), "--floor-rows", str(floor_rows),
                  "--recall-rows", str(args.recall_rows), "--knn-recall", str(args.knn_recall),
                  *(["--fixed"] if args.fixed else []),
                  *(["--like", args.like] if args.like else [])]
        r = run_child(common)
        total = r["knn"] + r["jaccard"] + r["dbscan"]
        gb = [r["peak"][k] / 1e9 for k in ("knn", "jaccard", "dbscan")]
        fl = f"{r['floor']:.1f}" + (f" ({r['floor_how']})" if r["floor_how"] else "")
        print(f"| {name} | {n:,} | {runs} | {fl} | {r['knn']:.1f} | {r['jaccard']:.1f} "
              f"| {r['dbscan']:.2f} | {total:.1f} | {total / r['floor']:.2f} "
              f"| {gb[0]:.2f} / {gb[1]:.2f} / {gb[2]:.2f} | {r['nnz_per_row']:.0f} "
              f"| {r['clusters']} ({r['ids']} ids) | {r['outliers']} |", flush=True)
        if r["steps"]:
            split = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in r["steps"].items())
            notes.append(f"{name}: kNN steps: {split}; recall@{args.k1} on {args.recall_rows:,} query rows "
                         f"against exact search: {r['recall']:.3f}" if r["recall"] is not None else
                         f"{name}: kNN steps: {split}")
        if r.get("tuning"):
            t = r["tuning"]
            notes.append(f"{name}: tuned to --knn-recall {args.knn_recall} in {t['seconds']:.1f} s "
                         f"(exact search estimated {t['exact_estimate_s']:.0f} s): "
                         + ("fell back to exact search" if t["exact_fallback"] else f"settings {t['settings']}")
                         + f"; trials {t['rounds']}")
        if r.get("probe"):
            notes.append(f"{name}: the probe: recall@{args.k1} {r['probe']['recall']:.3f}, identical lists "
                         f"{r['probe']['identical']:.3f} on {r['probe']['rows']:,} rows ({r['probe']['seconds']:.1f} s)")
        if r["keep"] is not None:
            notes.append(f"{name}: the Jaccard matrix keeps the distances ≤ {r['keep']} (the cluster stage's default "
                         "beyond 200k rows; J nnz/row counts those)")
        notes.append(f"{name}: CPU load average {r['load']:.1f} at the end (cores: {os.cpu_count()}); "
                     f"features alone {r['features_rss'] / 1e9:.2f} GB resident (torch + X)")
    print()
    for line in notes:
        print(f"- {line}")


if __name__ == "__main__":
    main()
