"""`reidctl loop`: the whole method, epoch after epoch, with cached stages and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from reidctl.cli import icrefine_options as ic
from reidctl.cli import options as o
from reidctl.cli import pplr_options as pp
from reidctl.cli.common import (app, err_console, multi_camera_cell, notice, out_console, print_json, user_errors,
                                warn_single_camera)
from reidctl.models.spec import ModelSpec
from reidctl.methods import get_method
from reidctl.pipeline import STAGES, LoopConfig, run_loop

Opt = typer.Option


@app.command("loop")
@user_errors
def loop(
    data: o.Data,
    run_dir: Annotated[Path, Opt("--run-dir", help="Folder for the run's artifacts (epoch_XXX/), log and summary.")],
    method: Annotated[str, Opt("--method", help="Method (see `reidctl refine --help`).")] = "cc",
    epochs: Annotated[int, Opt("--epochs", help="Number of epochs.")] = 50,
    dataset: o.DatasetName = None,
    arch: o.Arch = "resnet50",
    pooling: o.MethodPooling = None,
    last_stride: o.LastStride = 1,
    parts: o.MethodParts = None,
    height: o.Height = 256,
    width: o.Width = 128,
    weights: o.Weights = None,
    pretrained: o.Pretrained = "none",
    eps: Annotated[Optional[float], Opt("--eps", help="DBSCAN radius (method default: cc 0.6, pplr 0.5).")] = None,
    k1: Annotated[Optional[int], Opt("--k1", help="Jaccard k1 (default 30).")] = None,
    k2: Annotated[Optional[int], Opt("--k2", help="Jaccard k2 (default 6).")] = None,
    min_samples: Annotated[Optional[int], Opt("--min-samples", help="DBSCAN min samples (default 4).")] = None,
    iters: Annotated[Optional[int], Opt("--iters", help="Iterations per epoch (cc: 200, pplr: 400).")] = None,
    batch_size: Annotated[Optional[int], Opt("--batch-size", help="Training batch = ids × --num-instances (cc: 256, pplr: 64).")] = None,
    num_instances: Annotated[Optional[int], Opt("--num-instances", help="Images per identity in a batch (cc: 16, pplr: 4).")] = None,
    lr: Annotated[Optional[float], Opt("--lr", help="Adam learning rate (3.5e-4).")] = None,
    weight_decay: Annotated[Optional[float], Opt("--weight-decay", help="Adam weight decay (5e-4).")] = None,
    step_size: Annotated[Optional[int], Opt("--step-size", help="StepLR period in epochs (20).")] = None,
    gamma: Annotated[Optional[float], Opt("--gamma", help="StepLR factor (0.1).")] = None,
    temperature: Annotated[Optional[float], Opt("--temperature", help="ClusterNCE temperature (cc: 0.05).")] = None,
    momentum: Annotated[Optional[float], Opt("--momentum", help="Cluster memory momentum (cc: 0.1).")] = None,
    memory_update: Annotated[Optional[str], Opt("--memory-update", help="sample, hard or mean.")] = None,
    bn_chunks: Annotated[Optional[int], Opt("--bn-chunks", help="BN statistics per chunk (4 = the official 4-GPU runs).")] = None,
    k: Annotated[Optional[int], Opt("--k", help="pplr (refine stage): top-k neighbours of the cross-agreement (20).")] = None,
    beta: pp.Beta = None,
    no_pglr: pp.NoPglr = False,
    no_aals: pp.NoAals = False,
    aals_epoch: pp.AalsEpoch = None,
    agreement_temperature: pp.AgreementTemperature = None,
    classifier_rows: pp.ClassifierRows = None,
    camera_proxies: pp.CameraProxies = False,
    cam_lambda: pp.CamLambda = None,
    n_clusters: ic.NClusters = None,
    global_clustering: ic.GlobalClustering = None,
    decay: ic.Decay = None,
    info_nodes: ic.InfoNodes = None,
    intra: Annotated[Optional[Path], Opt("--intra", help="icrefine: use this `reidctl intra-camera` file instead of running stage 1.")] = None,
    intra_epochs: Annotated[Optional[int], Opt("--intra-epochs", help="icrefine stage 1: epochs per camera (20).")] = None,
    intra_iters: Annotated[Optional[int], Opt("--intra-iters", help="icrefine stage 1: iterations per epoch (100); batch shape from --batch-size/--num-instances/--bn-chunks.")] = None,
    intra_clusters: ic.IntraClusters = None,
    eval_every: Annotated[int, Opt("--eval-every", help="Evaluate every N epochs and at the end (0 = never).")] = 10,
    no_eval_init: Annotated[bool, Opt("--no-eval-init", help="Skip evaluating the initial model.")] = False,
    force_from: Annotated[Optional[str], Opt("--force-from", help="Re-run this stage and later ones: " + ", ".join(STAGES) + ".")] = None,
    extract_batch_size: Annotated[int, Opt("--extract-batch-size", help="Images per forward pass when extracting.")] = 128,
    workers: o.Workers = 2,
    device: o.Device = "auto",
    amp: Annotated[str, Opt("--amp", help="auto (fp16 on CUDA), off, fp16 or bf16.")] = "auto",
    deterministic: Annotated[bool, Opt("--deterministic", help="Deterministic algorithms (bit-exact resume).")] = False,
    skip_bad_images: o.SkipBad = False,
    seed: o.Seed = 1,
    json: o.Json = False,
) -> None:
    """Extract → cluster → refine → train-epoch each epoch; re-running resumes where it stopped."""
    train = {"iters": iters, "batch_size": batch_size, "num_instances": num_instances, "lr": lr,
             "weight_decay": weight_decay, "step_size": step_size, "gamma": gamma, "temperature": temperature,
             "momentum": momentum, "memory_update": memory_update, "bn_chunks": bn_chunks,
             **pp.pplr_overrides(beta=beta, no_pglr=no_pglr, no_aals=no_aals, aals_epoch=aals_epoch,
                                 agreement_temperature=agreement_temperature, classifier_rows=classifier_rows,
                                 camera_proxies=camera_proxies, cam_lambda=cam_lambda)}
    refine = {name: v for name, v in {"k": k}.items() if v is not None}  # method options of the refine stage
    refine.update(ic.icrefine_refine(decay=decay, info_nodes=info_nodes, intra=intra))
    cluster = {k: v for k, v in {"eps": eps, "k1": k1, "k2": k2, "min_samples": min_samples}.items() if v is not None}
    cluster.update(ic.icrefine_cluster(n_clusters, global_clustering))
    intra_stage = {"epochs": intra_epochs, "iters": intra_iters, "clusters": intra_clusters}
    cfg = LoopConfig(
        data=data, run_dir=run_dir, method=method, epochs=epochs, dataset=dataset,
        model=ModelSpec(arch=arch, **get_method(method).model_settings(pooling=pooling, parts=parts),
                        last_stride=last_stride, height=height,
                        width=width, weights=weights, pretrained=pretrained, seed=seed),
        cluster=cluster,
        train={k: v for k, v in train.items() if v is not None},
        refine=refine,
        intra={k: v for k, v in intra_stage.items() if v is not None},
        eval_every=eval_every, eval_init=not no_eval_init, extract_batch_size=extract_batch_size, workers=workers,
        device=device, amp=amp, deterministic=deterministic, skip_bad_images=skip_bad_images, force_from=force_from,
        seed=seed,
    )
    result = run_loop(cfg, on_epoch=None if json else _print_epoch, notice=notice)
    if json:
        print_json(result)
    else:
        out_console.print(summary_table(result))


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _print_epoch(rec: dict[str, Any]) -> None:
    ref = rec["refine"]
    q = ref.get("quality", {})
    msg = (f"epoch {rec['epoch']}: {ref['clusters']} clusters ({multi_camera_cell(ref)} multi-camera), "
           f"{ref['outliers']} outliers{', F ' + _pct(q.get('f_score')) if q else ''}, loss {rec['train']['loss']:.3f}")
    if "eval" in rec:
        msg += f", mAP {_pct(rec['eval']['mAP'])}, R1 {_pct(rec['eval']['rank1'])}"
    err_console.print(msg, highlight=False)
    warn_single_camera(ref)


def summary_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"{result['run_dir']} ({result['method']})", title_justify="left")
    for col in ("epoch", "clusters", "multi-cam", "outliers", "pairwise F", "NMI", "loss", "mAP", "R1", "R5", "R10"):
        table.add_column(col, justify="right")
    for rec in result["epochs"]:
        ref, ev = rec.get("refine", {}), rec.get("eval", {})
        q = ref.get("quality", {})
        table.add_row(str(rec["epoch"]), str(ref.get("clusters", "—")), multi_camera_cell(ref),
                      str(ref.get("outliers", "—")), _pct(q.get("f_score")), _pct(q.get("nmi")),
                      f"{rec['train']['loss']:.3f}" if "train" in rec else "—",
                      _pct(ev.get("mAP")), _pct(ev.get("rank1")), _pct(ev.get("rank5")), _pct(ev.get("rank10")))
    for label in ("best", "last"):
        ev = result.get(label)
        if ev:
            table.add_row(f"[bold]{label}[/] ({ev['epoch']})", "", "", "", "", "", "", _pct(ev["mAP"]),
                          _pct(ev["rank1"]), _pct(ev["rank5"]), _pct(ev["rank10"]))
    return table
