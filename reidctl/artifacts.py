"""The HDF5 artifact contract (DESIGN.md): typed writers and readers, checks, atomic writes.

Every artifact carries root attributes ``schema``, ``schema_version``, ``reidctl_version``,
``created``, ``params`` (JSON), ``inputs`` (JSON: name -> digest), ``seed`` and ``digest`` (a hash
of its content, so later stages can name their inputs cheaply). Files with rows store their
relative image ``paths``; readers refuse files whose rows do not line up with what the caller
expects. Ground-truth pids are stored for evaluation only and are never returned by
:func:`read_features`: callers must ask for them with :func:`read_ground_truth`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import h5py
import numpy as np
import scipy.sparse as sp

from reidctl import __version__
from reidctl.errors import ArtifactError

FEATURES = "reidctl/features"
LABELS = "reidctl/labels"
INTRA_LABELS = "reidctl/intra-camera-labels"
#: A method's persistent arrays, beside the checkpoint that names them (reidctl.train.checkpoint).
METHOD_STATE = "reidctl/method-state"
CHECKPOINT = "reidctl/checkpoint"  # a torch.save'd dict (reidctl.train.checkpoint), not HDF5
SCHEMA_VERSIONS = {FEATURES: 1, LABELS: 1, INTRA_LABELS: 1, METHOD_STATE: 1}

_STR = h5py.string_dtype(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# atomic writes and digests

_TEMP_SUFFIX = ".tmp"


def os_reason(exc: BaseException, path: str | os.PathLike | None = None) -> str:
    """The OS's reason for a failed file operation on ``path``, without Python's decoration;
    "X is a file, not a folder" where a component of ``path`` is a file (mkdir says "File exists")."""
    if path is not None:
        anchor = _first_existing(Path(path).parent)
        if not anchor.is_dir():
            return f"{anchor} is a file, not a folder"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _first_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path("/")


def write_target(path: str | os.PathLike) -> Path:
    """The file a write of ``path`` must replace, or an ArtifactError saying why it cannot be one.

    A symbolic link is followed, so writing ``link.h5`` updates the file it points to and the
    link stays a link. A folder, or a path below a file, is refused before anything is written.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.is_dir():
        raise ArtifactError(f"cannot write {path}: it is a folder, not a file")
    anchor = _first_existing(target.parent)
    if not anchor.is_dir():
        raise ArtifactError(f"cannot write {path}: {anchor} is a file, not a folder")
    return target


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing the same file twice at once
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(target: Path) -> int:
    """Delete temporary files left beside ``target`` by writers that were killed (``kill -9``).

    Temporary names carry their writer's pid (``.NAME.PID.TOKEN.tmp``); files of a live process
    are left alone. Returns how many were removed.
    """
    removed = 0
    prefix = f".{target.name}."
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(_TEMP_SUFFIX)):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed += 1
    return removed


def _new_temp(target: Path) -> Path:
    """An empty new file beside ``target``, created with the user's umask (not mkstemp's 0600)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise ArtifactError(f"cannot create a temporary file beside {target}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A killed or failing stage therefore never leaves a file that a later stage would trust, and
    the next write of the same file removes what a killed writer left. File-system failures
    (no permission, a full disk, a folder where the file should be) become one ArtifactError
    naming ``path`` and the OS's reason; the temporary file is removed.
    """
    target = write_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        tmp_path = _new_temp(target)
    except OSError as exc:
        raise ArtifactError(f"cannot write {path}: {os_reason(exc, target)}") from None
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(exc, OSError):
            raise ArtifactError(f"cannot write {path}: {os_reason(exc, target)}") from None
        raise


def paths_digest(paths: Sequence[str]) -> str:
    """Digest of a row order: the sha256 of the newline-joined relative paths."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """A file's sha256 (first 32 hex digits), for inputs that are not HDF5 artifacts."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:32]


def _array_digest(h: "hashlib._Hash", name: str, value: Any) -> None:
    h.update(name.encode())
    if sp.issparse(value):
        value = value.tocsr()
        for part in (value.indptr, value.indices, value.data, np.asarray(value.shape)):
            h.update(np.ascontiguousarray(part).tobytes())
    elif isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        h.update(paths_digest(value).encode())
    else:
        arr = np.ascontiguousarray(np.asarray(value))
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(arr.tobytes())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return os.path.realpath(a) == os.path.realpath(b)


