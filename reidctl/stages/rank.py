"""`reidctl rank`: turn QUERY and GALLERY (features files or images) into a ranking and its outputs.

A side is a features file, used as it is, or images (a folder, a manifest, one image file or a
dataset) that the request's model extracts on the fly. A source that holds both query and
gallery rows (a test-split features file, a Market-style dataset) gives its query rows to QUERY
and its gallery rows to GALLERY; any other source gives all its rows. Features from two
different models are refused: their distances would mean nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reidctl.artifacts import (
    FEATURES,
    RANKING_CSV,
    SHEET,
    Features,
    check_output,
    existing_schema,
    read_features,
    read_ground_truth,
    same_file,
)
from reidctl.data.base import Dataset, Sample
from reidctl.data.datasets import load_dataset
from reidctl.data.stats import Norm, input_norm
from reidctl.errors import ReidctlError
from reidctl.evaluation.ranking import (
    MEASURES,
    Ranking,
    RankSide,
    csv_text,
    rank_gallery,
    write_text,
)
from reidctl.evaluation.sheet import SheetRow, Tile, draw_sheet, identity_line
from reidctl.models.spec import ModelSpec
from reidctl.runtime import Runtime
from reidctl.stages.summary import StageSummary

ROLES = ("query", "gallery")


@dataclass(frozen=True)
class RankSummary(StageSummary):
    """What ``rank`` did: how many queries and gallery items it ranked and how, and the files it
    wrote (``out``: the CSV, ``sheet``: the picture, with its size in pixels)."""

    queries: int
    gallery: int
    top_k: int
    rerank: bool
    cross_camera_only: bool
    out: str | None = None
    sheet: str | None = None
    sheet_size: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_json().items() if v is not None or k not in ("out", "sheet", "sheet_size")}


@dataclass
class RankRequest:
    """Rank a gallery for queries: each side a features file, or images extracted by ``model``
    (run as ``runtime`` says)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    runtime: Runtime = field(default_factory=Runtime)
    query: str = ""
    gallery: str = ""
    top_k: int = 10
    rerank: bool = False
    cross_camera_only: bool = False
    same_image: bool = False  # keep a query's own image file among its matches
    out: Path | None = None  # CSV file; None: the caller prints the CSV
    sheet: Path | None = None
    queries: int = 20  # rows of the sheet
    force: bool = False  # replace an existing --out / --sheet that is not reidctl's CSV / sheet
    extraction_flags: str = ""  # the extraction options the user gave ("--arch, --workers"), for errors

    def model_chosen(self) -> bool:
        """A model option was given (without one, images are extracted by a fresh ImageNet model)."""
        spec = self.model
        return spec.checkpoint is not None or spec.weights is not None or spec.pretrained is not None


@dataclass
class _Images:
    """An images side before extraction."""

    samples: list[Sample]
    dataset: Dataset
    source: str


def run_rank(req: RankRequest) -> tuple[Ranking, RankSummary]:
    """Rank ``req.gallery`` for every row of ``req.query``; write ``req.out`` (CSV) and
    ``req.sheet`` (PNG) when given. Returns the ranking and a summary of what was done."""
    if req.queries < 1:
        raise ReidctlError(f"--queries must be at least 1 (got {req.queries})")
    check_rank_outputs(req)
    raw = {role: _open_side(getattr(req, role), role) for role in ROLES}
    images = [role for role in ROLES if isinstance(raw[role], _Images)]
    if not images and (req.model_chosen() or req.extraction_flags):
        given = req.extraction_flags or "the model options"
        raise ReidctlError(f"{given}: these choose how images are extracted, but both sides are features files, "
                           "which are ranked as they are (drop them)")
    sides, identities = _materialise(raw, req)
    if not same_model(identities["query"], identities["gallery"]):
        q, g = identities["query"], identities["gallery"]
        raise ReidctlError(f"{req.query} and {req.gallery} come from different models ({_describe(q)} vs "
                           f"{_describe(g)}); extract both with the same model")
    ranking = rank_gallery(sides["query"], sides["gallery"], req.top_k, rerank=req.rerank,
                           cross_camera_only=req.cross_camera_only, same_image=req.same_image,
                           device=req.runtime.device)
    written: dict[str, Any] = {}
    if req.out is not None:
        write_text(csv_text(ranking), req.out)
        written["out"] = str(req.out)
    if req.sheet is not None:
        shown = min(req.queries, len(ranking.query))
        title = sheet_title(req, ranking, shown, model_words(req, raw))
        layout = draw_sheet(sheet_rows(ranking, np.arange(shown)), req.sheet, title)
        written.update(sheet=str(req.sheet), sheet_size=layout.size)
    return ranking, RankSummary(len(ranking.query), len(ranking.gallery), req.top_k, req.rerank,
                                req.cross_camera_only, **written)


