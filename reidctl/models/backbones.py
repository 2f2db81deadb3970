"""Backbones from torchvision, cut before their classifier, with the re-ID "last stride 1" option.

A registry maps an architecture name to a builder returning ``(trunk, out_channels)``: the trunk
maps an image batch to the last feature map.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn
import torchvision

from reidctl.errors import ReidctlError

#: ``(last_stride_one, last_relu) → (trunk, out_channels)``.
BackboneBuilder = Callable[[bool, bool], tuple[nn.Module, int]]
BACKBONES: dict[str, BackboneBuilder] = {}

#: torchvision weight enums used by ``--pretrained imagenet``; ResNet uses the V1 weights
#: the official codes were trained from (ALGORITHMS.md §3.2).
IMAGENET_WEIGHTS = {
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V1",
}


def register(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def deco(fn: BackboneBuilder) -> BackboneBuilder:
        BACKBONES[name] = fn
        return fn

    return deco


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its pooling and classifier (keeps torchvision's key names)."""

    def __init__(self, net: torchvision.models.ResNet) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class _NoFinalReLU:
    """A ResNet block whose output skips the final ReLU (MAR's ``is_last=True``, ALGORITHMS.md
    §6.2), so the pooled feature may have negative entries. Used as a mixin on the block's own
    class, so the block keeps its parameters and their names (weights load unchanged)."""

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if hasattr(self, "conv3"):  # bottleneck
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
        else:
            out = self.bn2(self.conv2(out))
        return out + identity


def _drop_final_relu(block: nn.Module) -> None:
    block.__class__ = type(f"{type(block).__name__}NoFinalReLU", (_NoFinalReLU, type(block)), {})


def _resnet(fn: Callable[..., torchvision.models.ResNet], last_stride_one: bool, last_relu: bool = True
            ) -> tuple[nn.Module, int]:
    net = fn(weights=None)
    if not last_relu:
        _drop_final_relu(net.layer4[-1])
    if last_stride_one:
        block = net.layer4[0]
        # Bottleneck blocks stride in conv2, basic blocks in conv1 (ALGORITHMS.md §3.2).
        conv = block.conv2 if hasattr(block, "conv3") else block.conv1
        conv.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    return ResNetTrunk(net), net.fc.in_features


@register("resnet50")
def resnet50(last_stride_one: bool, last_relu: bool = True) -> tuple[nn.Module, int]:
    return _resnet(torchvision.models.resnet50, last_stride_one, last_relu)


@register("resnet18")
def resnet18(last_stride_one: bool, last_relu: bool = True) -> tuple[nn.Module, int]:
    return _resnet(torchvision.models.resnet18, last_stride_one, last_relu)


class MobileNetTrunk(nn.Module):
    """MobileNetV2's ``features`` (1280 channels), keeping torchvision's ``features.*`` keys."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x):
        return self.features(x)


@register("mobilenet_v2")
def mobilenet_v2(last_stride_one: bool, last_relu: bool = True) -> tuple[nn.Module, int]:
    """``last_relu`` is a ResNet option (MAR's); MobileNetV2 keeps its final ReLU6 either way."""
    net = torchvision.models.mobilenet_v2(weights=None)
    if last_stride_one:
        # features[14] opens the 160-channel stage with the last stride-2 depthwise conv; at
        # stride 1 a 128×64 input keeps an 8×4 map, enough rows for part stripes.
        dw = net.features[14].conv[1][0]
        assert dw.stride == (2, 2), "unexpected torchvision MobileNetV2 layout"
        dw.stride = (1, 1)
    return MobileNetTrunk(net.features), net.last_channel


def build_backbone(arch: str, last_stride_one: bool = True, last_relu: bool = True) -> tuple[nn.Module, int]:
    if arch not in BACKBONES:
        raise ReidctlError(f"unknown architecture '{arch}' (choose one of {', '.join(BACKBONES)})")
    return BACKBONES[arch](last_stride_one, last_relu)
