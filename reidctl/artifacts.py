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
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import h5py
import numpy as np
import scipy.sparse as sp

from reidctl.version import __version__
from reidctl.errors import ArtifactError

FEATURES = "reidctl/features"
LABELS = "reidctl/labels"
INTRA_LABELS = "reidctl/intra-camera-labels"
#: A method's persistent arrays, beside the checkpoint that names them (reidctl.models.checkpoint).
METHOD_STATE = "reidctl/method-state"
CHECKPOINT = "reidctl/checkpoint"  # a torch.save'd dict (reidctl.models.checkpoint), not HDF5
#: The run's models, beside its summary: the best evaluated one (the initial model included) and
#: the last finished epoch's; links to checkpoints inside the run (copies where links fail).
BEST_MODEL, LAST_MODEL = "best.pt", "last.pt"
#: What a run folder offers as *its* model, in order of preference (``export RUN_DIR``).
RUN_MODELS = (BEST_MODEL, LAST_MODEL)
SCHEMA_VERSIONS = {FEATURES: 1, LABELS: 2, INTRA_LABELS: 1, METHOD_STATE: 1}
#: Older versions still read. Labels version 2 may keep arrays in the labels file beside it
#: (:data:`BORROWED`); a reidctl that reads only version 1 refuses such a file in one line.
READABLE_VERSIONS = {LABELS: (1, 2)}

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


def write_target(path: str | os.PathLike, *, replace_link: bool = False) -> Path:
    """The file a write of ``path`` must replace, or an ArtifactError saying why it cannot be one.

    A symbolic link the user named as an output is followed, so writing ``link.h5`` updates the
    file it points to and the link stays a link. With ``replace_link`` (a file inside a run
    folder, a file named after the user's output such as ``OUT.json``) the link itself is
    replaced: a link planted there must not send the write onto a file elsewhere. A folder, or
    a path below a file, is refused before anything is written.
    """
    path = Path(path)
    if replace_link and path.is_symlink():
        return path  # os.replace() renames over the link itself, never through it
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.is_dir():
        raise ArtifactError(f"cannot write {path}: it is a folder, not a file")
    anchor = _first_existing(target.parent)
    if not anchor.is_dir():
        raise ArtifactError(f"cannot write {path}: {anchor} is a file, not a folder")
    return target


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def dead_writers_temps(target: Path, *, pid_end: str = ".", keep_own: bool = False) -> list[os.DirEntry]:
    """The temporaries beside ``target`` (``.NAME.PID<pid_end>TOKEN.tmp``) whose writer process is
    gone (``kill -9`` runs no cleanup). This process's own count as gone unless ``keep_own``
    (a file write never overlaps itself; a folder build may run in another thread)."""
    prefix = f".{target.name}."
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    stale = []
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(_TEMP_SUFFIX)):
            continue
        pid = name[len(prefix):].split(pid_end, 1)[0]
        if not pid.isdigit():
            continue
        own = int(pid) == os.getpid()
        if (own and not keep_own) or (not own and not pid_alive(int(pid))):
            stale.append(entry)
    return stale


