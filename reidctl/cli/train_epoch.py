"""`reidctl train-epoch`: checkpoint + labels.h5 → the next checkpoint (one epoch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from reidctl import dist
from reidctl.cli import options as o
from reidctl.cli import pplr_options as pp
from reidctl.cli.common import app, err_console, given_options, print_json, user_errors
from reidctl.methods import METHODS, get_method
from reidctl.train.stage import TrainEpochRequest, run_train_epoch

_M = "(unset: the checkpoint's value, else the official one)"


@app.command("train-epoch")
@user_errors
def train_epoch(
    ctx: typer.Context,
    data: o.Data,
    labels: Annotated[Path, typer.Option("--labels", help="Pseudo labels of the train split (reidctl cluster / refine).")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write (.pt).")],
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", help="Checkpoint to continue; without it a fresh model is built from --arch/--weights/--pretrained."
    )] = None,
    method: Annotated[str, typer.Option("--method", help=f"Training method: {', '.join(METHODS)}.")] = "cc",
    features: Annotated[Optional[Path], typer.Option(
        "--features", help="Train features to initialise the cluster centroids (default: extract them with the model)."
    )] = None,
    epoch: Annotated[Optional[int], typer.Option("--epoch", help="Epoch number (default: the checkpoint's + 1, or 0).")] = None,
    iters: Annotated[Optional[int], typer.Option("--iters", help=f"Iterations per epoch; official cc 200 (MSMT17 400), pplr 400 {_M}.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help=f"Global batch = ids × --num-instances; official cc 256, pplr 64 {_M}.")] = None,
    num_instances: Annotated[Optional[int], typer.Option("--num-instances", help=f"Images per pseudo identity in a batch; official cc 16, pplr 4 {_M}.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help=f"Adam learning rate; official 3.5e-4 {_M}.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help=f"Adam weight decay; official 5e-4 {_M}.")] = None,
    step_size: Annotated[Optional[int], typer.Option("--step-size", help=f"StepLR period in epochs; official 20 {_M}.")] = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", help=f"StepLR factor; official 0.1 {_M}.")] = None,
    momentum: Annotated[Optional[float], typer.Option("--momentum", help=f"Memory momentum m in C=mC+(1-m)x; official 0.1 {_M}.")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help=f"ClusterNCE temperature; official 0.05 {_M}.")] = None,
    memory_update: Annotated[Optional[str], typer.Option("--memory-update", help=f"sample (official), hard (--use-hard) or mean {_M}.")] = None,
    bn_chunks: Annotated[Optional[int], typer.Option(
        "--bn-chunks", help=f"BatchNorm statistics per chunk of the batch, emulating 4-GPU DataParallel (4); 1 = plain BN {_M}."
    )] = None,
    beta: pp.Beta = None,
    no_pglr: pp.NoPglr = False,
    no_aals: pp.NoAals = False,
    aals_epoch: pp.AalsEpoch = None,
    agreement_temperature: pp.AgreementTemperature = None,
    classifier_rows: pp.ClassifierRows = None,
    camera_proxies: pp.CameraProxies = False,
    cam_lambda: pp.CamLambda = None,
    amp: Annotated[str, typer.Option("--amp", help="Mixed precision on CUDA: auto (bf16 where supported, else fp16), bf16, fp16, off.")] = "auto",
    deterministic: Annotated[bool, typer.Option("--deterministic", help="Deterministic kernels (slower on GPU).")] = False,
    dataset: o.DatasetName = None,
    arch: o.Arch = "resnet50",
    pooling: o.MethodPooling = None,
    last_stride: o.LastStride = 1,
    parts: o.MethodParts = None,
    height: o.Height = 256,
    width: o.Width = 128,
    weights: o.Weights = None,
    pretrained: o.Pretrained = "none",
    extract_batch_size: Annotated[int, typer.Option("--extract-batch-size", help="Batch size when extracting features for the centroids.")] = 128,
    workers: o.Workers = 4,
    device: o.Device = "auto",
    seed: o.Seed = 1,
    force: o.Force = False,
    json: o.Json = False,
) -> None:
    """Train one epoch on pseudo labels (run under torchrun for several GPUs/processes)."""
    overrides = {
        "iters": iters, "batch_size": batch_size, "num_instances": num_instances, "lr": lr,
        "weight_decay": weight_decay, "step_size": step_size, "gamma": gamma, "momentum": momentum,
        "temperature": temperature, "memory_update": memory_update, "bn_chunks": bn_chunks,
        **pp.pplr_overrides(beta=beta, no_pglr=no_pglr, no_aals=no_aals, aals_epoch=aals_epoch,
                            agreement_temperature=agreement_temperature, classifier_rows=classifier_rows,
                            camera_proxies=camera_proxies, cam_lambda=cam_lambda),
    }
    req = TrainEpochRequest(
        data=data, labels=labels, dataset=dataset, method=method, features=features, epoch=epoch,
        overrides={k: v for k, v in overrides.items() if v is not None},
        checkpoint=checkpoint, arch=arch, **get_method(method).model_settings(pooling=pooling, parts=parts),
        last_stride=last_stride,
        height=height, width=width, weights=weights, pretrained=pretrained, seed=seed,
        workers=workers, device=device, amp=amp, deterministic=deterministic,
        extract_batch_size=extract_batch_size, force=force,
    )
    req.check_given(given_options(ctx))
    result = run_train_epoch(req, out)
    if dist.env_rank() != 0:
        return
    if json:
        print_json(result)
    else:
        err_console.print(
            f"epoch {result['epoch']}: loss {result['loss']:.4f}, {result['iterations']} iterations on "
            f"{result['images']} images in {result['clusters']} clusters, {result['seconds']:.1f} s → {out}",
            highlight=False,
        )
