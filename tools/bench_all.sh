#!/usr/bin/env bash
# The full benchmark of ../shared/ANCHORS.md: 4 models x 3 modes x 2 precisions, batch 64, 224x224, each run
# by `tlengine bench`, PyTorch eager and PyTorch torch.compile(mode="reduce-overhead") (tools/bench_pytorch.py),
# one process per run. Writes the raw run files to bench/raw-<date>/, then bench/results-<date>.json and
# bench/results-<date>.md (side-by-side table, tools/bench_table.py). A failed run is reported and left out.
#
#   tools/bench_all.sh                         # on the GPU machine, from the repository root (takes a while:
#                                              # the compiled runs spend 11-260 s each compiling)
# Settings (environment): TLENGINE (build/tlengine), PYTHON (python3, with PyTorch >= 2 for --compile),
#   MODELS, MODES, PRECISIONS, BATCH (64), SIZE (224), WARMUP (10), STEPS (30), DEVICE (cuda), COMPILE (1),
#   OUT (bench), DATE (today), THREADS (CPU mode). E.g. a quick CPU check:
#   DEVICE=cpu MODELS=resnet18 BATCH=2 SIZE=32 WARMUP=1 STEPS=2 PYTHON=/usr/bin/python3 tools/bench_all.sh
#
# CPU mode (DEVICE=cpu): the defaults become MODELS="resnet18 resnet50 densenet121", MODES="full head",
#   PRECISIONS=fp32, BATCH=16, COMPILE=0 (PyTorch 1.13 has no torch.compile), and both sides use THREADS
#   threads (default: nproc): OMP_NUM_THREADS=THREADS for both processes (tlengine's thread pool,
#   core/parallel.h, takes it) and bench_pytorch.py --threads THREADS (torch.set_num_threads; PyTorch 1.13 may
#   otherwise use 1 thread). Raw files go to bench/raw-cpu-<date>/, results to bench/results-cpu-<date>.json/.md.
#   The full CPU run (2 cores, 3 models x 2 modes, 40 steps each side) takes roughly 15-25 minutes.
#     DEVICE=cpu PYTHON=/usr/bin/python3 tools/bench_all.sh
set -u -o pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then
  cpu_models="resnet18 resnet50 densenet121" cpu_modes="full head" cpu_prec=fp32 cpu_batch=16 cpu_compile=0
  THREADS=${THREADS:-$(nproc)}
  export OMP_NUM_THREADS=$THREADS
  threads_arg=(--threads "$THREADS")
  tag=cpu-
else
  threads_arg=()
  if [ -n "${THREADS:-}" ]; then export OMP_NUM_THREADS=$THREADS; threads_arg=(--threads "$THREADS"); fi
  tag=
fi
TLENGINE=${TLENGINE:-build/tlengine}
PYTHON=${PYTHON:-python3}
MODELS=${MODELS:-${cpu_models:-"resnet18 resnet50 densenet121 densenet169"}}
MODES=${MODES:-${cpu_modes:-"full last_block head"}}
PRECISIONS=${PRECISIONS:-${cpu_prec:-"fp32 bf16"}}
BATCH=${BATCH:-${cpu_batch:-64}}
SIZE=${SIZE:-224}
WARMUP=${WARMUP:-10}
STEPS=${STEPS:-30}
COMPILE=${COMPILE:-${cpu_compile:-1}}
OUT=${OUT:-bench}
DATE=${DATE:-$(date +%Y-%m-%d)}

RAW="$OUT/raw-$tag$DATE"
mkdir -p "$RAW"
[ -x "$TLENGINE" ] || { echo "bench_all.sh: no $TLENGINE (build first, or set TLENGINE)" >&2; exit 1; }

failed=0
run() {  # run NAME COMMAND...: the command's output goes to $RAW/NAME.log
  local name=$1
  shift
  if "$@" > "$RAW/$name.log" 2>&1; then
    echo "$name: $(tail -n 1 "$RAW/$name.log")"
  else
    echo "FAILED: $name (see $RAW/$name.log)" >&2
    tail -n 3 "$RAW/$name.log" >&2
    failed=$((failed + 1))
  fi
}

for model in $MODELS; do
  for mode in $MODES; do
    for prec in $PRECISIONS; do
      cfg="$model-$mode-$prec"
      common=(--model "$model" --mode "$mode" --precision "$prec" --batch "$BATCH" --image-size "$SIZE"
              --warmup "$WARMUP" --steps "$STEPS" --device "$DEVICE")
      run "tlengine-$cfg" "$TLENGINE" bench "${common[@]}" --json "$RAW/tlengine-$cfg.json"
      run "eager-$cfg" "$PYTHON" tools/bench_pytorch.py "${common[@]}" "${threads_arg[@]}" --count-flops \
        --json "$RAW/eager-$cfg.json"
      if [ "$COMPILE" = 1 ]; then
        run "compile-$cfg" "$PYTHON" tools/bench_pytorch.py "${common[@]}" "${threads_arg[@]}" --compile \
          --json "$RAW/compile-$cfg.json"
      fi
    done
  done
done

shopt -s nullglob
files=("$RAW"/*.json)
[ ${#files[@]} -gt 0 ] || { echo "bench_all.sh: no run succeeded" >&2; exit 1; }
meta=()
title="Training-step benchmark $DATE: batch $BATCH, ${SIZE}x$SIZE, $DEVICE"
if [ -n "${OMP_NUM_THREADS:-}" ] && [ ${#threads_arg[@]} -gt 0 ]; then
  meta+=(--meta "threads=$OMP_NUM_THREADS" --meta "threading=OMP_NUM_THREADS for both, torch.set_num_threads for PyTorch")
  title+=", $OMP_NUM_THREADS threads"
fi
if [ "$DEVICE" = cpu ]; then
  meta+=(--meta "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores available")
fi
python3 tools/bench_table.py --out "$OUT/results-$tag$DATE.json" --markdown "$OUT/results-$tag$DATE.md" \
  --title "$title" "${meta[@]}" "${files[@]}"
echo "wrote $OUT/results-$tag$DATE.json and $OUT/results-$tag$DATE.md ($failed failed runs)"
[ "$failed" = 0 ]