def remove_stale_temps(target: Path) -> int:
    """Delete temporary files left beside ``target`` by writers that were killed (``kill -9``).

    Temporary names carry their writer's pid (``.NAME.PID.TOKEN.tmp``); files of a live process
    are left alone. Returns how many were removed.
    """
    removed = 0
    for entry in dead_writers_temps(target):
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
def atomic_path(path: str | os.PathLike, *, replace_link: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A killed or failing stage therefore never leaves a file that a later stage would trust, and
    the next write of the same file removes what a killed writer left. File-system failures
    (no permission, a full disk, a folder where the file should be) become one ArtifactError
    naming ``path`` and the OS's reason; the temporary file is removed. ``replace_link``: a
    symbolic link at ``path`` is replaced, not written through (:func:`write_target`).
    """
    target = write_target(path, replace_link=replace_link)
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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """``a`` and ``b`` are one file, whatever the spelling or link (also when neither exists yet)."""
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


#: Kinds of the files reidctl writes that are neither HDF5 artifacts nor checkpoints, as
#: :func:`existing_kind` recognises them: an existing output of the same kind is replaced, anything
#: else needs ``--force``. Pictures carry their kind in a PNG text chunk (:data:`PNG_KIND_KEY`), the
#: HTML report in a ``generator`` meta tag, an exported model in its ``OUT.json`` record.
RANKING_CSV = "reidctl/ranking-csv"
SHEET = "reidctl/sheet"
REPORT = "reidctl/report"
EXPORT = "reidctl/export"
EXPORT_RECORD = "reidctl/export-record"  # OUT.json: how to prepare images for the model in OUT
PNG_KIND_KEY = "reidctl-kind"
#: The first line of ``rank``'s CSV starts so (reidctl.evaluation.ranking.CSV_COLUMNS; a test keeps them equal).
RANKING_CSV_START = "query,query_camid,query_pid,rank,"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def html_kind_tag(kind: str) -> str:
    """The ``<meta>`` tag that marks an HTML page as reidctl's output of ``kind``."""
    return f'<meta name="generator" content="{kind}">'


def png_kind(path: str | os.PathLike) -> str | None:
    """The kind a PNG written by reidctl records in its :data:`PNG_KIND_KEY` text chunk (read
    chunk by chunk up to the image data, without decoding the image), or None."""
    with open(path, "rb") as f:
        if f.read(8) != _PNG_MAGIC:
            return None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            size, name = int.from_bytes(head[:4], "big"), head[4:]
            if name in (b"IDAT", b"IEND") or size > (1 << 20):
                return None
            body = f.read(size)
            f.read(4)  # CRC
            if name == b"tEXt" and body.startswith(PNG_KIND_KEY.encode() + b"\0"):
                return body[len(PNG_KIND_KEY) + 1:].decode("latin-1")


def existing_kind(path: str | os.PathLike) -> str | None:
    """What reidctl output the file at ``path`` is (an artifact schema, a checkpoint, or one of
    the kinds above), or None if it is not one of ours. Reads a few bytes; never runs code."""
    path = Path(path)
    found = existing_schema(path)
    if found is not None:
        return found
    try:
        picture = png_kind(path)
        if picture is not None:
            return picture
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
        if head.startswith(RANKING_CSV_START):
            return RANKING_CSV
        if html_kind_tag(REPORT) in head:
            return REPORT
        if path.suffix == ".json":
            return EXPORT_RECORD if _is_export_record(path) else None
        return EXPORT if _is_export_record(export_record_path(path)) else None
    except (OSError, ValueError):
        return None


def _is_export_record(path: Path) -> bool:
    """``path`` is the JSON record ``export`` writes beside a model (small; read whole)."""
    if not path.is_file() or path.stat().st_size > (1 << 20):
        return False
    record = json.loads(path.read_text(encoding="utf-8"))
    return isinstance(record, dict) and {"format", "preprocessing"} <= set(record)


def export_record_path(out: str | os.PathLike) -> Path:
    """``OUT.json``: where ``export`` records how to prepare images for the model in ``OUT``."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def check_output(out: str | os.PathLike, *, schema: str, inputs: Sequence[str | os.PathLike | None] = (),
                 force: bool = False, flag: str = "--out") -> Path:
    """Refuse an output path that would destroy data, in one line, before any work is done.

    Refused: one of the command's own inputs (``inputs``: files, or folders whose files the
    command reads: a file inside one counts as an input), whatever the spelling or link; and,
    unless ``force``, an existing file that is not reidctl's output of ``schema`` (a features file
    given as a labels ``--out``, a photo, a CSV of the user's, anything not ours). ``flag`` names
    the option in the message. Returns the path to write.
    """
    out = Path(out)
    for given in inputs:
        if given is not None and _is_input(out, Path(given)):
            raise ArtifactError(f"{flag} {out} is also an input of this command ({given}); write to another file")
    target = write_target(out)
    if target.exists() and not force:
        found = existing_kind(target)
        if found != schema:
            what = "not a reidctl artifact" if found is None else f"a '{found}' artifact"
            raise ArtifactError(f"{flag} {out} already exists and is {what}, not '{schema}': refusing to overwrite "
                                f"it (choose another {flag}, or --force)")
    return out


def _is_input(out: Path, given: Path) -> bool:
    """``out`` is the file ``given`` or, where ``given`` is a folder, an existing file inside it."""
    if same_file(out, given):
        return True
    if given.is_dir() and os.path.lexists(out):
        inside = Path(os.path.realpath(out))
        return Path(os.path.realpath(given)) in inside.parents
    return False


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
    omit: Collection[str] = (),
    compress: bool = False,
) -> str:
    """Write ``arrays`` (numpy arrays, lists of str, or scipy sparse matrices) atomically.

    Sparse matrices are stored as a group (``data``, ``indices``, ``indptr``, ``shape``) so that
    explicit zeros survive. Arrays named in ``omit`` enter the content digest but are not
    written (a labels file borrowing them from another, :func:`write_labels`). ``compress``:
    dense numeric arrays are compressed too (:data:`COMPRESSION`); sparse ones always are.
    Returns the content digest.
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
                if name not in omit:
                    _write_value(f, name, value, compress)
    return digest


