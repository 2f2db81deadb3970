"""MAR's losses (Yu et al., CVPR 2019; ALGORITHMS.md §6.3), checked against the official code
(github KovenYu/MAR, ``src/utils.py``: ``JointLoss``, ``MultilabelLoss``, ``DiscriminativeLoss``;
``src/trainers.py``: ``ReidTrainer``).

Plain functions of tensors; the state the official loss modules keep (multilabel memory, CML
centres, mining threshold) is passed in and returned, so the caller owns it and can checkpoint it.
Per iteration the official order is:

1. ``L_AL`` on the source batch, ``L_RJ`` on both batches (agents detached).
2. ``ml = soft_multilabels(z_target, agents)``; CML centres updated from the batch's detached
   ``log ml`` (``update_centres``), *then* ``cml_loss`` against the updated centres.
3. From epoch 1 on: ``update_memory`` writes ``ml`` into the memory, ``mine_pairs`` uses the
   written rows and the *current* threshold, then the threshold moves towards the batch quantile
   (``update_threshold(t, top_agreement(pair_agreements(rows), ratio))``), then ``mdl_loss``.

Features ``z`` are expected to be L2-normalised rows already.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from reidctl.train.losses import agent_learning_loss, normalized_agents  # noqa: F401  (L_AL, shared with the joint source step)
from reidctl.train.losses import widened as _wide

Tensor = torch.Tensor


def _zero_like_graph(*xs: Tensor) -> Tensor:
    """A 0 that stays attached to the inputs' graph, so ``backward()`` works on an empty loss."""
    out = None
    for x in xs:
        s = _wide(x).sum() * 0.0
        out = s if out is None else out + s
    return out


# --------------------------------------------------------------------------------------------
# agents and soft multilabels


def rejection_loss(z_source: Tensor, labels: Tensor, z_target: Tensor, agents: Tensor,
                   margin: float = 1.0) -> Tensor:
    """``L_RJ`` (official ``JointLoss``): pull source features onto their own agent, push source
    and target features away from *other* agents that are too close.

    Agents are detached (the official trainer passes ``agents.detach()``), so this loss shapes
    the feature space only; agents are learnt by ``L_AL``. With ``sim_margin = 1 − margin/2``
    an agent is "hard" for a feature when ``cos > sim_margin``; since ``‖z − a‖² = 2 − 2cos``
    for unit vectors, these are exactly the agents where the hinge ``max(0, margin − ‖z − a‖²)``
    is active. Terms: every source sample's ``‖z − a_label‖²``; for every sample (source
    excluding its own label, target any agent) with ≥ 1 hard agent, the mean hinge over its hard
    agents. The loss is the mean of all terms.

    Either side may have 0 rows. When no term at all is collected (only possible without source
    samples) the official code crashes (``torch.stack([])``); here the loss is 0, still attached
    to the inputs' graph.
    """
    a = _wide(agents.detach())
    sim_margin = 1.0 - margin / 2.0
    terms: list[Tensor] = []

    def hard_means(z: Tensor, own: Tensor | None) -> Tensor:
        with torch.no_grad():
            hard = (z.detach() @ a.t()) > sim_margin  # B×K
            if own is not None:
                hard[torch.arange(len(z), device=z.device), own] = False
        rows, cols = hard.nonzero(as_tuple=True)
        # the distances are taken directly, (z − a)², as the official code does
        hinge = torch.clamp(margin - (z[rows] - a[cols]).pow(2).sum(1), min=0.0)
        sums = torch.zeros(len(z), dtype=hinge.dtype, device=z.device).index_add(0, rows, hinge)
        counts = torch.bincount(rows, minlength=len(z))
        has = counts > 0
        return sums[has] / counts[has].to(sums.dtype)

    zs, zt = _wide(z_source), _wide(z_target)
    if len(zs):
        labels = labels.to(zs.device).long()
        terms.append((zs - a[labels]).pow(2).sum(1))
        terms.append(hard_means(zs, labels))
    if len(zt):
        terms.append(hard_means(zt, None))
    collected = torch.cat(terms) if terms else zs.new_zeros(0)
    if collected.numel() == 0:
        return _zero_like_graph(z_source, z_target)
    return collected.mean()


