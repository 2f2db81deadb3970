"""A camera-aware term that any pseudo-label method can switch on (``--camera-proxies``).

Clusters of an early model rarely span cameras: each identity splits into one cluster per camera,
and a method that only pulls a sample towards its own cluster never learns to match across
cameras, which is all the Market protocol scores. The camera-aware variant of ALGORITHMS.md §4.5
(CAP's inter-camera proxies are the same idea) adds an *inter-camera proxy* loss: one proxy per (cluster, camera) pair, fixed for the epoch, and each
sample pulled towards the proxies of its cluster in the *other* cameras, against the hardest
proxies of other clusters. Here it is a trainer wrapper (:class:`CameraAware`) around any method
that trains on pseudo labels with :class:`~reidctl.train.epoch.Batch` inputs, unchanged: the
method's step runs as always, and the term is added to its loss, on the global feature and, for
a method that trains its part features (``uses_parts``), on each part too
(``L_gcam + mean_p L_pcam``, the official sum of §4.5). Its options live in
:class:`CameraAwareParams`, which the parameters of every clustering method extend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reidctl.errors import ReidctlError
from reidctl.options import option
from reidctl.train.contract import StepResult, TrainParams
from reidctl.train.epoch import EpochData
from reidctl.train.wrapper import MethodWrapper


@dataclass
class CameraAwareParams(TrainParams):
    """The trainer options of a method that trains on pseudo labels, with the camera-aware term.
    Defaults: the official Market values of ALGORITHMS.md §4.5 (λ 0.5, τ 0.07, 50 hard negatives;
    MSMT17 uses λ 1.0)."""

    camera_proxies: bool = field(default=False, metadata=option(
        "Add the inter-camera proxy loss (ALGORITHMS.md §4.5, for any clustering method): each sample is pulled "
        "towards its cluster's proxies in the other cameras; needs camera ids."))
    cam_lambda: float = field(default=0.5, metadata=option(
        "Weight λ of the inter-camera proxy loss (the official Market value; MSMT17 1.0)."))
    cam_temperature: float = field(default=0.07, metadata=option("Temperature τ of the inter-camera proxy loss."))
    cam_hard_negatives: int = field(default=50, metadata=option(
        "Hard negative proxies of the inter-camera proxy loss."))

    def check(self) -> None:
        super().check()
        if self.cam_temperature <= 0 or self.cam_hard_negatives < 1:
            raise ReidctlError("--cam-temperature must be positive and --cam-hard-negatives at least 1")
        if self.cam_lambda < 0:
            raise ReidctlError("--cam-lambda must not be negative")


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
    """Inter-camera proxy loss (the camera-aware variant of ALGORITHMS.md §4.5).

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


def wants_camera_term(method: Any) -> bool:
    """Whether ``method``'s parameters switch the camera-aware term on."""
    return isinstance(method.params, CameraAwareParams) and method.params.camera_proxies


class CameraAware(MethodWrapper):
    """``method`` with the inter-camera proxy loss added to its step (see the module docstring).
    Every hook it does not override is the method's own."""

    def __init__(self, method: Any) -> None:
        super().__init__(method)
        self._proxies: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def make_state(self, data: EpochData, heads: nn.Module | None) -> Any:
        """The method's state; the epoch's proxies (global, then each trained part), kept here."""
        if (data.camids < 0).any():
            raise ReidctlError("--camera-proxies needs camera ids, and some images have none")
        if len(np.unique(data.camids)) < 2:
            raise ReidctlError("--camera-proxies needs images of two or more cameras: this train split has one")
        feats = [data.features]
        if self.method.uses_parts and data.parts is not None:
            feats += [np.ascontiguousarray(data.parts[:, i]) for i in range(data.parts.shape[1])]
        y, cams = torch.as_tensor(data.labels), torch.as_tensor(data.camids)
        self._proxies = [tuple(t.to(data.device) for t in camera_proxies(torch.as_tensor(x), y, cams))  # type: ignore[misc]
                         for x in feats]
        return self.method.make_state(data, heads)

    def training_step(self, inputs: Any, forward: Any, state: Any) -> StepResult:
        """The method's step; ``cam_lambda`` × the inter-camera proxy loss of its first forward
        pass's features added to its loss (logged as ``camera``)."""
        captured: list[Any] = []

        def first_forward(images: Any) -> Any:
            outs = forward(images)
            if not captured:
                captured.append(outs)
            return outs

        step = self.method.training_step(inputs, first_forward, state)
        if not captured or not isinstance(captured[0], dict):
            raise ReidctlError(f"--camera-proxies: --method {self.method.name} makes no single-domain forward "
                               "pass on its pseudo-labelled batch")
        out, p = captured[0], self.method.params
        feats = [out["global"], *(out["parts"].unbind(1) if len(self._proxies) > 1 else ())]
        terms = [camera_proxy_loss(f, inputs.labels, inputs.camids, *prox, temperature=p.cam_temperature,
                                   hard_negatives=p.cam_hard_negatives) for f, prox in zip(feats, self._proxies)]
        l_cam = terms[0] + torch.stack(terms[1:]).mean() if len(terms) > 1 else terms[0]
        return StepResult(step.loss + p.cam_lambda * l_cam, {**step.logs, "camera": l_cam.detach()}, step.outputs)
