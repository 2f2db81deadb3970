"""Are MAR's soft multilabels a better similarity than the features themselves?

Ranks all pairs of a train features file (with identities) two ways, by the agreement of their
soft multilabels (what MAR mines positive pairs with) and by feature cosine (what a kNN or a
clustering sees), and prints the precision of the top ``RATIO`` of each (default 0.5 %, MAR's
mining ratio), overall and across cameras. Ground truth is read for this report only. Memory:
blocks of 1,024 rows, a running top-k.

    python examples/mar_pair_quality.py runs/mar/epoch_000/train.h5 source.pt [RATIO]
"""
import sys
import numpy as np
import torch
import torch.nn.functional as F
from reidctl.artifacts import read_features, read_ground_truth
from reidctl.methods.mar import losses as L
from reidctl.methods.mar.refine import read_agents

feats_path, ckpt = sys.argv[1], sys.argv[2]
ratio = float(sys.argv[3]) if len(sys.argv) > 3 else 0.005
fe = read_features(feats_path)
pids = read_ground_truth(feats_path)
cams = fe.camids
z = F.normalize(torch.as_tensor(fe.feats), dim=1)
agents = read_agents(ckpt)
ml = L.multilabels_of(fe.feats, agents)
n = len(z)
k = int(n * (n - 1) // 2 * ratio)

def top_pairs(score_block):
    best_v = torch.empty(0); best_i = torch.empty(0, dtype=torch.long); best_j = torch.empty(0, dtype=torch.long)
    for r0 in range(0, n, 1024):
        s = score_block(r0, min(r0 + 1024, n))
        mask = torch.ones_like(s, dtype=torch.bool).triu(r0 + 1)
        i, j = torch.nonzero(mask, as_tuple=True)
        v = s[i, j]
        v = torch.cat([best_v, v]); ii = torch.cat([best_i, i + r0]); jj = torch.cat([best_j, j])
        top = torch.topk(v, min(k, len(v)))
        best_v, best_i, best_j = top.values, ii[top.indices], jj[top.indices]
    return best_i.numpy(), best_j.numpy()

def report(name, i, j):
    same = pids[i] == pids[j]
    cross = cams[i] != cams[j]
    print(f"{name}: {len(i)} pairs, precision {100 * same.mean():.1f} %, cross-camera {100 * cross.mean():.1f} % "
          f"of them, precision of those {100 * same[cross].mean() if cross.any() else float('nan'):.1f} %")

print(f"{feats_path}: {n} images, {len(set(pids.tolist()))} ids, {agents.shape[0]} agents, top {ratio:.3%} = {k} pairs;"
      f" chance {100 * np.mean([(pids == p).sum() * ((pids == p).sum() - 1) / 2 for p in set(pids.tolist())]) * len(set(pids.tolist())) / (n * (n - 1) / 2):.2f} %")
report("multilabel agreement", *top_pairs(lambda a, b: L.agreement(ml[a:b], ml)))
report("feature cosine      ", *top_pairs(lambda a, b: z[a:b] @ z.t()))
top1 = ml.max(1).values
print(f"multilabel: mean largest entry {top1.mean():.3f}, mean entropy {(-(ml * ml.clamp_min(1e-12).log()).sum(1)).mean():.3f} nats (uniform {np.log(agents.shape[0]):.2f})")
