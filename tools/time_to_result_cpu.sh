#!/usr/bin/env bash
# Time to result on the CPU (issue #9 item 6): tlengine against the PyTorch tutorial recipe in the same run, on
# the same data, the same start weights, the same threads and loader workers. Jobs (JOBS, in this order):
#   fe       feature extraction, resnet18 at SIZE px, EPOCHS_FE (25) epochs, batch BATCH_FE (32): only the new head
#            trains. tlengine: `train --freeze backbone --freeze-bn --no-augment` (its feature cache then runs the
#            frozen backbone once per image). PyTorch: tools/pytorch_recipe.py --feature-extract (the tutorial's
#            "ConvNet as fixed feature extractor": requires_grad=False except the new fc, SGD on fc only,
#            model.train()) --no-augment.
#            Same settings: with --no-augment tlengine trains on its val transform, Resize(SIZE*256/224) +
#            CenterCrop(SIZE) (train/trainer.cpp, val_compose with --val-transform crop), so PyTorch gets the same
#            deterministic transform (pytorch_recipe.py --no-augment) instead of the tutorial's
#            RandomResizedCrop + flip.
#            Batch norm: tlengine --freeze-bn keeps the frozen backbone's batch norm in eval mode (running
#            statistics), while the tutorial leaves model.train() (batch statistics in the frozen backbone, running
#            statistics updated). By default (PT_FROZEN_BN=eval) PyTorch also keeps the frozen batch norm in eval
#            mode (pytorch_recipe.py --freeze-bn), so both compute the same thing; PT_FROZEN_BN=train runs the
#            tutorial as written. The result JSON records which.
#   full     full fine-tune, the tutorial's settings: resnet18 at SIZE px, EPOCHS_FULL (5) epochs, batch BATCH_FULL
#            (4), SGD lr 1e-3 momentum 0.9, StepLR(7, 0.1), RandomResizedCrop + flip; val Resize + CenterCrop.
#   loader   the data pipeline alone over DATA/train: decode + RandomResizedCrop(SIZE) + flip + normalise,
#            images/s, LOADER_EPOCHS (3) epochs, batch LOADER_BATCH (32), WORKERS workers. PyTorch:
#            tools/bench_loader.py (torchvision ImageFolder + DataLoader). tlengine: `tlengine bench-loader` when the
#            binary has it (same options, --cache-images off, --json); it does not exist yet, so its half is
#            recorded as null with a note.
#   example  `tlengine example --device cpu` wall time against the 60 s target (time only; EXAMPLE_ARGS).
# Data: `tlengine make-data --classes 2 --train-per-class 125 --val-per-class 75 --width 500 --height 375`
# (hymenoptera size), made once, used by every job. Start weights: WEIGHTS_PTH (a torchvision resnet18 state
# dict) for both sides, tlengine reading the .pth directly; default: both from random initialisation (not the
# same random weights then; the speed does not depend on them). The new head is randomly initialised on each side.
# Threads: THREADS (default: nproc) for both: OMP_NUM_THREADS=THREADS in both processes' environment (tlengine's
# thread pool, core/parallel.h, takes it) and --threads THREADS for PyTorch (torch.set_num_threads: PyTorch 1.13
# defaults to 1 thread on a 2-core machine). WORKERS (4, the tutorial's) loader workers on both sides (tlengine:
# decoding threads; PyTorch: DataLoader worker processes). tlengine keeps its default --cache-images auto
# (each file decoded once); PyTorch has no such cache (the tutorial decodes every epoch): part of what is measured.
# Times: from launching the process to its final checkpoint (tlengine: mtime of <out>/last.ckpt; PyTorch:
# <out>/last.pth) and the total wall time (tlengine then writes a report on the best weights). Ratio = PyTorch
# time / tlengine time (above 1: tlengine is faster).
# Result: one JSON, bench/time_to_result_cpu-<date>.json (or RESULT), with machine facts (lscpu model name,
# cores, threads, load average before and after), torch version, date and the exact command; a markdown row per
# job is printed (and written next to the JSON as .md). Logs: OUT/<job>-<engine>.log.
#
# Settings (environment): TLENGINE (build/tlengine), PYTHON (python3 with PyTorch; /usr/bin/python3 on the
# development machine), THREADS (nproc), WORKERS (4), SIZE (224), EPOCHS_FE (25), BATCH_FE (32), EPOCHS_FULL (5),
# BATCH_FULL (4), EPOCHS (sets both epoch counts, for quick checks), PT_FROZEN_BN (eval | train), LOADER_EPOCHS (3),
# LOADER_BATCH (32), JOBS ("fe full loader example"), EXAMPLE_ARGS (none), WEIGHTS_PTH, DATA (bench/ttr-cpu-data),
# OUT (bench/ttr-cpu-runs), TRAIN_PER_CLASS (125), VAL_PER_CLASS (75), RESULT.
#   The real measurement (quiet machine, from the repository root, after building):
#     PYTHON=/usr/bin/python3 WEIGHTS_PTH=resnet18-f37072fd.pth tools/time_to_result_cpu.sh
#   A quick check (a few minutes on 2 cores):
#     SIZE=64 TRAIN_PER_CLASS=4 VAL_PER_CLASS=2 EPOCHS=1 LOADER_EPOCHS=1 EXAMPLE_ARGS="--image-size 32
#     --pretrain-epochs 1 --finetune-epochs 1" DATA=/tmp/d OUT=/tmp/r RESULT=/tmp/ttr.json PYTHON=/usr/bin/python3
#     tools/time_to_result_cpu.sh
set -eu -o pipefail
cd "$(dirname "$0")/.."
COMMAND_LINE="$0 $*"

