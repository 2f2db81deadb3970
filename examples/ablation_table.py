"""Print one Markdown table comparing `reidctl loop` runs, epoch by epoch.

usage: python examples/ablation_table.py OUT_DIR NAME [NAME ...]

Reads OUT_DIR/NAME/summary.json of each run. Columns: mAP per epoch (the initial model first),
the pseudo labels' pairwise F (when the data has identities), the clusters per epoch with how
many span two or more cameras, and the best mAP.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def row(summary: dict) -> str:
    epochs = summary["epochs"]
    maps = " → ".join(pct(e["eval"]["mAP"]) for e in epochs if "eval" in e)
    refined = [e["refine"] for e in epochs if "refine" in e]
    f = " → ".join(pct(r.get("quality", {}).get("f_score")) for r in refined)
    clusters = " → ".join(f"{r['clusters']} ({r.get('camera_mix', {}).get('multi_camera_clusters', '—')})"
                          for r in refined)
    best = summary.get("best") or {}
    return f"{maps} | {f} | {clusters} | {pct(best.get('mAP'))} ({best.get('epoch', '—')})"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out = Path(argv[0])
    print("| run | mAP % per epoch (init first) | pairwise F % | clusters (multi-camera) | best mAP (epoch) |")
    print("|---|---|---|---|---|")
    for name in argv[1:]:
        print(f"| {name} | {row(json.loads((out / name / 'summary.json').read_text()))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
