#!/usr/bin/env bash
# The one-command GPU check (issue 11): on a fresh GPU machine (../shared/device/README.md: H100/H200, CUDA 13,
# cuDNN 9, 16 cores, no network, its own PyTorch), from the project root, in at most 10 minutes:
#   1. build    configure and build for sm_90 only (with .deps/include when present); prints the times and which
#               optional libraries (oneDNN, libjpeg-turbo, libzip, zlib) the machine has
#   2. tests    every CUDA gtest (names containing "cuda", case-insensitive), each under `timeout`, 8 at a time;
#               a few (conv, batch norm, pooling, a whole resnet18 training) under compute-sanitizer memcheck
#   3. train    `tlengine train` resnet18, 20 steps, fp32 (TF32 off) and bf16, without and with --cuda-graphs
#               (when the CLI has it), against the same job on the CPU: max relative difference of the first
#               steps' losses
#   4. bench    `tlengine bench` and tools/bench_pytorch.py (eager) for resnet50 and densenet121 x full /
#               last_block / head x fp32 / bf16 (12 configurations), side by side (tools/bench_table.py)
# Each stage runs under its own time limit; report.md (status PASS / FAIL / TIMEOUT / SKIPPED, times, results)
# is rewritten after every stage and on exit, whatever happens. Per-stage logs are in OUTDIR/<stage>/.
#
#   tools/gpu_check.sh OUTDIR [--dry-run] [--skip-build] [--build-dir DIR]
#     --build-dir DIR  build folder (default build-gpu)
#     --skip-build     use the binaries already in the build folder (e.g. built elsewhere and carried)
#     --dry-run        no GPU needed: prints what each stage would run, checks that the binaries' flags and the
#                      CUDA tests it names exist (when DIR holds a build), and tests its own plumbing (stage
#                      timeouts, the loss comparison, the report); exits non-zero when any of that is wrong
# Settings (environment): GPU_CHECK_BUDGET (600 s in all), GPU_CHECK_LIMIT_BUILD (240), GPU_CHECK_LIMIT_TESTS
#   (150), GPU_CHECK_LIMIT_TRAIN (90); the bench gets what is left. GPU_CHECK_MEMCHECK_TESTS (a space-separated
#   list of gtest names), BENCH_WARMUP (5), BENCH_STEPS (20), PYTHON (python3, with PyTorch + torchvision).
set -u -o pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
STAGES=(build tests train bench)
PYTHON=${PYTHON:-python3}

# The CUDA tests run under compute-sanitizer: convolution, batch norm, pooling, and a whole model's training.
MEMCHECK_TESTS=${GPU_CHECK_MEMCHECK_TESTS:-"Conv2dCuda.MatchesCpu BatchNormCuda.TrainMatchesCpu PoolingCuda.MatchesCpu TrainCuda.Resnet18Float32MatchesCpu"}
TEST_TIMEOUT=90       # s, one CUDA test
MEMCHECK_TIMEOUT=140  # s, one CUDA test under memcheck (kernels run 10-100x slower)
TEST_JOBS=8

# Stage 3: per-step losses come from metrics.jsonl, which has one line per epoch: the job has exactly one batch
# per epoch (4 classes x 8 train images, batch 32), so epoch e's train loss is the loss of step e.
TRAIN_STEPS=20
TRAIN_CMP_STEPS=5  # the CPU run's steps, compared with each CUDA run's first steps
# Bounds on the relative loss difference. The gtests TrainCuda.* hold the tight ones (1e-4 float32, 1e-2 bf16 on
# a smaller job, tests/test_cuda_train.cpp); here, through the CLI at 112 px over 5 (vs CPU) or 20 (graphs vs
# eager) steps: float32 with NVIDIA_TF32_OVERRIDE=0 (cuDNN and cuBLAS then never use TF32) differs from the CPU
# only in summation order, ~1e-6..1e-5 per step: 1e-3 leaves room for the longer run; bf16 rounds every
# activation to 8 significant bits (2e-3 per rounding, ~1e-2 on the logits): 2e-2.
TRAIN_TOL_FP32=1e-3
TRAIN_TOL_BF16=2e-2

BENCH_MODELS="resnet50 densenet121"
BENCH_PRECISIONS="bf16 fp32"
BENCH_MODES="full last_block head"
BENCH_BATCH=64
BENCH_WARMUP=${BENCH_WARMUP:-5}
BENCH_STEPS=${BENCH_STEPS:-20}
BENCH_RUN_TIMEOUT=90  # s, one bench process

