"""How far a ``--deterministic`` run moves between CPU kernels: other machines simulated on this one.

A run is bit-exact on one machine, but another CPU picks other kernels (AVX-512 or SSE instead of
AVX2 in ATen's vectorised ops, oneDNN's convolutions and MKL's GEMMs) and another thread count,
which change float32 roundings; training and clustering can grow such differences. This script
re-runs the same commands in fresh processes under environment settings that force those other
kernels here, and prints, per run and per setting, how far every pinned quantity moved from the
first setting: labels as the number of rows whose label differs (clusters renumbered by first
appearance), MAR's mined pairs as the number mined under one setting only, floats as the relative
change.

    python bench/cpu_kernels.py                                   # the pinned runs under every setting
    python bench/cpu_kernels.py --runs cc --change "--momentum 0.101"   # and a real change, for comparison
    python bench/cpu_kernels.py --record                          # re-record tests/data/pins.json
    python bench/cpu_kernels.py --runs ncplr,mar --record         # those pins alone (the others kept)
    python bench/cpu_kernels.py --runs quickstart                 # README command 1 (offline form)

``--record`` writes, per pinned run named by ``--runs`` (the file's other entries stay as they
are), the reference setting's fingerprint and, per epoch and kind of float (losses, evaluation
metrics), three times the largest relative change any setting made
(never below ``tests.pins.FLOOR``): the tolerances ``tests/test_pins.py`` compares with. A
``--change`` row runs the reference setting with extra flags; its last column says whether the
pin would catch it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import pins  # noqa: E402

#: Environment settings that make this machine pick the kernels another CPU would.
KERNELS: dict[str, dict[str, str]] = {
    "here": {},
    "threads-1": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},  # the quick start runs on 2
    "threads-2": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},  # the pins run on 1
    "threads-4": {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"},  # more threads than cores here

    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},  # ATen's scalar (non-vectorised) kernels
    "onednn-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},  # oneDNN convolutions without AVX
    "mkl-sse42": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "MKL_CBWR": "COMPATIBLE"},  # MKL GEMMs without AVX
    "no-avx": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
               "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "MKL_CBWR": "COMPATIBLE"},  # an old CPU: all three
}
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2_imagenet_features.pth"
SAFETY = 3.0


def quickstart_args() -> list[str]:
    """README command 1 in its offline form (the shared ImageNet MobileNetV2 weights), without
    its ``--run-dir`` and the leading ``loop``."""
    from tests.test_quickstart import offline_command

    args = offline_command(SHARED_WEIGHTS)
    j = args.index("--run-dir")
    return args[1:j] + args[j + 2:]


def command(run: str) -> tuple[list[str], str]:
    """The loop's arguments for ``run`` and its thread count (as its test runs it)."""
    if run == "quickstart":
        return quickstart_args(), "2"
    return [*pins.COMMON, *pins.RUNS[run]], "1"


