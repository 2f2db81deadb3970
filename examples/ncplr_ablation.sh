#!/usr/bin/env bash
# NCPLR ablation: cc, ncplr, gl-ncplr (GL-NCPLR, the official train.sh) and GL-NCPLR
# --no-refine-loss, each a `reidctl loop` run, then one table: mAP per epoch, the pseudo labels'
# pairwise F and the clusters that span two or more cameras (examples/ablation_table.py).
#
# usage: examples/ncplr_ablation.sh DATA OUT_DIR [loop options shared by all runs ...]
#
#   DATA      a dataset folder (Market-1501 layout ...) or synthetic:tiny / synthetic:small
#   OUT_DIR   one run folder per row: OUT_DIR/cc, OUT_DIR/ncplr, OUT_DIR/gl_ncplr, OUT_DIR/gl_ncplr_no_refine
#
# Options after OUT_DIR go to every run (budget, model, device), so give the same budget to every
# row; each method keeps its own official defaults otherwise (cc: eps 0.6; ncplr: eps 0.5,
# eps-neighbor 0.2, input 320×128, NCPLR's sampler). Options only NCPLR accepts go in $NCPLR_ARGS
# (e.g. "--alpha 0.2 --neighbor-weight paper"). Runs are cached by `reidctl loop`: re-running the
# script resumes and prints the table again.
#
# Examples:
#   examples/ncplr_ablation.sh ./Market-1501-v15.09.15 runs/ncplr   # the official runs: 50 epochs, ImageNet start
#   examples/ncplr_ablation.sh synthetic:small /tmp/ncplr --epochs 4 --iters 50 --batch-size 32 \
#       --num-instances 4 --arch mobilenet_v2 --weights W.pth --height 128 --width 64 --eval-every 1
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
DATA=$1
OUT=$2
shift 2
NCPLR_ARGS=${NCPLR_ARGS:-}
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=examples/ablation_lib.sh
. "$HERE/ablation_lib.sh"

run cc --method cc "$@"
# $NCPLR_ARGS is unquoted on purpose: it holds several options.
# shellcheck disable=SC2086
run ncplr --method ncplr $NCPLR_ARGS "$@"
# shellcheck disable=SC2086
run gl_ncplr --method gl-ncplr $NCPLR_ARGS "$@"
# shellcheck disable=SC2086
run gl_ncplr_no_refine --method gl-ncplr --no-refine-loss $NCPLR_ARGS "$@"

"$PYTHON" "$HERE/ablation_table.py" "$OUT" cc ncplr gl_ncplr gl_ncplr_no_refine
