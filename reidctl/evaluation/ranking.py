"""Rank a gallery for each query: the top-k matches, as records, CSV and JSON.

Why a module of its own: ranking is what a practitioner does with a trained model (find this
person in the other cameras), and it needs no identities. It reuses the blocked exact search of
:mod:`reidctl.search` (the one clustering uses), so a 100k gallery costs one Q×G×D product and a
top-k pass, never a Q×G sort. Identities, where a side knows them, only colour the output
(``match``); they never change the order.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from reidctl.artifacts import atomic_path
from reidctl.errors import ReidctlError
from reidctl.search import search

#: Columns of the CSV that ``reidctl rank`` writes, one row per (query, rank). Unknown cameras,
#: identities and matches are empty cells; ``match`` is 1 or 0 when both identities are known.
CSV_COLUMNS = ("query", "query_camid", "query_pid", "rank", "gallery", "gallery_camid", "gallery_pid",
               "distance", "match")
#: What the ``distance`` column measures, by ``rerank``.
MEASURES = {False: "squared L2 distance of unit features (2 - 2·cos)",
            True: "k-reciprocal re-ranked distance (k1 20, k2 6, λ 0.3)"}


@dataclass
class RankSide:
    """One side of a ranking: L2-normalised features and what is known about each row."""

    feats: np.ndarray  # N×D float32, unit rows
    names: list[str]  # how each row is shown: its image path (absolute when the images are known)
    files: list[Path] | None  # image files, for picture sheets; None when not known
    camids: np.ndarray  # N int64, -1 unknown
    pids: np.ndarray | None  # N int64 ground truth (-1 unknown), for colouring only; None if none known
    source: str  # where the side came from (a file or folder), for messages

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, rows: np.ndarray) -> "RankSide":
        """The side restricted to ``rows`` (in that order)."""
        return RankSide(self.feats[rows], [self.names[i] for i in rows],
                        None if self.files is None else [self.files[i] for i in rows], self.camids[rows],
                        None if self.pids is None else self.pids[rows], self.source)


@dataclass
class Ranking:
    """The top-k gallery rows of every query; ``idx`` -1 / ``dist`` inf where fewer remained."""

    query: RankSide
    gallery: RankSide
    dist: np.ndarray  # Q×k float32, ascending
    idx: np.ndarray  # Q×k int64 gallery rows
    rerank: bool

    def matches(self) -> np.ndarray:
        """Q×k: 1 right identity, 0 wrong, -1 unknown (an identity missing, or no item)."""
        out = np.full(self.idx.shape, -1, np.int64)
        if self.query.pids is None or self.gallery.pids is None:
            return out
        g = np.where(self.idx >= 0, self.gallery.pids[np.maximum(self.idx, 0)], -1)
        q = self.query.pids[:, None]
        known = (q >= 0) & (g >= 0) & (self.idx >= 0)
        out[known] = (np.broadcast_to(q, g.shape)[known] == g[known]).astype(np.int64)
        return out


#: ``exclude(start, end)``: bool (rows × G) of gallery items query rows start..end-1 may not get.
Exclude = Callable[[int, int], "torch.Tensor | None"]


def rank_gallery(query: RankSide, gallery: RankSide, top_k: int = 10, *, rerank: bool = False,
                 cross_camera_only: bool = False, same_image: bool = False, device: str = "auto",
                 exclude: Exclude | None = None) -> Ranking:
    """The ``top_k`` nearest gallery rows of each query, ties by gallery order.

    ``cross_camera_only`` drops gallery rows from the query's camera (both cameras must be
    known). A query's own image file in the gallery is dropped unless ``same_image``.
    ``exclude`` adds a caller's own rule (``evaluate --sheet`` passes the protocol's). With
    ``rerank``, distances are k-reciprocal re-ranked over all queries and the gallery together.
    """
    if top_k < 1:
        raise ReidctlError(f"--top-k must be at least 1 (got {top_k})")
    if len(query) == 0 or len(gallery) == 0:
        raise ReidctlError(f"nothing to rank: {query.source if len(query) == 0 else gallery.source} has no rows")
    if query.feats.shape[1] != gallery.feats.shape[1]:
        raise ReidctlError(f"{query.source} has {query.feats.shape[1]}-dimensional features but {gallery.source} "
                           f"has {gallery.feats.shape[1]}: rank needs features of one model")
    if cross_camera_only and (np.any(query.camids < 0) or np.any(gallery.camids < 0)):
        side = query if np.any(query.camids < 0) else gallery
        raise ReidctlError(f"--cross-camera-only needs every camera, but {side.source} has images of unknown camera "
                           "(name them <pid>_c<cam>..., sort them into cam<N>/ folders, or give a manifest)")
    rules = [r for r in (_other_camera_rule(query, gallery) if cross_camera_only else None,
                         None if same_image else _same_image_rule(query, gallery), exclude) if r is not None]
    banned = _combine(rules)
    if rerank:
        dist, idx = _rerank_top_k(query.feats, gallery.feats, top_k, banned)
    else:
        dist, idx = search(query.feats, gallery.feats, top_k, device=device, exclude=banned)
    return Ranking(query, gallery, dist, idx, rerank)


def _combine(rules: list[Exclude]) -> Exclude | None:
    if not rules:
        return None

    def banned(s: int, e: int) -> torch.Tensor | None:
        masks = [m for m in (rule(s, e) for rule in rules) if m is not None]
        if not masks:
            return None
        out = masks[0]
        for m in masks[1:]:
            out = out | m
        return out

    return banned


def _other_camera_rule(query: RankSide, gallery: RankSide) -> Exclude:
    q, g = torch.from_numpy(query.camids), torch.from_numpy(gallery.camids)
    return lambda s, e: q[s:e, None] == g[None, :]


def _same_image_rule(query: RankSide, gallery: RankSide) -> Exclude | None:
    """Ban each query's own image file from its results (a crop is not a match of itself)."""
    if query.files is None or gallery.files is None:
        return None
    where = {os.path.realpath(f): i for i, f in enumerate(gallery.files)}
    pairs = [(qi, where[p]) for qi, p in enumerate(os.path.realpath(f) for f in query.files) if p in where]
    if not pairs:
        return None
    qi = np.array([p[0] for p in pairs])
    gi = np.array([p[1] for p in pairs])

    def banned(s: int, e: int) -> torch.Tensor | None:
        sel = (qi >= s) & (qi < e)
        if not sel.any():
            return None
        mask = torch.zeros((e - s, len(gallery)), dtype=torch.bool)
        mask[torch.from_numpy(qi[sel] - s), torch.from_numpy(gi[sel])] = True
        return mask

    return banned


