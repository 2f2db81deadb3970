"""`reidctl extract`: images → features.h5."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reidctl.cli import options as o
from reidctl.cli.common import app, err_console, given_options, print_json, user_errors
from reidctl.extraction import ExtractRequest, run_extract


@app.command("extract")
@user_errors
def extract(
    ctx: typer.Context,
    data: o.Data,
    out: Annotated[Path, typer.Option("--out", help="Features file to write (HDF5).")],
    split: Annotated[str, typer.Option("--split", help="train, query, gallery, test (query+gallery) or all.")] = "train",
    dataset: o.DatasetName = None,
    checkpoint: o.Checkpoint = None,
    arch: o.Arch = "resnet50",
    pooling: o.Pooling = "gem",
    last_stride: o.LastStride = 1,
    parts: o.Parts = 0,
    height: o.Height = 256,
    width: o.Width = 128,
    weights: o.Weights = None,
    pretrained: o.Pretrained = "none",
    batch_size: o.BatchSize = 128,
    workers: o.Workers = 2,
    device: o.Device = "auto",
    seed: o.Seed = 1,
    skip_bad_images: o.SkipBad = False,
    force: o.Force = False,
    json: o.Json = False,
) -> None:
    """Extract L2-normalised eval-mode features of one split (rows = sorted relative paths)."""
    req = ExtractRequest(
        data=data, dataset=dataset, split=split, checkpoint=checkpoint, arch=arch, pooling=pooling,
        last_stride=last_stride, parts=parts, height=height, width=width, weights=weights,
        pretrained=pretrained, batch_size=batch_size, workers=workers, device=device, seed=seed,
        skip_bad_images=skip_bad_images, force=force,
    )
    req.check_given(given_options(ctx))
    result = run_extract(req, out)
    if json:
        print_json(result)
    else:
        msg = f"wrote {result['rows']} × {result['dim']} features ({result['split']}) to {out}"
        if result["skipped_images"]:
            msg += f"; skipped {result['skipped_images']} unreadable images"
        err_console.print(msg, highlight=False)
