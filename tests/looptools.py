"""What the loop tests share: a tiny, fast, deterministic loop configuration and its log."""

from __future__ import annotations

import json
from pathlib import Path

from reidctl.models.spec import ModelSpec
from reidctl.pipeline.loop import LoopConfig
from reidctl.runtime import Runtime
from tests.requests import RUNTIME_FIELDS

MODEL = ModelSpec(arch="resnet18", height=64, width=32, pretrained="none")
CLUSTER = {"k1": 6, "k2": 2, "eps": 0.5, "min_samples": 3}
TRAIN = {"iters": 2, "batch_size": 8, "num_instances": 4, "bn_chunks": 2}
#: The same settings as command-line options.
CLI_ARGS = ["--arch", "resnet18", "--pretrained", "none", "--height", "64", "--width", "32", "--k1", "6", "--k2", "2", "--eps", "0.5",
            "--min-samples", "3", "--iters", "2", "--batch-size", "8", "--num-instances", "4",
            "--bn-chunks", "2", "--eval-every", "1", "--workers", "0", "--device", "cpu", "--deterministic"]


def loop_config(data, run_dir, **kw) -> LoopConfig:
    """Two epochs on a colour_market folder, evaluated every epoch; ``kw`` overrides."""
    base = dict(data=str(data), run_dir=run_dir, epochs=2, model=MODEL, options={**CLUSTER, **TRAIN},
                eval_every=1, workers=0, device="cpu", deterministic=True)
    base.update(kw)
    runtime = Runtime(**{k: base.pop(k) for k in RUNTIME_FIELDS & set(base)})
    return LoopConfig(**base, runtime=runtime)


def read_log(run_dir) -> list[dict]:
    """The run's stage and notice records; progress records (written while a stage runs, as often
    as its speed makes them due) are left out, so counts do not depend on the machine's speed."""
    records = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return [r for r in records if "progress" not in r]
