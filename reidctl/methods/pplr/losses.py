"""PPLR's own losses (ALGORITHMS.md §4.4-4.5): the part-guided global target (PGLR), the
agreement-aware label smoothing of the parts (AALS) and the camera-aware proxy loss of
``train_pplr_cam.py``. Plain functions of tensors, checked by hand in tests/test_pplr.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def agreement_weights(agreement: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-sample part weights ``softmax_p(S_ip / T)`` (B×P). With T = 1, as the official code
    runs it, the weights stay close to 1/P (about 0.16–0.58 for P = 3)."""
    return torch.softmax(agreement.float() / temperature, dim=-1)


def pglr_target(labels: torch.Tensor, part_logits: torch.Tensor, agreement: torch.Tensor, beta: float = 0.5,
                temperature: float = 1.0) -> torch.Tensor:
    """PGLR's refined global target ``β·onehot(y) + (1−β)·Σ_p w_p·softmax(part logits_p)`` (B×K).

    ``part_logits`` is B×P×K, ``agreement`` B×P. The part ensemble is detached: the global
    branch learns from the parts, not the other way round.
    """
    k = part_logits.shape[-1]
    w = agreement_weights(agreement, temperature)  # B×P
    ensemble = (w.unsqueeze(-1) * torch.softmax(part_logits.detach().float(), dim=-1)).sum(1)
    return beta * F.one_hot(labels, k).float() + (1.0 - beta) * ensemble


def aals_loss(part_logits: torch.Tensor, labels: torch.Tensor, agreement: torch.Tensor) -> torch.Tensor:
    """AALS: per part ``S·CE(onehot(y), p) + (1−S)·KL(u ‖ p)``, averaged over samples and parts.

    ``u`` is uniform over the K classes; ``KL(u‖p) = −log K − mean_k log p_k`` differs from
    ``CE(u, p)`` by the constant ``log K`` (same gradients), and it is what the official code reports.
    """
    k = part_logits.shape[-1]
    logp = F.log_softmax(part_logits.float(), dim=-1)  # B×P×K
    ce = -logp.gather(-1, labels[:, None, None].expand(-1, logp.shape[1], 1)).squeeze(-1)  # B×P
    kl_uniform = -math.log(k) - logp.mean(-1)  # B×P
    s = agreement.float()
    return (s * ce + (1.0 - s) * kl_uniform).mean()


def camera_proxies(features: torch.Tensor, labels: torch.Tensor, camids: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One proxy per (cluster, camera) pair: the L2-normalised mean of the members' features there.

    Returns ``(proxies M×D, proxy_labels M, proxy_cams M)``, pairs in ascending (label, camera) order.
    """
    x = F.normalize(features.float(), dim=1)
    pairs, inverse = torch.unique(torch.stack([labels, camids], 1), dim=0, return_inverse=True)
    sums = torch.zeros(len(pairs), x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
    return F.normalize(sums, dim=1), pairs[:, 0], pairs[:, 1]


def camera_proxy_loss(features: torch.Tensor, labels: torch.Tensor, camids: torch.Tensor,
                      proxies: torch.Tensor, proxy_labels: torch.Tensor, proxy_cams: torch.Tensor,
                      temperature: float = 0.07, hard_negatives: int = 50) -> torch.Tensor:
    """Inter-camera proxy loss (PPLR's camera-aware variant, ALGORITHMS.md §4.5).

    For sample i with similarities ``s = normalize(f_i)·proxies / τ``: positives are the proxies of
    its own label in *other* cameras, negatives the ``hard_negatives`` most similar proxies of other
    labels, and ``loss_i = −mean_{pos} log softmax_{pos ∪ neg}(s)``. Samples without a cross-camera
    positive add nothing, but the sum is still divided by the whole batch size.
    """
    b = features.shape[0]
    pos = (labels[:, None] == proxy_labels[None, :]) & (camids[:, None] != proxy_cams[None, :])
    valid = pos.any(1)
    if not bool(valid.any()):
        return features.sum() * 0.0
    s = F.normalize(features[valid].float(), dim=1) @ proxies.t() / temperature  # V×M
    pos = pos[valid]
    neg = labels[valid][:, None] != proxy_labels[None, :]
    h = min(hard_negatives, proxies.shape[0])
    neg_s = s.masked_fill(~neg, float("-inf")).topk(h, dim=1).values  # −inf where fewer negatives exist
    lse = torch.logsumexp(torch.cat([s.masked_fill(~pos, float("-inf")), neg_s], 1), dim=1)
    npos = pos.sum(1)
    mean_pos = (s * pos).sum(1) / npos
    return (lse - mean_pos).sum() / b
