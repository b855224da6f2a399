#!/usr/bin/env bash
# Time to result: the tutorial-sized fine-tuning job (../shared/MISSION.md: ants vs bees, ~250 train / 150 val
# images) end to end, tlengine against the PyTorch tutorial recipe, on the same data and settings.
#  1. `tlengine make-data` writes 2 classes of synthetic 500x375 JPEGs: 125 train + 75 val per class;
#  2. `tlengine train --arch resnet18 --epochs 25` (full fine-tune, the tutorial's settings: batch 4, 4 loader
#     workers, SGD lr 1e-3 momentum 0.9, StepLR(7, 0.1), RandomResizedCrop(224) + flip; val Resize(256) +
#     CenterCrop(224));
#  3. tools/pytorch_recipe.py, the tutorial's code, with the same settings.
# The time of each is from launching the process to the final checkpoint being written (tlengine:
# <out>/last.ckpt after the last epoch; PyTorch: <out>/last.pth), read from the file's modification time;
# the total wall time (tlengine adds a final report on the best weights after that) is reported too.
# Result: bench/time_to_result-<date>.json (or RESULT). On the CPU, tools/time_to_result_cpu.sh runs the
# feature-extraction and full fine-tuning jobs with the same thread count on both sides.
#
# Settings (environment): TLENGINE (build/tlengine), PYTHON (python3 with PyTorch), DEVICE (cuda), EPOCHS (25),
#   BATCH (4), WORKERS (4), DATA (bench/ttr-data), OUT (bench/ttr-runs), WEIGHTS_PTH (torchvision resnet18 .pth:
#   both start from it, tlengine through build/tools/convert_pth; default: both from random initialisation),
#   SIZE (224; smaller for a quick CPU check), TRAIN_PER_CLASS (125), VAL_PER_CLASS (75), RESULT. A quick CPU check:
#   DEVICE=cpu EPOCHS=1 SIZE=32 TRAIN_PER_CLASS=4 VAL_PER_CLASS=2 WORKERS=1 DATA=/tmp/d OUT=/tmp/r \
#   RESULT=/tmp/ttr.json PYTHON=/usr/bin/python3 tools/time_to_result.sh
set -eu -o pipefail
cd "$(dirname "$0")/.."

TLENGINE=${TLENGINE:-build/tlengine}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-25}
BATCH=${BATCH:-4}
WORKERS=${WORKERS:-4}
SIZE=${SIZE:-224}
DATA=${DATA:-bench/ttr-data}
OUT=${OUT:-bench/ttr-runs}
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-125}
VAL_PER_CLASS=${VAL_PER_CLASS:-75}
RESULT=${RESULT:-bench/time_to_result-$(date +%Y-%m-%d).json}

now() { date +%s.%N; }
mtime() { python3 -c 'import os, sys; print(os.path.getmtime(sys.argv[1]))' "$1"; }
elapsed() { python3 -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))' "$1" "$2"; }

rm -rf "$DATA" "$OUT"
"$TLENGINE" make-data --out "$DATA" --classes 2 --train-per-class "$TRAIN_PER_CLASS" \
  --val-per-class "$VAL_PER_CLASS" --width 500 --height 375

tl_weights=()
pt_weights=()
if [ -n "${WEIGHTS_PTH:-}" ]; then
  mkdir -p "$OUT"
  build/tools/convert_pth "$WEIGHTS_PTH" "$OUT/resnet18.bin" --arch resnet18
  tl_weights=(--weights "$OUT/resnet18.bin")
  pt_weights=(--weights "$WEIGHTS_PTH")
fi

t0=$(now)
"$TLENGINE" train --data "$DATA" --arch resnet18 "${tl_weights[@]}" --epochs "$EPOCHS" --batch-size "$BATCH" \
  --workers "$WORKERS" --image-size "$SIZE" --device "$DEVICE" --out "$OUT/tlengine" 2>&1 | tail -n 20
t1=$(now)
tl_ckpt=$(elapsed "$t0" "$(mtime "$OUT/tlengine/last.ckpt")")
tl_total=$(elapsed "$t0" "$t1")

t0=$(now)
"$PYTHON" tools/pytorch_recipe.py --data "$DATA" --arch resnet18 "${pt_weights[@]}" --epochs "$EPOCHS" \
  --batch-size "$BATCH" --workers "$WORKERS" --image-size "$SIZE" --device "$DEVICE" --out "$OUT/pytorch" | tail -n 3
t1=$(now)
pt_ckpt=$(elapsed "$t0" "$(mtime "$OUT/pytorch/last.pth")")
pt_total=$(elapsed "$t0" "$t1")

mkdir -p "$(dirname "$RESULT")"
python3 - "$OUT" "$tl_ckpt" "$tl_total" "$pt_ckpt" "$pt_total" "$RESULT" \
  "$EPOCHS" "$BATCH" "$WORKERS" "$DEVICE" "${WEIGHTS_PTH:-}" "$TRAIN_PER_CLASS" "$VAL_PER_CLASS" "$SIZE" <<'EOF'
import json, sys
out, tl_ckpt, tl_total, pt_ckpt, pt_total, path, epochs, batch, workers, device, weights, ntrain, nval, size = sys.argv[1:]
with open(f"{out}/tlengine/metrics.jsonl") as f:
    tl_best = max(json.loads(line)["val"]["top1"] for line in f if line.strip())
with open(f"{out}/pytorch/summary.json") as f:
    pt = json.load(f)
result = {"job": f"resnet18 full fine-tune at {size}, 2 classes, {2 * int(ntrain)} train / {2 * int(nval)} val "
                 "500x375 JPEGs",
          "epochs": int(epochs), "batch_size": int(batch), "workers": int(workers), "device": device,
          "pretrained": bool(weights),
          "tlengine": {"start_to_final_checkpoint_s": float(tl_ckpt), "total_s": float(tl_total),
                       "best_val_acc": tl_best},
          "pytorch": {"start_to_final_checkpoint_s": float(pt_ckpt), "total_s": float(pt_total),
                      "best_val_acc": pt["best_val_acc"], "torch": pt["torch"]}}
result["speedup"] = result["pytorch"]["start_to_final_checkpoint_s"] / result["tlengine"]["start_to_final_checkpoint_s"]
with open(path, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
print(json.dumps(result, indent=2))
print("wrote", path)
EOF