def run_once(run: str, kernel: dict[str, str], extra: list[str], where: Path, cache: Path) -> dict[str, Any]:
    """A pinned run's full-label fingerprint, or the quick start's printed table (row → column → text)."""
    args, threads = command(run)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "REIDCTL_CACHE": str(cache),
           "COLUMNS": "80", **kernel}
    cmd = [sys.executable, "-m", "reidctl", "loop", *args, *extra, "--run-dir", str(where)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{run} failed under {kernel} {extra}:\n{proc.stderr[-3000:]}")
    if run == "quickstart":
        from tests.test_quickstart import cells

        return {"table": cells(proc.stdout.splitlines()), "stdout": proc.stdout}
    return pins.fingerprint(where, json.loads(proc.stdout), full_labels=True)


def table_deviations(ref: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """The quick start's table: per cell, how far the printed number moved (printed units)."""
    out = {}
    for row, cols in ref["table"].items():
        for col, text in cols.items():
            theirs = other["table"].get(row, {}).get(col)
            try:
                out[f"{row} | {col}"] = abs(float(theirs) - float(text))
            except (TypeError, ValueError):
                out[f"{row} | {col}"] = 0.0 if theirs == text else float("inf")
    return out


def label_flips(a: list[int], b: list[int]) -> int:
    """Rows whose label differs once both labelings are numbered by first appearance (-1 kept)."""
    def canon(x: list[int]) -> list[int]:
        seen: dict[int, int] = {}
        return [-1 if v < 0 else seen.setdefault(v, len(seen)) for v in x]

    return sum(p != q for p, q in zip(canon(a), canon(b))) + abs(len(a) - len(b))


def deviations(ref: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """Per quantity: label flips, integer differences, and the largest relative change of the floats
    of each (epoch, kind) — the unit the tolerances are kept in."""
    out: dict[str, float] = {}
    if "intra" in ref:
        out["intra labels"] = float(label_flips(ref["intra"], other["intra"]))
    for r, o in zip(ref["epochs"], other["epochs"]):
        for key in ("cluster", "refined"):
            if key in r:
                out[f"epoch {r['epoch']} {key} labels"] = float(label_flips(r[key], o[key]))
        for key in ("clusters", "outliers"):
            if key in r:
                out[f"epoch {r['epoch']} {key}"] = float(abs(r[key] - o[key]))
        if "mined" in r:  # MAR: pairs mined under one setting and not the other
            out[f"epoch {r['epoch']} mined pairs"] = float(len({tuple(x) for x in r["mined"]}
                                                              ^ {tuple(x) for x in o["mined"]}))
    mine = pins.floats(other)
    for (epoch, kind), values in pins.floats(ref).items():
        theirs = dict(mine[(epoch, kind)])
        out[f"epoch {epoch} {kind}"] = max(abs(theirs[w] - v) / abs(v) if v else abs(theirs[w]) for w, v in values)
    return out


def tolerances(devs: list[dict[str, float]], ref: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per epoch and kind: ``SAFETY`` × the largest relative change of any setting, at least the floor."""
    out: dict[str, dict[str, float]] = {}
    for epoch, kind in pins.floats(ref):
        worst = max(d[f"epoch {epoch} {kind}"] for d in devs)
        out.setdefault(epoch, {})[kind] = float(f"{max(SAFETY * worst, pins.FLOOR):.2g}")
    return out


def digested(fp: dict[str, Any]) -> dict[str, Any]:
    """A full-label fingerprint with its label lists (and MAR's mined pairs) replaced by their
    digests (as pins store them)."""
    def sha(labels: list[int]) -> str:
        return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]

    out = {"epochs": [{k: sha(v) if k in ("cluster", "refined", "mined") else v for k, v in row.items()}
                      for row in fp["epochs"]]}
    if "intra" in fp:
        out["intra"] = sha(fp["intra"])
    return out


def caught(dev: dict[str, float], tol: dict[str, dict[str, float]]) -> str:
    """Which quantities of a change row fall outside the tolerance (what the pin would report)."""
    hits = [k for k, v in dev.items() if v > _tol_of(k, tol)]
    return ", ".join(hits) if hits else "no"


def _tol_of(key: str, tol: dict[str, dict[str, float]]) -> float:
    parts = key.split(" ")
    if len(parts) == 3 and parts[0] == "epoch" and parts[2] in pins.KINDS:
        return tol[parts[1]][parts[2]]
    return 0.0  # labels and counts: exact


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=",".join(pins.RUNS), help="pinned runs (tests/pins.py) and/or quickstart")
    ap.add_argument("--kernels", default=",".join(KERNELS), help="settings, the first is the reference")
    ap.add_argument("--change", action="append", default=[], help="extra flags of a 'change' row (repeatable)")
    ap.add_argument("--extra", default="", help="extra flags of every run (e.g. to try a better-conditioned pin)")
    ap.add_argument("--record", action="store_true", help="write fingerprints and tolerances to tests/data/pins.json")
    ap.add_argument("--json", type=Path, help="also write every fingerprint and deviation here")
    args = ap.parse_args()
    kernels = args.kernels.split(",")
    report: dict[str, Any] = {}
    stored = pins.load()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for run in args.runs.split(","):
            prints = {}
            for name in kernels:
                prints[name] = run_once(run, KERNELS[name], shlex.split(args.extra), Path(tmp) / f"{run}-{name}", cache)
                print(f"  {run} under {name}: done", file=sys.stderr, flush=True)
            for change in args.change:
                prints[f"change {change}"] = run_once(run, KERNELS[kernels[0]], shlex.split(f"{args.extra} {change}"),
                                                      Path(tmp) / f"{run}-change-{len(prints)}", cache)
            ref = prints[kernels[0]]
            if run == "quickstart":
                devs = {name: table_deviations(ref, fp) for name, fp in prints.items() if name != kernels[0]}
                report[run] = {"tables": {n: fp["table"] for n, fp in prints.items()}, "deviations": devs,
                               "reference": ref["stdout"]}
                print_quickstart(kernels[0], ref, devs)
                continue
            devs = {name: deviations(ref, fp) for name, fp in prints.items() if name != kernels[0]}
            settings = [d for name, d in devs.items() if not name.startswith("change")]
            tol = tolerances(settings, ref) if settings else stored.get(run, {}).get("tolerance")
            report[run] = {"fingerprints": prints, "deviations": devs, "tolerance": tol}
            print_table(run, kernels[0], devs, tol)
            if args.record and run in pins.RUNS:
                stored[run] = {"fingerprint": digested(ref), "tolerance": tol}
                pins.save(stored)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def print_table(run: str, ref: str, devs: dict[str, dict[str, float]], tol: dict[str, dict[str, float]] | None) -> None:
    """Rows: quantities that moved anywhere (and every float kind); columns: settings, the tolerance."""
    keys = sorted({k for d in devs.values() for k, v in d.items() if v or _is_float(k)})
    names = list(devs)
    print(f"\n{run}: change against '{ref}' (labels: rows whose label differs; floats: largest relative change)")
    width = max([len(k) for k in keys] + [8])
    print(" " * width + "".join(f"{n[:14]:>15}" for n in names) + ("      tolerance" if tol else ""))
    for key in keys:
        cells = [f"{devs[n].get(key, 0.0):>15.2e}" if _is_float(key) else f"{int(devs[n].get(key, 0)):>15d}"
                 for n in names]
        limit = f"{_tol_of(key, tol):>15.1e}" if tol and _is_float(key) else ("          exact" if tol else "")
        print(f"{key:<{width}}" + "".join(cells) + limit)
    if tol:
        for name in names:
            if name.startswith("change"):
                print(f"{name}: outside the tolerance: {caught(devs[name], tol)}")


def print_quickstart(ref_name: str, ref: dict[str, Any], devs: dict[str, dict[str, float]]) -> None:
    """The reference's printed table, then per cell the largest move of any setting (printed units)."""
    print(f"\nquickstart under '{ref_name}':\n{ref['stdout']}")
    names = [n for n in devs if not n.startswith("change")]
    print("largest move of each cell under " + ", ".join(names) + " (printed units; changes separately):")
    for key in next(iter(devs.values())):
        worst = max(devs[n][key] for n in names) if names else 0.0
        changes = "  ".join(f"{n}: {devs[n][key]:g}" for n in devs if n.startswith("change"))
        print(f"  {key:<22} {worst:>8g}  {changes}")


def _is_float(key: str) -> bool:
    return key.endswith(tuple(f" {k}" for k in pins.KINDS))


if __name__ == "__main__":
    main()