def soft_multilabels(z: Tensor, agents: Tensor, scale: float = 30.0) -> Tensor:
    """``l(x) = softmax(scale·z·aᵀ)`` (N×K): each target image described by its likeness to the
    source identities.

    Agents are detached, as in the official trainer: the target losses (CML, MDL) must not drag
    the agents, which stay anchored to the labelled source identities. Logits lie in
    ``[−scale, scale]``, so ``log`` of the result cannot underflow in float32.
    """
    return torch.softmax(scale * (_wide(z) @ _wide(agents.detach()).t()), dim=1)


def multilabels_of(features: Any, agents: Tensor, scale: float = 30.0, block: int = 4096) -> Tensor:
    """Soft multilabels of a whole set of stored features (N×D, e.g. a features file's rows),
    L2-normalised first and computed ``block`` rows at a time (no N×K logits in float64)."""
    z = F.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    return torch.cat([soft_multilabels(z[i:i + block], agents, scale) for i in range(0, len(z), block)])


# --------------------------------------------------------------------------------------------
# L_CML: cross-view consistent multilabels


def camera_moments(log_ml: Tensor, camids: Tensor) -> tuple[Tensor, Tensor]:
    """Per camera, the mean and the unbiased std (torch default) of the log-multilabels.

    Returns ``(means V×K, stds V×K)`` in ascending camera order (``torch.unique``). Cameras with
    a single image are skipped (their unbiased std is undefined), as ``MultilabelLoss`` does in
    the batch; V may be 0. Differentiable: the CML loss backpropagates through these.
    """
    x = _wide(log_ml)
    camids = camids.to(x.device)
    means, stds = [], []
    for cam in torch.unique(camids):
        rows = x[camids == cam]
        if len(rows) < 2:
            continue
        means.append(rows.mean(0))
        stds.append(rows.std(0))
    if not means:
        empty = x[:0]  # 0×K, still attached to the graph of log_ml
        return empty, empty.clone()
    return torch.stack(means), torch.stack(stds)


def initial_centres(log_ml: Tensor, camids: Tensor) -> tuple[Tensor, Tensor]:
    """Initial CML centres ``(μ̄, σ̄)`` (K each) from a whole set's log-multilabels: per-camera
    mean/std, then averaged over cameras (official ``MultilabelLoss.init_centers``).

    The official init does not skip single-image cameras (their std would be NaN and poison the
    centres); here they are skipped like in the batch. With no camera of ≥ 2 images the centres
    are undefined and a ``ValueError`` is raised.
    """
    with torch.no_grad():
        means, stds = camera_moments(log_ml.detach(), camids)
    if len(means) == 0:
        raise ValueError("initial_centres: no camera has at least 2 images")
    return means.mean(0), stds.mean(0)


def update_centres(mu_bar: Tensor, sigma_bar: Tensor, means: Tensor, stds: Tensor,
                   eta: float) -> tuple[Tensor, Tensor]:
    """Running centres ``μ̄ ← (1−η)μ̄ + η·mean_v μ_v`` (same for σ̄), from detached batch moments.

    The official code calls this *before* computing the loss, which then compares the batch's
    moments with the already-updated centres; η is ``batch_size/10000`` there (368/10000, the
    two-domain batch size, although the target half has 184 images). With V = 0 the official
    code crashes (``torch.stack([])``); here the centres are returned unchanged.
    """
    if len(means) == 0:
        return mu_bar.detach(), sigma_bar.detach()
    new_mu = (1.0 - eta) * mu_bar.detach() + eta * means.detach().mean(0).to(mu_bar.dtype)
    new_sigma = (1.0 - eta) * sigma_bar.detach() + eta * stds.detach().mean(0).to(sigma_bar.dtype)
    return new_mu, new_sigma