TLENGINE=${TLENGINE:-build/tlengine}
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-$(nproc)}
WORKERS=${WORKERS:-4}
SIZE=${SIZE:-224}
EPOCHS_FE=${EPOCHS_FE:-${EPOCHS:-25}}
BATCH_FE=${BATCH_FE:-32}
EPOCHS_FULL=${EPOCHS_FULL:-${EPOCHS:-5}}
BATCH_FULL=${BATCH_FULL:-4}
PT_FROZEN_BN=${PT_FROZEN_BN:-eval}
LOADER_EPOCHS=${LOADER_EPOCHS:-3}
LOADER_BATCH=${LOADER_BATCH:-32}
JOBS=${JOBS:-"fe full loader example"}
EXAMPLE_ARGS=${EXAMPLE_ARGS:-}
WEIGHTS_PTH=${WEIGHTS_PTH:-}
DATA=${DATA:-bench/ttr-cpu-data}
OUT=${OUT:-bench/ttr-cpu-runs}
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-125}
VAL_PER_CLASS=${VAL_PER_CLASS:-75}
DATE=$(date +%Y-%m-%d)
RESULT=${RESULT:-bench/time_to_result_cpu-$DATE.json}
export OMP_NUM_THREADS=$THREADS

case "$PT_FROZEN_BN" in eval | train) ;; *) echo "PT_FROZEN_BN must be eval or train" >&2; exit 2 ;; esac
[ -x "$TLENGINE" ] || { echo "time_to_result_cpu.sh: no $TLENGINE (build first, or set TLENGINE)" >&2; exit 1; }
"$PYTHON" -c 'import torch, torchvision' 2>/dev/null ||
  { echo "time_to_result_cpu.sh: $PYTHON has no torch/torchvision (set PYTHON, e.g. /usr/bin/python3)" >&2; exit 1; }

# The exact command, with every setting, for the record.
settings=""
for v in TLENGINE PYTHON THREADS WORKERS SIZE EPOCHS_FE BATCH_FE EPOCHS_FULL BATCH_FULL PT_FROZEN_BN LOADER_EPOCHS \
         LOADER_BATCH JOBS EXAMPLE_ARGS WEIGHTS_PTH DATA OUT TRAIN_PER_CLASS VAL_PER_CLASS RESULT; do
  settings+="$v=$(printf '%q' "${!v}") "