def check_rank_outputs(req: RankRequest) -> None:
    """Refuse, before any work, an ``--out`` or ``--sheet`` that would overwrite one of the
    inputs (QUERY, GALLERY, an image inside either folder, the checkpoint or weights), each
    other, or an existing file that is not a ranking CSV / picture sheet (without ``--force``)."""
    inputs = (req.query, req.gallery, req.model.checkpoint, req.model.weights)
    if req.out is not None:
        check_output(req.out, schema=RANKING_CSV, inputs=inputs, force=req.force, flag="--out")
    if req.sheet is not None:
        if req.out is not None and same_file(req.sheet, req.out):
            raise ReidctlError(f"--sheet {req.sheet} and --out {req.out} name the same file; give two files")
        check_output(req.sheet, schema=SHEET, inputs=inputs, force=req.force, flag="--sheet")


# ------------------------------------------------------------------------------------- sides


def _open_side(arg: str, role: str) -> Features | _Images:
    path = Path(arg).expanduser()
    if path.is_file() and existing_schema(path) == FEATURES:
        return read_features(path)
    if path.suffix.lower() in (".h5", ".hdf5") and path.is_file():
        raise ReidctlError(f"{arg}: not a reidctl features file (schema {existing_schema(path) or 'none'})")
    ds = load_dataset(arg)
    samples = ds.samples(role) if ds.query and ds.gallery else ds.samples("all")
    return _Images(samples, ds, arg)


def _rows_for(feats: Features, role: str) -> np.ndarray | None:
    """The rows of ``role`` when the file holds query and gallery rows; None: all (no copy)."""
    has_both = len(feats.rows("query")) and len(feats.rows("gallery"))
    return feats.rows(role) if has_both else None


def _materialise(raw: dict[str, Features | _Images], req: RankRequest) -> tuple[dict[str, RankSide], dict[str, dict]]:
    sides: dict[str, RankSide] = {}
    identities: dict[str, dict] = {}
    model = identity = None
    for role in ROLES:
        item = raw[role]
        if isinstance(item, Features):
            rows = _rows_for(item, role)
            side = features_side(item)
            sides[role] = side if rows is None else side.subset(rows)
            identities[role] = _file_identity(item)
            continue
        if model is None:  # one model for both sides: built, and its weights hashed, once
            model, provenance = req.model.build(req.runtime.seed)
            identity = _run_identity(req, provenance, model)
        norm = _norm_for(model, raw, role)
        sides[role] = _extract_side(model, item, norm, req)
        identities[role] = identity
    return sides, identities


def features_side(feats: Features) -> RankSide:
    """A features file as a ranking side: image paths under its recorded dataset root."""
    pids = read_ground_truth(feats.path)
    files = source_files(feats)
    names = [str(f) for f in files] if files is not None else list(feats.paths)
    return RankSide(feats.feats, names, files, feats.camids, pids, str(feats.path))


