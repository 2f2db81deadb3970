"""The records a run folder keeps, as types: each epoch's (:class:`EpochRecord`) and the run's
``summary.json`` (:class:`RunSummary`), written and read here and nowhere else.

``loop`` builds them, ``loop``'s table, ``report`` and ``inspect`` read them through these
types, so a key is spelled in one place. The stage summaries inside (``cluster``, ``refine``,
``train``, ``eval``) stay JSON objects: their figures come from the stages and the methods
(a method's own per-epoch figures are declared by the method, ``Method.pair_arrays``). Reading
checks the shape, so a file that is not a run's fails in one line naming it, not with a
``KeyError`` deep in a drawing. This module imports nothing heavy (``inspect`` reads summaries
without numpy or torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from reidctl.errors import ReidctlError

#: A run folder's summary, written last by ``loop``.
SUMMARY_FILE = "summary.json"
#: The stage summaries an epoch record may hold, in the order they are written.
STAGES = ("cluster", "refine", "train", "eval")


@dataclass
class EpochRecord:
    """One epoch of a run: its number (``"init"``: the initial model's evaluation) and the summary
    of each stage it ran."""

    epoch: int | str
    cluster: dict[str, Any] | None = None
    refine: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None

    @property
    def labels(self) -> dict[str, Any] | None:
        """The pseudo labels the epoch trained on: refine's summary (what training reads), else the
        cluster stage's; None for a method without a cluster stage (MAR)."""
        return self.refine if self.refine is not None else self.cluster

    @property
    def trained(self) -> bool:
        return isinstance(self.epoch, int)

    def stage(self, name: str) -> dict[str, Any] | None:
        """A stage's summary by name (``labels``: :attr:`labels`)."""
        return self.labels if name == "labels" else getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, **{name: getattr(self, name) for name in STAGES if getattr(self, name) is not None}}

    @classmethod
    def from_json(cls, doc: Any, where: str) -> EpochRecord:
        epoch = doc.get("epoch") if isinstance(doc, dict) else None
        if epoch != "init" and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0):
            raise ReidctlError(f"{where} has epoch {epoch!r} (expected \"init\" or 0, 1, ...)")
        stages = {name: doc[name] for name in STAGES if isinstance(doc.get(name), dict)}
        return cls(epoch, **stages)


@dataclass
class RunSummary:
    """A run's ``summary.json``: its epochs, its best and last evaluation and models, the stages
    this invocation ran or reused, its files, and each prelude's summary."""

    run_dir: str
    method: str
    epochs: list[EpochRecord]
    last: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    checkpoint: str | None = None
    models: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)
    preludes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The log's size when the summary was written: a log that grew since belongs to a later
    #: ``loop`` that did not finish (None in summaries of older versions).
    log_bytes: int | None = None

    @property
    def evaluated(self) -> list[EpochRecord]:
        return [e for e in self.epochs if e.eval is not None]

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "method": self.method, "epochs": [e.to_json() for e in self.epochs],
                "last": self.last, "best": self.best, "checkpoint": self.checkpoint, "models": self.models,
                "stages": self.stages, "files": self.files, **self.preludes, "log_bytes": self.log_bytes}

    @classmethod
    def from_json(cls, doc: Any, where: str = SUMMARY_FILE) -> RunSummary:
        """A summary from its JSON object; a document that is not a loop's is refused in one line."""
        epochs = doc.get("epochs") if isinstance(doc, dict) else None
        if not isinstance(epochs, list):
            raise ReidctlError(f"{where}: not a loop summary (no list of \"epochs\")")
        records = [EpochRecord.from_json(rec, f"{where}: epoch record {i}") for i, rec in enumerate(epochs)]
        log_bytes = doc.get("log_bytes")
        return cls(run_dir=str(doc.get("run_dir", "")), method=str(doc.get("method", "?")), epochs=records,
                   last=_object(doc.get("last")), best=_object(doc.get("best")), checkpoint=doc.get("checkpoint"),
                   models=_object(doc.get("models")) or {}, stages=[s for s in doc.get("stages") or []
                                                                    if isinstance(s, dict)],
                   files=_object(doc.get("files")) or {},
                   preludes={k: v for k, v in doc.items() if k not in _RUN_KEYS and isinstance(v, dict)},
                   log_bytes=log_bytes if isinstance(log_bytes, int) and not isinstance(log_bytes, bool) else None)

    @classmethod
    def read(cls, root: Path) -> RunSummary:
        """The summary of run folder ``root`` (a ReidctlError naming the file when it cannot be read)."""
        file = root / SUMMARY_FILE
        try:
            doc = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ReidctlError(f"{file}: cannot read it as JSON ({exc})") from None
        return cls.from_json(doc, str(file))


#: The run summary's own keys; any other key holding an object is a prelude's summary.
_RUN_KEYS = tuple(f.name for f in fields(RunSummary) if f.name != "preludes")


def _object(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None
