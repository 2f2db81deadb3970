"""Feature extraction: images → L2-normalised global (and part) features, in artifact row order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from reidctl.runtime import dist
from reidctl.data.base import Sample
from reidctl.data.stats import IMAGENET, Norm, given_norm
from reidctl.data.transforms import ImageRows, normalize_batch
from reidctl.runtime.device import resolve_extract_batch, resolve_workers
from reidctl.runtime.precision import DEFAULT_AMP, autocast, memory_format, resolve_amp
from reidctl.errors import DatasetError
from reidctl.models.inference import inference_model
from reidctl.models.reid import ReidModel


@dataclass
class Extracted:
    feats: np.ndarray  # N×D float32, L2-normalised
    parts: np.ndarray | None  # N×P×D or None
    keep: np.ndarray  # bool per input sample: False where the image was bad and skipped
    bad: list[str]  # error messages of skipped images


def extract_features(
    model: ReidModel,
    samples: Sequence[Sample],
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    device: torch.device | str = "cpu",
    amp: str = DEFAULT_AMP,
    skip_bad_images: bool = False,
    progress: Callable[[int], None] | None = None,
    norm: Norm | None = None,
) -> Extracted:
    """Eval-mode features of ``samples``, channels-last, in float32 (``amp``: autocast on CUDA).

    Under ``torchrun`` (a process group is up) each rank extracts its contiguous block of
    ``samples`` and every rank gets the whole result, in the order of ``samples``. ``norm``: the
    input normalisation (:func:`reidctl.data.stats.input_norm` of the model and the dataset);
    None: ImageNet's, which only a model with ``input_norm == "imagenet"`` may use.
    """
    norm = given_norm(model.config, norm)
    if not dist.is_distributed():
        feats, parts, keep, bad, error = _extract_rows(
            model, samples, batch_size=batch_size, workers=workers, device=device, amp=amp,
            skip_bad_images=skip_bad_images, progress=progress, norm=norm)
        if error:
            raise DatasetError(error)
        if feats is None:
            raise DatasetError("no images to extract features from")
        return Extracted(feats[keep], None if parts is None else parts[keep], keep, bad)

    lo, hi = dist.shard_range(len(samples))
    feats, parts, keep, bad, error = _extract_rows(
        model, samples[lo:hi], batch_size=batch_size, workers=workers, device=device, amp=amp,
        skip_bad_images=skip_bad_images, progress=progress, norm=norm)
    # Agree on shapes and errors first, so that no rank waits forever on a rank that failed.
    info = dist.all_gather_object((None if feats is None else feats.shape[1:],
                                   None if parts is None else parts.shape[1:], bad, error))
    errors = [e for *_, e in info if e]
    if errors:
        raise DatasetError(errors[0])
    shapes = [(f, p) for f, p, _, _ in info if f is not None]
    if not shapes:
        raise DatasetError("no images to extract features from")
    fshape, pshape = shapes[0]
    if feats is None:
        feats = np.empty((0, *fshape), dtype=np.float32)
        parts = None if pshape is None else np.empty((0, *pshape), dtype=np.float32)
    feats = dist.all_gather_rows(torch.from_numpy(feats)).numpy()
    if parts is not None:
        parts = dist.all_gather_rows(torch.from_numpy(parts)).numpy()
    keep = dist.all_gather_rows(torch.from_numpy(keep.astype(np.uint8))).numpy().astype(bool)
    bad = [msg for _, _, b, _ in info for msg in b]
    return Extracted(feats[keep], None if parts is None else parts[keep], keep, bad)


def _extract_rows(
    model: ReidModel,
    samples: Sequence[Sample],
    *,
    batch_size: int | None,
    workers: int | None,
    device: torch.device | str,
    amp: str,
    skip_bad_images: bool,
    progress: Callable[[int], None] | None,
    norm: Norm = IMAGENET,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray, list[str], str]:
    """Features of every row (zeros where skipped), the keep mask, skip messages, and the first
    fatal error message (returned, not raised, so distributed callers can agree on it)."""
    device = torch.device(device)
    cfg = model.config
    n = len(samples)
    keep = np.ones(n, dtype=bool)
    bad: list[str] = []
    if n == 0:
        return None, None, keep, bad, ""
    loader = DataLoader(
        ImageRows(samples, cfg.height, cfg.width),
        batch_size=resolve_extract_batch(batch_size, device),
        num_workers=resolve_workers(workers, device),
        pin_memory=device.type == "cuda",
        shuffle=False,
        generator=torch.Generator(),  # do not draw loader seeds from the global RNG
    )
    layout, dtype = memory_format(device), resolve_amp(amp, device)
    model = inference_model(model, device, layout)
    feats = parts = None
    with torch.inference_mode():
        for images, index, errors in loader:
            for i, err in zip(index.tolist(), errors):
                if err:
                    if not skip_bad_images:
                        return None, None, keep, bad, f"{err} (use --skip-bad-images to skip such files)"
                    keep[i] = False
                    bad.append(err)
            images = normalize_batch(images, device, layout, norm.mean, norm.std)
            with autocast(device, dtype):
                out = model.embed(images)
            g = out["global"].float().cpu().numpy()
            if feats is None:
                feats = np.zeros((n, g.shape[1]), dtype=np.float32)
                if "parts" in out:
                    parts = np.zeros((n, *out["parts"].shape[1:]), dtype=np.float32)
            idx = index.numpy()
            feats[idx] = g
            if parts is not None:
                parts[idx] = out["parts"].float().cpu().numpy()
            if progress is not None:
                progress(len(idx))
    return feats, parts, keep, bad, ""