def recorded_sources(feats: Features) -> dict[str, Any]:
    """Where a features file's images came from (``data``, ``dataset_root``), as ``extract``
    recorded them; empty when it did not."""
    sources = feats.meta.attrs.get("sources")
    if isinstance(sources, str):
        try:
            sources = json.loads(sources)
        except ValueError:
            return {}
    return sources if isinstance(sources, dict) else {}


def source_files(feats: Features) -> list[Path] | None:
    """The image file of each row of a features file, from the dataset root it records."""
    root = recorded_sources(feats).get("dataset_root")
    return None if not root else [Path(root) / p for p in feats.paths]


def _extract_side(model: Any, side: _Images, norm: Norm, req: RankRequest) -> RankSide:
    from reidctl.models.features import extract_features
    from reidctl.progress import progress_bar
    from reidctl.runtime.device import resolve_device
    from reidctl.runtime.processes import check_loader_options
    from reidctl.stages.extract import check_finite_features

    run = req.runtime
    check_loader_options(run.extract_batch_size, run.workers)
    with progress_bar(f"extract {side.source}", len(side.samples), unit="img") as advance:
        ext = extract_features(model, side.samples, batch_size=run.extract_batch_size, workers=run.workers,
                               device=resolve_device(run.device), progress=advance, norm=norm)
    check_finite_features(ext, side.samples)
    pids = np.array([s.pid for s in side.samples], dtype=np.int64)
    return RankSide(ext.feats, [str(s.path) for s in side.samples], [s.path for s in side.samples],
                    np.array([s.camid for s in side.samples], dtype=np.int64),
                    None if np.all(pids < 0) else pids, side.source)


def _norm_for(model: Any, raw: dict[str, Features | _Images], role: str) -> Norm:
    """The input normalisation of an images side. A model normalising with its dataset's
    statistics gets the gallery's (the footage), as ``extract`` would compute them for it."""
    gallery = raw["gallery"]
    if model.config.input_norm != "imagenet" and isinstance(gallery, Features):
        try:
            ds = load_dataset(recorded_sources(gallery)["data"])
        except (KeyError, ReidctlError):
            raise ReidctlError(f"{gallery.path}: the model normalises with its footage's statistics, and the "
                               "images this gallery was extracted from cannot be found; give the gallery as "
                               "images instead") from None
        return input_norm(model.config, ds.train or ds.samples("all"))
    side = gallery if isinstance(gallery, _Images) else raw[role]
    return input_norm(model.config, side.dataset.train or side.samples)


def _file_identity(feats: Features) -> dict:
    """A features file's model: the content digest of its weights (``weights``), and what files
    written before reidctl recorded it kept (``legacy``: the checkpoint's digest, or the
    architecture and its start)."""
    digest = feats.meta.inputs.get("checkpoint")
    legacy = {"checkpoint": digest} if digest else {"model": feats.meta.params.get("model"),
                                                    "init": feats.meta.params.get("init")}
    return {"weights": feats.meta.params.get("weights_digest"), "legacy": legacy}


def _run_identity(req: RankRequest, provenance: dict[str, Any], model: Any) -> dict:
    from reidctl.models.weights import model_digest

    if req.model.checkpoint is not None:
        from reidctl.models.checkpoint import checkpoint_digest

        legacy = {"checkpoint": checkpoint_digest(req.model.checkpoint)}
    else:
        legacy = {"model": provenance.get("model"), "init": provenance.get("init")}
    return {"weights": model_digest(model), "legacy": legacy}


def same_model(a: dict, b: dict) -> bool:
    """Whether two sides' features come from one model: by the weights' content digest where both
    record it; else (a file written before it was recorded) by what both record."""
    if a.get("weights") and b.get("weights"):
        return a["weights"] == b["weights"]
    return json.dumps(a.get("legacy"), sort_keys=True) == json.dumps(b.get("legacy"), sort_keys=True)


