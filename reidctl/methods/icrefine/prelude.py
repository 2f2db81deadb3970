"""icrefine's stage 1 as a prelude of ``loop``: run once before epoch 0 into ``RUN/intra/``, its
intra-camera labels handed to every epoch's ``refine`` as the option ``intra`` (or the user's
own stage-1 file, ``loop --intra FILE``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reidctl.data.base import Dataset
from reidctl.methods.icrefine.intra import read_intra_labels
from reidctl.methods.icrefine.stage1 import IntraCameraParams, IntraCameraRequest, loop_params, run_intra_camera
from reidctl.methods.prelude import Prelude, RunContext


def _run(ctx: RunContext, params: IntraCameraParams, out: Path) -> dict[str, Any]:
    req = IntraCameraRequest(ctx.model, ctx.runtime, data=ctx.data, dataset=ctx.dataset, params=params)
    return run_intra_camera(req, out)


def _read_given(path: Path, ds: Dataset) -> str:
    """Check a user's stage-1 file against the train split; its content digest."""
    _, digest = read_intra_labels(path, paths=[s.relpath for s in ds.train], camids=np.array([s.camid for s in ds.train]))
    return digest


INTRA_CAMERA = Prelude(
    name="intra", output="intra.h5", Options=IntraCameraParams, run=_run, feeds="intra", read_given=_read_given,
    resolve=loop_params,
    help="icrefine stage 1: a fresh model trained on each camera alone; its best clustering per camera",
)
