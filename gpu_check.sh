#!/usr/bin/env bash
# One command for a GPU machine held for minutes: does the CUDA path work, is it right, how fast.
#
#   bash gpu_check.sh OUTDIR                      # on a GPU: about 5 minutes, at most --budget (420 s)
#   bash gpu_check.sh OUTDIR --device cpu --dry   # every stage at tiny sizes on the CPU (CI), < 1 minute,
#                                                 # --compile's stage without compiling
#
# Writes into OUTDIR: env.txt (machine, driver, versions), cuda_tests.txt (pytest -m cuda),
# readme_run.log / .jsonl / .err (the README bimodal command, 3,003 steps at batch 1000: its log,
# metrics, and the progress lines; .out is its stdout, the log again),
# benchmark.txt (eager: float32, TF32, bf16 at batch 1000 and 6144, host syncs per step, breakdown),
# benchmark_compile.txt (the same with --compile), and summary.md, printed at the end; a stage's
# stderr, when it wrote some, is beside its file as .err.
# Every stage runs under `timeout`; a stage that fails or runs out of time is recorded and the
# next one runs. Exit status: 0 when every stage passed, 1 when one did not, 2 on bad arguments.
# Python: $PYTHON (default python3), which needs torch, numpy, scipy, scikit-learn, matplotlib and
# pytest; nothing is downloaded.
set -u

PROG=gpu_check.sh
usage_error() {
    echo "$PROG: error: $1 (usage: bash $PROG OUTDIR [--device cuda|cpu] [--dry] [--budget SECONDS])" >&2
    exit 2
}

OUT="" DEVICE=cuda DRY=0 BUDGET=420
while [ $# -gt 0 ]; do
    case "$1" in
        --device)
            [ $# -ge 2 ] || usage_error "argument --device: expected one argument"
            case "$2" in cuda|cpu) DEVICE=$2 ;; *) usage_error "argument --device: invalid choice '$2' (choose from cuda, cpu)" ;; esac
            shift 2 ;;
        --dry) DRY=1; shift ;;
        --budget)
            [ $# -ge 2 ] || usage_error "argument --budget: expected one argument"
            case "$2" in ''|*[!0-9]*) usage_error "argument --budget: must be a whole number of seconds, got '$2'" ;; esac
            [ "$2" -ge 60 ] || usage_error "argument --budget: must be at least 60 seconds, got $2"
            BUDGET=$2; shift 2 ;;
        -*) usage_error "unrecognized argument $1" ;;
        *) [ -z "$OUT" ] || usage_error "unrecognized argument $1 (one output folder only)"
           OUT=$1; shift ;;
    esac
done
[ -n "$OUT" ] || usage_error "the output folder OUTDIR is required"
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || usage_error "no $PYTHON here; set PYTHON to an interpreter with torch"
if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    usage_error "argument --device: cuda requested but CUDA is not available (--device cpu --dry checks the script)"
fi
mkdir -p "$OUT" 2>/dev/null && [ -w "$OUT" ] || usage_error "argument OUTDIR: cannot write to $OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")" || exit 2

# Stage sizes: the full check, or every stage tiny (--dry).
README_ARGS=(--n 10 --space extended_sphere --c-p 0 --p 0 --only-unsupervised --gt-lambda-1 5 --gt-lambda-2 25
             --seed 0 --device "$DEVICE")
if [ "$DRY" = 1 ]; then
    MODE=dry
    README_SIZE=(--batch-size 64 --n-steps 4 --n-log-steps 5 --num-eval-batches 1)
    BENCH_COMMON=(--device "$DEVICE" --batch-sizes 16 --repeats 1 --warmup 1 --startup-repeats 1 --sync-count
                  --sync-steps 2)
    EAGER_PRECISIONS=(float32 bf16)
    COMPILE_PRECISIONS=(float32)
    COMPILE_SIZE=(--batch-sizes 16)
    # torch.compile's calls made, its modules run eagerly: tests/test_compile.py compiles a run end to end.
    COMPILE_ENV=(env TORCH_COMPILE_DISABLE=1)
