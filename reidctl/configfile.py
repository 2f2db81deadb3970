"""Run configurations as TOML: the fully resolved options a ``loop`` ran with, and ``--config``.

Why TOML with flat keys: every key is the name of a ``loop`` option (``k1``, ``intra_epochs``,
``run_dir``), so a file maps one-to-one onto the command line and command-line options override
it (they are applied as the command's defaults, Click's ``default_map``). The tables
(``[model]``, ``[clustering]`` ...) only group keys for reading; they are flattened on load.
Unset values (None: "the library decides", e.g. ``workers``) are left out, as TOML has no null.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from reidctl.artifacts import atomic_path
from reidctl.errors import ReidctlError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_NAME = "config.toml"


def dumps(sections: Mapping[str, Mapping[str, Any]], header: str = "") -> str:
    """TOML text: ``header`` as comments, then one table per non-empty section."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
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


def write_config(path: str | os.PathLike, sections: Mapping[str, Mapping[str, Any]], header: str = "") -> Path:
    """Write ``sections`` to ``path`` as TOML, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(sections, header), encoding="utf-8")
    return Path(path)


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
    flat: dict[str, Any] = {}
    _flatten(data, flat, path, "")
    return flat


def _flatten(table: Mapping[str, Any], flat: dict[str, Any], path: Path, where: str) -> None:
    for key, value in table.items():
        if isinstance(value, dict):
            _flatten(value, flat, path, f"{where}{key}.")
            continue
        if key in flat:
            raise ReidctlError(f"{path}: option '{key}' is set twice ({where}{key} and an earlier table)")
        flat[key] = value
