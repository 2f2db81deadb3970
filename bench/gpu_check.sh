#!/usr/bin/env bash
# Everything that needs CUDA, in one run of at most 8 minutes on one GPU:
#
#   bash bench/gpu_check.sh                        # from the repository root, on the GPU machine
#   GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh   # CPU smoke run of the plumbing (CUDA checks SKIP)
#   GPU_CHECK_ONLY="env loop_*" bash bench/gpu_check.sh   # a subset (shell patterns on check names)
#
# Each check runs in its own process under `timeout`, its output in ${OUT:-/tmp}/gpu_check/NAME.log;
# a failed check does not stop the others. At the end one table (check, status, seconds, detail),
# also written to summary.txt and summary.tsv there. Exit status: 0 when no check FAILED (SKIPs
# allowed), 1 when one did, 2 on a usage error. Environment: PYTHON (default python),
# GPU_CHECK_DEVICE (cuda or cpu), GPU_CHECK_ONLY, GPU_CHECK_TIME_SCALE (below), GPU_CHECK_KEEP=1
# keeps the work folder (run folders, checkpoints) instead of deleting it.
#
# A check is a function check_NAME; it prints `DETAIL: text` (the last one is the table's detail)
# and exits 0 = PASS, 77 = SKIP, anything else = FAIL. Python parts: bench/gpu_check_helpers.py.
set -u

PY=${PYTHON:-python}
DEV=${GPU_CHECK_DEVICE:-cuda}
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
HELPERS=$(dirname "$SELF")/gpu_check_helpers.py
LOG_DIR=${OUT:-/tmp}/gpu_check
SKIP=77

# Seconds per check. Their sum is ≤ 480 (checked below), and a hard deadline (DEADLINE_S) cuts the
# last checks short should the earlier ones run long, so the whole run stays within 8 minutes.
DEADLINE_S=478
KILL_AFTER=2            # timeout -k: SIGKILL this long after the SIGTERM
# GPU_CHECK_TIME_SCALE multiplies every timeout and the deadline: the values are for a GPU; the
# CPU smoke run needs more (default 4 there). The ≤ 480 s rule applies to the unscaled values.
SCALE=${GPU_CHECK_TIME_SCALE:-$([[ $DEV == cpu ]] && echo 4 || echo 1)}
T_ENV=20                # nvidia-smi, CUDA start-up
T_PYTEST=45
T_FAISS=30
T_AMP=35                # per precision (fp16, bf16)
T_TORCHRUN=60           # synth, extract, cluster, torchrun train-epoch, process-group test
T_LOOPS=120             # all methods together, split evenly (at most T_LOOP_MAX each)
T_LOOP_MAX=50
T_THROUGHPUT=70
T_THROUGHPUT_AMP=55
T_METHODS=10            # listing the registry (not a check; counted against the deadline)

# The tiny loop settings of tests/pins.py (which tests/test_pins.py runs on the CPU).
LOOP_COMMON=(--data synthetic:tiny --arch resnet18 --pretrained none --height 64 --width 32 --bn-chunks 2 --epochs 2
             --eval-every 1 --workers 2 --json)  # random weights: the GPU machine is offline
LOOP_CLUSTERING=(--k1 6 --k2 2 --min-samples 3 --iters 2 --batch-size 8 --num-instances 4)
# pytest -k expression: the tests that need (or behave differently with) CUDA. Tests that need a
# GPU are skipped with "needs a CUDA device" / "needs faiss-gpu and a GPU" (tests/test_search.py);
# test_user_errors_exit_2_without_traceback asks for cuda:7, a missing device on a 1-GPU machine.
PYTEST_K="cuda or gpu or test_user_errors_exit_2_without_traceback"

detail() { echo "DETAIL: $*"; }

err_line() {  # err_line FILE: its first `error:` line, else a traceback's last line, else its last line
    local line
    line=$(grep -a -m 1 '^error:' "$1")
    [[ -z $line ]] && line=$(grep -a -E '^[A-Za-z_.]*(Error|Exception|Interrupt)\b' "$1" | tail -n 1)
    [[ -z $line ]] && line=$(grep -a -v '^[[:space:]]*$' "$1" | tail -n 1)
    tr -s '[:space:]' ' ' <<<"$line"
}