else
    MODE=full
    # --n-steps 1001: 3,003 contrastive steps, the last logged at 3,001 like the CPU log in training_logs/.
    README_SIZE=(--batch-size 1000 --n-steps 1001)
    BENCH_COMMON=(--device "$DEVICE" --batch-sizes 1000 6144 --repeats 30 --warmup 5 --startup-repeats 1
                  --sync-count --sync-steps 20)
    EAGER_PRECISIONS=(float32 bf16)
    COMPILE_PRECISIONS=(float32)
    COMPILE_SIZE=(--batch-sizes 1000 6144)
    COMPILE_ENV=(env)
fi
if [ "$DEVICE" = cuda ]; then
    EAGER_PRECISIONS=(float32 tf32 bf16)
    COMPILE_PRECISIONS=(float32 tf32)
fi

START=$SECONDS
STAGES=()  # "name|status|seconds|file", one per stage, for the summary
FAILED=0

# run_stage NAME FILE CAP_SECONDS RESERVE_SECONDS COMMAND...: the command under `timeout`, its
# output in OUTDIR/FILE; it gets at most CAP seconds and never eats into the RESERVE the later
# stages need, so the whole check ends within --budget.
run_stage() {
    local name=$1 file=$2 cap=$3 reserve=$4
    shift 4
    local left=$((BUDGET - (SECONDS - START) - reserve))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 5 ]; then
        STAGES+=("$name|skipped (no time left in the budget)|0|$file")
        FAILED=1
        return
    fi
    echo "[$PROG] $name (at most ${limit} s) -> $OUT/$file" >&2
    local t0=$SECONDS status rc err="$OUT/${file%.*}.err"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$file" 2>"$err"
    rc=$?
    [ -s "$err" ] || rm -f "$err"  # stderr kept only when there was some
    case $rc in
        0) status=ok ;;
        124|137) status="timeout after ${limit} s"; FAILED=1 ;;
        *) status="failed (exit $rc)"; FAILED=1 ;;
    esac
    STAGES+=("$name|$status|$((SECONDS - t0))|$file")
}

environment() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host: $(uname -a)"
    echo "cpus: $(nproc 2>/dev/null || echo '?')"
    echo "mode: $MODE, device: $DEVICE, budget: $BUDGET s, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
    if git rev-parse HEAD >/dev/null 2>&1; then
        echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
    fi
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
    else
        echo "nvidia-smi: not found"
    fi
    "$PYTHON" - <<'EOF'
import importlib
import platform

import torch

print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}")
for name in ("numpy", "scipy", "sklearn", "matplotlib", "pytest", "triton"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except ImportError:
        print(f"{name}: not installed")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        print(f"gpu {i}: {p.name}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
              f"{total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)")
else:
    print("gpu: none (CUDA not available)")
EOF
}

# The stages, in order of what they answer: does it work, is it right, how fast. The reserves
# keep the later stages' minimum time out of the earlier ones' reach.
export -f environment
export MODE DEVICE BUDGET PYTHON
run_stage "environment" env.txt 30 300 bash -c environment
run_stage "CUDA tests" cuda_tests.txt 170 180 \
    "$PYTHON" -m pytest -o addopts="" -q -rs -p no:cacheprovider -m cuda tests/test_cuda.py
run_stage "README run" readme_run.out 75 120 \
    "$PYTHON" main_mlp.py "${README_ARGS[@]}" "${README_SIZE[@]}" \
    --log-file "$OUT/readme_run.log" --metrics-file "$OUT/readme_run.jsonl"
run_stage "benchmark" benchmark.txt 110 60 \
    "$PYTHON" -m tools.benchmark "${BENCH_COMMON[@]}" --precision "${EAGER_PRECISIONS[@]}" --breakdown
run_stage "benchmark --compile" benchmark_compile.txt 150 5 \
    "${COMPILE_ENV[@]}" "$PYTHON" -m tools.benchmark "${BENCH_COMMON[@]}" "${COMPILE_SIZE[@]}" --precision "${COMPILE_PRECISIONS[@]}" --compile

