"""Speed of reidctl's vectorised evaluation against the CC family's per-query scikit-learn loop.

Market-1501 scale: 3,368 queries × 15,913 gallery images, 751 identities, 6 cameras, random
L2-normalised D=2048 features drawn around one centre per identity (so the APs are not trivial).
The baseline is what Cluster Contrast / PPLR / NCPLR / ICSR run (``evaluation_metrics/ranking.py``):
``np.argsort`` of the whole distance matrix, then one ``sklearn.metrics.average_precision_score``
call per query on the filtered row. Prints the median of 3 runs and the speed ratio, and checks
that both give the same mAP.

    python bench/evaluate.py [--queries 3368 --gallery 15913 --repeats 3 --rerank]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from reidctl.evaluation.metrics import evaluate_features, evaluate_ranking, pairwise_distance

from benchutil import timed  # noqa: E402  (bench/ is on sys.path when run as a script)


def make_split(num_q: int, num_g: int, ids: int, cams: int, dim: int, seed: int = 0):
    """Random features around one centre per identity; Market-like id/camera labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim)).astype(np.float32)
    g_pids = np.concatenate([np.arange(ids), rng.integers(0, ids, num_g - ids)])
    q_pids = rng.choice(ids, num_q)
    g_cams = rng.integers(0, cams, num_g)
    q_cams = rng.integers(0, cams, num_q)

    def feats(pids):
        x = centres[pids] + 3.5 * rng.standard_normal((len(pids), dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return feats(q_pids), feats(g_pids), q_pids, g_pids, q_cams, g_cams


def cc_mean_ap(distmat, q_pids, g_pids, q_cams, g_cams) -> float:
    """The baseline: full argsort + one scikit-learn call per query (written here, not copied)."""
    order = np.argsort(distmat, axis=1)
    aps = []
    for i in range(distmat.shape[0]):
        o = order[i]
        valid = (g_pids[o] != q_pids[i]) | (g_cams[o] != q_cams[i])
        y_true = g_pids[o][valid] == q_pids[i]
        if not y_true.any():
            continue
        aps.append(average_precision_score(y_true, -distmat[i][o][valid]))
    return float(np.mean(aps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=3368)
    ap.add_argument("--gallery", type=int, default=15913)
    ap.add_argument("--ids", type=int, default=751)
    ap.add_argument("--cams", type=int, default=6)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rerank", action="store_true", help="also time k-reciprocal re-ranking (once)")
    args = ap.parse_args()

    qf, gf, q_pids, g_pids, q_cams, g_cams = make_split(
        args.queries, args.gallery, args.ids, args.cams, args.dim
    )
    print(
        f"{args.queries} queries × {args.gallery} gallery, {args.ids} ids, {args.cams} cameras, "
        f"D={args.dim}; torch threads {torch.get_num_threads()}; median of {args.repeats}"
    )
    t_dist, distmat = timed(lambda: pairwise_distance(qf, gf), args.repeats)
    t_base, base_map = timed(lambda: cc_mean_ap(distmat, q_pids, g_pids, q_cams, g_cams), args.repeats)
    t_ours, ours = timed(
        lambda: evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, ap="sklearn"), args.repeats
    )
    t_feat, feat = timed(
        lambda: evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, ap="sklearn"), args.repeats
    )

    rows = [
        ("pairwise_distance (torch, float32)", t_dist, None),
        ("CC mean_ap: argsort + per-query sklearn AP", t_base, t_base),
        ("reidctl evaluate_ranking (mAP+CMC+mINP)", t_ours, t_base),
        ("reidctl evaluate_features (distances+all)", t_feat, t_base + t_dist),
    ]
    print(f"\n{'step':<44}{'median s':>10}{'speed-up':>10}")
    for name, t, ref in rows:
        ratio = f"{ref / t:9.1f}x" if ref is not None and name.startswith("reidctl") else ""
        print(f"{name:<44}{t:>10.2f}{ratio:>10}")
    print(
        f"\nmAP  baseline {base_map:.6f}  evaluate_ranking {ours['mAP']:.6f}  "
        f"evaluate_features {feat['mAP']:.6f}  |diff| {abs(base_map - ours['mAP']):.2e}"
    )
    print(
        f"rank-1 {ours['cmc'][0]:.4f}  mINP {ours['mINP']:.4f}  "
        f"valid queries {ours['num_valid_queries']}"
    )
    print("(evaluate_features is compared with pairwise_distance + the baseline)")

    if args.rerank:
        t = time.perf_counter()
        rr = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, rerank=True)
        print(f"\nre-ranked evaluate_features: {time.perf_counter() - t:.1f} s, mAP {rr['mAP']:.4f}")


if __name__ == "__main__":
    main()
