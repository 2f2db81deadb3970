"""Classification and metric losses that several methods share (a method's own losses live in
its package under ``reidctl/methods/``).

Plain functions of tensors: each takes logits or features and pseudo labels and returns a 0-d
loss (computed in float32), so that every one can be checked by hand on a few numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_i(−Σ_k target_ik · log softmax(logits_i)_k)`` for soft targets (rows summing to 1)."""
    return -(target.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def label_smoothing_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1
                                  ) -> torch.Tensor:
    """Cross entropy against ``(1−ε)·onehot(y) + ε/K`` (the usual label smoothing over K classes)."""
    k = logits.shape[-1]
    target = F.one_hot(labels, k).float() * (1.0 - epsilon) + epsilon / k
    return soft_cross_entropy(logits, target)


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(‖x_i‖² + ‖x_j‖² − 2 x_i·x_j, 1e-12))``: the official distance, so the diagonal is 1e-6."""
    sq = (x * x).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())
    return d2.clamp(min=1e-12).sqrt()


def soft_triplet_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Batch-hard soft-margin triplet: ``mean_i softplus(d_ap − d_an)`` (= −log softmax([d_ap, d_an])₁).

    ``d_ap`` is the largest distance to a same-label sample (the anchor itself counts, at 1e-6),
    ``d_an`` the smallest to another label; an anchor without negatives in the batch adds 0.
    """
    d = pairwise_euclidean(features.float())
    same = labels[:, None] == labels[None, :]
    d_ap = d.masked_fill(~same, float("-inf")).amax(1)
    d_an = d.masked_fill(same, float("inf")).amin(1)
    return F.softplus(d_ap - d_an).mean()


def widened(x: torch.Tensor) -> torch.Tensor:
    """Half/bfloat16 inputs (autocast) are computed in float32; float32/64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def normalized_agents(weight: torch.Tensor) -> torch.Tensor:
    """The reference agents: rows of the bias-free classifier weight, L2-normalised.

    Uses ``renorm(2, 0, 1e-5).mul(1e5)`` as ``src/resnet.py`` does, i.e. ``w / (‖w‖ + 1e-7)``
    for every row of norm > 1e-5 (F.normalize up to that 1e-7). Differentiable, so the agent
    learning loss moves the classifier weight.
    """
    return weight.renorm(2, 0, 1e-5).mul(1e5)


def agent_learning_loss(z: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, scale: float = 30.0
                        ) -> torch.Tensor:
    """The normalised softmax of labelled source samples: cross-entropy of the scaled cosine
    ``scale·z·âᵀ`` (MAR's ``L_AL``, source pretraining's loss, the joint source step's). In MAR it
    is the only loss through which the agents learn (L_RJ and the multilabels detach them)."""
    logits = scale * (widened(z) @ widened(normalized_agents(weight)).t())
    return F.cross_entropy(logits, labels)