def _rerank_top_k(qf: np.ndarray, gf: np.ndarray, k: int, banned: Exclude | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the re-ranked Q×G distances (dense: re-ranking needs the (Q+G)² matrix)."""
    from reidctl.evaluation.metrics import DEFAULT_RERANK_MAX_BYTES, pairwise_distance, re_ranking, rerank_memory_bytes

    need = rerank_memory_bytes(len(qf), len(gf))
    if need > DEFAULT_RERANK_MAX_BYTES:
        raise ReidctlError(f"--rerank needs about {need / 1024**3:.1f} GB for {len(qf)} queries × {len(gf)} gallery "
                           f"rows (over the {DEFAULT_RERANK_MAX_BYTES / 1024**3:.0f} GB limit); rank without it")
    dist = re_ranking(pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf))
    if banned is not None:
        mask = banned(0, len(qf))
        if mask is not None:
            dist[mask.numpy()] = np.inf
    kk = min(k, dist.shape[1])
    idx = np.argsort(dist, axis=1, kind="stable")[:, :kk]
    top = np.take_along_axis(dist, idx, 1).astype(np.float32)
    idx = np.where(np.isinf(top), -1, idx)
    out_d = np.full((len(qf), k), np.inf, np.float32)
    out_i = np.full((len(qf), k), -1, np.int64)
    out_d[:, :kk], out_i[:, :kk] = top, idx
    return out_d, out_i


# ------------------------------------------------------------------------------------ records


def records(r: Ranking) -> list[dict[str, Any]]:
    """One dict per (query, rank) with the :data:`CSV_COLUMNS` keys; None where unknown."""
    match = r.matches()
    out = []
    for qi in range(len(r.query)):
        head = {"query": r.query.names[qi], "query_camid": _known(r.query.camids[qi]),
                "query_pid": _known(None if r.query.pids is None else r.query.pids[qi])}
        for j, gi in enumerate(r.idx[qi]):
            if gi < 0:
                break
            out.append({**head, "rank": j + 1, "gallery": r.gallery.names[gi],
                        "gallery_camid": _known(r.gallery.camids[gi]),
                        "gallery_pid": _known(None if r.gallery.pids is None else r.gallery.pids[gi]),
                        "distance": round(float(r.dist[qi, j]), 6),
                        "match": None if match[qi, j] < 0 else int(match[qi, j])})
    return out


def _known(value: Any) -> int | None:
    return None if value is None or value < 0 else int(value)


def as_json(r: Ranking) -> dict[str, Any]:
    """The ranking grouped by query, for ``--json``."""
    queries: dict[str, dict[str, Any]] = {}
    for rec in records(r):
        q = queries.setdefault(rec["query"], {"query": rec["query"], "camid": rec["query_camid"],
                                              "pid": rec["query_pid"], "matches": []})
        q["matches"].append({"rank": rec["rank"], "gallery": rec["gallery"], "camid": rec["gallery_camid"],
                             "pid": rec["gallery_pid"], "distance": rec["distance"], "match": rec["match"]})
    for qi, name in enumerate(r.query.names):  # a query left without any gallery row still appears
        queries.setdefault(name, {"query": name, "camid": _known(r.query.camids[qi]), "pid": None, "matches": []})
    return {"query_source": r.query.source, "gallery_source": r.gallery.source, "queries_ranked": len(r.query),
            "gallery_size": len(r.gallery), "top_k": int(r.idx.shape[1]), "distance": MEASURES[r.rerank],
            "queries": [queries[n] for n in r.query.names]}


def csv_text(r: Ranking) -> str:
    """The ranking as CSV with the :data:`CSV_COLUMNS` header."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rec in records(r):
        writer.writerow({k: "" if v is None else v for k, v in rec.items()})
    return buf.getvalue()


def write_text(text: str, out: str | os.PathLike) -> None:
    """Write ``text`` to ``out`` atomically (UTF-8)."""
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