def cml_loss(means: Tensor, stds: Tensor, mu_bar: Tensor, sigma_bar: Tensor) -> Tensor:
    """``L_CML``: mean over the 2V terms ``‖μ_v − μ̄‖²`` and ``‖σ_v − σ̄‖²``.

    Aligning every camera's multilabel distribution with shared centres makes the multilabels
    camera-invariant. Centres are constants here. With V = 0 (no camera with ≥ 2 images) the
    official code crashes; here the loss is 0, attached to the graph.
    """
    if len(means) == 0:
        return _zero_like_graph(means, stds)
    mu = mu_bar.detach().to(means.dtype)
    sigma = sigma_bar.detach().to(stds.dtype)
    total = (means - mu).pow(2).sum() + (stds - sigma).pow(2).sum()
    return total / (2 * len(means))


# --------------------------------------------------------------------------------------------
# L_MDL: multilabel memory, agreement, threshold, mining


def update_memory(memory: Tensor, visited: Tensor, index: Tensor, ml: Tensor,
                  momentum: float = 0.9) -> Tensor:
    """Write the batch's multilabels into the memory (in place) and return ``memory[index]``.

    First visit stores ``l(x)``; later visits ``M ← momentum·M + (1−momentum)·l(x)``: the memory
    smooths each image's multilabel over epochs, and the mining uses the written rows, not the
    fresh ones. ``visited`` (N bool) is set for ``index``. Multilabels are detached and moved to
    the memory's device/dtype (the official memory is on the CPU). ``index`` must not repeat.
    """
    index = index.to(memory.device).long()
    if torch.unique(index).numel() != index.numel():
        raise ValueError("update_memory: duplicate indices in one batch")
    fresh = ml.detach().to(device=memory.device, dtype=memory.dtype)
    seen = visited[index].unsqueeze(1)
    memory[index] = torch.where(seen, momentum * memory[index] + (1.0 - momentum) * fresh, fresh)
    visited[index] = True
    return memory[index]


def agreement(a: Tensor, b: Tensor) -> Tensor:
    """``A(i,j) = 1 − ‖a_i − b_j‖₁ / 2`` (|a|×|b|): 1 for identical multilabels, 0 for disjoint
    supports (both rows are distributions)."""
    return 1.0 - torch.cdist(_wide(a), _wide(b), p=1) / 2.0


def pair_agreements(ml_rows: Tensor) -> Tensor:
    """Agreements of all pairs i < j of a batch, flat in ``pdist`` order (row-major upper
    triangle), computed in float64 like scipy's ``pdist`` in the official code."""
    return 1.0 - torch.pdist(ml_rows.detach().double(), p=1) / 2.0


def mining_count(n: int, ratio: float) -> int:
    """Pairs mined from n samples: ``int(n(n−1)/2 · ratio)`` as in the official code; 0 for
    tiny batches (n(n−1)/2·ratio < 1, e.g. n ≤ 20 at the default ratio 0.005)."""
    n_pairs = n * (n - 1) // 2 if n > 1 else 0
    return int(n_pairs * ratio)


def top_agreement(values: Tensor, ratio: float) -> Tensor:
    """The ``int(n·ratio)``-th largest of n pair agreements (official ``sorted[-pos]``).

    When ``int(n·ratio)`` is 0 the official ``sorted[-0]`` returns the *smallest* agreement,
    an indexing accident that would drag the threshold down; here the count is clamped to 1
    (the largest agreement). Raises ``ValueError`` on an empty input.
    """
    flat = values.detach().flatten()
    if flat.numel() == 0:
        raise ValueError("top_agreement: no pair agreements (fewer than 2 samples)")
    k = max(1, int(flat.numel() * ratio))
    return torch.topk(flat, k).values[-1]


