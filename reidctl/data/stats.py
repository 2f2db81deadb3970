"""Per-channel image statistics: the normalisation a model with ``--input-norm dataset`` uses.

MAR normalises each dataset's images with that dataset's own mean and standard deviation
(``use_source_stat=False`` in its ``main.py``, ALGORITHMS.md §6.4) instead of ImageNet's. The
statistics of a train split are computed once, over its images resized to the model's input
size, and cached on disk (``$REIDCTL_CACHE/stats/``) under the split's fingerprint (the
images' content, :mod:`reidctl.data.fingerprint`), so every later extraction and training epoch
reads them back for the cost of one ``stat`` per image. A cache file records the key it was
written under and a digest of its numbers; one that does not match (edited by hand, written by
an older reidctl) is recomputed and replaced, never used. Statistics with a standard deviation
of 0 (or not finite) in some channel cannot normalise anything (every image would divide by
0): they are refused up front, in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from reidctl.artifacts import ArtifactError, atomic_path
from reidctl.data.base import Sample
from reidctl.data.fingerprint import split_fingerprint
from reidctl.data.synthetic import cache_dir
from reidctl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageRows
from reidctl.errors import DatasetError

if TYPE_CHECKING:
    from reidctl.models.reid import ModelConfig

STATS_VERSION = 1
#: The smallest per-channel standard deviation a normalisation may divide by: a millionth of the
#: pixel range (a flat channel computes to 0 up to float rounding).
MIN_STD = 1e-6
log = logging.getLogger("reidctl")


class Norm(NamedTuple):
    """Per-channel mean and standard deviation of pixel values in [0, 1] (RGB)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET = Norm(IMAGENET_MEAN, IMAGENET_STD)
_MEMO: dict[str, Norm] = {}


def channel_stats(samples: Sequence[Sample], height: int, width: int, workers: int = 0) -> Norm:
    """Mean and (population) standard deviation of every pixel of ``samples`` resized to
    ``height``×``width`` (bicubic, as extraction resizes), per channel, in float64."""
    if not samples:
        raise DatasetError("no images to compute the per-channel statistics of (--input-norm dataset)")
    loader = DataLoader(ImageRows(samples, height, width), batch_size=64, num_workers=workers, shuffle=False)
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for images, _, errors in loader:
        bad = next((e for e in errors if e), "")
        if bad:
            raise DatasetError(bad)
        x = images.to(torch.float64).div_(255)
        total += x.sum(dim=(0, 2, 3)).numpy()
        squares += x.pow(2).sum(dim=(0, 2, 3)).numpy()
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return Norm(tuple(float(v) for v in mean), tuple(float(v) for v in std))


def dataset_norm(train: Sequence[Sample], height: int, width: int, workers: int = 0) -> Norm:
    """:func:`channel_stats` of a train split, cached on disk by the split's fingerprint."""
    key = f"{split_fingerprint(train)}-{height}x{width}-v{STATS_VERSION}"
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir() / "stats" / f"{key}.json"
    norm = _recall(path, key)
    if norm is None:
        norm = channel_stats(train, height, width, workers)
        _store(path, key, norm)
    check_norm(norm, f"the train split's per-channel statistics ({len(train)} images at {height}×{width})")
    _MEMO[key] = norm
    return norm


def check_norm(norm: Norm, what: str) -> None:
    """Refuse a normalisation that would turn every image into NaN or Inf: a standard deviation
    of 0 (a channel with one value in every pixel of every image; below :data:`MIN_STD`, as
    float rounding leaves such a channel ~1e-9) or a value that is not finite."""
    names = ("red", "green", "blue")
    bad = [f"{names[c]} std {norm.std[c]:g}" for c in range(3)
           if not (math.isfinite(norm.std[c]) and norm.std[c] >= MIN_STD)]
    bad += [f"{names[c]} mean {norm.mean[c]:g}" for c in range(3) if not math.isfinite(norm.mean[c])]
    if bad:
        raise DatasetError(f"{what}: {', '.join(bad)}, so --input-norm dataset cannot normalise the images (every "
                           "feature would be NaN); use --input-norm imagenet, or more varied images")


def _check(key: str, mean: Sequence[float], std: Sequence[float]) -> str:
    """The digest a cache file records beside its numbers: of the key and the numbers' exact text."""
    return hashlib.sha256(json.dumps({"key": key, "mean": list(mean), "std": list(std)}).encode()).hexdigest()[:32]


def _recall(path: Path, key: str) -> Norm | None:
    """The statistics cached in ``path``, or None when there are none or they do not check out."""
    try:
        stored = json.loads(path.read_text())
        mean, std = [float(v) for v in stored["mean"]], [float(v) for v in stored["std"]]
        if len(mean) != 3 or len(std) != 3 or stored.get("check") != _check(key, mean, std):
            raise ValueError("its numbers do not match its check digest")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: cached dataset statistics not used (%s); computing them again", path, exc)
        return None
    return Norm(tuple(mean), tuple(std))


def _store(path: Path, key: str, norm: Norm) -> None:
    """Write the cache file atomically; a cache that cannot be written is only a lost speed-up."""
    with contextlib.suppress(ArtifactError), atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"key": key, "mean": list(norm.mean), "std": list(norm.std),
                                   "check": _check(key, norm.mean, norm.std)}))


def input_norm(config: ModelConfig, train: Sequence[Sample], workers: int = 0) -> Norm:
    """The normalisation of a model's input for images of a dataset whose train split is
    ``train``: ImageNet's, or that split's own statistics (``config.input_norm == "dataset"``)."""
    if config.input_norm == "imagenet":
        return IMAGENET
    return dataset_norm(train, config.height, config.width, workers)


def given_norm(config: ModelConfig, norm: Norm | None) -> Norm:
    """``norm``, or ImageNet's when none was given, which only a model normalising with ImageNet's
    statistics may rely on (a ``dataset`` model needs its dataset's, from :func:`input_norm`)."""
    if norm is not None:
        return norm
    if config.input_norm != "imagenet":
        raise ValueError("a model with --input-norm dataset needs the dataset's norm (reidctl.data.stats.input_norm)")
    return IMAGENET