done
COMMAND_LINE="$settings$COMMAND_LINE"

now() { date +%s.%N; }
mtime() { python3 -c 'import os, sys; print(os.path.getmtime(sys.argv[1]))' "$1"; }
elapsed() { python3 -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))' "$1" "$2"; }
quote() { printf '%q ' "$@"; }

rm -rf "$DATA" "$OUT"
mkdir -p "$OUT" "$(dirname "$RESULT")"
LOAD_BEFORE=$(cut -d ' ' -f 1-3 /proc/loadavg)
"$TLENGINE" make-data --out "$DATA" --classes 2 --train-per-class "$TRAIN_PER_CLASS" \
  --val-per-class "$VAL_PER_CLASS" --width 500 --height 375

tl_weights=()
pt_weights=()
if [ -n "$WEIGHTS_PTH" ]; then
  tl_weights=(--weights "$WEIGHTS_PTH")
  pt_weights=(--weights "$WEIGHTS_PTH")
fi

# timed JOB ENGINE CKPT COMMAND...: runs COMMAND (output to OUT/JOB-ENGINE.log, the command line to stderr) and
# prints "seconds-to-OUT/JOB-ENGINE/CKPT total-seconds".
timed() {
  local job=$1 engine=$2 ckpt=$3 t0 t1
  shift 3
  echo "== $job: $engine: $(quote "$@")" >&2
  t0=$(now)
  "$@" > "$OUT/$job-$engine.log" 2>&1 || { tail -n 20 "$OUT/$job-$engine.log" >&2; return 1; }
  t1=$(now)
  echo "$(elapsed "$t0" "$(mtime "$OUT/$job-$engine/$ckpt")") $(elapsed "$t0" "$t1")"
}

# pair JOB "TLENGINE ARGS..." -- "PYTORCH ARGS...": runs both, one after the other, writes OUT/JOB.json.
pair() {
  local job=$1 tl=() pt=() seen=0 t0 t1
  shift
  for x in "$@"; do
    if [ "$x" = -- ]; then seen=1; elif [ $seen = 0 ]; then tl+=("$x"); else pt+=("$x"); fi
  done
  local tl_cmd=("$TLENGINE" train --data "$DATA" --arch resnet18 "${tl_weights[@]}" --image-size "$SIZE"
                --workers "$WORKERS" --device cpu --out "$OUT/$job-tlengine" "${tl[@]}")
  local pt_cmd=("$PYTHON" tools/pytorch_recipe.py --data "$DATA" --arch resnet18 "${pt_weights[@]}"
                --image-size "$SIZE" --workers "$WORKERS" --device cpu --threads "$THREADS"
                --out "$OUT/$job-pytorch" "${pt[@]}")
  local tl_ckpt tl_total pt_ckpt pt_total
  read -r tl_ckpt tl_total < <(timed "$job" tlengine last.ckpt "${tl_cmd[@]}") || return 1
  grep -E '^(feature cache|best val accuracy)' "$OUT/$job-tlengine.log" || true
  read -r pt_ckpt pt_total < <(timed "$job" pytorch last.pth "${pt_cmd[@]}") || return 1
  tail -n 1 "$OUT/$job-pytorch.log"
  python3 - "$OUT" "$job" "$tl_ckpt" "$tl_total" "$pt_ckpt" "$pt_total" "$(quote "${tl_cmd[@]}")" \
    "$(quote "${pt_cmd[@]}")" <<'EOF'
import json, sys
out, job, tl_ckpt, tl_total, pt_ckpt, pt_total, tl_cmd, pt_cmd = sys.argv[1:]
with open(f"{out}/{job}-tlengine/metrics.jsonl") as f:
    epochs = [json.loads(line) for line in f if line.strip()]
with open(f"{out}/{job}-tlengine.log", errors="replace") as f:
    cache = [line.strip() for line in f if line.startswith("feature cache:")]
with open(f"{out}/{job}-pytorch/summary.json") as f:
    pt = json.load(f)
r = {"tlengine": {"command": tl_cmd.strip(), "start_to_final_checkpoint_s": float(tl_ckpt),
                  "total_s": float(tl_total), "best_val_acc": max(e["val"]["top1"] for e in epochs),
                  "epochs_run": len(epochs), "feature_cache": cache[0] if cache else None},
     "pytorch": {"command": pt_cmd.strip(), "start_to_final_checkpoint_s": float(pt_ckpt), "total_s": float(pt_total),
                 **{k: pt[k] for k in ["best_val_acc", "best_epoch", "threads", "frozen_bn", "no_augment",
                                       "feature_extract", "trainable_params"]}}}
r["ratio_pytorch_over_tlengine"] = {
    "start_to_final_checkpoint": round(r["pytorch"]["start_to_final_checkpoint_s"]
                                       / r["tlengine"]["start_to_final_checkpoint_s"], 3),
    "total": round(r["pytorch"]["total_s"] / r["tlengine"]["total_s"], 3)}
with open(f"{out}/{job}.json", "w") as f:
    json.dump(r, f, indent=2)
EOF
}

