"""The re-ID model: backbone → pooling → BatchNorm neck, plus optional horizontal part stripes.

Stripes split the feature map by height. ``disjoint`` (the default) cuts it at ``(i·H)//P``, so
the stripes share no row: GL-NCPLR's up/down halves at ``H//2`` exactly, and PPLR's three
stripes as the official 24-row maps give them. ``adaptive`` is ``AdaptiveAvgPool2d((P, 1))``'s
binning, whose bins overlap by a row when H is not a multiple of P (8 rows, 3 stripes:
[0,3), [2,6), [5,8)); it is what checkpoints made before the option existed use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from reidctl.errors import ReidctlError
from reidctl.models.backbones import BACKBONES, build_backbone

POOLINGS = ("avg", "gem")
PART_SPLITS = ("disjoint", "adaptive")
#: ``bn``: a BatchNorm neck (bias frozen at 0) after pooling, as the CC family builds it;
#: ``none``: the pooled feature itself, as MAR's ResNet (ALGORITHMS.md §6.2).
NECKS = ("bn", "none")
#: How images are normalised before the model: ImageNet's mean/std, or the per-channel mean/std
#: of the dataset the images come from (its train split; MAR's ``use_source_stat=False``).
INPUT_NORMS = ("imagenet", "dataset")


def stripe_bounds(height: int, bins: int, split: str = "disjoint") -> list[tuple[int, int]]:
    """Row ranges ``[lo, hi)`` of ``bins`` horizontal stripes of a ``height``-row map.

    ``disjoint``: ``[(i·H)//P, ((i+1)·H)//P)``, a partition of the rows. ``adaptive``: floor and
    ceil bounds, as ``AdaptiveAvgPool2d`` bins them (overlapping when P does not divide H).
    """
    if split == "disjoint":
        return [((i * height) // bins, ((i + 1) * height) // bins) for i in range(bins)]
    return [((i * height) // bins, -((-(i + 1) * height) // bins)) for i in range(bins)]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model's structure (stored in every checkpoint)."""

    arch: str = "resnet50"
    pooling: str = "gem"
    parts: int = 0
    last_stride: int = 1
    height: int = 256
    width: int = 128
    part_split: str = "disjoint"
    neck: str = "bn"
    last_relu: bool = True  # ResNet: the ReLU after the last block (MAR drops it)
    input_norm: str = "imagenet"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """A checkpoint's recorded config. One recorded before ``part_split`` existed pooled its
        stripes with adaptive bins, so that is what it gets back."""
        values = dict(values)
        values.setdefault("part_split", "adaptive")
        return cls(**values)

    def __post_init__(self) -> None:
        if self.arch not in BACKBONES:
            raise ReidctlError(f"unknown architecture '{self.arch}' (choose one of {', '.join(BACKBONES)})")
        if self.pooling not in POOLINGS:
            raise ReidctlError(f"unknown pooling '{self.pooling}' (choose avg or gem)")
        if self.parts < 0:
            raise ReidctlError("--parts must be 0 (no parts) or a positive number of stripes")
        if self.last_stride not in (1, 2):
            raise ReidctlError("--last-stride must be 1 or 2")
        if self.part_split not in PART_SPLITS:
            raise ReidctlError(f"unknown --part-split '{self.part_split}' (choose disjoint or adaptive)")
        if self.neck not in NECKS:
            raise ReidctlError(f"unknown --neck '{self.neck}' (choose bn or none)")
        if self.input_norm not in INPUT_NORMS:
            raise ReidctlError(f"unknown --input-norm '{self.input_norm}' (choose imagenet or dataset)")
        if self.height < 32 or self.width < 16:
            raise ReidctlError(f"input size {self.height}×{self.width} is too small (at least 32×16)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GeneralizedMeanPooling(nn.Module):
    """GeM with a learnable exponent p (init 3), pooled over ``bins`` horizontal stripes.

    ``bins=1`` is the global pooling of the CC family. With ``bins=P`` every stripe has its own
    exponent and covers the rows :func:`stripe_bounds` gives for ``split``. Output: N×C×bins.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, bins: int = 1, split: str = "disjoint") -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full((bins,), float(p)))
        self.eps = eps
        self.bins = bins
        self.split = split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(min=self.eps)
        pooled = []
        for i, (lo, hi) in enumerate(stripe_bounds(x.shape[2], self.bins, self.split)):
            p = self.p[i]
            pooled.append(x[:, :, lo:hi].pow(p).mean(dim=(2, 3)).pow(1.0 / p))
        return torch.stack(pooled, dim=2)


class StripeAvgPooling(nn.Module):
    """Average pooling over ``bins`` disjoint horizontal stripes (:func:`stripe_bounds`). N×C×bins."""

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, :, lo:hi].mean(dim=(2, 3)) for lo, hi in stripe_bounds(x.shape[2], self.bins)], 2)


def _stripe_pooling(config: ModelConfig) -> nn.Module:
    """The part stripes' pooling: GeM (an exponent per stripe) or average, split as configured."""
    if config.pooling == "gem":
        return GeneralizedMeanPooling(bins=config.parts, split=config.part_split)
    if config.part_split == "adaptive":
        return nn.AdaptiveAvgPool2d((config.parts, 1))
    return StripeAvgPooling(config.parts)


def _neck(channels: int, kind: str = "bn") -> nn.Module:
    """BatchNorm neck with the bias frozen at 0, as every official code of the CC family builds
    it; or none (MAR's model feeds the pooled feature to its agents directly)."""
    if kind == "none":
        return nn.Identity()
    bn = nn.BatchNorm1d(channels)
    nn.init.constant_(bn.weight, 1.0)
    nn.init.constant_(bn.bias, 0.0)
    bn.bias.requires_grad_(False)
    return bn


class ReidModel(nn.Module):
    """Returns neck features: ``{"global": N×C, "parts": N×P×C}`` (unnormalised).

    Use :meth:`embed` for the L2-normalised eval features that every stage stores.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone, self.channels = build_backbone(config.arch, config.last_stride == 1, config.last_relu)
        self.pool = GeneralizedMeanPooling() if config.pooling == "gem" else nn.AdaptiveAvgPool2d(1)
        self.neck = _neck(self.channels, config.neck)
        if config.parts:
            self.part_pool = _stripe_pooling(config)
            self.part_necks = nn.ModuleList(_neck(self.channels, config.neck) for _ in range(config.parts))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.backbone(x)
        out = {"global": self.neck(self.pool(fmap).flatten(1))}
        if self.config.parts:
            if fmap.shape[2] < self.config.parts:
                raise ReidctlError(
                    f"the feature map has {fmap.shape[2]} rows, fewer than --parts {self.config.parts}: "
                    "use a taller input or --last-stride 1"
                )
            stripes = self.part_pool(fmap).flatten(2)  # N×C×P
            out["parts"] = torch.stack([neck(stripes[:, :, i]) for i, neck in enumerate(self.part_necks)], 1)
        return out

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """L2-normalised features (call in eval mode)."""
        return {k: F.normalize(v.float(), dim=-1) for k, v in self(x).items()}