usage() { sed -n '2,/^set -u/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the stages (they run in a child process: "$SELF" __stage NAME, with GC_* in the environment).

# run LOG CMD...: runs CMD (its output appended to LOG, after the command line); under --dry-run only prints it.
run() {
  local log=$1
  shift
  if [ "$GC_DRY" = 1 ]; then
    printf '  would run:'
    printf ' %q' "$@"
    printf '\n'
    return 0
  fi
  { printf '$'; printf ' %q' "$@"; printf '\n'; } >> "$log"
  "$@" >> "$log" 2>&1
}

# The stage's one-line result (the report's table) and its details (the report's section).
headline() { printf '%s\n' "$*" > "$GC_DIR/headline"; echo "$*"; }
detail() { printf '%s\n' "$*" >> "$GC_DIR/summary.md"; }

# has_flags HELP_TEXT FLAG...: fails naming the first flag the help text does not mention.
has_flags() {
  local help=$1 f
  shift
  for f in "$@"; do
    grep -q -- "$f\b" <<< "$help" || { echo "missing flag $f"; return 1; }
  done
}

# cli_help SUB: `tlengine SUB --help`; in a dry run without a build, every flag tools/tlengine.cpp defines (all
# subcommands together), so that the plan is still checked against the source.
cli_help() {
  if [ -x "$GC_BUILD/tlengine" ]; then
    "$GC_BUILD/tlengine" "$1" --help 2>&1
  elif [ "$GC_DRY" = 1 ]; then
    grep -o '"!\{0,1\}--[a-z0-9-]*"' "$ROOT/tools/tlengine.cpp" | tr -d '"!'
  fi
}
# Where the flags were checked, for the dry run's headlines.
checked_against() {
  [ -x "$GC_BUILD/tlengine" ] && echo "$GC_BUILD/tlengine" || echo "tools/tlengine.cpp (no build in $GC_BUILD)"
}

# compare_losses REF RUN STEPS TOL: relative difference |run - ref| / |ref| of the train losses of the first STEPS
# lines of two metrics.jsonl files (one line per epoch = per step here). Prints one line; fails when a file has
# fewer lines, a loss is not finite, or the largest difference exceeds TOL.
compare_losses() {
  "$PYTHON" - "$@" <<'EOF'
import json, math, sys
ref_path, run_path, steps, tol = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def losses(path):  # null (how JSON writes NaN) becomes NaN
    with open(path) as f:
        return [math.nan if (v := json.loads(line)["train"]["loss"]) is None else v for line in f if line.strip()]
ref, run = losses(ref_path), losses(run_path)
if len(ref) < steps or len(run) < steps:
    print(f"too few steps: {len(ref)} and {len(run)} lines, {steps} needed")
    sys.exit(1)
rel = [abs(b - a) / abs(a) if math.isfinite(b) else math.inf for a, b in zip(ref[:steps], run[:steps])]
worst = max(range(steps), key=lambda i: rel[i])
ok = all(math.isfinite(x) for x in ref[:steps] + run[:steps]) and rel[worst] <= tol
print(f"max rel diff {rel[worst]:.2e} (step {worst + 1}: {run[worst]:.6f} vs {ref[worst]:.6f}; bound {tol:g}) "
      f"{'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
EOF
}

# loss_trend RUN STEPS: the first and last train loss; fails unless all STEPS are there, finite, and the last is
# below the first (the job memorises 32 images: 20 steps must lower its loss).
loss_trend() {
  "$PYTHON" - "$@" <<'EOF'
import json, math, sys
path, steps = sys.argv[1], int(sys.argv[2])
with open(path) as f:
    l = [math.nan if (v := json.loads(line)["train"]["loss"]) is None else v for line in f if line.strip()]
ok = len(l) == steps and all(math.isfinite(x) for x in l) and l[-1] < l[0]
print(f"{len(l)} steps, loss {l[0]:.4f} -> {l[-1]:.4f} {'PASS' if ok else 'FAIL'}" if l else "no steps FAIL")
sys.exit(0 if ok else 1)
EOF
}

# ---------------------------------------------------------------------------------------------------------------
# Stage 1: configure and build for sm_90.
stage_build() {
  local log=$GC_DIR/build.log gen=() opts=() t0 t1 t2 pyb
  command -v ninja > /dev/null && gen=(-G Ninja)
  opts=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 "-DTL_PYTHON=$(command -v "$PYTHON" || echo "$PYTHON")")
  if [ -d "$ROOT/.deps/include" ]; then
    opts+=("-DTL_EXTRA_INCLUDE=$ROOT/.deps/include")
  else
    echo "no .deps/include (../shared/device/pack-deps.sh makes it): relying on system headers"
  fi
  # pybind11 installed by pip keeps its CMake package inside the Python package
  pyb=$("$PYTHON" -m pybind11 --cmakedir 2> /dev/null) && [ -n "$pyb" ] && opts+=("-Dpybind11_DIR=$pyb")
  if [ "$GC_DRY" = 1 ]; then
    local o
    for o in TL_WITH_DNNL TL_WITH_LIBZIP TL_WITH_LIBJPEG TL_WITH_ZLIB TL_EXTRA_INCLUDE; do
      grep -q "$o" "$ROOT/CMakeLists.txt" || { headline "CMakeLists.txt has no $o"; return 1; }
    done
  fi
  t0=$SECONDS
  run "$log" cmake -S "$ROOT" -B "$GC_BUILD" "${gen[@]}" "${opts[@]}" || {
    headline "configure failed (build/build.log)"
    tail -n 20 "$log"
    return 1
  }
  t1=$SECONDS
  run "$log" cmake --build "$GC_BUILD" -j"$(nproc)" || {
    headline "build failed after $((SECONDS - t1)) s (build/build.log)"
    grep -m 20 -E 'error|Error' "$log"
    return 1
  }
  t2=$SECONDS
  if [ "$GC_DRY" = 1 ]; then
    headline "dry run: configure + build for sm_90 ($(nproc) jobs$([ -d "$ROOT/.deps/include" ] && echo ", .deps/include"))"
    return 0
  fi
  local libs
  libs=$(grep -o 'tlengine: optional libraries: .*' "$log" | tail -n 1 | sed 's/^tlengine: //')
  detail "- CMake $(cmake --version | head -n 1 | awk '{print $3}')"
  detail "- configure $((t1 - t0)) s, build $((t2 - t1)) s with $(nproc) jobs, sm_90 only"
  detail "- ${libs:-optional libraries: the line is missing from the configure output}"
  if ! grep -q 'CUDA ON' <<< "$libs"; then  # no nvcc found: CMake built the CPU-only engine
    headline "built without CUDA (configure found no nvcc: see build/build.log); ${libs:-}"
    return 1
  fi
  headline "configure $((t1 - t0)) s, build $((t2 - t1)) s ($(nproc) jobs); $libs"
}

summarize_build() {
  headline "stopped at: $(tail -n 1 "$GC_DIR/build.log" 2> /dev/null | cut -c1-150)"
}

# ---------------------------------------------------------------------------------------------------------------
# Stage 2: every CUDA test, each with a timeout; some under compute-sanitizer memcheck.

# Timeouts inside a stage use --foreground: they stay in the stage's process group, so that the stage's own
# limit stops them too (a plain `timeout` makes a process group of its own, which would outlive the stage).

# test_command NAME plain|memcheck: the command line of one CUDA test run, in TEST_CMD. Two CPU threads each (8
# run at once; the TrainCuda tests compute their CPU reference).
test_command() {
  TEST_CMD=("$GC_BUILD/tests/tlengine_tests" "--gtest_filter=$1")
  if [ "$2" = memcheck ]; then
    TEST_CMD=(timeout --foreground -k 5 "$MEMCHECK_TIMEOUT" "${GC_SANITIZER:-compute-sanitizer}" --tool memcheck
              --error-exitcode 99 --print-limit 20 "${TEST_CMD[@]}")
  else
    TEST_CMD=(timeout --foreground -k 5 "$TEST_TIMEOUT" "${TEST_CMD[@]}")
  fi
  TEST_CMD=(env OMP_NUM_THREADS=2 "${TEST_CMD[@]}")
}

# one_test NAME plain|memcheck: runs one gtest; appends "NAME MODE STATUS SECONDS" to results.tsv.
one_test() {
  local name=$1 mode=$2 log status t0=$SECONDS rc
  log=$GC_DIR/logs/$mode-$name.log
  test_command "$name" "$mode"
  "${TEST_CMD[@]}" > "$log" 2>&1
  rc=$?
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    status=TIMEOUT
  elif [ $rc = 99 ]; then
    status=MEMCHECK-ERRORS
  elif grep -q '^\[  SKIPPED \]' "$log"; then
    status=SKIPPED  # on the GPU machine a skip means CUDA was not usable: a failure
  elif [ $rc = 0 ] && grep -q '^\[  PASSED  \] 1 test' "$log" &&
       { [ "$mode" = plain ] || grep -q 'ERROR SUMMARY: 0 errors' "$log"; }; then
    status=PASS
  else
    status=FAIL
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$mode" "$status" "$((SECONDS - t0))" >> "$GC_DIR/results.tsv"
}

# The full names (Suite.Test) of the tests whose name contains "cuda", from --gtest_list_tests (in a dry run
# without a build: from the TEST(Suite, Name) lines of tests/*.cpp).
list_cuda_tests() {
  if [ -x "$GC_BUILD/tests/tlengine_tests" ]; then
    "$GC_BUILD/tests/tlengine_tests" --gtest_list_tests | awk '/^[^ ]/ {suite = $1; next} {print suite $1}'
  else
    sed -n 's/^TEST(\([A-Za-z0-9_]*\), *\([A-Za-z0-9_]*\)).*/\1.\2/p' "$ROOT"/tests/test_*.cpp
  fi | grep -i cuda
}

find_sanitizer() {
  command -v compute-sanitizer && return 0
  local p
  for p in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [ -x "$p" ] && { echo "$p"; return 0; }
  done
  return 1
}

stage_tests() {
  local bin=$GC_BUILD/tests/tlengine_tests tests t missing=0 source="$GC_BUILD/tests/tlengine_tests"
  if [ ! -x "$bin" ]; then
    [ "$GC_DRY" = 1 ] || { headline "no $bin (build failed or not built)"; return 1; }
    source="tests/*.cpp (no build in $GC_BUILD)"
  fi
  tests=$(list_cuda_tests) || { headline "no CUDA tests in $source"; return 1; }
  tests=$(grep '^TrainCuda\.' <<< "$tests"; grep -v '^TrainCuda\.' <<< "$tests")  # the slowest first
  for t in $MEMCHECK_TESTS TrainCuda.Resnet18Float32MatchesCpu TrainCuda.Resnet18Bf16MatchesCpu; do
    grep -qx "$t" <<< "$tests" || { echo "test $t is not in the CUDA test list"; missing=1; }
  done
  [ $missing = 0 ] || { headline "tests named by this script are missing from the build"; return 1; }
  GC_SANITIZER=$(find_sanitizer) || GC_SANITIZER=
  export GC_SANITIZER
  mkdir -p "$GC_DIR/logs"
  : > "$GC_DIR/results.tsv"
  printf '%s\n' "$tests" > "$GC_DIR/tests.list"
  echo "$GC_SANITIZER" > "$GC_DIR/sanitizer"
  # The PyTorch fixtures (BatchNormCuda.AutogradMatchesPyTorch compares with one): as ctest's fixture step does.
  run "$GC_DIR/fixtures.log" timeout --foreground -k 5 60 "$PYTHON" "$ROOT/tests/torch_ref/make_fixtures.py" "$GC_BUILD/fixtures" ||
    { detail "- the PyTorch fixture step failed (tests/fixtures.log): tests that read fixtures fail"; detail ""; }
  if [ "$GC_DRY" = 1 ]; then
    for t in $tests; do
      test_command "$t" plain
      run /dev/null "${TEST_CMD[@]}"
    done
    for t in $MEMCHECK_TESTS; do
      test_command "$t" memcheck
      run /dev/null "${TEST_CMD[@]}"
    done
    headline "dry run: $(wc -w <<< "$tests") CUDA tests listed from $source, $(wc -w <<< "$MEMCHECK_TESTS")" \
      "under memcheck (compute-sanitizer ${GC_SANITIZER:-not found here})"
    return 0
  fi
  # The memcheck runs start first (they are the slowest) and run beside the plain ones.
  local mc_pid=
  if [ -n "$GC_SANITIZER" ]; then
    tr -s ' ' '\n' <<< "$MEMCHECK_TESTS" | xargs -P 4 -I{} "$SELF" __one_test {} memcheck &
    mc_pid=$!
  fi
  printf '%s\n' "$tests" | xargs -P "$TEST_JOBS" -I{} "$SELF" __one_test {} plain
  [ -n "$mc_pid" ] && wait "$mc_pid"
  summarize_tests
}

# summarize_tests: headline and table from results.tsv (also after a timeout: the tests that finished). Fails unless
# every CUDA test and every memcheck run passed.
summarize_tests() {
  local n pass bad mc_n mc_pass total sanitizer
  total=$(wc -l < "$GC_DIR/tests.list")
  sanitizer=$(cat "$GC_DIR/sanitizer")
  n=$(awk -F'\t' '$2 == "plain"' "$GC_DIR/results.tsv" | wc -l)
  pass=$(awk -F'\t' '$2 == "plain" && $3 == "PASS"' "$GC_DIR/results.tsv" | wc -l)
  mc_n=$(awk -F'\t' '$2 == "memcheck"' "$GC_DIR/results.tsv" | wc -l)
  mc_pass=$(awk -F'\t' '$2 == "memcheck" && $3 == "PASS"' "$GC_DIR/results.tsv" | wc -l)
  bad=$(awk -F'\t' '$3 != "PASS" && ++k <= 6 {printf "%s%s (%s%s)", sep, $1, $3, $2 == "memcheck" ? ", memcheck" : ""; sep = ", "}
                    END {if (k > 6) printf " and %d more", k - 6}' "$GC_DIR/results.tsv")
  local mc_text
  mc_text="memcheck $mc_pass/$(wc -w <<< "$MEMCHECK_TESTS") clean"
  [ -n "$sanitizer" ] || mc_text="memcheck NOT RUN: no compute-sanitizer"
  headline "$pass/$total CUDA tests passed ($n finished), $mc_text${bad:+; not passed: $bad}"
  detail "| test | run | status | s |"
  detail "|---|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}' "$GC_DIR/results.tsv" | sort >> "$GC_DIR/summary.md"
  detail ""
  detail "Logs: tests/logs/<run>-<test>.log. A SKIPPED test here means CUDA was not usable in that process."
  [ "$n" = "$total" ] && [ "$pass" = "$n" ] && [ -n "$sanitizer" ] &&
    [ "$mc_n" = "$(wc -w <<< "$MEMCHECK_TESTS")" ] && [ "$mc_pass" = "$mc_n" ]
}

# ---------------------------------------------------------------------------------------------------------------
# Stage 3: resnet18 training through the CLI, CUDA against the CPU.
stage_train() {
  local tl=$GC_BUILD/tlengine data=$GC_DIR/data help graphs=0
  [ -x "$tl" ] || [ "$GC_DRY" = 1 ] || { headline "no $tl (build failed or not built)"; return 1; }
  help=$(cli_help train)
  has_flags "$help" --data --arch --image-size --val-transform --batch-size --epochs --lr --schedule --no-augment \
    --workers --seed --device --precision --out || { headline "tlengine train lacks a flag this stage uses"; return 1; }
  has_flags "$(cli_help make-data)" --out --classes --train-per-class --val-per-class --width --height ||
    { headline "tlengine make-data lacks a flag this stage uses"; return 1; }
  grep -q -- '--cuda-graphs' <<< "$help" && graphs=1
  run "$GC_DIR/make-data.log" "$tl" make-data --out "$data" --classes 4 --train-per-class 8 --val-per-class 2 \
    --width 128 --height 128 || { headline "make-data failed (train/make-data.log)"; return 1; }
  local common=(train --data "$data" --arch resnet18 --image-size 112 --val-transform resize --batch-size 32
                --no-augment --schedule constant --lr 0.01 --workers 4 --seed 0)
  # The CPU reference runs beside the CUDA runs (it uses the cores, they the GPU).
  local cpu_run=("$tl" "${common[@]}" --device cpu --precision fp32 --epochs "$TRAIN_CMP_STEPS" --out "$GC_DIR/cpu")
  local cpu_pid=
  if [ "$GC_DRY" = 1 ]; then
    run "$GC_DIR/cpu.log" "${cpu_run[@]}"
  else
    run "$GC_DIR/cpu.log" "${cpu_run[@]}" &
    cpu_pid=$!
  fi
  local variants=(fp32 bf16) v prec g
  [ $graphs = 1 ] && variants+=(fp32-graphs bf16-graphs)
  echo "${variants[*]}" > "$GC_DIR/variants"
  for v in "${variants[@]}"; do
    prec=${v%-graphs}
    g=()
    [ "$v" != "$prec" ] && g=(--cuda-graphs)
    # NVIDIA_TF32_OVERRIDE=0: cuDNN and cuBLAS never use TF32, so float32 is float32 on both sides
    run "$GC_DIR/$v.log" env NVIDIA_TF32_OVERRIDE=0 "$tl" "${common[@]}" --device cuda --precision "$prec" \
      "${g[@]}" --epochs "$TRAIN_STEPS" --out "$GC_DIR/$v" || echo "the CUDA run $v failed (train/$v.log)"
  done
  if [ -n "$cpu_pid" ] && ! wait "$cpu_pid"; then
    headline "the CPU run failed (train/cpu.log)"
    tail -n 5 "$GC_DIR/cpu.log"
    return 1
  fi
  if [ "$GC_DRY" = 1 ]; then
    headline "dry run: resnet18 CPU $TRAIN_CMP_STEPS steps vs CUDA ${variants[*]} ($TRAIN_STEPS steps);" \
      "flags checked against $(checked_against)$(no_graphs_note)"
    return 0
  fi
  summarize_train
}

no_graphs_note() {
  grep -q graphs "$GC_DIR/variants" || echo "; --cuda-graphs: not available (tlengine train --help does not list it)"
}

# summarize_train: the loss comparisons of the runs in GC_DIR (also after a timeout: unfinished runs fail).
summarize_train() {
  local variants v prec
  read -r -a variants < "$GC_DIR/variants"
  rm -f "$GC_DIR/summary.md"
  detail "resnet18, 112 px, batch 32 (one batch per epoch), SGD lr 0.01 momentum 0.9, no augmentation; fp32 runs"
  detail "with NVIDIA_TF32_OVERRIDE=0. Relative difference of the train loss, first $TRAIN_CMP_STEPS steps vs the CPU;"
  detail "graphs vs eager over all $TRAIN_STEPS steps. Logs: train/<run>.log."
  detail ""
  detail "| run | $TRAIN_STEPS steps | vs CPU (first $TRAIN_CMP_STEPS) | graphs vs eager |"
  detail "|---|---|---|---|"
  local short="" res r trend vs_eager tol fails=0
  [ -s "$GC_DIR/cpu/metrics.jsonl" ] || { short="no CPU result"; fails=1; }
  for v in "${variants[@]}"; do
    prec=${v%-graphs}
    tol=$TRAIN_TOL_FP32
    [ "$prec" = bf16 ] && tol=$TRAIN_TOL_BF16
    if [ ! -s "$GC_DIR/$v/metrics.jsonl" ]; then
      detail "| $v | no result: $(grep -m 1 'tlengine:' "$GC_DIR/$v.log" 2> /dev/null | cut -c1-150) | | |"
      short+="${short:+, }$v: no result"
      fails=$((fails + 1))
      continue
    fi
    trend=$(loss_trend "$GC_DIR/$v/metrics.jsonl" "$TRAIN_STEPS") || fails=$((fails + 1))
    res=$(compare_losses "$GC_DIR/cpu/metrics.jsonl" "$GC_DIR/$v/metrics.jsonl" "$TRAIN_CMP_STEPS" "$tol") ||
      fails=$((fails + 1))
    vs_eager="–"
    if [ "$v" != "$prec" ]; then
      vs_eager=$(compare_losses "$GC_DIR/$prec/metrics.jsonl" "$GC_DIR/$v/metrics.jsonl" "$TRAIN_STEPS" "$tol") ||
        fails=$((fails + 1))
    fi
    detail "| $v | $trend | $res | $vs_eager |"
    r=${res#max rel diff }
    short+="${short:+, }$v ${r%% (*} ${res##* }"
  done
  [ $fails = 0 ] || short+="; $fails check(s) failed"
  headline "max rel loss diff vs CPU (first $TRAIN_CMP_STEPS steps): $short$(no_graphs_note)"
  [ $fails = 0 ]
}

# ---------------------------------------------------------------------------------------------------------------
# Stage 4: tlengine bench next to PyTorch eager, 12 configurations.
stage_bench() {
  local tl=$GC_BUILD/tlengine raw=$GC_DIR/raw model prec mode cfg total=0
  [ -x "$tl" ] || [ "$GC_DRY" = 1 ] || { headline "no $tl (build failed or not built)"; return 1; }
  has_flags "$(cli_help bench)" --model --mode --precision --batch --image-size --warmup --steps --device \
    --json || { headline "tlengine bench lacks a flag this stage uses"; return 1; }
  local f
  for f in --model --mode --precision --batch --image-size --warmup --steps --device --json; do
    grep -q "add_argument(\"$f\"" "$ROOT/tools/bench_pytorch.py" ||
      { headline "tools/bench_pytorch.py has no $f"; return 1; }
  done
  [ -f "$ROOT/tools/bench_table.py" ] || { headline "no tools/bench_table.py"; return 1; }
  mkdir -p "$raw"
  for model in $BENCH_MODELS; do
    for prec in $BENCH_PRECISIONS; do
      for mode in $BENCH_MODES; do
        cfg=$model-$mode-$prec
        total=$((total + 1))
        local common=(--model "$model" --mode "$mode" --precision "$prec" --batch "$BENCH_BATCH" --image-size 224
                      --warmup "$BENCH_WARMUP" --steps "$BENCH_STEPS" --device cuda)
        run "$GC_DIR/tlengine-$cfg.log" timeout --foreground -k 5 "$BENCH_RUN_TIMEOUT" "$tl" bench "${common[@]}" \
          --json "$raw/tlengine-$cfg.json" || { echo "FAILED: tlengine $cfg"; echo "tlengine $cfg" >> "$GC_DIR/failed"; }
        run "$GC_DIR/eager-$cfg.log" timeout --foreground -k 5 "$BENCH_RUN_TIMEOUT" "$PYTHON" \
          "$ROOT/tools/bench_pytorch.py" "${common[@]}" --json "$raw/eager-$cfg.json" ||
          { echo "FAILED: eager $cfg"; echo "eager $cfg" >> "$GC_DIR/failed"; }
        # The table after every configuration: a stage that runs out of time keeps the rows it finished.
        [ "$GC_DRY" = 1 ] || bench_table
      done
    done
  done
  if [ "$GC_DRY" = 1 ]; then
    headline "dry run: $total configurations x (tlengine bench, bench_pytorch.py eager), batch $BENCH_BATCH;" \
      "flags checked against $(checked_against) and tools/bench_pytorch.py"
    return 0
  fi
  summarize_bench
}

# How many configurations have both result files.
bench_done() {
  local n=0 f
  for f in "$GC_DIR"/raw/tlengine-*.json; do
    [ -s "$f" ] && [ -s "$GC_DIR/raw/eager-${f##*/tlengine-}" ] && n=$((n + 1))
  done
  echo $n
}

bench_total() { echo $(($(wc -w <<< "$BENCH_MODELS") * $(wc -w <<< "$BENCH_PRECISIONS") * $(wc -w <<< "$BENCH_MODES"))); }

# summarize_bench: the headline (the table is summary.md already). Fails unless every run gave its result.
summarize_bench() {
  local ndone total failed=0
  ndone=$(bench_done)
  total=$(bench_total)
  [ -f "$GC_DIR/failed" ] && failed=$(wc -l < "$GC_DIR/failed")
  headline "$ndone/$total configurations measured on both sides, $failed failed runs$(
    [ -s "$GC_DIR/summary.md" ] && echo " (table below)")"
  [ "$failed" = 0 ] && [ "$ndone" = "$total" ]
}

# bench_table: summary.md = the side-by-side table of the runs so far (tools/bench_table.py).
bench_table() {
  local files=("$GC_DIR"/raw/*.json)
  [ -e "${files[0]}" ] || return 0
  python3 "$ROOT/tools/bench_table.py" --out "$GC_DIR/results.json" --markdown "$GC_DIR/table.md" \
    --title "tlengine bench vs PyTorch eager: batch $BENCH_BATCH, 224 px, $BENCH_WARMUP warm-up + $BENCH_STEPS timed steps" \
    "${files[@]}" > /dev/null 2>> "$GC_DIR/table.log" || return 0
  {
    echo "$(bench_done) of $(bench_total) configurations measured on both sides. Ratios: img/s vs eager above 1 = tlengine faster;"
    echo "memory vs eager = tlengine allocator peak / torch.cuda.max_memory_allocated. (No torch.compile runs here.)"
    echo
    sed '1,2d' "$GC_DIR/table.md"  # without the title
  } > "$GC_DIR/summary.md"
}

# ---------------------------------------------------------------------------------------------------------------
# The driver: each stage in a child process under `timeout`, the report after each.

declare -A STATUS TIME LIMIT

write_report() {
  local r=$OUT/report.md.tmp s
  {
    echo "# tlengine GPU check"
    echo
    echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), host $(hostname), commit $(git -C "$ROOT" rev-parse --short HEAD 2> /dev/null || echo '?')$(
      [ -n "$(git -C "$ROOT" status --porcelain 2> /dev/null)" ] && echo ' (with local changes)')"
    echo "- GPU: $GPU_INFO"
    echo "- mode: $([ "$DRY" = 1 ] && echo 'DRY RUN (nothing was built or measured)' || echo full); build folder $BUILD;" \
      "budget $BUDGET s, elapsed $((SECONDS - START)) s"
    echo
    echo "| stage | status | s | limit s | result |"
    echo "|---|---|---|---|---|"
    for s in "${STAGES[@]}" "${EXTRA_STAGES[@]}"; do
      echo "| $s | ${STATUS[$s]:-NOT RUN} | ${TIME[$s]:-} | ${LIMIT[$s]:-} | $(cat "$OUT/$s/headline" 2> /dev/null) |"
    done
    for s in "${STAGES[@]}"; do
      [ -s "$OUT/$s/summary.md" ] || continue
      echo
      echo "## $s"
      echo
      cat "$OUT/$s/summary.md"
    done
  } > "$r"
  mv "$r" "$OUT/report.md"
}

# run_stage NAME CAP: runs stage NAME with limit min(CAP, what is left of the budget); records its status.
run_stage() {
  local name=$1 cap=$2 left limit t0 rc
  left=$((BUDGET - (SECONDS - START) - 10))  # 10 s kept for the report
  limit=$((cap < left ? cap : left))
  fresh_stage_dir "$name" || return
  if [ "$limit" -lt "$cap" ] && [ "$limit" -lt 15 ]; then
    STATUS[$name]=SKIPPED
    echo "no time left in the ${BUDGET}-s budget" > "$OUT/$name/headline"
    echo "== $name: SKIPPED (no time left)"
    write_report
    return
  fi
  LIMIT[$name]=$limit
  STATUS[$name]=RUNNING
  write_report
  echo "== $name: limit $limit s (elapsed $((SECONDS - START)) of $BUDGET s)"
  t0=$SECONDS
  GC_DIR=$OUT/$name timeout -k 10 "$limit" "$SELF" __stage "$name" > "$OUT/$name/stage.log" 2>&1 &
  STAGE_PID=$!
  wait "$STAGE_PID"
  rc=$?
  STAGE_PID=
  TIME[$name]=$((SECONDS - t0))
  case $rc in
    0) STATUS[$name]=PASS ;;
    124 | 137) STATUS[$name]=TIMEOUT ;;
    *) STATUS[$name]=FAIL ;;
  esac
  if [ "${STATUS[$name]}" = TIMEOUT ]; then  # what the stage got done before its limit
    GC_DIR=$OUT/$name timeout -k 5 30 "$SELF" __summarize "$name" >> "$OUT/$name/stage.log" 2>&1
    [ -s "$OUT/$name/headline" ] || tail -n 1 "$OUT/$name/stage.log" > "$OUT/$name/headline"
    sed -i "1s/^/stopped at the $limit-s limit: /" "$OUT/$name/headline"
  fi
  echo "== $name: ${STATUS[$name]} in ${TIME[$name]} s: $(cat "$OUT/$name/headline" 2> /dev/null)"
  if [ "$DRY" = 1 ]; then  # what the stage would run
    sed 's/^/   | /' "$OUT/$name/stage.log"
  elif [ "${STATUS[$name]}" != PASS ]; then
    tail -n 5 "$OUT/$name/stage.log" | sed 's/^/   | /'
  fi
  write_report
}

# fresh_stage_dir NAME: an empty OUT/NAME for the stage. A folder left by an earlier run (it holds the marker file)
# is emptied; any other non-empty folder there is left alone and the stage fails.
fresh_stage_dir() {
  local d=$OUT/$1
  if [ -e "$d/.gpu_check_stage" ]; then
    rm -rf "$d"
  elif [ -d "$d" ] && [ -n "$(ls -A "$d")" ]; then
    STATUS[$1]=FAIL
    echo "== $1: FAIL: $d exists and was not made by gpu_check.sh: choose another OUTDIR"
    write_report
    return 1
  fi
  mkdir -p "$d" && touch "$d/.gpu_check_stage"
}

skip_stage() {  # skip_stage NAME REASON
  fresh_stage_dir "$1" || return
  STATUS[$1]=SKIPPED
  echo "$2" > "$OUT/$1/headline"
  echo "== $1: SKIPPED ($2)"
  write_report
}

on_exit() {
  [ -n "${STAGE_PID:-}" ] && kill -TERM "$STAGE_PID" 2> /dev/null
  local s
  for s in "${STAGES[@]}"; do
    [ "${STATUS[$s]:-}" = RUNNING ] && STATUS[$s]=INTERRUPTED
  done
  [ -n "${OUT:-}" ] && [ -d "$OUT" ] && write_report && echo "report: $OUT/report.md"
}

# Dry run only: the plumbing itself. A stage that overruns its limit must be stopped and marked TIMEOUT, and the
# loss comparison must pass a small difference and fail a large one.
dry_run_selftests() {
  local ok=1 d=$OUT/selftest
  EXTRA_STAGES=(timeout-probe)
  run_stage timeout-probe 2
  if [ "${STATUS[timeout-probe]:-}" != TIMEOUT ] || [ "${TIME[timeout-probe]:-0}" -gt 14 ]; then
    echo "self-test FAILED: a stage sleeping 30 s under a 2-s limit ended ${STATUS[timeout-probe]:-unknown} after ${TIME[timeout-probe]:-?} s"
    ok=0
  fi
  mkdir -p "$d"
  printf '{"epoch": %d, "train": {"loss": %s}}\n' 1 1.3863 2 1.2 3 1.05 > "$d/ref.jsonl"
  printf '{"epoch": %d, "train": {"loss": %s}}\n' 1 1.3864 2 1.2001 3 1.0502 > "$d/near.jsonl"
  printf '{"epoch": %d, "train": {"loss": %s}}\n' 1 1.3863 2 1.25 3 null > "$d/far.jsonl"
  GC_DIR=$d compare_losses "$d/ref.jsonl" "$d/near.jsonl" 3 1e-3 > /dev/null ||
    { echo "self-test FAILED: compare_losses rejects a 2e-4 difference under a 1e-3 bound"; ok=0; }
  GC_DIR=$d compare_losses "$d/ref.jsonl" "$d/far.jsonl" 2 1e-3 > /dev/null &&
    { echo "self-test FAILED: compare_losses accepts a 4e-2 difference under a 1e-3 bound"; ok=0; }
  GC_DIR=$d compare_losses "$d/ref.jsonl" "$d/far.jsonl" 3 1 > /dev/null &&
    { echo "self-test FAILED: compare_losses accepts a NaN loss"; ok=0; }
  GC_DIR=$d compare_losses "$d/ref.jsonl" "$d/near.jsonl" 4 1e-3 > /dev/null &&
    { echo "self-test FAILED: compare_losses accepts too few steps"; ok=0; }
  write_report
  local s
  for s in "${STAGES[@]}" timeout-probe; do
    grep -q "^| $s | ${STATUS[$s]} |" "$OUT/report.md" ||
      { echo "self-test FAILED: report.md has no row for $s with status ${STATUS[$s]}"; ok=0; }
  done
  [ $ok = 1 ] && echo "dry run self-tests: stage timeout, loss comparison, report: OK"
  [ $ok = 1 ]
}

main() {
  OUT='' DRY=0 SKIP_BUILD=0 BUILD=build-gpu
  while [ $# -gt 0 ]; do
    case $1 in
      --dry-run) DRY=1 ;;
      --skip-build) SKIP_BUILD=1 ;;
      --build-dir)
        [ $# -ge 2 ] || { echo "gpu_check.sh: --build-dir needs a folder" >&2; exit 2; }
        BUILD=$2
        shift ;;
      -h | --help) usage; exit 0 ;;
      -*) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
      *)
        [ -z "$OUT" ] || { echo "gpu_check.sh: one OUTDIR only ($OUT, $1)" >&2; exit 2; }
        OUT=$1 ;;
    esac
    shift
  done
  [ -n "$OUT" ] || { usage >&2; exit 2; }
  mkdir -p "$OUT" || exit 2
  OUT=$(cd "$OUT" && pwd)
  [ "$OUT" != "$ROOT" ] || { echo "gpu_check.sh: OUTDIR must not be the project root (its stage folders would mix with the sources)" >&2; exit 2; }
  case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
  cd "$ROOT" || exit 2
  START=$SECONDS
  BUDGET=${GPU_CHECK_BUDGET:-600}
  EXTRA_STAGES=()
  STAGE_PID=
  if command -v nvidia-smi > /dev/null; then
    GPU_INFO=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1)
  else
    GPU_INFO="none visible (no nvidia-smi)"
  fi
  export GC_DRY=$DRY GC_BUILD=$BUILD PYTHON
  trap on_exit EXIT
  trap 'exit 130' INT TERM
  echo "tools/gpu_check.sh: $([ "$DRY" = 1 ] && echo 'dry run, ')report in $OUT/report.md, budget $BUDGET s; GPU: $GPU_INFO"

  local cap_build=${GPU_CHECK_LIMIT_BUILD:-240} cap_tests=${GPU_CHECK_LIMIT_TESTS:-150}
  local cap_train=${GPU_CHECK_LIMIT_TRAIN:-90} cap_bench=$BUDGET
  if [ "$DRY" = 1 ]; then  # nothing runs: short limits, so that a hanging check shows up quickly
    cap_build=60 cap_tests=60 cap_train=60 cap_bench=60
  fi
  if [ "$SKIP_BUILD" = 1 ]; then
    skip_stage build "--skip-build: using the binaries in $BUILD"
  else
    run_stage build "$cap_build"
  fi
  if [ "$DRY" = 0 ] && { [ "${STATUS[build]}" = FAIL ] || [ "${STATUS[build]}" = TIMEOUT ]; }; then
    for s in tests train bench; do skip_stage "$s" "the build did not finish"; done
  else
    run_stage tests "$cap_tests"
    run_stage train "$cap_train"
    run_stage bench "$cap_bench"
  fi
  local rc=0 s
  for s in "${STAGES[@]}"; do
    case ${STATUS[$s]} in
      PASS) ;;
      SKIPPED) [ "$s" = build ] && [ "$SKIP_BUILD" = 1 ] || rc=1 ;;
      *) rc=1 ;;
    esac
  done
  if [ "$DRY" = 1 ]; then
    dry_run_selftests || rc=1
  fi
  echo "total $((SECONDS - START)) s; stages: $(for s in "${STAGES[@]}" "${EXTRA_STAGES[@]}"; do printf '%s %s  ' "$s" "${STATUS[$s]}"; done)"
  exit $rc
}

# Child process entry points: a stage (under `timeout`), and one test (from xargs in stage_tests).
stage_main() {
  local name=$1
  : "${GC_DIR:?}"
  mkdir -p "$GC_DIR"
  cd "$ROOT" || exit 2
  case $name in
    build) stage_build ;;
    tests) stage_tests ;;
    train) stage_train ;;
    bench) stage_bench ;;
    timeout-probe) echo "sleeping 30 s (the limit must stop this)"; sleep 30 ;;
    *) echo "unknown stage $name" >&2; exit 2 ;;
  esac
}

# After a stage's timeout: its summary of what it finished, where it has one.
summarize_main() {
  cd "$ROOT" || exit 2
  case $1 in
    build) summarize_build ;;
    tests) [ -f "$GC_DIR/tests.list" ] && summarize_tests ;;
    train) [ -f "$GC_DIR/variants" ] && summarize_train ;;
    bench) summarize_bench ;;
  esac
}

case ${1:-} in
  __stage) shift; stage_main "$@" ;;
  __one_test) shift; one_test "$@" ;;
  __summarize) shift; summarize_main "$@" ;;
  *) main "$@" ;;
esac