for job in $JOBS; do
  case "$job" in
    fe)
      pt_bn=()
      [ "$PT_FROZEN_BN" = eval ] && pt_bn=(--freeze-bn)
      pair fe --epochs "$EPOCHS_FE" --batch-size "$BATCH_FE" --freeze backbone --freeze-bn --no-augment -- \
        --epochs "$EPOCHS_FE" --batch-size "$BATCH_FE" --feature-extract --no-augment "${pt_bn[@]}"
      ;;
    full)
      pair full --epochs "$EPOCHS_FULL" --batch-size "$BATCH_FULL" -- --epochs "$EPOCHS_FULL" --batch-size "$BATCH_FULL"
      ;;
    loader)
      lcommon=(--data "$DATA" --image-size "$SIZE" --batch-size "$LOADER_BATCH" --workers "$WORKERS"
               --epochs "$LOADER_EPOCHS")
      pt_cmd=("$PYTHON" tools/bench_loader.py "${lcommon[@]}" --threads "$THREADS" --json "$OUT/loader-pytorch.json")
      echo "== loader: pytorch: $(quote "${pt_cmd[@]}")"
      "${pt_cmd[@]}" 2>&1 | tee "$OUT/loader-pytorch.log"
      tl_cmd=("$TLENGINE" bench-loader "${lcommon[@]}" --cache-images off --json "$OUT/loader-tlengine.json")
      if "$TLENGINE" --help 2>/dev/null | grep -qE '^ +bench-loader( |$)'; then
        echo "== loader: tlengine: $(quote "${tl_cmd[@]}")"
        "${tl_cmd[@]}" 2>&1 | tee "$OUT/loader-tlengine.log"
      else
        echo "== loader: tlengine: no 'tlengine bench-loader' in $TLENGINE: its half is left out"
      fi
      python3 - "$OUT" "$(quote "${tl_cmd[@]}")" "$(quote "${pt_cmd[@]}")" <<'EOF'
import json, os, sys
out, tl_cmd, pt_cmd = sys.argv[1:]
with open(f"{out}/loader-pytorch.json") as f:
    pt = json.load(f)
pt["command"] = pt_cmd.strip()
tl = None
if os.path.exists(f"{out}/loader-tlengine.json"):
    with open(f"{out}/loader-tlengine.json") as f:
        tl = json.load(f)
    tl["command"] = tl_cmd.strip()
r = {"pytorch": pt, "tlengine": tl,
     "ratio_tlengine_over_pytorch_images_per_s": round(tl["images_per_s"] / pt["images_per_s"], 3) if tl else None}
if tl is None:
    r["note"] = ("tlengine has no loader-alone entry point yet (wanted: `tlengine bench-loader` with these options, "
                 "io::DataLoader over the train split with io::train_transform(size), writing images_per_s)")
