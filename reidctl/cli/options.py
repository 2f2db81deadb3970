"""Option declarations shared by several commands, so a flag means the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Data = Annotated[str, typer.Option("--data", help="Dataset folder, CSV manifest, or synthetic:tiny / synthetic:small.")]
DatasetName = Annotated[
    Optional[str],
    typer.Option("--dataset", help="Force a layout instead of detecting it (market1501, dukemtmc, msmt17, cuhk03, "
                 "cuhk03-labeled, cuhk03-detected, folder, manifest)."),
]
Arch = Annotated[str, typer.Option("--arch", help="Backbone: resnet50, resnet18 or mobilenet_v2.")]
Pooling = Annotated[str, typer.Option("--pooling", help="Global pooling: gem (learnable p) or avg.")]
LastStride = Annotated[int, typer.Option("--last-stride", help="Stride of the last stage: 1 (the papers' default) or 2.")]
Parts = Annotated[int, typer.Option("--parts", help="Number of horizontal part stripes (0 = none; PPLR 3, NCPLR 2).")]
MethodPooling = Annotated[Optional[str], typer.Option(
    "--pooling", help="Global pooling of a fresh model: gem or avg (default: the method's; pplr avg, others gem).")]
MethodParts = Annotated[Optional[int], typer.Option(
    "--parts", help="Part stripes of a fresh model (default: the method's; pplr 3, others 0).")]
Height = Annotated[int, typer.Option("--height", help="Input height in pixels (128 suits CPU work).")]
Width = Annotated[int, typer.Option("--width", help="Input width in pixels (64 suits CPU work).")]
Weights = Annotated[
    Optional[Path],
    typer.Option("--weights", help="Backbone weights file: a torchvision state dict or its 'features' part."),
]
Pretrained = Annotated[str, typer.Option("--pretrained", help="imagenet (torchvision weights API; needs internet once) or none.")]
Checkpoint = Annotated[Optional[Path], typer.Option("--checkpoint", help="A reidctl checkpoint (.pt) to take the model from.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")]
Workers = Annotated[int, typer.Option("--workers", help="Data-loading worker processes.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (random initialisation, sampling).")]
Json = Annotated[bool, typer.Option("--json", help="Print a machine-readable result on stdout.")]
Force = Annotated[bool, typer.Option(
    "--force", help="Overwrite --out even when it holds something else than this command's kind of artifact.")]
SkipBad = Annotated[bool, typer.Option("--skip-bad-images", help="Skip and count unreadable images instead of failing.")]
