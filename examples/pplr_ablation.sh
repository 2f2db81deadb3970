#!/usr/bin/env bash
# PPLR ablation: cc, pplr, pplr --no-pglr, pplr --no-aals, each a `reidctl loop` run, then one table
# of best / last mAP, the last epoch's pairwise F of the pseudo labels and how many of its clusters
# span two or more cameras (from each summary.json).
#
# usage: examples/pplr_ablation.sh DATA OUT_DIR [loop options shared by all four runs ...]
#
#   DATA      a dataset folder (Market-1501 layout ...) or synthetic:tiny / synthetic:small
#   OUT_DIR   one run folder per row: OUT_DIR/cc, OUT_DIR/pplr, OUT_DIR/pplr_no_pglr, OUT_DIR/pplr_no_aals
#
# Options after OUT_DIR go to every run (budget, model size, device); each method keeps its own
# official defaults otherwise (cc: eps 0.6, batch 256/16, 200 iters; pplr: eps 0.5, batch 64/4,
# 400 iters). Options only PPLR accepts go in $PPLR_ARGS (default: the official PPLR model,
# "--parts 3 --pooling avg"; add e.g. --k 10 or --height 384 there). Runs are cached by
# `reidctl loop`: re-running the script resumes and only prints the table again.
#
# Examples:
#   examples/pplr_ablation.sh ./Market-1501-v15.09.15 runs/ablation   # the official runs: 50 epochs, ImageNet start
#   PPLR_ARGS="--parts 3 --pooling avg --k 10" examples/pplr_ablation.sh synthetic:tiny /tmp/ablation \
#       --epochs 2 --iters 2 --batch-size 8 --num-instances 4 --bn-chunks 2 --k1 10 \
#       --arch resnet18 --height 64 --width 32 --workers 0 --device cpu --no-eval-init --eval-every 1
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
DATA=$1
OUT=$2
shift 2
PPLR_ARGS=${PPLR_ARGS:---parts 3 --pooling avg}
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=examples/ablation_lib.sh
. "$HERE/ablation_lib.sh"

run cc --method cc "$@"
# $PPLR_ARGS is unquoted on purpose: it holds several options.
# shellcheck disable=SC2086
run pplr --method pplr $PPLR_ARGS "$@"
# shellcheck disable=SC2086
run pplr_no_pglr --method pplr $PPLR_ARGS --no-pglr "$@"
# shellcheck disable=SC2086
run pplr_no_aals --method pplr $PPLR_ARGS --no-aals "$@"

"$PYTHON" - "$OUT" cc pplr pplr_no_pglr pplr_no_aals <<'EOF'
import json
import sys
from pathlib import Path

out, names = Path(sys.argv[1]), sys.argv[2:]


def pct(x):
    return "—" if x is None else f"{100 * x:.1f}"


print("| run | best mAP (epoch) | last mAP (epoch) | last pairwise F | last multi-camera clusters |")
print("|---|---|---|---|---|")
for name in names:
    s = json.loads((out / name / "summary.json").read_text())
    best, last = s.get("best") or {}, s.get("last") or {}
    trained = [e for e in s["epochs"] if "refine" in e]
    ref = trained[-1]["refine"] if trained else {}
    f = ref.get("quality", {}).get("f_score")
    mix = ref.get("camera_mix")
    multi = f"{mix['multi_camera_clusters']} of {ref['clusters']}" if mix else "—"
    print(f"| {name} | {pct(best.get('mAP'))} ({best.get('epoch', '—')}) "
          f"| {pct(last.get('mAP'))} ({last.get('epoch', '—')}) | {pct(f)} | {multi} |")
EOF