with open(f"{out}/loader.json", "w") as f:
    json.dump(r, f, indent=2)
EOF
      ;;
    example)
      # shellcheck disable=SC2206
      ex_cmd=("$TLENGINE" example --device cpu --out "$OUT/example" $EXAMPLE_ARGS)
      echo "== example: $(quote "${ex_cmd[@]}")"
      t0=$(now)
      "${ex_cmd[@]}" > "$OUT/example.log" 2>&1 || { tail -n 20 "$OUT/example.log" >&2; exit 1; }
      t1=$(now)
      tail -n 4 "$OUT/example.log"
      python3 - "$OUT" "$(elapsed "$t0" "$t1")" "$(quote "${ex_cmd[@]}")" <<'EOF'
import json, sys
out, wall, cmd = sys.argv[1:]
with open(f"{out}/example.json", "w") as f:
    json.dump({"command": cmd.strip(), "wall_s": float(wall), "target_s": 60, "within_target": float(wall) <= 60},
              f, indent=2)
EOF
      ;;
    *) echo "time_to_result_cpu.sh: unknown job '$job' (fe, full, loader, example)" >&2; exit 2 ;;
  esac
done
LOAD_AFTER=$(cut -d ' ' -f 1-3 /proc/loadavg)

export THREADS WORKERS SIZE EPOCHS_FE BATCH_FE EPOCHS_FULL BATCH_FULL PT_FROZEN_BN LOADER_EPOCHS LOADER_BATCH \
  TRAIN_PER_CLASS VAL_PER_CLASS WEIGHTS_PTH
python3 - "$OUT" "$RESULT" "$JOBS" "$COMMAND_LINE" "$LOAD_BEFORE" "$LOAD_AFTER" "$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  "$("$PYTHON" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)')" <<'EOF'
import datetime, json, os, subprocess, sys
out, path, jobs, command, load_before, load_after, commit, versions = sys.argv[1:]
torch_v, tv_v = versions.split()
lscpu = {}
for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
    k, _, v = line.partition(":")
    lscpu[k.strip()] = v.strip()
def num(key):
    try:
        return int(lscpu[key])
    except (KeyError, ValueError):
        return None
cores = (num("Core(s) per socket") or 0) * (num("Socket(s)") or 1) or None
env = os.environ
settings = {k.lower(): int(env[k]) for k in ["THREADS", "WORKERS", "EPOCHS_FE", "BATCH_FE", "EPOCHS_FULL", "BATCH_FULL",
                                             "LOADER_EPOCHS", "LOADER_BATCH", "TRAIN_PER_CLASS", "VAL_PER_CLASS"]}
settings.update(image_size=int(env["SIZE"]), pytorch_frozen_bn=env["PT_FROZEN_BN"],
                pretrained=bool(env["WEIGHTS_PTH"]), weights_pth=env["WEIGHTS_PTH"] or None)
result = {
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "command": command,
    "repo_commit": commit,
    "machine": {"cpu_model": lscpu.get("Model name"), "cores": cores, "threads": num("CPU(s)"),
                "threads_per_core": num("Thread(s) per core"), "nproc": os.cpu_count(),
                "load_average_before": load_before, "load_average_after": load_after},
    "torch": torch_v, "torchvision": tv_v,
    "threads": {"both": settings["threads"], "how": "OMP_NUM_THREADS for both processes; torch.set_num_threads "
                "(pytorch_recipe.py / bench_loader.py --threads) for PyTorch"},
    "data": f"tlengine make-data: 2 classes, {settings['train_per_class'] * 2} train / "
            f"{settings['val_per_class'] * 2} val synthetic 500x375 JPEGs",
    "settings": settings,
    "jobs": {},
}
desc = {
    "fe": f"feature extraction: resnet18 at {settings['image_size']} px, {settings['epochs_fe']} epochs, batch "
          f"{settings['batch_fe']}, only the new head trains, deterministic train transform (Resize + CenterCrop, "
          "tlengine --no-augment / pytorch_recipe.py --no-augment)",
    "full": f"full fine-tune: resnet18 at {settings['image_size']} px, {settings['epochs_full']} epochs, batch "
            f"{settings['batch_full']}, the tutorial's settings (RandomResizedCrop + flip, SGD 1e-3 m 0.9, StepLR(7, 0.1))",
    "loader": f"data pipeline alone over the train folder: decode + RandomResizedCrop({settings['image_size']}) + "
              f"flip + normalise, {settings['loader_epochs']} epochs, batch {settings['loader_batch']}",
    "example": "tlengine example --device cpu, wall time against the 60 s target",
}
for job in jobs.split():
    with open(f"{out}/{job}.json") as f:
        result["jobs"][job] = {"description": desc[job], **json.load(f)}
