"""What a file reidctl wrote is, for ``reidctl inspect``, without running any of it.

Besides HDF5 artifacts and checkpoints (:func:`reidctl.artifacts.describe`,
:func:`reidctl.models.checkpoint.describe_checkpoint`), ``inspect`` knows the files a user meets
next: a model ``export`` wrote (TorchScript or ONNX, with its ``OUT.json`` record), a run's
``summary.json`` and its ``config.toml``. Why no loader: a TorchScript file is code (loading it
with ``torch.jit.load`` runs it), so it is read as the zip archive it is (its member names) plus
its record; an ONNX file is a protobuf message, which the ``onnx`` package parses without
executing anything (when it is installed; else the record alone says what it is). This module
imports neither torch nor numpy.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from reidctl.errors import ArtifactError
from reidctl.pipeline.records import RunSummary

TORCHSCRIPT, ONNX, EXPORT_RECORD, SUMMARY, CONFIG = "torchscript", "onnx", "export record", "run summary", "run config"
#: Larger JSON/TOML files are not read whole (a run's summary.json is a few hundred kB at most).
MAX_TEXT_BYTES = 64 << 20


def kind_of(path: str | os.PathLike) -> str | None:
    """Which of the kinds above the file at ``path`` is, from its bytes and name (None: none of them)."""
    path = Path(path)
    if not path.is_file():
        return None
    if zipfile.is_zipfile(path):
        return TORCHSCRIPT if _is_torchscript(path) else None
    suffix = path.suffix.lower()
    if suffix == ".onnx" or _record_format(path) == ONNX:
        return ONNX
    if suffix == ".toml":
        return CONFIG
    if suffix == ".json":
        doc = _json(path)
        if isinstance(doc, dict) and {"format", "preprocessing"} <= set(doc):
            return EXPORT_RECORD
        if isinstance(doc, dict) and {"method", "epochs", "run_dir"} <= set(doc):
            return SUMMARY
    return None


def describe_file(path: str | os.PathLike) -> dict[str, Any]:
    """What the exported model, export record, summary or config at ``path`` holds (``kind``
    first); an ArtifactError for anything else."""
    path = Path(path)
    kind = kind_of(path)
    describe = {TORCHSCRIPT: describe_torchscript, ONNX: describe_onnx, EXPORT_RECORD: describe_record,
                SUMMARY: describe_summary, CONFIG: describe_config}.get(kind)
    if describe is None:
        raise ArtifactError(f"{path}: not a file reidctl knows (an HDF5 artifact, a checkpoint, an exported model, "
                            "summary.json or config.toml)")
    return {"kind": kind, "path": str(path), **describe(path)}


# ------------------------------------------------------------------------------ exported models


def _is_torchscript(path: Path) -> bool:
    """``torch.jit.save``'s archive: a ``code/`` folder of TorchScript source beside its pickles."""
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _record(path: Path) -> dict[str, Any] | None:
    """The ``OUT.json`` that ``export`` wrote beside ``path``, when there is one."""
    doc = _json(_record_path(path)) if _record_path(path).is_file() else None
    return doc if isinstance(doc, dict) and "preprocessing" in doc else None


def _record_format(path: Path) -> str | None:
    record = _record(path)
    return None if record is None else record.get("format")


def _from_record(path: Path) -> dict[str, Any]:
    """What the record beside an exported model says: input size, mean/std, source checkpoint."""
    record = _record(path)
    if record is None:
        return {"record": None, "note": f"no {_record_path(path).name} beside it: its input size, mean and std "
                                        "are unknown (export writes them there)"}
    prep = record.get("preprocessing") or {}
    return {"record": str(_record_path(path)), "input_size": [prep.get("height"), prep.get("width")],
            "mean": prep.get("mean"), "std": prep.get("std"), "resize": prep.get("resize"),
            "input_norm": prep.get("input_norm"), "channels": record.get("channels"),
            "output": record.get("output"), "checkpoint": record.get("checkpoint"),
            "checkpoint_file": record.get("checkpoint_file"), "checkpoint_digest": record.get("checkpoint_digest"),
            "epoch": record.get("epoch")}