def existing_schema(path: str | os.PathLike) -> str | None:
    """The schema of the reidctl artifact at ``path`` (HDF5 or checkpoint), or None if it is not one."""
    path = Path(path)
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                return _plain(f.attrs.get("schema")) or None
        if zipfile.is_zipfile(path):  # torch.save's format: look for our schema in its pickle, unpickled
            with zipfile.ZipFile(path) as z:
                pickle = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
                return CHECKPOINT if pickle and CHECKPOINT.encode() in z.read(pickle) else None
    except Exception:  # noqa: BLE001  (anything unreadable is simply not one of ours)
        return None
    return None


def check_output(out: str | os.PathLike, *, schema: str, inputs: Sequence[str | os.PathLike | None] = (),
                 force: bool = False) -> Path:
    """Refuse an output path that would destroy data: one of the command's own inputs, or an
    existing file that is not an artifact of ``schema`` (a features file given as a labels
    ``--out``, a photo, anything not ours) unless ``force``. Returns the path to write."""
    out = Path(out)
    for given in inputs:
        if given is not None and _same_file(out, Path(given)):
            raise ArtifactError(f"--out {out} is also an input of this command ({given}); write to another file")
    target = write_target(out)
    if target.exists() and not force:
        found = existing_schema(target)
        if found != schema:
            what = "not a reidctl artifact" if found is None else f"a '{found}' artifact"
            raise ArtifactError(f"--out {out} already exists and is {what}, not '{schema}': refusing to overwrite "
                                "it (choose another --out, or --force)")
    return out


# --------------------------------------------------------------------------------------------
# generic write / read


@dataclass
class Meta:
    """Root attributes every artifact carries."""

    schema: str
    schema_version: int
    reidctl_version: str
    created: str
    params: dict[str, Any]
    inputs: dict[str, str]
    seed: int | None
    digest: str
    attrs: dict[str, Any] = field(default_factory=dict)  # everything else at the root


