"""`reidctl intra-camera`: icrefine's stage 1, per-camera clusters → intra.h5."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from reidctl.cli import options as o
from reidctl.cli.common import app, err_console, given_options, out_console, print_json, user_errors
from reidctl.methods.icrefine.stage1 import IntraCameraParams, IntraCameraRequest, run_intra_camera

P = IntraCameraParams
Opt = typer.Option


@app.command("intra-camera")
@user_errors
def intra_camera(
    ctx: typer.Context,
    data: o.Data,
    out: Annotated[Path, Opt("--out", help="Intra-camera labels file to write (HDF5), for `refine --method icrefine --intra`.")],
    epochs: Annotated[Optional[int], Opt("--epochs", help=f"Epochs per camera ({P.epochs}); lower it on a CPU.")] = None,
    iters: Annotated[Optional[int], Opt("--iters", help=f"Iterations per epoch ({P.iters}); lower it on a CPU.")] = None,
    clusters: Annotated[Optional[str], Opt("--clusters", help=f"Clusters per camera: images/D or a fixed number ({P.clusters}; Market's released files: 600).")] = None,
    batch_size: Annotated[Optional[int], Opt("--batch-size", help=f"Training batch = ids × --num-instances ({P.batch_size}).")] = None,
    num_instances: Annotated[Optional[int], Opt("--num-instances", help=f"Images per pseudo identity in a batch ({P.num_instances}).")] = None,
    momentum: Annotated[Optional[float], Opt("--momentum", help=f"Cluster memory momentum ({P.momentum}).")] = None,
    temperature: Annotated[Optional[float], Opt("--temperature", help=f"ClusterNCE temperature ({P.temperature}).")] = None,
    lr: Annotated[Optional[float], Opt("--lr", help=f"Adam learning rate ({P.lr}).")] = None,
    weight_decay: Annotated[Optional[float], Opt("--weight-decay", help=f"Adam weight decay ({P.weight_decay}).")] = None,
    bn_chunks: Annotated[Optional[int], Opt("--bn-chunks", help=f"BN statistics per chunk of the batch, emulating 4-GPU DataParallel ({P.bn_chunks}); 1 = plain BN.")] = None,
    k1: Annotated[Optional[int], Opt("--k1", help=f"Jaccard k1 ({P.k1}); a camera needs more images than k1.")] = None,
    k2: Annotated[Optional[int], Opt("--k2", help=f"Jaccard k2 ({P.k2}).")] = None,
    dataset: o.DatasetName = None,
    checkpoint: o.Checkpoint = None,
    arch: o.Arch = "resnet50",
    pooling: o.Pooling = "gem",
    last_stride: o.LastStride = 1,
    height: o.Height = 256,
    width: o.Width = 128,
    weights: o.Weights = None,
    pretrained: o.Pretrained = "none",
    extract_batch_size: Annotated[int, Opt("--extract-batch-size", help="Images per forward pass when extracting.")] = 128,
    amp: Annotated[str, Opt("--amp", help="auto (fp16/bf16 on CUDA), off, fp16 or bf16.")] = "auto",
    deterministic: Annotated[bool, Opt("--deterministic", help="Deterministic kernels (slower on GPU).")] = False,
    workers: o.Workers = 2,
    device: o.Device = "auto",
    seed: o.Seed = 1,
    force: o.Force = False,
    json: o.Json = False,
) -> None:
    """icrefine stage 1: train a fresh model on each camera alone and keep its best clustering."""
    params = IntraCameraParams.resolve({
        "epochs": epochs, "iters": iters, "clusters": clusters, "batch_size": batch_size,
        "num_instances": num_instances, "momentum": momentum, "temperature": temperature, "lr": lr,
        "weight_decay": weight_decay, "bn_chunks": bn_chunks, "k1": k1, "k2": k2,
    })
    req = IntraCameraRequest(
        data=data, dataset=dataset, params=params, checkpoint=checkpoint, arch=arch, pooling=pooling,
        last_stride=last_stride, height=height, width=width, weights=weights, pretrained=pretrained, seed=seed,
        workers=workers, device=device, amp=amp, deterministic=deterministic, extract_batch_size=extract_batch_size,
        force=force,
    )
    req.check_given(given_options(ctx))
    summary = run_intra_camera(req, out)
    if json:
        print_json(summary)
        return
    out_console.print(camera_table(summary, out))
    for cam in summary["per_camera"]:
        if "skipped" in cam:
            err_console.print(f"camera {cam['camera']} not clustered: {cam['skipped']}", highlight=False)
            continue
        if "k1" in cam:
            err_console.print(f"camera {cam['camera']}: {cam['images']} images, so its Jaccard k1 is {cam['k1']}",
                              highlight=False)
        if "note" in cam:
            err_console.print(f"camera {cam['camera']}: {cam['note']}", highlight=False)


def camera_table(summary: dict[str, Any], out: Path) -> Table:
    table = Table(title=f"{out} (intra-camera clusters)", title_justify="left")
    for col in ("camera", "images", "clusters", "best epoch", "silhouette", "trained epochs"):
        table.add_column(col, justify="right")
    for cam in summary["per_camera"]:
        s = cam.get("silhouette")
        table.add_row(str(cam["camera"]), str(cam["images"]), str(cam["clusters"] or "—"),
                      str(cam["best_epoch"]) if cam["best_epoch"] >= 0 else "—",
                      "—" if s is None else f"{s:.3f}", str(cam["trained_epochs"]))
    return table
