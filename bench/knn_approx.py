"""Approximate kNN against exact kNN: time, recall@k1 and the clustering it leads to.

    python bench/knn_approx.py --n 20000                 # both approximate backends, default settings
    python bench/knn_approx.py --n 50000 --nprobe 8 32 --backends faiss-ivf

Features are bench/cluster.py's synthetic ones (D = 2,048, N // 17 identities, 6 cameras). One
process: the exact blocked search (the floor every approximate backend must beat), then each
backend and setting. For each: seconds, recall@k1 (the share of the exact k1 neighbours found),
the share of the exact same-identity neighbours found, and the adjusted Rand index of the
Jaccard + DBSCAN partition against the exact pipeline's (k1 30, k2 6, eps 0.6, min 4), and
where the approximate search spent its time (PCA, index build, search, exact re-rank). Beside the
true recall (all rows) is what the recall probe of every approximate search measures on its
1,000 seeded rows (reidctl.search.probe), so the two can be compared. ``--tuned`` adds a row per
backend tuned as ``--knn-backend auto`` tunes it (``--knn-recall``): its settings, its time with
the tuning, or the exact fallback it chose.
``--features FILE`` uses real features instead; ``--like FILE`` draws synthetic ones with that
file's identity statistics (bench/cluster.py ``features_like``).
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
from cluster import bench_features, feature_options, recall  # noqa: E402


def main() -> None:
    from sklearn.metrics import adjusted_rand_score

    from reidctl import search
    from reidctl.cluster import dbscan, jaccard_distance
    from reidctl.search.approx import ApproxSettings, approx_knn
    from reidctl.search.probe import probe_recall

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    feature_options(ap, n=20000)
    ap.add_argument("--backends", nargs="+", default=["faiss-ivf", "faiss-hnsw"])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[ApproxSettings.nprobe])
    ap.add_argument("--pca-dim", type=int, nargs="+", default=[ApproxSettings.pca_dim])
    ap.add_argument("--ef-search", type=int, nargs="+", default=[ApproxSettings.ef_search])
    ap.add_argument("--tuned", action="store_true", help="also each backend tuned to --knn-recall, as auto tunes it")
    ap.add_argument("--knn-recall", type=float, default=search.DEFAULT_RECALL)
    args = ap.parse_args()
    x, pid = bench_features(args)
    xt = torch.from_numpy(x)

    def partition(d: np.ndarray, i: np.ndarray) -> np.ndarray:
        return dbscan(jaccard_distance(x, args.k1, 6, knn=(d, i)), 0.6, 4)

    def outliers(labels: np.ndarray) -> str:
        return f"{(labels < 0).mean():.1%}"

    t = time.perf_counter()
    ed, ei = search.knn(x, args.k1, backend="torch", device="cpu")
    exact_s = time.perf_counter() - t
    exact_labels = partition(ed, ei)
    same = pid[ei] == pid[:, None]
    source = args.features or (f"features like {args.like}" if args.like else "synthetic features")
    print(f"# bench/knn_approx.py  {source}: N={args.n:,} D={args.dim} k1={args.k1}, "
          f"torch threads {torch.get_num_threads()}")
    print("| backend | pca dim | nprobe / efSearch (candidates) | s | / exact | recall@k1 | probe recall@k1 (1,000 rows) "
          "| same-identity found | ARI vs exact | outliers | steps (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| exact (torch, blocked) | – | – | {exact_s:.1f} | 1.00 | 1.000 | – | 1.000 | 1.000 | "
          f"{outliers(exact_labels)} | |", flush=True)

    def row(name: str, st: ApproxSettings | None, knob: str, s: float, ad: np.ndarray, ai: np.ndarray, split: str) -> None:
        probe = probe_recall(x, ai, args.k1).recall
        found = (pid[ai] == pid[:, None]).sum() / same.sum()
        labels = partition(ad, ai)
        ari = adjusted_rand_score(exact_labels, labels)
        pca = "–" if st is None else (st.pca_dim or "none")
        print(f"| {name} | {pca} | {knob} | {s:.1f} | {s / exact_s:.2f} | {recall(ai, ei):.3f} | {probe:.3f} | "
              f"{found:.3f} | {ari:.3f} | {outliers(labels)} | {split} |", flush=True)

    for backend in args.backends:
        for pca in args.pca_dim:
            for knob_value in (args.nprobe if backend == "faiss-ivf" else args.ef_search):
                knob = "nprobe" if backend == "faiss-ivf" else "ef_search"
                st = dataclasses.replace(ApproxSettings(), pca_dim=pca, **{knob: knob_value})
                t, steps = time.perf_counter(), {}
                ad, ai = approx_knn(xt, args.k1, backend, settings=st, times=steps)
                s = time.perf_counter() - t
                split = ", ".join(f"{name[:-2]} {v:.1f}" for name, v in steps.items())
                row(backend, st, f"{knob_value} ({st.candidates})", s, ad, ai, split)
        if args.tuned:
            t = time.perf_counter()
            got = search.knn_search(xt, args.k1, backend=backend, device="cpu", recall=args.knn_recall, adapt=True)
            s = time.perf_counter() - t
            tuned = got.tuning
            st = tuned.settings
            knob = f"{st.nprobe if backend == 'faiss-ivf' else st.ef_search} ({st.candidates})"
            name = f"{backend} tuned to {args.knn_recall:g}" + (": exact fallback" if tuned.index is None else "")
            row(name, st, knob, s, got.dist, got.idx, f"tuning {tuned.seconds:.1f}, "
                f"{sum(not r.get('ceiling') for r in tuned.rounds)} trial searches")


if __name__ == "__main__":
    main()