def write_artifact(
    path: str | os.PathLike,
    schema: str,
    arrays: Mapping[str, Any],
    *,
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
    seed: int | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> str:
    """Write ``arrays`` (numpy arrays, lists of str, or scipy sparse matrices) atomically.

    Sparse matrices are stored as a group (``data``, ``indices``, ``indptr``, ``shape``) so that
    explicit zeros survive. Returns the content digest.
    """
    digest = content_digest(schema, arrays, params)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema"] = schema
            f.attrs["schema_version"] = SCHEMA_VERSIONS[schema]
            f.attrs["reidctl_version"] = __version__
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            f.attrs["params"] = json.dumps(params or {}, sort_keys=True, default=str)
            f.attrs["inputs"] = json.dumps(inputs or {}, sort_keys=True)
            f.attrs["seed"] = -1 if seed is None else int(seed)
            f.attrs["digest"] = digest
            for key, value in (attrs or {}).items():
                f.attrs[key] = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
            for name, value in arrays.items():
                _write_value(f, name, value)
    return digest


def content_digest(schema: str, arrays: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> str:
    """The digest an artifact records: its schema, arrays and params (not when or by whom it was
    written), so a reader can recompute it to tell whether the content changed."""
    h = hashlib.sha256(schema.encode())
    for name in sorted(arrays):
        _array_digest(h, name, arrays[name])
    h.update(json.dumps(params or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _write_value(f: h5py.File, name: str, value: Any) -> None:
    if sp.issparse(value):
        m = value.tocsr()
        g = f.create_group(name)
        g.attrs["sparse"] = "csr"
        # lzf after byte shuffling: smaller than gzip level 1 here and 2-3× faster to write and read
        # (a CUHK03 Jaccard matrix, 14 M entries: 50 MB in 0.7 s, gzip-1 58 MB in 1.9 s)
        for part in ("data", "indices"):
            values = getattr(m, part)
            if values.size:
                g.create_dataset(part, data=values, compression="lzf", shuffle=True, chunks=(min(values.size, 1 << 18),))
            else:  # HDF5 cannot chunk an empty dataset
                g.create_dataset(part, data=values)
        g.create_dataset("indptr", data=m.indptr)
        g.create_dataset("shape", data=np.asarray(m.shape, dtype=np.int64))
    elif isinstance(value, (list, tuple)) and (not value or isinstance(value[0], str)):
        f.create_dataset(name, data=np.asarray(value, dtype=object), dtype=_STR)
    else:
        arr = np.asarray(value)
        big = arr.nbytes > (1 << 20)
        f.create_dataset(name, data=arr, chunks=True if big else None)


def _open(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such file")
    if path.is_dir():
        raise ArtifactError(f"{path}: is a folder, not an HDF5 artifact")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ArtifactError(f"{path}: not a readable HDF5 artifact ({exc})") from None


#: What h5py (and what we decode from it) raises on a damaged file: a corrupt compressed chunk
#: is an OSError mid-read, a damaged attribute a ValueError or a KeyError.
_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Open an artifact for reading; any HDF5 error while reading becomes an ArtifactError that
    names the file (a corrupt chunk must not end in a traceback halfway through a stage)."""
    path = Path(path)
    f = _open(path)
    try:
        with f:
            yield f
    except _READ_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{path}: corrupt artifact, reading it failed ({reason})") from None


def read_meta(path: str | os.PathLike, expect_schema: str | None = None) -> Meta:
    """Root attributes of an artifact; with ``expect_schema``, refuse any other schema/version."""
    with reading(path) as f:
        return _meta(f, Path(path), expect_schema)


def _meta(f: h5py.File, path: Path, expect_schema: str | None) -> Meta:
    attrs = {k: _plain(v) for k, v in f.attrs.items()}
    schema = attrs.pop("schema", None)
    if schema is None:
        raise ArtifactError(f"{path}: not a reidctl artifact (no 'schema' attribute)")
    version = int(attrs.pop("schema_version", -1))
    if expect_schema is not None:
        if schema != expect_schema:
            raise ArtifactError(f"{path}: is a '{schema}' artifact, expected '{expect_schema}'")
        if version != SCHEMA_VERSIONS[expect_schema]:
            raise ArtifactError(
                f"{path}: schema version {version} of '{schema}' is not supported "
                f"(this reidctl reads version {SCHEMA_VERSIONS[expect_schema]})"
            )
    seed = int(attrs.pop("seed", -1))
    return Meta(
        schema=schema,
        schema_version=version,
        reidctl_version=str(attrs.pop("reidctl_version", "?")),
        created=str(attrs.pop("created", "?")),
        params=json.loads(attrs.pop("params", "{}")),
        inputs=json.loads(attrs.pop("inputs", "{}")),
        seed=None if seed < 0 else seed,
        digest=str(attrs.pop("digest", "")),
        attrs=attrs,
    )


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _read_value(node: h5py.Dataset | h5py.Group) -> Any:
    if isinstance(node, h5py.Group):
        if node.attrs.get("sparse") != "csr":
            raise ArtifactError(f"{node.file.filename}: group '{node.name}' is not a sparse matrix")
        shape = tuple(int(x) for x in node["shape"][()])
        return sp.csr_matrix((node["data"][()], node["indices"][()], node["indptr"][()]), shape=shape)
    if node.dtype.kind == "O" or h5py.check_string_dtype(node.dtype) is not None:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in node[()]]
    return node[()]


def _require(f: h5py.File, path: Path, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in f]
    if missing:
        raise ArtifactError(f"{path}: corrupt artifact, missing {', '.join(missing)}")


def check_rows(path: str | os.PathLike, paths: Sequence[str], expect_paths: Sequence[str] | None) -> None:
    """Refuse an artifact whose rows are not the expected images in the expected order."""
    if expect_paths is None:
        return
    if len(paths) != len(expect_paths):
        raise ArtifactError(
            f"{path}: has {len(paths)} rows but {len(expect_paths)} were expected "
            "(made from another dataset or split?)"
        )
    if paths_digest(paths) != paths_digest(expect_paths):
        bad = next(i for i, (a, b) in enumerate(zip(paths, expect_paths)) if a != b)
        raise ArtifactError(
            f"{path}: rows do not line up: row {bad} is '{paths[bad]}' but '{expect_paths[bad]}' "
            "was expected (made from another dataset, or in another order?)"
        )


# --------------------------------------------------------------------------------------------
# features


@dataclass
class Features:
    """Extracted features. Deliberately holds no identity labels (see :func:`read_ground_truth`)."""

    feats: np.ndarray  # N×D float32, L2-normalised ("global" in the file)
    parts: np.ndarray | None  # N×P×D float32, L2-normalised, or None
    camids: np.ndarray  # N int64, -1 unknown
    paths: list[str]
    split: list[str]
    meta: Meta
    path: Path

    def __len__(self) -> int:
        return len(self.paths)

    def rows(self, split: str) -> np.ndarray:
        """Indices of the rows that came from ``split``."""
        return np.flatnonzero(np.asarray(self.split) == split)


def write_features(
    path: str | os.PathLike,
    feats: np.ndarray,
    *,
    camids: np.ndarray,
    paths: Sequence[str],
    split: Sequence[str],
    pids: np.ndarray | None = None,
    parts: np.ndarray | None = None,
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
    seed: int | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> str:
    n = len(paths)
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] != n:
        raise ValueError(f"features must be N×D with N={n}, got {feats.shape}")
    if list(paths) != sorted(paths):
        raise ValueError("rows must be in the order of the sorted relative paths")
    arrays: dict[str, Any] = {
        "global": feats,
        "camids": np.asarray(camids, dtype=np.int64),
        "paths": list(paths),
        "split": list(split),
    }
    if parts is not None:
        parts = np.asarray(parts, dtype=np.float32)
        if parts.ndim != 3 or parts.shape[0] != n:
            raise ValueError(f"part features must be N×P×D with N={n}, got {parts.shape}")
        arrays["parts"] = parts
    if pids is not None:
        arrays["pids"] = np.asarray(pids, dtype=np.int64)
    all_attrs = {"paths_digest": paths_digest(paths), **(attrs or {})}
    return write_artifact(path, FEATURES, arrays, params=params, inputs=inputs, seed=seed, attrs=all_attrs)


def read_features(path: str | os.PathLike, expect_paths: Sequence[str] | None = None) -> Features:
    """Read features (never pids); with ``expect_paths``, refuse rows that do not line up."""
    path = Path(path)
    with reading(path) as f:
        meta = _meta(f, path, FEATURES)
        _require(f, path, ("global", "camids", "paths", "split"))
        paths = _read_value(f["paths"])
        feats = f["global"][()]
        parts = f["parts"][()] if "parts" in f else None
        camids = f["camids"][()]
        split = _read_value(f["split"])
    if not (len(paths) == feats.shape[0] == len(camids) == len(split)):
        raise ArtifactError(f"{path}: corrupt artifact, datasets have different row counts")
    if meta.attrs.get("paths_digest") not in (None, paths_digest(paths)):
        raise ArtifactError(f"{path}: corrupt artifact, 'paths' does not match its recorded digest")
    _refuse_non_finite(path, paths, feats, parts)
    check_rows(path, paths, expect_paths)
    return Features(feats, parts, camids, paths, split, meta, path)


def _refuse_non_finite(path: Path, paths: Sequence[str], feats: np.ndarray, parts: np.ndarray | None) -> None:
    """NaN or Inf in a feature row silently changes every distance it enters: refuse the file."""
    bad = ~np.isfinite(feats).all(axis=1)
    if parts is not None:
        bad |= ~np.isfinite(parts.reshape(len(parts), -1)).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ArtifactError(f"{path}: {int(bad.sum())} rows hold NaN or Inf features, the first is row {first} "
                            f"('{paths[first]}'); re-extract them")


def read_ground_truth(path: str | os.PathLike) -> np.ndarray | None:
    """Ground-truth pids of a features file (-1 unknown), or None when the dataset had none.

    For evaluation and label-quality reports only: no clustering or refinement may use them.
    """
    path = Path(path)
    with reading(path) as f:
        _meta(f, path, FEATURES)
        if "pids" not in f:
            return None
        pids = f["pids"][()]
    return None if np.all(pids < 0) else pids


# --------------------------------------------------------------------------------------------
# labels


@dataclass
class Labels:
    """Pseudo labels plus whatever the stage computed (neighbours, sparse distances, matrices)."""

    labels: np.ndarray  # N int32, -1 outlier or discarded
    paths: list[str]
    extra: dict[str, Any]  # name -> ndarray | csr_matrix | list[str]
    meta: Meta
    path: Path

    def __len__(self) -> int:
        return len(self.paths)


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    *,
    paths: Sequence[str],
    extra: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
    seed: int | None = None,
    attrs: Mapping[str, Any] | None = None,
    schema: str = LABELS,
) -> str:
    labels = np.asarray(labels, dtype=np.int32)
    if labels.shape != (len(paths),):
        raise ValueError(f"labels must have one entry per row ({len(paths)}), got {labels.shape}")
    extra = dict(extra or {})
    clash = {"labels", "paths"} & set(extra)
    if clash:
        raise ValueError(f"reserved names in extra: {clash}")
    arrays = {"labels": labels, "paths": list(paths), **extra}
    all_attrs = {"paths_digest": paths_digest(paths), **(attrs or {})}
    return write_artifact(path, schema, arrays, params=params, inputs=inputs, seed=seed, attrs=all_attrs)


def read_labels(
    path: str | os.PathLike,
    expect_paths: Sequence[str] | None = None,
    *,
    load: Sequence[str] | None = None,
    schema: str = LABELS,
) -> Labels:
    """Read a labels artifact; ``load`` limits which extra datasets are read (default: all)."""
    path = Path(path)
    with reading(path) as f:
        meta = _meta(f, path, schema)
        _require(f, path, ("labels", "paths"))
        paths = _read_value(f["paths"])
        labels = f["labels"][()]
        names = [n for n in f if n not in ("labels", "paths")]
        if load is not None:
            names = [n for n in names if n in load]
        extra = {n: _read_value(f[n]) for n in names}
    if len(labels) != len(paths):
        raise ArtifactError(f"{path}: corrupt artifact, {len(labels)} labels for {len(paths)} rows")
    check_rows(path, paths, expect_paths)
    return Labels(labels.astype(np.int32), paths, extra, meta, path)


# --------------------------------------------------------------------------------------------
# a method's persistent state


def write_method_state(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], *,
                       params: Mapping[str, Any] | None = None) -> str:
    """Write a method's persistent arrays (a multilabel memory ...); returns the content digest."""
    return write_artifact(path, METHOD_STATE, {k: np.asarray(v) for k, v in arrays.items()}, params=params)


def read_method_state(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """A method's persistent arrays and their content digest, recomputed from what was read (not
    the recorded one), so a file edited in place does not pass for the one a checkpoint names."""
    path = Path(path)
    with reading(path) as f:
        meta = _meta(f, path, METHOD_STATE)
        arrays = {name: _read_value(f[name]) for name in f}
    return arrays, content_digest(METHOD_STATE, arrays, meta.params)


def read_state_arrays(path: str | os.PathLike, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Only the named arrays of a method state that has them, unverified (for reports: the pairs
    MAR mined, without reading and hashing its hundreds of MB of memory)."""
    path = Path(path)
    with reading(path) as f:
        _meta(f, path, METHOD_STATE)
        return {name: _read_value(f[name]) for name in names if name in f}


# --------------------------------------------------------------------------------------------
# inspection


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What an artifact holds: its root attributes and every dataset's shape and dtype."""
    path = Path(path)
    with reading(path) as f:
        meta = _meta(f, path, None)
        items: dict[str, str] = {}

        def visit(name: str, node: Any) -> None:
            if isinstance(node, h5py.Group) and node.attrs.get("sparse") == "csr":
                shape = tuple(int(x) for x in node["shape"][()])
                items[name] = f"sparse csr {shape[0]}×{shape[1]}, {node['data'].shape[0]} stored entries"
            elif isinstance(node, h5py.Dataset) and not any(name.startswith(k + "/") for k in items):
                items[name] = f"{'×'.join(map(str, node.shape)) or 'scalar'} {node.dtype}"

        f.visititems(visit)
    return {
        "path": str(path),
        "schema": meta.schema,
        "schema_version": meta.schema_version,
        "reidctl_version": meta.reidctl_version,
        "created": meta.created,
        "seed": meta.seed,
        "digest": meta.digest,
        "params": meta.params,
        "inputs": meta.inputs,
        "attrs": meta.attrs,
        "datasets": items,
    }


def atomic_save(obj: Any, path: str | os.PathLike, saver: Callable[[Any, Path], None]) -> None:
    """Save any object through ``saver(obj, tmp_path)`` atomically (used for checkpoints).

    ``torch.save`` reports a failed write (a full disk) as a RuntimeError, not an OSError; it
    becomes the same one-line ArtifactError as any other failed write.
    """
    with atomic_path(path) as tmp:
        try:
            saver(obj, tmp)
        except RuntimeError as exc:
            if "writ" not in str(exc).lower():
                raise
            free = shutil.disk_usage(tmp.parent).free
            why = "no space left on the device" if free < (1 << 20) else str(exc).strip().splitlines()[-1]
            raise ArtifactError(f"cannot write {path}: {why}") from None