# run_step WHAT CMD...: run CMD (its stdout where the caller sends it); on failure a DETAIL line
# (on stderr, which is in the log too) with WHAT, the exit status and the first error line.
run_step() {
    local what=$1 err=$WORK/step.err rc
    shift
    "$@" 2>"$err"
    rc=$?
    cat "$err" >&2
    ((rc == 0)) || detail "$what exit $rc: $(err_line "$err")" >&2
    return $rc
}

# --------------------------------------------------------------------------------------------
# the checks (each runs as `bash gpu_check.sh --one NAME` under timeout, cwd = repository root)

check_env() {
    if [[ $DEV == cuda ]]; then
        if ! command -v nvidia-smi >/dev/null; then
            detail "nvidia-smi not found"
            return 1
        fi
        nvidia-smi || { detail "nvidia-smi failed (exit $?)"; return 1; }
        nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true
    else
        command -v nvidia-smi >/dev/null && nvidia-smi
    fi
    # the one-liner of the brief, then the details
    "$PY" -c "import torch; assert torch.cuda.is_available()" \
        || [[ $DEV == cpu ]] || { detail "torch.cuda.is_available() is False"; return 1; }
    "$PY" "$HELPERS" env "$DEV"
}

check_pytest_cuda() {
    local log=$WORK/pytest.log
    # -rA: a closing line per test (PASSED/SKIPPED with its reason), so the log names them
    "$PY" -m pytest -q -x -rA -p no:cacheprovider tests -k "$PYTEST_K" 2>&1 | tee "$log"
    "$PY" "$HELPERS" pytest-result "$log" "$DEV"
}

check_faiss_knn() {
    "$PY" "$HELPERS" faiss "$DEV"
}

check_amp() {  # check_amp fp16|bf16|off
    "$PY" "$HELPERS" amp "$1" "$DEV"
}
check_amp_fp16() { check_amp fp16; }
check_amp_bf16() { check_amp bf16; }
check_amp_off() { check_amp off; }

check_torchrun() {
    local d=$WORK/torchrun backend=nccl rc
    [[ $DEV == cpu ]] && backend=gloo
    rm -rf "$d" && mkdir -p "$d"
    # inputs as tests/test_train.py::test_torchrun_two_processes has them: a dataset and labels
    run_step "reidctl synth" "$PY" -m reidctl synth "$d/data" --ids 16 --cams 2 --seed 0 --height 64 --width 32 \
        --jobs 2 || return 1
    run_step "reidctl extract" "$PY" -m reidctl extract --data "$d/data" --split train --arch resnet18 \
        --pretrained none --height 64 --width 32 --workers 2 --device "$DEV" --out "$d/feats.h5" --json || return 1
    run_step "reidctl cluster" "$PY" -m reidctl cluster "$d/feats.h5" --out "$d/labels.h5" --k1 6 --k2 2 \
        --eps 0.5 --min-samples 3 --device "$DEV" --json || return 1
    run_step "torchrun train-epoch" "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 \
        -m reidctl train-epoch --data "$d/data" --labels "$d/labels.h5" --out "$d/ddp.pt" --arch resnet18 \
        --pretrained none --height 64 --width 32 --workers 2 --device "$DEV" --iters 2 --batch-size 8 --num-instances 4 \
        --bn-chunks 2 --json >"$d/train.json"
    rc=$?
    cat "$d/train.json"
    ((rc == 0)) || return 1
    local result train_detail
    result=$("$PY" "$HELPERS" train-result "$d/train.json" "$d/ddp.pt" 2>&1)
    rc=$?
    echo "$result"
    ((rc == 0)) || return 1   # its DETAIL line says why
    train_detail=$(grep '^DETAIL: ' <<<"$result" | tail -n 1)
    # With one process reidctl starts no process group (reidctl/runtime/dist.py: only WORLD_SIZE > 1), and
    # NCCL cannot put two processes on one GPU: so the backend gets its own one-process test.
    "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 "$HELPERS" pg-smoke "$backend" \
        || { detail "${train_detail#DETAIL: }; $backend process group FAILED"; return 1; }
    detail "${train_detail#DETAIL: }; $backend all_reduce ok"
}

loop_where() {  # loop_where RUN_DIR: the last record of its log.jsonl, as a DETAIL line
    local where=""
    [[ -s $1/log.jsonl ]] && where=$(tail -n 1 "$1/log.jsonl" \
        | sed -n 's/.*"epoch": \([^,]*\), "stage": "\([^"]*\)".*/after epoch \1, stage \2/p')
    detail "stopped ${where:-before its first stage finished}"
}

check_loop() {  # check_loop METHOD
    local method=$1 extra=()
    case $method in
        cc | pplr) extra=("${LOOP_CLUSTERING[@]}" --eps 0.5) ;;
        icrefine) extra=("${LOOP_CLUSTERING[@]}" --n-clusters 12 --intra-epochs 2 --intra-iters 2
                         --intra-clusters images/3) ;;
        # no clustering: a labelled source, its pretraining prelude, small two-domain steps
        mar) extra=(--aux-data synthetic:tiny-source --pretrain-epochs 1 --pretrain-batch-size 8 --batch-size 16
                    --mining-ratio 0.2) ;;
        *) extra=("${LOOP_CLUSTERING[@]}") ;;
    esac
    local run=$WORK/loop_$method out=$LOG_DIR/loop_$method.json
    # killed by the timeout: say where the loop was
    # shellcheck disable=SC2064  # $run expanded now, on purpose
    trap "loop_where '$run'; exit 124" TERM
    run_step "reidctl loop --method $method" "$PY" -m reidctl loop --method "$method" "${LOOP_COMMON[@]}" \
        "${extra[@]}" --device "$DEV" --run-dir "$run" >"$out" || return 1
    "$PY" "$HELPERS" loop-result "$out"
}