def _describe(identity: dict) -> str:
    if identity.get("weights"):
        return f"weights {identity['weights'][:12]}"
    legacy = identity.get("legacy") or {}
    if "checkpoint" in legacy:
        return f"checkpoint {legacy['checkpoint'][:12]}"
    return f"{(legacy.get('model') or {}).get('arch', '?')} from {legacy.get('init') or '?'}"


# ------------------------------------------------------------------------------------- sheets


def sheet_rows(ranking: Ranking, queries: np.ndarray, captions: list[str] | None = None,
               columns: int | None = None) -> list[SheetRow]:
    """Sheet rows for the given query rows: the query, then its first ``columns`` matches (all
    ranked ones by default), each captioned with its rank and distance, identity and camera,
    and file name."""
    q, g = ranking.query, ranking.gallery
    for side in (q, g):
        if side.files is None:
            raise ReidctlError(f"--sheet needs the images of {side.source}, and it does not record where they are "
                               "(re-extract it with this version of reidctl)")
    match = ranking.matches()
    rows = []
    for n, qi in enumerate(queries):
        items = [match_tile(ranking, match, qi, j) for j, gi in enumerate(ranking.idx[qi, :columns]) if gi >= 0]
        caption = captions[n] if captions else "query"
        rows.append(SheetRow(Tile(q.files[qi], (caption, *_about(q, qi)), query=True), items))
    return rows


def match_tile(ranking: Ranking, match: np.ndarray, qi: int, j: int) -> Tile:
    """The tile of query row ``qi``'s match at rank ``j`` (0-based): "#rank  distance" first."""
    gi = int(ranking.idx[qi, j])
    right = None if match[qi, j] < 0 else bool(match[qi, j])
    return Tile(ranking.gallery.files[gi], (f"#{j + 1}   {ranking.dist[qi, j]:.3f}", *_about(ranking.gallery, gi)),
                right)


def _about(side: RankSide, i: int) -> tuple[str, str]:
    """A row's identity and camera as far as known, and its file name."""
    pid = None if side.pids is None else int(side.pids[i])
    return identity_line(pid, int(side.camids[i])), Path(side.files[i]).name


def sheet_title(req: RankRequest, ranking: Ranking, shown: int, model: str) -> list[str]:
    """What a rank sheet shows, in words: which queries against which gallery, by which model,
    which cameras (the headline), and what the numbers under the images are (the note)."""
    q, g = ranking.query, ranking.gallery
    cameras = "other cameras only (--cross-camera-only)" if req.cross_camera_only else "all cameras"
    sources = f"both from {q.source}" if q.source == g.source else f"queries from {q.source}, gallery from {g.source}"
    return [f"reidctl rank, {cameras}: {shown} of {len(q)} queries against {len(g)} gallery images; model: {model}; "
            f"{sources}", under_each(ranking.rerank)]


def under_each(rerank: bool) -> str:
    """A sheet's note on what its captions say."""
    return (f"Under each image: its rank and distance ({MEASURES[rerank]}; smaller is closer), "
            "identity and camera id where known, file name.")


def model_words(req: RankRequest, raw: dict[str, Any]) -> str:
    """The model that made the features, as a sheet's title names it: the checkpoint given, or
    what a features file records (architecture and start), or the fresh model's options."""
    if req.model.checkpoint is not None:
        return f"checkpoint {req.model.checkpoint}"
    for item in raw.values():
        if isinstance(item, Features):
            return features_model(item)
    start = req.model.weights or req.model.pretrained or "imagenet"
    return f"{req.model.arch} from {start}"


def features_model(feats: Features) -> str:
    """The model a features file records: "mobilenet_v2, checkpoint:model.pt (epoch 1)"."""
    params = feats.meta.params
    arch = (params.get("model") or {}).get("arch", "?")
    epoch = f" (epoch {params['epoch']})" if "epoch" in params else ""
    return f"{arch}, {params.get('init') or 'unknown start'}{epoch}"
