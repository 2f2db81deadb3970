"""Run configurations as TOML: the fully resolved options a ``loop`` ran with, and ``--config``.

Why TOML with flat keys: every key is the name of a ``loop`` option (``k1``, ``intra_epochs``,
``run_dir``), so a file maps one-to-one onto the command line and command-line options override
it (they are applied as the command's defaults, Click's ``default_map``). The tables
(``[model]``, ``[clustering]`` ...) only group keys for reading; they are flattened on load.
Unset values (None: "the library decides", e.g. ``workers``) are left out, as TOML has no null.

Paths, so that ``--config`` means the same run from any folder: a run's ``config.toml`` stores
every path absolute except those its top-level key ``relative_to_this_file`` lists (``run_dir``:
``"."``, the folder the file lies in, so a moved or copied run folder names itself). Reading
resolves a relative path listed there against the file's folder. Other relative paths (a
hand-written file, a file of an older reidctl) are taken as the command line takes them:
relative to the working directory.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from reidctl.artifacts import atomic_path
from reidctl.errors import ReidctlError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_NAME = "config.toml"
#: The top-level key listing the options whose relative paths are relative to the file's folder.
RELATIVE_KEY = "relative_to_this_file"


def dumps(sections: Mapping[str, Mapping[str, Any]], header: str = "", relative: Sequence[str] = ()) -> str:
    """TOML text: ``header`` as comments, the :data:`RELATIVE_KEY` list when ``relative`` names
    options, then one table per non-empty section."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    if relative:
        lines += ["", f"{RELATIVE_KEY} = {_value(list(relative))}"]
    for name, values in sections.items():
        kept = {k: v for k, v in values.items() if v is not None}
        if not kept:
            continue
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_value(v)}" for key, v in kept.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def write_config(path: str | os.PathLike, sections: Mapping[str, Mapping[str, Any]], header: str = "",
                 relative: Sequence[str] = ()) -> Path:
    """Write ``sections`` to ``path`` as TOML, atomically (a link at ``path`` is replaced, not
    written through); the options ``relative`` names are stored relative to ``path``'s folder."""
    path = Path(path)
    folder = path.parent.absolute()
    here = {name: {k: (os.path.relpath(Path(v).absolute(), folder) if k in relative and v is not None else v)
                   for k, v in values.items()} for name, values in sections.items()}
    listed = [k for values in here.values() for k, v in values.items() if k in relative and v is not None]
    with atomic_path(path, replace_link=True) as tmp:
        tmp.write_text(dumps(here, header, listed), encoding="utf-8")
    return path


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The options of a config file, flattened (tables only group keys); a key given twice, in two
    tables, is refused."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReidctlError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReidctlError(f"{path}: cannot read the config file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ReidctlError(f"{path}: not valid TOML ({exc})") from None
    relative = data.pop(RELATIVE_KEY, [])
    if not isinstance(relative, list) or not all(isinstance(k, str) for k in relative):
        raise ReidctlError(f"{path}: {RELATIVE_KEY} must be a list of option names")
    flat: dict[str, Any] = {}
    _flatten(data, flat, path, "")
    folder = path.parent.absolute()
    for key in relative:
        if isinstance(flat.get(key), str):
            flat[key] = os.path.normpath(folder / Path(flat[key]).expanduser())
    return flat


#: What a value of each kind of option must be in the file, in words.
_EXPECTED = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}


def check_types(path: str | os.PathLike, values: Mapping[str, Any], kinds: Mapping[str, str]) -> None:
    """Refuse a value whose TOML type does not fit its option's kind (``kinds``: option name →
    bool, int, float or str; options not named there are not checked).

    Why: the values become the command's defaults, and Click converts them as it would text, so
    ``epochs = true`` ran 1 epoch and ``deterministic = 1`` switched a flag on; in a file, a bool
    is not an integer and a quoted "0.5" is not a number. An integer where a number goes is fine."""
    for key, value in values.items():
        kind = kinds.get(key)
        if kind is None or _fits(value, kind):
            continue
        raise ReidctlError(f"{path}: {key} = {_value(value)}: expected {_EXPECTED[kind]}, not {_kind_of(value)}")


def _fits(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _kind_of(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                       (list, "a list")):
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"  # a TOML date or time


def _flatten(table: Mapping[str, Any], flat: dict[str, Any], path: Path, where: str) -> None:
    for key, value in table.items():
        if isinstance(value, dict):
            _flatten(value, flat, path, f"{where}{key}.")
            continue
        if key in flat:
            raise ReidctlError(f"{path}: option '{key}' is set twice ({where}{key} and an earlier table)")
        flat[key] = value
