"""Image transforms of the CC family (ALGORITHMS.md §3.6): bicubic resize, ImageNet normalisation."""

from __future__ import annotations

import torchvision.transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def test_transform(height: int, width: int) -> T.Compose:
    """Feature extraction for clustering and evaluation: no flip, no test-time augmentation."""
    return T.Compose([
        T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