def initial_threshold(memory: Tensor, ratio: float, block: int = 1024) -> float:
    """Initial mining threshold: ``top_agreement`` over all i < j pairs of the multilabels.

    Exact, without an N×N matrix: rows are taken in blocks, each block's agreements with the
    rows at or after it (``torch.cdist`` p=1, which computes directly, no N×N×K tensor) are
    masked to j > i and merged into a running top-k. Computed in ``memory``'s dtype (the
    official code uses float64 ``pdist``; pass ``memory.double()`` to match it to the bit).
    """
    n = memory.shape[0]
    n_pairs = n * (n - 1) // 2
    if n_pairs == 0:
        raise ValueError("initial_threshold: need at least 2 rows")
    if block < 1:
        raise ValueError("initial_threshold: block must be >= 1")
    k = max(1, int(n_pairs * ratio))
    x = _wide(memory.detach())
    best = x.new_empty(0)
    for r0 in range(0, n - 1, block):
        r1 = min(r0 + block, n)
        d = torch.cdist(x[r0:r1], x[r0:], p=1)  # rows i = r0+r, columns j = r0+c
        upper = torch.ones_like(d, dtype=torch.bool).triu(1)  # c > r  <=>  j > i
        vals = 1.0 - d[upper] / 2.0
        merged = torch.cat([best, vals])
        best = torch.topk(merged, min(k, merged.numel())).values
    return float(best[k - 1])


def update_threshold(t: float, t_batch: float | Tensor, momentum: float = 0.9) -> float:
    """``t ← momentum·t + (1−momentum)·t_batch``. Officially called after the batch has been
    partitioned, so each batch is mined with the threshold of the previous ones."""
    return momentum * float(t) + (1.0 - momentum) * float(t_batch)


@dataclass
class MinedPairs:
    """Mined pairs as batch positions (i < j), in increasing feature distance.

    ``positive`` (P×2 long): close pairs whose multilabels agree above the threshold;
    ``negative`` (N×2 long): close pairs that do not (hard negatives).
    """

    positive: Tensor
    negative: Tensor


def mine_pairs(z: Tensor, ml_rows: Tensor, threshold: float, ratio: float,
               agreements: Tensor | None = None) -> MinedPairs:
    """Take the ``mining_count(n, ratio)`` closest pairs by Euclidean distance of the detached
    features; those with ``agreement(ml_i, ml_j) > threshold`` are positives, the rest negatives.

    ``ml_rows`` are the memory rows just written (``update_memory``). Distances and agreements
    are float64 as in the official scipy code; ties in distance are broken by pair order
    (stable sort; numpy's default argsort there is not stable). Does not touch the threshold:
    update it afterwards, as the official code does. 0 mined pairs (tiny batch) gives two empty
    sets, as officially. ``agreements``: ``pair_agreements(ml_rows)`` when the caller has them
    already (it needs them for the threshold update too).
    """
    n = z.shape[0]
    k = mining_count(n, ratio)
    empty = torch.zeros((0, 2), dtype=torch.long, device=z.device)
    if k == 0:
        return MinedPairs(empty, empty.clone())
    with torch.no_grad():
        dist = torch.pdist(z.detach().double())
        agree = (pair_agreements(ml_rows) if agreements is None else agreements).to(dist.device)
        order = torch.argsort(dist, stable=True)[:k]
        ii, jj = torch.triu_indices(n, n, 1, device=dist.device)
        pairs = torch.stack([ii[order], jj[order]], 1).to(z.device)
        is_pos = (agree[order] > threshold).to(z.device)
    return MinedPairs(pairs[is_pos], pairs[~is_pos])


def mdl_loss(z: Tensor, pairs: MinedPairs) -> Tensor:
    """``L_MDL = −log(P̄ / (P̄ + N̄))`` with ``P̄``/``N̄`` the mean ``exp(−‖z_i − z_j‖²)`` over
    the positive/negative pairs: pull agreeing neighbours together, push disagreeing ones apart.

    Official empty cases (``DiscriminativeLoss.forward``): no positive pair → ``P̄ = 1`` and no
    numerator term, ``L = log(1 + N̄)``; no negative pair → ``N̄ = 0.5``; both → ``log 1.5``
    (a constant, here attached to the graph with zero gradient).
    """
    x = _wide(z)

    def mean_exp(p: Tensor) -> Tensor:
        p = p.to(x.device)
        return torch.exp(-(x[p[:, 0]] - x[p[:, 1]]).pow(2).sum(1)).mean()

    if len(pairs.positive):
        pos = mean_exp(pairs.positive)
        num = -torch.log(pos)
    else:
        pos = x.new_tensor(1.0)
        num = _zero_like_graph(z)
    neg = mean_exp(pairs.negative) if len(pairs.negative) else x.new_tensor(0.5)
    return num + torch.log(pos + neg)
