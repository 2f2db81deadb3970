"""Image transforms of the CC family (ALGORITHMS.md §3.6): bicubic resize, ImageNet normalisation,
and the training augmentation (flip, pad + crop, random erasing after normalisation)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset

from reidctl.data.base import Sample
from reidctl.data.images import load_image
from reidctl.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def test_transform(height: int, width: int) -> T.Compose:
    """Feature extraction for clustering and evaluation: no flip, no test-time augmentation."""
    return T.Compose([
        T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class ResizedBytes:
    """Extraction's per-image work, for a DataLoader worker: bicubic resize to H×W, kept as a
    uint8 C×H×W tensor. :func:`normalize_batch` finishes it on the device, one batch at a time:
    a quarter of the bytes cross from the workers and to the GPU, and the float work runs once,
    vectorised, instead of per image. Together they compute exactly what :func:`test_transform`
    computes (the same float operations in the same order)."""

    def __init__(self, height: int, width: int) -> None:
        self.resize = T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC)

    def __call__(self, img) -> torch.Tensor:
        return TF.pil_to_tensor(self.resize(img))


def normalize_batch(images: torch.Tensor, device: torch.device,
                    memory_format: torch.memory_format = torch.contiguous_format,
                    mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """uint8 B×C×H×W → float32 in ``memory_format`` on ``device``: ``(x / 255 − mean) / std``."""
    x = images.to(device, non_blocking=True, memory_format=memory_format).float().div_(255)
    mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


class TrainTransform:
    """The CC-family training augmentation (ALGORITHMS.md §3.6), drawing from an explicit generator.

    Resize (bicubic) → horizontal flip (p 0.5) → Pad(10, zeros) → random crop back to H×W →
    ToTensor → Normalize(ImageNet) → :class:`RandomErasing` (p 0.5, in normalised space).
    MAR's (§6.4) is the same with ``pad=7``, ``erasing=False`` and the dataset's own mean/std.

    Why not a plain ``T.Compose``: torchvision's random transforms draw from the global torch RNG.
    Here every call may take its own ``torch.Generator``, so the trainer can give each sampled
    image its own seed: the augmentation of an image then depends neither on the number of
    DataLoader workers nor on how a batch is split across DDP ranks. Without a generator the
    global torch RNG is used. The random draws have torchvision's distributions (flip:
    ``rand < p``; crop offsets: uniform integers over all valid positions).
    """

    def __init__(self, height: int, width: int, pad: int = 10, flip_p: float = 0.5, *,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 erasing: bool = True) -> None:
        self.size = (height, width)
        self.pad = pad
        self.flip_p = flip_p
        self.resize = T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC)
        self.normalize = T.Normalize(mean, std)
        self.mean = tuple(mean)
        self.erasing = RandomErasing() if erasing else None

    def __call__(self, img, generator: torch.Generator | None = None) -> torch.Tensor:
        img = self.resize(img)
        if torch.rand((), generator=generator).item() < self.flip_p:
            img = TF.hflip(img)
        img = TF.pad(img, self.pad, fill=0)
        h, w = self.size
        pw, ph = img.size  # PIL: width, height
        top = int(torch.randint(0, ph - h + 1, (), generator=generator))
        left = int(torch.randint(0, pw - w + 1, (), generator=generator))
        img = TF.crop(img, top, left, h, w)
        x = self.normalize(TF.to_tensor(img))
        return x if self.erasing is None else self.erasing(x, generator=generator)

    def __repr__(self) -> str:
        h, w = self.size
        norm = "ImageNet" if self.mean == IMAGENET_MEAN else f"mean={self.mean}"
        return (f"TrainTransform(resize=({h}, {w}) bicubic, flip={self.flip_p}, pad={self.pad}, crop=({h}, {w}), "
                f"normalize={norm}, {self.erasing!r})")


def train_transform(height: int, width: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD) -> TrainTransform:
    """Training augmentation of the CC family: flip, pad-10 + crop, random erasing after normalising."""
    return TrainTransform(height, width, mean=mean, std=std)


class RandomErasing:
    """Random erasing as the CC/SpCL/PPLR/NCPLR codes implement it (Zhong et al. 2020).

    With probability ``p``, up to ``attempts`` times: draw an area ``U(sl, sh)·H·W`` and an aspect
    ratio ``U(r1, 1/r1)``; ``h = round(√(area·r))``, ``w = round(√(area/r))``; if ``h < H`` and
    ``w < W`` fill a uniformly placed h×w box with ``fill[c]`` per channel and stop. The tensor is
    already normalised, so the default fill (the ImageNet mean, as the official code passes it)
    is a normalised value, not the mean colour. For a tensor with other than ``len(fill)``
    channels only channel 0 is filled, as in the official code.

    Differences from ``torchvision.transforms.RandomErasing``: torchvision defaults to
    scale (0.02, 0.33) instead of (0.02, 0.4), draws the aspect ratio log-uniformly instead of
    uniformly, makes 10 attempts instead of 100, and fills with 0 by default. Draws here come from
    the torch RNG (``generator`` or the global one), not Python's ``random``.
    """

    def __init__(self, p: float = 0.5, sl: float = 0.02, sh: float = 0.4, r1: float = 0.3,
                 fill: tuple[float, ...] = IMAGENET_MEAN, attempts: int = 100) -> None:
        self.p, self.sl, self.sh, self.r1 = p, sl, sh, r1
        self.fill = tuple(fill)
        self.attempts = attempts

    def _uniform(self, lo: float, hi: float, generator: torch.Generator | None) -> float:
        return lo + (hi - lo) * torch.rand((), dtype=torch.float64, generator=generator).item()

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if torch.rand((), dtype=torch.float64, generator=generator).item() >= self.p:
            return img
        channels, height, width = img.shape
        area = height * width
        for _ in range(self.attempts):
            target = self._uniform(self.sl, self.sh, generator) * area
            aspect = self._uniform(self.r1, 1.0 / self.r1, generator)
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if h < height and w < width:
                top = int(torch.randint(0, height - h + 1, (), generator=generator))
                left = int(torch.randint(0, width - w + 1, (), generator=generator))
                if channels == len(self.fill):
                    for c in range(channels):
                        img[c, top:top + h, left:left + w] = self.fill[c]
                else:
                    img[0, top:top + h, left:left + w] = self.fill[0]
                return img
        return img

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, sl={self.sl}, sh={self.sh}, r1={self.r1}, fill={self.fill})"


class ImageRows(Dataset):
    """Images of ``samples`` in order. A bad image never raises inside a worker: it comes back
    flagged with its error, so the main process can fail with one clear message or skip it."""

    def __init__(self, samples: Sequence[Sample], height: int, width: int) -> None:
        self.samples = list(samples)
        self.transform = ResizedBytes(height, width)
        self.blank = torch.zeros(3, height, width, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        try:
            return self.transform(load_image(self.samples[i].path)), i, ""
        except DatasetError as exc:
            return self.blank, i, str(exc)