check_throughput() {  # check_throughput NAME [--amp bf16]
    local name=$1 rc
    shift
    if [[ ! -f bench/throughput.py ]]; then
        detail "bench/throughput.py is missing"
        return 1
    fi
    local opts=(--device "$DEV" --models resnet50 --height 256 --width 128 --batch-size 256) help
    if [[ $DEV == cpu ]]; then  # the smoke run checks the plumbing only
        [[ $# -gt 0 ]] && { detail "cpu smoke mode: AMP throughput needs CUDA"; return $SKIP; }
        opts=(--device cpu --models resnet18 --height 64 --width 32 --batch-size 8)
    fi
    # Options beyond the brief's, only where the script has them: no extra loop epoch on
    # synthetic:small (minutes, and not what this check reports); on the CPU, fewer runs.
    help=$("$PY" bench/throughput.py --help 2>&1)
    [[ $help == *--no-loop* ]] && opts+=(--no-loop)
    if [[ $DEV == cpu ]]; then
        [[ $help == *--repeats* ]] && opts+=(--repeats 1)
        [[ $help == *--images* ]] && opts+=(--images 96)
        [[ $help == *--extract-images* ]] && opts+=(--extract-images 32)
    fi
    echo "+ $PY bench/throughput.py ${opts[*]} $* --json"
    run_step "bench/throughput.py" "$PY" bench/throughput.py "${opts[@]}" "$@" --json >"$LOG_DIR/$name.json"
    rc=$?
    cat "$LOG_DIR/$name.json"
    ((rc == 0)) || return 1
    if [[ $# -gt 0 ]]; then
        "$PY" "$HELPERS" throughput-result "$LOG_DIR/$name.json" "$LOG_DIR/throughput.json"
    else
        "$PY" "$HELPERS" throughput-result "$LOG_DIR/$name.json"
    fi
}
check_throughput_default() { check_throughput throughput; }
check_throughput_bf16() { check_throughput throughput_bf16 --amp bf16; }

# --------------------------------------------------------------------------------------------
# one check, in its own process (what the runner below calls)

if [[ ${1:-} == --one ]]; then
    name=${2:?--one NAME}
    : "${WORK:?--one runs inside gpu_check.sh (WORK is not set)}"
    if [[ $name == loop_* ]]; then
        check_loop "${name#loop_}"
    elif [[ $name == throughput ]]; then
        check_throughput_default
    else
        "check_$name"
    fi
    exit $?
fi
if (($# > 0)); then
    echo "usage: bash bench/gpu_check.sh   (settings through the environment, see the header)" >&2
    exit 2
fi
case $DEV in
    cuda | cpu) ;;
    *) echo "GPU_CHECK_DEVICE must be cuda or cpu, not '$DEV'" >&2; exit 2 ;;
esac
if ! [[ $SCALE =~ ^[1-9][0-9]*$ ]]; then
    echo "GPU_CHECK_TIME_SCALE must be a positive integer, not '$SCALE'" >&2
    exit 2
fi
if [[ ! -f pyproject.toml || ! -d reidctl || ! -d tests ]]; then
    echo "run from the repository root: bash bench/gpu_check.sh" >&2
    exit 2
fi

# --------------------------------------------------------------------------------------------
# the runner

now_ms() {
    if [[ -n ${EPOCHREALTIME:-} ]]; then
        local t=${EPOCHREALTIME/[.,]/}
        echo $((10#$t / 1000))
    else
        echo $(($(date +%s%N) / 1000000))
    fi
}

START_MS=$(now_ms)
mkdir -p "$LOG_DIR" || { echo "cannot create $LOG_DIR" >&2; exit 2; }
rm -f "$LOG_DIR"/*.log "$LOG_DIR"/*.json "$LOG_DIR"/summary.txt "$LOG_DIR"/summary.tsv
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
export WORK LOG_DIR PY DEV
export REIDCTL_CACHE=$WORK/cache   # synthetic:tiny built afresh: no stale cache from another version
export PYTHONUNBUFFERED=1
cleanup() { [[ ${GPU_CHECK_KEEP:-0} == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT

NAMES=() STATUS=() SECS=() DETAILS=()

wanted() {
    local pat pats
    [[ -z ${GPU_CHECK_ONLY:-} ]] && return 0
    read -r -a pats <<<"$GPU_CHECK_ONLY"   # read: no file-name expansion of the patterns
    for pat in "${pats[@]}"; do
        # shellcheck disable=SC2053  # a pattern on purpose
        [[ $1 == $pat ]] && return 0
    done
    return 1
}

record() {  # record NAME STATUS SECONDS DETAIL
    NAMES+=("$1") STATUS+=("$2") SECS+=("$3") DETAILS+=("$4")
    printf '[%s] %-20s %-4s %6ss  %s\n' "$(date +%H:%M:%S)" "$1" "$2" "$3" "$4" >&2
}

# The detail of a finished check: its last DETAIL line, else the first line that looks like an
# error, else its last line; one line, at most 110 characters.
log_detail() {
    local log=$1 line
    line=$(grep -a '^DETAIL: ' "$log" | tail -n 1)
    line=${line#DETAIL: }
    if [[ -z $line ]]; then
        line=$(grep -a -m 1 -E '^error:|^E  |^FAILED|Killed|No such file' "$log")
        [[ -z $line ]] && line=$(grep -a -E '^[A-Za-z_.]*(Error|Exception|Interrupt)\b' "$log" | tail -n 1)
    fi
    [[ -z $line ]] && line=$(grep -a -v '^[[:space:]]*$' "$log" | tail -n 1)
    line=$(tr -s '[:space:]' ' ' <<<"$line")
    line=${line# }
    line=${line% }
    ((${#line} > 110)) && line="${line:0:107}..."
    echo "$line"
}

run_check() {  # run_check NAME TIMEOUT_S
    local name=$1 limit=$2 log=$LOG_DIR/$1.log t0 rc status detail left secs
    wanted "$name" || return 0
    limit=$((limit * SCALE))
    left=$(((DEADLINE_S * SCALE * 1000 - ($(now_ms) - START_MS)) / 1000 - KILL_AFTER))
    if ((left < 5)); then
        record "$name" SKIP 0.0 "no time left within the $((DEADLINE_S * SCALE)) s budget"
        return 0
    fi
    ((limit > left)) && limit=$left
    echo "[$(date +%H:%M:%S)] $name (timeout ${limit} s) ..." >&2
    t0=$(now_ms)
    timeout -k "$KILL_AFTER" "$limit" bash "$SELF" --one "$name" >"$log" 2>&1 </dev/null
    rc=$?
    secs=$(($(now_ms) - t0))
    secs=$((secs / 1000)).$(((secs % 1000) / 100))
    detail=$(log_detail "$log")
    case $rc in
        0) status=PASS ;;
        "$SKIP") status=SKIP ;;
        124 | 137) status=FAIL detail="timed out after ${limit} s${detail:+; $detail}" ;;
        *) status=FAIL ;;
    esac
    [[ -z $detail ]] && detail="exit $rc"
    record "$name" "$status" "$secs" "$detail"
}

# the methods of the registry (each gets a loop check)
METHODS_OUT=$(timeout $((T_METHODS * SCALE)) "$PY" -c "from reidctl.methods import METHODS; print(*METHODS)" 2>"$LOG_DIR/methods.log")
read -r -a METHODS <<<"$METHODS_OUT"
if ((${#METHODS[@]} == 0)); then
    METHODS=()
    record methods FAIL 0.0 "cannot list reidctl.methods.METHODS: $(log_detail "$LOG_DIR/methods.log")"
fi
T_LOOP=$T_LOOP_MAX
if ((${#METHODS[@]} > 0 && T_LOOPS / ${#METHODS[@]} < T_LOOP)); then
    T_LOOP=$((T_LOOPS / ${#METHODS[@]}))
fi

AMP_MODES=(fp16 bf16)
[[ $DEV == cpu ]] && AMP_MODES=(off bf16)   # amp off: the plumbing; bf16 reports SKIP
TOTAL=$((T_METHODS + T_ENV + T_PYTEST + T_FAISS + T_AMP * 2 + T_TORCHRUN + T_LOOPS + T_THROUGHPUT + T_THROUGHPUT_AMP))
if ((TOTAL > 480)); then
    echo "gpu_check.sh: the timeouts add up to ${TOTAL} s > 480 s; fix the T_* values" >&2
    exit 2
fi
echo "gpu_check: device $DEV, methods: ${METHODS[*]:-none}, logs in $LOG_DIR, work in $WORK," \
    "timeouts sum to ${TOTAL} s (deadline ${DEADLINE_S} s), time scale ${SCALE}" >&2

run_check env "$T_ENV"
run_check pytest_cuda "$T_PYTEST"
run_check faiss_knn "$T_FAISS"
for mode in "${AMP_MODES[@]}"; do
    run_check "amp_$mode" "$T_AMP"
done
run_check torchrun "$T_TORCHRUN"
for method in "${METHODS[@]}"; do
    run_check "loop_$method" "$T_LOOP"
done
run_check throughput "$T_THROUGHPUT"
run_check throughput_bf16 "$T_THROUGHPUT_AMP"

# --------------------------------------------------------------------------------------------
# the table

if ((${#NAMES[@]} == 0)); then
    echo "gpu_check.sh: no check matches GPU_CHECK_ONLY='${GPU_CHECK_ONLY:-}'" >&2
    exit 2
fi
ELAPSED_MS=$(($(now_ms) - START_MS))
FAILED=0
for st in "${STATUS[@]}"; do
    [[ $st == FAIL ]] && FAILED=$((FAILED + 1))
done
{
    printf '\n%-20s %-6s %8s  %s\n' check status seconds detail
    printf '%-20s %-6s %8s  %s\n' "--------------------" "------" "--------" "------"
    for i in "${!NAMES[@]}"; do
        printf '%-20s %-6s %8s  %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}" "${DETAILS[$i]}"
    done
    printf '\n%s: %d checks, %d failed, %d.%d s in all (device %s); logs in %s\n' \
        "$([[ $FAILED -eq 0 ]] && echo PASS || echo FAIL)" "${#NAMES[@]}" "$FAILED" \
        $((ELAPSED_MS / 1000)) $(((ELAPSED_MS % 1000) / 100)) "$DEV" "$LOG_DIR"
} | tee "$LOG_DIR/summary.txt"
{
    printf 'check\tstatus\tseconds\tdetail\n'
    for i in "${!NAMES[@]}"; do
        printf '%s\t%s\t%s\t%s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}" "${DETAILS[$i]}"
    done
} >"$LOG_DIR/summary.tsv"
((FAILED == 0))