def describe_torchscript(path: Path) -> dict[str, Any]:
    """A TorchScript archive read as a zip: its size, members and the modules its code defines
    (from the member names), and its record. Nothing in it is unpickled or run."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    modules = sorted({_module_name(name.split("/code/", 1)[1]) for name in names
                      if "/code/" in name and name.endswith(".py")})
    return {"format": TORCHSCRIPT, "bytes": path.stat().st_size, "archive_members": len(names),
            "code_modules": modules, **_from_record(path)}


def _module_name(member: str) -> str:
    """``__torch__/torch/nn/modules/conv/___torch_mangle_3.py`` → ``torch.nn.modules.conv``."""
    parts = member.removesuffix(".py").split("/")
    parts = [p for p in parts if p != "__torch__" and not p.startswith("___torch_mangle")]
    return ".".join(parts)


def describe_onnx(path: Path) -> dict[str, Any]:
    """An ONNX model's graph inputs/outputs, opset and producer, parsed by the ``onnx`` package
    (a protobuf parse: nothing runs), and its record; the record alone where onnx is missing."""
    info: dict[str, Any] = {"format": ONNX, "bytes": path.stat().st_size}
    try:
        import onnx  # noqa: PLC0415
    except ImportError:
        return {**info, "graph": "not read (pip install 'reidctl[onnx]' to read it)", **_from_record(path)}
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001  (a damaged or foreign file: one line)
        raise ArtifactError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0] if str(exc) else exc})") \
            from None
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    return {**info, "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "opset": {op.domain or "ai.onnx": op.version for op in model.opset_import},
            "inputs": {v.name: _onnx_shape(v) for v in graph.input if v.name not in weights},
            "outputs": {v.name: _onnx_shape(v) for v in graph.output},
            "nodes": len(graph.node), **_from_record(path)}


def _onnx_shape(value: Any) -> list[Any]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def describe_record(path: Path) -> dict[str, Any]:
    """An ``OUT.json`` export record: what it says about the model beside it."""
    record = _json(path)
    model = path.with_name(path.name.removesuffix(".json"))
    return {"format": record.get("format"), "model_file": str(model), "model_file_exists": model.is_file(),
            **(_from_record(model) if model.is_file() else {"preprocessing": record.get("preprocessing")})}


# ------------------------------------------------------------------------------ run folder files


def describe_summary(path: Path) -> dict[str, Any]:
    """A run's ``summary.json`` in short: method, epochs, evaluations, the best and the last model."""
    run = RunSummary.from_json(_json(path), str(path))
    trained = [e.epoch for e in run.epochs if e.trained]
    evaluated = [{"epoch": e.epoch, "mAP": e.eval.get("mAP"), "rank1": e.eval.get("rank1")} for e in run.evaluated]
    return {"method": run.method, "run_dir": run.run_dir, "epochs_trained": len(trained),
            "last_epoch": trained[-1] if trained else None, "evaluations": evaluated,
            "best": run.models.get("best") or _short(run.best), "last_model": run.models.get("last"),
            "files": run.files}


def _short(ev: Any) -> dict[str, Any] | None:
    """The best evaluation of a summary written before ``models`` existed."""
    return None if not isinstance(ev, dict) else {"epoch": ev.get("epoch"), "mAP": ev.get("mAP")}


def describe_config(path: Path) -> dict[str, Any]:
    """A ``config.toml``: its tables as written, and the options it gives ``loop --config`` (paths
    resolved as ``--config`` resolves them)."""
    from reidctl.pipeline.configfile import RELATIVE_KEY, read_config, tomllib  # noqa: PLC0415

    options = read_config(path)
    tables = tomllib.loads(path.read_text(encoding="utf-8"))
    relative = tables.pop(RELATIVE_KEY, [])
    return {"tables": {name: value for name, value in tables.items() if isinstance(value, dict)},
            "relative_to_this_file": relative, "run_dir": options.get("run_dir"), "method": options.get("method"),
            "data": options.get("data"), "options": len(options)}


def _json(path: Path) -> Any:
    if path.stat().st_size > MAX_TEXT_BYTES:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------ as a table


def table_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """``describe_file``'s result as (label, text) rows for a person: sentences and ``key = value``
    lines rather than JSON."""
    if info["kind"] == SUMMARY:
        return _summary_rows(info)
    if info["kind"] == CONFIG:
        return _config_rows(info)
    rows = []
    for key, value in info.items():
        if key in ("path", "kind") or value is None:
            continue
        if key == "input_size" and None not in value:
            value = f"{value[0]}×{value[1]} (height × width)"
        rows.append((key.replace("_", " "), _text(value)))
    return rows


def _summary_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    evals = ", ".join(f"{e['epoch']}: {_pct(e.get('mAP'))}" for e in info["evaluations"]) or "none"
    rows = [("method", str(info["method"])), ("run dir", str(info["run_dir"])),
            ("epochs trained", f"{info['epochs_trained']} (last: {info['last_epoch']})"), ("mAP", evals)]
    for label, entry in (("best", info["best"]), ("last", info["last_model"])):
        if isinstance(entry, dict) and entry.get("why"):
            where = f"{entry.get('file')} → {entry.get('checkpoint')}: " if entry.get("file") else ""
            rows.append((label, where + entry["why"]))
        elif isinstance(entry, dict):
            rows.append((label, f"epoch {entry.get('epoch')}, mAP {_pct(entry.get('mAP'))}"))
    rows += [(f"{name} file", str(path)) for name, path in info["files"].items() if path]
    return rows


def _config_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("run dir", str(info["run_dir"])), ("method", str(info["method"])), ("data", str(info["data"]))]
    if info["relative_to_this_file"]:
        rows.append(("relative to the file", ", ".join(info["relative_to_this_file"])))
    rows += [(f"[{name}]", "\n".join(f"{k} = {_text(v)}" for k, v in values.items()))
             for name, values in info["tables"].items()]
    return rows


def _pct(value: Any) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{100 * value:.2f} %"


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(f"{k}: {_text(v)}" for k, v in value.items())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return json.dumps(value)
