"""HNSW's recall/time frontier on N rows, measured the way the recall tuning measures it.

    python bench/knn_frontier.py --n 100000 --like cuhk03_mnv2.h5
    python bench/knn_frontier.py --features feats.h5 --candidates 2 4 8   # your own features
    python bench/knn_frontier.py --n 1000000 --like cuhk03_mnv2.h5 --pca-dim 256 --ef-construction 40 160

Why: at a million rows the whole search of every setting is out of reach on 2 cores (exact search
takes hours), but the tuning of ``--knn-backend auto`` needs to know only two things per setting:
the recall@k1 on a seeded sample of rows (1,000, the tuning's own sample: seed PROBE_SEED + 1) and
the time of that sample's search, scaled to N rows. This script prints those for a grid of
settings, so the question "which setting reaches the target, and in how long" is answered at the
scale where it matters. Per PCA dimension it first prints what a perfect graph would find (brute
force in the reduced space, then the exact re-rank), which bounds every graph on that space; then,
per graph (efConstruction), each efSearch × candidates row: the sample recall, the predicted
seconds of the whole kNN step (PCA + build + N / rows × the sample's search), that over the exact
search's estimate (from the same sample), and the peak resident memory so far.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import bench_features, feature_options  # noqa: E402


def main() -> None:
    from reidctl.search.approx import ApproxSettings, build_index, candidate_count, pca_reduce, principal_axes
    from reidctl.search.probe import PROBE_ROWS, PROBE_SEED, exact_sample, found_per_row, sample_rows
    from reidctl.search.tuning import perfect_graph_search

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    feature_options(ap, n=100_000)
    ap.add_argument("--pca-dim", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--ef-construction", type=int, nargs="+", default=[40, 160])
    ap.add_argument("--ef-search", type=int, nargs="+", default=[96, 192, 384, 768])
    ap.add_argument("--candidates", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--rows", type=int, default=PROBE_ROWS)
    args = ap.parse_args()

    x, _ = bench_features(args)
    xt, n, k = torch.from_numpy(x), args.n, args.k1
    picked = sample_rows(n, args.rows, PROBE_SEED + 1)
    t = time.perf_counter()
    exact_dist, _ = exact_sample(xt, picked, k)
    exact_s = (time.perf_counter() - t) * n / len(picked)

    def recall(idx: np.ndarray) -> float:
        return float(found_per_row(xt, picked, idx, exact_dist).mean() / k)

    source = args.features or (f"features like {args.like}" if args.like else "synthetic features")
    print(f"# bench/knn_frontier.py  {source}: N={n:,} D={args.dim} k1={k}, {len(picked):,} sampled rows, "
          f"torch threads {torch.get_num_threads()}; exact search estimated {exact_s:.0f} s", flush=True)
    print("| pca dim | efConstruction (build s) | efSearch | candidates | sample recall@k1 | perfect graph | "
          "predicted kNN s | / exact | peak GB |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    t = time.perf_counter()
    axes = principal_axes(xt, ApproxSettings())
    axes_s = time.perf_counter() - t
    for pca in args.pca_dim:
        st = dataclasses.replace(ApproxSettings(), pca_dim=pca)
        t = time.perf_counter()
        reduced = pca_reduce(xt, st, axes)
        pca_s = axes_s + time.perf_counter() - t
        widths = [candidate_count(dataclasses.replace(st, candidates=c), k, n) for c in args.candidates]
        perfect = perfect_graph_search(xt, reduced, picked, k, widths, torch.device("cpu"))
        ceiling = {c: recall(idx) for c, (_, idx) in zip(args.candidates, perfect)}
        for efc in args.ef_construction:
            built = dataclasses.replace(st, ef_construction=efc)
            t = time.perf_counter()
            index = build_index(xt, "faiss-hnsw", built, reduced=reduced)
            build_s = time.perf_counter() - t
            for ef in args.ef_search:
                for c in args.candidates:
                    trial = dataclasses.replace(built, ef_search=ef, candidates=c)
                    t = time.perf_counter()
                    _, idx = index.search(picked, k, trial)
                    full = pca_s + build_s + (time.perf_counter() - t) * n / len(picked)
                    print(f"| {pca} | {efc} ({build_s:.0f}) | {ef} | {c} | {recall(idx):.3f} | {ceiling[c]:.3f} | "
                          f"{full:.0f} | {full / exact_s:.2f} | {_peak_gb()} |", flush=True)
            del index


def _peak_gb() -> str:
    """The process's peak resident memory so far (features included), in GB; "?" off Linux."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith("VmHWM:"):
            return f"{int(line.split()[1]) / 1e6:.1f}"
    return "?"


if __name__ == "__main__":
    main()