# ---------------------------------------------------------------- the summary

# table_rows FILE HEADER: the markdown table under HEADER in FILE (header and rule included).
table_rows() {
    [ -f "$1" ] && awk -v h="$2" 'index($0, h) == 1 {on = 1} on && !NF {exit} on && / [|] / {print}' "$1"
}

summary() {
    local gpu
    gpu=$(grep -m1 '^gpu ' "$OUT/env.txt" 2>/dev/null | sed 's/^gpu [0-9]*: //')
    echo "# GPU check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), mode $MODE, device $DEVICE (${gpu:-no GPU}), $((SECONDS - START)) s of a $BUDGET s budget"
    echo
    echo "| stage | status | seconds | file |"
    echo "| --- | --- | --- | --- |"
    local s
    for s in "${STAGES[@]}"; do
        IFS='|' read -r name status secs file <<<"$s"
        echo "| $name | $status | $secs | $file |"
    done
    echo
    echo "## Does it work: the CUDA tests"
    echo
    echo "pytest: $(grep -E '(passed|failed|skipped|error|no tests ran)' "$OUT/cuda_tests.txt" 2>/dev/null | tail -1)"
    grep -E '^(FAILED|ERROR) ' "$OUT/cuda_tests.txt" 2>/dev/null | sed 's/^/- /'
    echo
    echo "## Is it right: the README bimodal command"
    echo
    echo "last logged step, ours, then the CPU log's at the same step (training_logs/bimodal_aninfonce_seed0.log):"
    echo
    echo '```'
    local last step
    last=$(grep '^Step: ' "$OUT/readme_run.log" 2>/dev/null | tail -1)
    echo "${last:-no Step line}"
    step=$(echo "$last" | awk '{print $2}')
    [ -n "$step" ] && grep "^Step: $step " training_logs/bimodal_aninfonce_seed0.log 2>/dev/null
    grep '^learned lambda values' "$OUT/readme_run.log" 2>/dev/null | tail -1
    grep -E '^(linear|perm) mean' "$OUT/readme_run.log" 2>/dev/null
    echo '```'
    echo
    echo "## How fast"
    echo
    table_rows "$OUT/benchmark.txt" "precision | batch | GEMM"
    table_rows "$OUT/benchmark_compile.txt" "precision | batch | GEMM" | tail -n +3 | sed 's/^\([a-z0-9]*\) |/\1 compiled |/'
    echo
    echo "host synchronisations of a step that does not log:"
    echo
    table_rows "$OUT/benchmark.txt" "precision | batch | syncs/step"
    table_rows "$OUT/benchmark_compile.txt" "precision | batch | syncs/step" | tail -n +3 | sed 's/^\([a-z0-9]*\) |/\1 compiled |/'
    echo
    local bench rate steps
    bench=$(table_rows "$OUT/benchmark.txt" "precision | batch | GEMM" | sed -n 3p)
    echo "projected 300,003-step README run, from the benchmark ($(echo "$bench" | awk -F' [|] ' '{print $1 ", batch " $2}')): $(echo "$bench" | awk -F' [|] ' '{print $NF}')"
    rate=$(grep -o '[0-9.]* steps/s' "$OUT/readme_run.err" 2>/dev/null | tail -1 | awk '{print $1}')
    steps=$(grep -o 'step [0-9]*/[0-9]*' "$OUT/readme_run.err" 2>/dev/null | tail -1 | awk -F/ '{print $2}')
    if [ -n "$rate" ]; then
        echo "projected 300,003-step README run, from the README run's rate ($rate steps/s over its $steps steps, logging included): $(awk -v r="$rate" 'BEGIN {printf "%.2f h", 300003 / r / 3600}')"
    else
        echo "projected 300,003-step README run, from the README run's rate: no rate (the run did not log)"
    fi
}

summary >"$OUT/summary.md"
cat "$OUT/summary.md"
exit "$FAILED"
