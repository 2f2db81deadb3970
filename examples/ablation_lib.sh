# Sourced by the ablation scripts: `run NAME [loop options ...]` runs one `reidctl loop` into
# $OUT/NAME on $DATA (printing the command) and keeps its JSON result in $OUT/NAME.json.
# Needs DATA and OUT; REIDCTL (default reidctl) and PYTHON (default python) may be set.
REIDCTL=${REIDCTL:-reidctl}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"

run() {  # run NAME [options ...]
    local name=$1
    shift
    echo "== $name: reidctl loop $*" >&2
    "$REIDCTL" loop --data "$DATA" --run-dir "$OUT/$name" --json "$@" >"$OUT/$name.json"
}
