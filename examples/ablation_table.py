"""Print one Markdown table comparing `reidctl loop` runs, epoch by epoch.

usage: python examples/ablation_table.py [--labels] OUT_DIR NAME [NAME ...]

Reads OUT_DIR/NAME/summary.json of each run. Columns: mAP per epoch (the initial model first),
the pseudo labels' pairwise F (when the data has identities), the clusters per epoch with how
many span two or more cameras, the cross-camera mAP per epoch and the same-camera mAP of the
last epoch (from the run's test features, `reidctl evaluate --pairs cross-camera|same-camera`:
the Market protocol counts same-camera strangers as misses, so a model that learns its cameras
rises there while its Market mAP falls), and the best mAP.

--labels prints the pseudo labels' table instead: per epoch, pairwise precision / recall (%) of
the labels the method trained on, and the share of the train images left out as outliers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reidctl.errors import ReidctlError
from reidctl.stages.evaluate import evaluate_feature_file


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def camera_map(test_h5: Path, pairs: str) -> float | None:
    """The mAP of one evaluated epoch's test features under ``pairs``; None without cameras."""
    try:
        return evaluate_feature_file(test_h5, pairs=pairs).mAP
    except ReidctlError:
        return None


def row(summary: dict, run: Path) -> str:
    epochs = summary["epochs"]
    maps = " → ".join(pct(e["eval"]["mAP"]) for e in epochs if "eval" in e)
    tests = [run / (f"epoch_{e['epoch']:03d}" if isinstance(e["epoch"], int) else f"epoch_{e['epoch']}") / "test.h5"
             for e in epochs if "eval" in e]
    tests = [t for t in tests if t.exists()]
    cross = " → ".join(pct(camera_map(t, "cross-camera")) for t in tests) or "—"
    same = pct(camera_map(tests[-1], "same-camera")) if tests else "—"
    refined = [e["refine"] for e in epochs if "refine" in e]
    f = " → ".join(pct(r.get("quality", {}).get("f_score")) for r in refined)
    clusters = " → ".join(f"{r['clusters']} ({r.get('camera_mix', {}).get('multi_camera_clusters', '—')})"
                          for r in refined)
    best = summary.get("best") or {}
    return f"{maps} | {f} | {clusters} | {cross} | {same} | {pct(best.get('mAP'))} ({best.get('epoch', '—')})"


def labels_row(summary: dict) -> str:
    refined = [e["refine"] for e in summary["epochs"] if "refine" in e]
    quality = [r.get("quality", {}) for r in refined]
    pr = " → ".join(f"{pct(q.get('precision'))} / {pct(q.get('recall'))}" for q in quality)
    outliers = " → ".join(pct(q.get("outlier_fraction")) for q in quality)
    return f"{pr} | {outliers}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--labels"]:
        if len(argv) < 3:
            print(__doc__.strip().splitlines()[2], file=sys.stderr)
            return 2
        out = Path(argv[1])
        print("| run | pairwise precision / recall % per epoch | outliers % per epoch |")
        print("|---|---|---|")
        for name in argv[2:]:
            print(f"| {name} | {labels_row(json.loads((out / name / 'summary.json').read_text()))} |")
        return 0
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out = Path(argv[0])
    print("| run | mAP % per epoch (init first) | pairwise F % | clusters (multi-camera) | cross-camera mAP % "
          "per epoch | same-camera mAP %, last | best mAP (epoch) |")
    print("|---|---|---|---|---|---|---|")
    for name in argv[1:]:
        print(f"| {name} | {row(json.loads((out / name / 'summary.json').read_text()), out / name)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
