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
#   OUT (bench), DATE (today). E.g. a quick CPU check:
#   DEVICE=cpu MODELS=resnet18 PRECISIONS=fp32 BATCH=2 SIZE=32 WARMUP=1 STEPS=2 COMPILE=0 tools/bench_all.sh
set -u -o pipefail
cd "$(dirname "$0")/.."

TLENGINE=${TLENGINE:-build/tlengine}
PYTHON=${PYTHON:-python3}
MODELS=${MODELS:-"resnet18 resnet50 densenet121 densenet169"}
MODES=${MODES:-"full last_block head"}
PRECISIONS=${PRECISIONS:-"fp32 bf16"}
BATCH=${BATCH:-64}
SIZE=${SIZE:-224}
WARMUP=${WARMUP:-10}
STEPS=${STEPS:-30}
DEVICE=${DEVICE:-cuda}
COMPILE=${COMPILE:-1}
OUT=${OUT:-bench}
DATE=${DATE:-$(date +%Y-%m-%d)}

RAW="$OUT/raw-$DATE"
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
      run "eager-$cfg" "$PYTHON" tools/bench_pytorch.py "${common[@]}" --count-flops --json "$RAW/eager-$cfg.json"
      if [ "$COMPILE" = 1 ]; then
        run "compile-$cfg" "$PYTHON" tools/bench_pytorch.py "${common[@]}" --compile --json "$RAW/compile-$cfg.json"
      fi
    done
  done
done

shopt -s nullglob
files=("$RAW"/*.json)
[ ${#files[@]} -gt 0 ] || { echo "bench_all.sh: no run succeeded" >&2; exit 1; }
python3 tools/bench_table.py --out "$OUT/results-$DATE.json" --markdown "$OUT/results-$DATE.md" \
  --title "Training-step benchmark $DATE: batch $BATCH, ${SIZE}x$SIZE, $DEVICE" "${files[@]}"
echo "wrote $OUT/results-$DATE.json and $OUT/results-$DATE.md ($failed failed runs)"
[ "$failed" = 0 ]