def content_digest(schema: str, arrays: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> str:
    """The digest an artifact records: its schema, arrays and params (not when or by whom it was
    written), so a reader can recompute it to tell whether the content changed."""
    h = hashlib.sha256(schema.encode())
    for name in sorted(arrays):
        _array_digest(h, name, arrays[name])
    h.update(json.dumps(params or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


#: How arrays that pay for it are compressed: gzip level 1 after byte shuffling. Measured on a
#: cuhk03_labeled epoch (6,264 images; a Jaccard matrix of 14.1 M entries; process CPU time):
#: Jaccard values 56.2 MB raw, lzf 39.7 MB (write 0.70 s, read 0.26 s), gzip-1 36.1 MB (1.20 s,
#: 0.29 s); its column indices lzf 10.2 MB (0.33 s, 0.35 s), gzip-1 8.0 MB (0.35 s, 0.16 s); kNN
#: indices 0.75 → 0.31 MB and distances 0.75 → 0.45 MB. Features are left raw: 32.1 MB of them
#: shrink only to 26.9 MB (−16 %) for 8 s more to write, and every stage reads them.
COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
#: Dense arrays smaller than this many bytes are not worth a chunked, compressed layout.
COMPRESS_MIN_BYTES = 1 << 14


def _write_value(f: h5py.File, name: str, value: Any, compress: bool = False) -> None:
    if sp.issparse(value):
        m = value.tocsr()
        g = f.create_group(name)
        g.attrs["sparse"] = "csr"
        for part in ("data", "indices"):
            values = getattr(m, part)
            if values.size:
                g.create_dataset(part, data=values, chunks=(min(values.size, 1 << 18),), **COMPRESSION)
            else:  # HDF5 cannot chunk an empty dataset
                g.create_dataset(part, data=values)
        g.create_dataset("indptr", data=m.indptr)
        g.create_dataset("shape", data=np.asarray(m.shape, dtype=np.int64))
    elif isinstance(value, (list, tuple)) and (not value or isinstance(value[0], str)):
        f.create_dataset(name, data=np.asarray(value, dtype=object), dtype=_STR)
    else:
        arr = np.asarray(value)
        if compress and arr.dtype.kind in "iufb" and arr.nbytes >= COMPRESS_MIN_BYTES:
            f.create_dataset(name, data=arr, chunks=True, **COMPRESSION)
            return
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
        if version not in READABLE_VERSIONS.get(expect_schema, (SCHEMA_VERSIONS[expect_schema],)):
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
        _check_layout(f, path, FEATURES_LAYOUT)
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


#: What each dataset of a features file must be: (dimensions, dtype kinds or "str", in words).
FEATURES_LAYOUT: dict[str, tuple[int, str, str]] = {
    "global": (2, "f", "an N×D matrix of floats"),
    "parts": (3, "f", "an N×P×D array of floats"),
    "camids": (1, "iu", "a vector of integers"),
    "pids": (1, "iu", "a vector of integers"),
    "paths": (1, "str", "a list of strings"),
    "split": (1, "str", "a list of strings"),
}


def _check_layout(f: h5py.File, path: Path, layout: Mapping[str, tuple[int, str, str]]) -> None:
    """Refuse, in one line that names it, a dataset of the wrong shape or type before it is read.

    Why: the row-count check compares lengths only, so a 1-D ``global``, integer ``paths`` or
    string ``camids`` would pass it and fail deep inside a stage (AxisError, AttributeError,
    UFuncNoLoopError) — a hand-made or damaged file must end in one error line, not a traceback."""
    for name, (ndim, kinds, what) in layout.items():
        if name not in f:
            continue
        node = f[name]
        if not isinstance(node, h5py.Dataset):
            raise ArtifactError(f"{path}: corrupt features file, '{name}' must be {what} (it is a group)")
        text = node.dtype.kind == "O" or h5py.check_string_dtype(node.dtype) is not None
        if node.ndim != ndim or text != (kinds == "str") or (not text and node.dtype.kind not in kinds):
            found = "strings" if text else node.dtype.name
            raise ArtifactError(f"{path}: corrupt features file, '{name}' must be {what} (it is {node.ndim}-D {found})")


def non_finite_rows(feats: np.ndarray, parts: np.ndarray | None) -> np.ndarray:
    """The rows (a boolean mask) whose global or part features hold NaN or Inf."""
    bad = ~np.isfinite(feats).all(axis=1)
    if parts is not None:
        bad |= ~np.isfinite(parts.reshape(len(parts), -1)).all(axis=1)
    return bad


def _refuse_non_finite(path: Path, paths: Sequence[str], feats: np.ndarray, parts: np.ndarray | None) -> None:
    """NaN or Inf in a feature row silently changes every distance it enters: refuse the file."""
    bad = non_finite_rows(feats, parts)
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
        _check_layout(f, path, {"pids": FEATURES_LAYOUT["pids"]})
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


#: Root attribute of a labels file that keeps some arrays in another labels file beside it:
#: ``{"file": NAME, "digest": ITS CONTENT DIGEST, "arrays": {name: array digest}}``. ``refine``
#: leaves most of what the clustering computed unchanged (Cluster Contrast all of it: the labels,
#: kNN lists and Jaccard matrix), and a copy would double every epoch's largest files.
BORROWED = "borrowed"


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
    borrow_from: Labels | None = None,
) -> str:
    """Write a labels artifact atomically; returns its content digest.

    With ``borrow_from`` (the labels file the arrays were read from, in the same folder), each
    array equal to one of that file's is not copied: the file records its name, the source's
    digest and each borrowed array's digest, and :func:`read_labels` reads them from there and
    checks them. A source that itself borrows is copied from instead, so a reader never follows
    more than one step. The content digest is that of the full content either way.
    """
    labels = np.asarray(labels, dtype=np.int32)
    if labels.shape != (len(paths),):
        raise ValueError(f"labels must have one entry per row ({len(paths)}), got {labels.shape}")
    extra = dict(extra or {})
    clash = {"labels", "paths"} & set(extra)
    if clash:
        raise ValueError(f"reserved names in extra: {clash}")
    arrays = {"labels": labels, "paths": list(paths), **extra}
    all_attrs = {"paths_digest": paths_digest(paths), **(attrs or {})}
    borrowed = _borrowable(Path(path), arrays, borrow_from) if borrow_from is not None and schema == LABELS else {}
    if borrowed:
        all_attrs[BORROWED] = {"file": borrow_from.path.name, "digest": borrow_from.meta.digest, "arrays": borrowed}
    return write_artifact(path, schema, arrays, params=params, inputs=inputs, seed=seed, attrs=all_attrs,
                          omit=set(borrowed), compress=True)


def array_digest(name: str, value: Any) -> str:
    """The digest of one named array (dense, sparse or strings), as the content digest hashes it."""
    h = hashlib.sha256()
    _array_digest(h, name, value)
    return h.hexdigest()[:32]


def _borrowable(path: Path, arrays: Mapping[str, Any], source: Labels) -> dict[str, str]:
    """The arrays of ``arrays`` that ``source`` holds unchanged, with their digests; none when
    ``source`` is not a self-contained labels file in ``path``'s folder (a reference must
    survive the folder being moved or copied, and must not chain)."""
    if (source.meta.schema != LABELS or BORROWED in source.meta.attrs or source.path.name == path.name
            or not same_folder(source.path, path)):
        return {}
    theirs = {"labels": source.labels, "paths": source.paths, **source.extra}
    out = {}
    for name, value in arrays.items():
        if name not in theirs:
            continue
        digest = array_digest(name, value)
        if value is theirs[name] or (_same_kind(value, theirs[name]) and digest == array_digest(name, theirs[name])):
            out[name] = digest
    return out


def _same_kind(a: Any, b: Any) -> bool:
    """Both sparse, both lists of strings, or both dense arrays of one dtype (int32 labels are
    not int64 ones)."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
    if sp.issparse(a) or sp.issparse(b):
        return sp.issparse(a) and sp.issparse(b)
    return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype


def same_folder(a: Path, b: Path) -> bool:
    """``a`` and ``b`` lie in one folder (``b`` may not exist yet)."""
    return os.path.realpath(a.parent) == os.path.realpath(b.parent)


def read_labels(
    path: str | os.PathLike,
    expect_paths: Sequence[str] | None = None,
    *,
    load: Sequence[str] | None = None,
    schema: str = LABELS,
) -> Labels:
    """Read a labels artifact; ``load`` limits which extra datasets are read (default: all).

    The one reader of labels files: arrays a file borrows from the labels file beside it
    (:data:`BORROWED`) are read from there and checked against the digests it recorded, so a
    changed, swapped or missing source is refused in one line naming both files.
    """
    path = Path(path)
    with reading(path) as f:
        meta = _meta(f, path, schema)
        borrowed = _borrowed(meta, path)[1]
        _require(f, path, [n for n in ("labels", "paths") if n not in borrowed])
        paths = _read_value(f["paths"]) if "paths" in f else None
        labels = f["labels"][()] if "labels" in f else None
        names = [n for n in (*f, *borrowed) if n not in ("labels", "paths")]
        if load is not None:
            names = [n for n in names if n in load]
        extra = {n: _read_value(f[n]) for n in names if n in f}
    wanted = [n for n in borrowed if n in ("labels", "paths") or n in names]
    if wanted:
        got = _read_borrowed(path, meta, paths, wanted)
        paths, labels = got.pop("paths", paths), got.pop("labels", labels)
        extra.update(got)
    if len(labels) != len(paths):
        raise ArtifactError(f"{path}: corrupt artifact, {len(labels)} labels for {len(paths)} rows")
    check_rows(path, paths, expect_paths)
    return Labels(labels.astype(np.int32), paths, extra, meta, path)


def _borrowed(meta: Meta, path: Path) -> tuple[Path | None, dict[str, str]]:
    """The file beside ``path`` that a labels file keeps some arrays in, and name -> digest of
    those arrays ((None, {}) for none); an unreadable record is refused."""
    record = meta.attrs.get(BORROWED)
    if record is None:
        return None, {}
    try:
        record = json.loads(record) if isinstance(record, str) else record
        arrays, source = record["arrays"], path.parent / Path(str(record["file"])).name
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(f"{path}: corrupt artifact, its '{BORROWED}' record is unreadable") from None
    if not isinstance(arrays, dict):
        raise ArtifactError(f"{path}: corrupt artifact, its '{BORROWED}' record is unreadable")
    return (source if arrays else None), arrays


def borrowed_source(path: str | os.PathLike, meta: Meta) -> Path | None:
    """The file a labels artifact borrows arrays from, or None when it holds all of them."""
    return _borrowed(meta, Path(path))[0]


def _read_borrowed(path: Path, meta: Meta, paths: Sequence[str] | None, names: Sequence[str]) -> dict[str, Any]:
    """Read ``names`` from the file ``path`` borrows them from, refusing it if it is missing, of
    other rows (than ``paths``, or the digest ``path`` records of them), or changed since ``path``
    was written from it."""
    source, digests = _borrowed(meta, path)
    redo = "keep the two files together, or make it again (`reidctl loop --verify` re-runs what changed)"
    if not source.is_file():
        raise ArtifactError(f"{path}: its {', '.join(names)} are kept in {source.name} beside it, which is missing; "
                            f"{redo}")
    with reading(source) as f:
        _meta(f, source, LABELS)
        missing = [n for n in dict.fromkeys(("paths", *names)) if n not in f]
        if missing:
            raise ArtifactError(f"{path}: {source.name} beside it has no {', '.join(missing)} any more, which "
                                f"{path.name} was made from; {redo}")
        values = {n: _read_value(f[n]) for n in names}
        source_paths = values["paths"] if "paths" in values else _read_value(f["paths"])
    rows = paths_digest(paths) if paths is not None else meta.attrs.get("paths_digest")
    if paths_digest(source_paths) != rows:
        raise ArtifactError(f"{path}: {source.name} beside it has other rows than {path.name}; {redo}")
    changed = [n for n in names if array_digest(n, values[n]) != digests[n]]
    if changed:
        raise ArtifactError(f"{path}: {source.name} beside it changed since {path.name} was made from it "
                            f"(its {', '.join(repr(n) for n in changed)} differ); {redo}")
    return values


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
    source, borrowed = _borrowed(meta, path)
    for name in borrowed:
        items[name] = f"not copied: read from {source.name} beside it (checked against its recorded digest)"
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


def atomic_save(obj: Any, path: str | os.PathLike, saver: Callable[[Any, Path], None], *,
                replace_link: bool = False) -> None:
    """Save any object through ``saver(obj, tmp_path)`` atomically (used for checkpoints).

    ``torch.save`` reports a failed write as a RuntimeError, not an OSError, and not always in
    words that say so: on a full disk it is ``[enforce fail at inline_container.cc:672] .
    unexpected pos 704 vs 598`` (measured on /dev/full). Every RuntimeError of the saver becomes
    the same one-line ArtifactError as any other failed write; the temporary file is removed.
    """
    with atomic_path(path, replace_link=replace_link) as tmp:
        try:
            saver(obj, tmp)
        except RuntimeError as exc:
            free = shutil.disk_usage(tmp.parent).free
            why = "no space left on the device" if free < (1 << 20) else str(exc).strip().splitlines()[-1]
            raise ArtifactError(f"cannot write {path}: {why}") from None