if "fe" in result["jobs"]:
    result["jobs"]["fe"]["batch_norm_note"] = (
        "tlengine --freeze-bn keeps the frozen backbone's batch norm in eval mode (running statistics); the tutorial "
        "leaves model.train() (batch statistics, running statistics updated). PyTorch here: "
        + ("--freeze-bn, frozen batch norm in eval mode too: both compute the same thing"
           if settings["pytorch_frozen_bn"] == "eval" else "the tutorial's model.train(): not the same computation"))
with open(path, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

rows = []
if "fe" in result["jobs"] or "full" in result["jobs"]:
    rows += ["| job | epochs | batch | threads | workers | tlengine to ckpt s | tlengine total s | tlengine best val "
             "| PyTorch to ckpt s | PyTorch total s | PyTorch best val | PyTorch / tlengine (to ckpt) |",
             "|" + "---|" * 12]
for job in ("fe", "full"):
    j = result["jobs"].get(job)
    if j:
        tl, pt = j["tlengine"], j["pytorch"]
        rows.append(f"| {job} resnet18 {settings['image_size']} px | {settings['epochs_' + job]} | "
                    f"{settings['batch_' + job]} | {settings['threads']} | {settings['workers']} | "
                    f"{tl['start_to_final_checkpoint_s']:.1f} | {tl['total_s']:.1f} | {tl['best_val_acc']:.4f} | "
                    f"{pt['start_to_final_checkpoint_s']:.1f} | {pt['total_s']:.1f} | {pt['best_val_acc']:.4f} | "
                    f"{j['ratio_pytorch_over_tlengine']['start_to_final_checkpoint']:.2f}x |")
j = result["jobs"].get("loader")
if j:
    tl = j["tlengine"]
    rows += ["", "| loader | images | epochs | workers | tlengine img/s | PyTorch DataLoader img/s | tlengine / PyTorch |",
             "|" + "---|" * 7,
             f"| decode + RandomResizedCrop({settings['image_size']}) + flip + normalise | {j['pytorch']['images']} | "
             f"{settings['loader_epochs']} | {settings['workers']} | "
             + (f"{tl['images_per_s']:.1f}" if tl else "– (no entry point)") + f" | {j['pytorch']['images_per_s']:.1f} | "
             + (f"{j['ratio_tlengine_over_pytorch_images_per_s']:.2f}x" if tl else "–") + " |"]
j = result["jobs"].get("example")
if j:
    rows += ["", f"tlengine example (CPU): {j['wall_s']:.1f} s wall (target 60 s: "
             + ("met" if j["within_target"] else "missed") + ")"]
m = result["machine"]
rows += ["", f"{m['cpu_model']}, {m['cores']} cores / {m['threads']} threads, torch {torch_v}, "
         f"{settings['threads']} threads each side, load average before {load_before}, after {load_after}; "
         f"{result['date']}"]
table = "\n".join(rows) + "\n"
with open(os.path.splitext(path)[0] + ".md", "w") as f:
    f.write(table)
print(table)
print("wrote", path, "and", os.path.splitext(path)[0] + ".md")
EOF
