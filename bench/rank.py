"""Benchmark of `reidctl rank`: Q queries against a gallery of G features (default 1k × 100k).

    python bench/rank.py                          # 1,000 queries × 100,000 gallery, D = 2048
    python bench/rank.py --gallery 20000 --runs 5

Features are bench/cluster.py's synthetic re-ID-like features. One fresh process measures, each
run in the same conditions: the **floor**, exact search in one piece (one dense Q×G×D product
``torch.mm`` and ``torch.topk`` of the whole Q×G matrix, nothing else); the library call
``reidctl.evaluation.ranking.rank_gallery`` (blocked search, tie rule, exclusions); and the whole command
``reidctl rank q.h5 g.h5 --out ranks.csv`` in a child process (start-up, reading both HDF5
files, search, CSV). Times are medians over runs; memory is peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import timed  # noqa: E402
from cluster import PeakRSS, features  # noqa: E402


def floor_search(q: np.ndarray, g: np.ndarray, k: int) -> None:
    """Exact top-k in one piece: the dense product and one top-k over all of it."""
    import torch

    sim = torch.from_numpy(q) @ torch.from_numpy(g).T
    torch.topk(sim, k, dim=1)


def write_side(path: Path, x: np.ndarray, pids: np.ndarray, prefix: str) -> None:
    from reidctl.artifacts import write_features

    paths = [f"{prefix}/{i:07d}.jpg" for i in range(len(x))]
    write_features(path, x, camids=np.arange(len(x)) % 6, paths=paths, split=["train"] * len(x), pids=pids,
                   params={"model": {"arch": "synthetic"}, "init": "bench"})


def worker(args: argparse.Namespace) -> dict:
    import torch

    from reidctl.evaluation.ranking import RankSide, rank_gallery

    x, pid = features(args.gallery + args.queries, args.dim, (args.gallery + args.queries) // 17)
    g, q = x[: args.gallery], x[args.gallery :]
    sides = [RankSide(a, [str(i) for i in range(len(a))], None, np.zeros(len(a), np.int64), None, name)
             for a, name in ((q, "query"), (g, "gallery"))]
    with PeakRSS() as base:
        pass
    with PeakRSS() as pf:
        t_floor, _ = timed(lambda: floor_search(q, g, args.k), args.runs)
    with PeakRSS() as pr:
        t_rank, _ = timed(lambda: rank_gallery(*sides, args.k, device="cpu"), args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        write_side(Path(tmp) / "q.h5", q, pid[args.gallery :], "query")
        write_side(Path(tmp) / "g.h5", g, pid[: args.gallery], "gallery")
        cmd = [sys.executable, "-m", "reidctl", "rank", f"{tmp}/q.h5", f"{tmp}/g.h5", "--top-k", str(args.k),
               "--out", f"{tmp}/ranks.csv", "--device", "cpu"]
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        cli_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        rows = sum(1 for _ in open(f"{tmp}/ranks.csv")) - 1
    return {"floor": t_floor, "rank": t_rank, "cli": float(np.median(times)), "features_rss": base.peak,
            "floor_peak": pf.peak, "rank_peak": pr.peak, "cli_peak": cli_peak, "csv_rows": rows,
            "threads": torch.get_num_threads(), "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    argv = [sys.executable, __file__, "--worker", *sys.argv[1:]]
    r = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    gb = 1e9
    print(f"# bench/rank.py  ({args.queries:,} queries × {args.gallery:,} gallery, D={args.dim}, top-{args.k}, "
          f"{args.runs} runs, {r['threads']} torch threads, load {r['load']:.1f})")
    print("| what | median (s) | / floor | peak RSS (GB) |")
    print("|---|---|---|---|")
    print(f"| floor: dense Q×G product + top-k | {r['floor']:.2f} | 1.00 | {r['floor_peak'] / gb:.2f} |")
    print(f"| `rank_gallery` (blocked search) | {r['rank']:.2f} | {r['rank'] / r['floor']:.2f} | "
          f"{r['rank_peak'] / gb:.2f} |")
    print(f"| `reidctl rank q.h5 g.h5 --out ranks.csv` | {r['cli']:.2f} | {r['cli'] / r['floor']:.2f} | "
          f"{r['cli_peak'] / gb:.2f} |")
    print(f"\nfeatures in memory: {r['features_rss'] / gb:.2f} GB resident before searching; "
          f"CSV rows written: {r['csv_rows']:,}")


if __name__ == "__main__":
    main()
