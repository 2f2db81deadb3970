#!/usr/bin/env bash
# Domain adaptation from a labelled source: pretrain once on SOURCE, then every method on TARGET
# from that model, without and with the source trained beside it (--aux-data), and MAR; one table
# (examples/ablation_table.py): mAP per epoch (the source model first), pairwise F of the pseudo
# labels, clusters spanning two or more cameras.
#
# usage: examples/uda_cuhk01_to_cuhk03.sh SOURCE TARGET OUT_DIR [loop options of every clustering run ...]
#
#   SOURCE    a labelled dataset (../shared/data/cuhk01)
#   TARGET    the unlabelled target (../shared/data/cuhk03_labeled)
#   OUT_DIR   OUT_DIR/source.pt (the pretraining, kept: a re-run reuses it) and one run folder per row
#
# Options after OUT_DIR go to every clustering run (cc, pplr, icrefine, ncplr, each plain and _aux):
# give them one budget. $PRETRAIN_ARGS go to the pretraining (the model: every run starts from
# its checkpoint, so give it --parts 3 for pplr's stripes; MAR's average pooling is the default), $MAR_ARGS to MAR (it takes no --iters: its epoch is a pass over the source),
# $AUX_ARGS to the _aux runs (e.g. "--aux-weight 0.5"), $<METHOD>_ARGS to one method's two runs
# (ICREFINE_ARGS="--n-clusters 400"); $METHODS picks the methods. Runs are cached by `reidctl loop`.
#
# The runs of docs/uda.md (CPU, 6 to 25 minutes per run on 2 cores):
#   W=../shared/weights/mobilenet_v2_imagenet_features.pth
#   PRETRAIN_ARGS="--arch mobilenet_v2 --weights $W --height 128 --width 64 --parts 3 --device cpu --splits train,test --epochs 20" \
#   MAR_ARGS="--aux-splits train,test --epochs 5 --batch-size 128 --eval-every 1 --lr-drops early --device cpu" \
#   ICREFINE_ARGS="--intra-epochs 2 --intra-iters 40" \
#   examples/uda_cuhk01_to_cuhk03.sh ../shared/data/cuhk01 ../shared/data/cuhk03_labeled runs/uda \
#       --epochs 5 --iters 60 --batch-size 128 --num-instances 4 --eval-every 1 --device cpu
set -euo pipefail

if [ $# -lt 3 ]; then
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
SOURCE=$1
DATA=$2
OUT=$3
shift 3
PRETRAIN_ARGS=${PRETRAIN_ARGS:-}
MAR_ARGS=${MAR_ARGS:-}
AUX_ARGS=${AUX_ARGS:-}
METHODS=${METHODS:-cc pplr icrefine ncplr}
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=examples/ablation_lib.sh
. "$HERE/ablation_lib.sh"

CKPT="$OUT/source.pt"
if [ ! -f "$CKPT" ]; then
    echo "== source model: reidctl pretrain --data $SOURCE" >&2
    # $PRETRAIN_ARGS and the like are unquoted on purpose: each holds several options.
    # shellcheck disable=SC2086
    "$REIDCTL" pretrain --data "$SOURCE" --out "$CKPT" $PRETRAIN_ARGS >&2
fi

rows=()
for m in $METHODS; do
    own="$(echo "$m" | tr 'a-z-' 'A-Z_')_ARGS"  # gl-ncplr → GL_NCPLR_ARGS
    # shellcheck disable=SC2086
    run "$m" --method "$m" --checkpoint "$CKPT" ${!own:-} "$@"
    # shellcheck disable=SC2086
    run "${m}_aux" --method "$m" --checkpoint "$CKPT" --aux-data "$SOURCE" $AUX_ARGS ${!own:-} "$@"
    rows+=("$m" "${m}_aux")
done
# shellcheck disable=SC2086
run mar --method mar --checkpoint "$CKPT" --aux-data "$SOURCE" $MAR_ARGS
rows+=(mar)

"$PYTHON" "$HERE/ablation_table.py" "$OUT" "${rows[@]}"
