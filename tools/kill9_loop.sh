#!/usr/bin/env bash
# kill -9 loop: checkpoints survive a hard kill at any moment, and --resume then finishes with bit-identical weights.
#   1. `tlengine make-data` writes a tiny ImageFolder (3 classes of 4 + 2 JPEGs of 24x24);
#   2. a reference run trains resnet18 on it without interruption (CPU, --image-size 16);
#   3. the same run is started ITERATIONS times (default 50; first argument), each time with --resume once
#      <out>/last.ckpt exists, and killed with SIGKILL a random delay in [0, MAX_DELAY] seconds after it reports
#      its first training batch (default MAX_DELAY: 2.5 epochs of the reference run, so that the kills fall at any
#      point of an epoch, its val phase and its checkpoint writes, and many runs save an epoch or two first;
#      counting from the first batch keeps this independent of the start-up time, which varies on a busy machine).
#      A kill that
#      leaves <file>.tmp behind landed while a checkpoint was being written (counted). Every restart loads the last
#      checkpoint, so a torn checkpoint would make the next run fail (the loop stops with an error);
#   4. a last --resume runs to the end, and best.bin and last.ckpt are compared byte for byte with the reference
#      run's (cmp; on a difference, a per-tensor report by Python).
# Not part of the test suite (it takes minutes). Prints a summary and exits non-zero on any failure.
# Settings (environment): TLENGINE (build/tlengine), WORK (/tmp/tlengine-kill9), EPOCHS (80), MAX_DELAY
#   (seconds), SEED (random seed of the delays; default 1), PYTHON (/usr/bin/python3, only for the diff
#   report). Choose EPOCHS so that the runs do not finish before the last kill ("finished before the kill" = 0).
set -eu -o pipefail
cd "$(dirname "$0")/.."

ITERATIONS=${1:-50}
TLENGINE=${TLENGINE:-build/tlengine}
WORK=${WORK:-/tmp/tlengine-kill9}
EPOCHS=${EPOCHS:-80}
SEED=${SEED:-1}
PYTHON=${PYTHON:-/usr/bin/python3}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

[ -x "$TLENGINE" ] || { echo "kill9_loop: $TLENGINE not found; build tlengine_cli first" >&2; exit 2; }
rm -rf "$WORK"
mkdir -p "$WORK"
DATA=$WORK/data REF=$WORK/ref RUN=$WORK/run
"$TLENGINE" make-data --out "$DATA" --classes 3 --train-per-class 4 --val-per-class 2 --width 24 --height 24 \
  --seed 7 2>/dev/null
TRAIN=("$TLENGINE" train --data "$DATA" --arch resnet18 --image-size 16 --epochs "$EPOCHS" --batch-size 4
       --workers 1 --device cpu --lr 0.01 --schedule step --step-size 10 --seed 5)

seconds_since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }
start=$(date +%s%N)
"${TRAIN[@]}" --out "$REF" >"$WORK/ref.log" 2>&1 &
ref_pid=$!
while [ ! -f "$REF/last.ckpt" ] && kill -0 "$ref_pid" 2>/dev/null; do sleep 0.02; done
first_ckpt=$(seconds_since "$start")  # start-up + one epoch + its checkpoint
wait "$ref_pid" || { cat "$WORK/ref.log"; exit 1; }
ref_seconds=$(seconds_since "$start")
epoch_seconds=$(awk -v t="$ref_seconds" -v f="$first_ckpt" -v e="$EPOCHS" 'BEGIN { printf "%.2f", (t - f) / (e - 1) }')
MAX_DELAY=${MAX_DELAY:-$(awk -v p="$epoch_seconds" 'BEGIN { printf "%.2f", 2.5 * p }')}
echo "reference run: $EPOCHS epochs in $ref_seconds s, first checkpoint after $first_ckpt s, then" \
  "$epoch_seconds s per epoch; kills 0 to $MAX_DELAY s after the first batch"

RANDOM=$SEED
kills=0 mid_write=0 finished_early=0 resumes=0
for ((i = 1; i <= ITERATIONS; ++i)); do
  args=(--out "$RUN")
  if [ -f "$RUN/last.ckpt" ]; then args+=(--resume); resumes=$((resumes + 1)); fi
  delay=$(awk -v r="$RANDOM" -v b="$MAX_DELAY" 'BEGIN { printf "%.3f", r / 32767 * b }')
  touch "$WORK/started"
  "${TRAIN[@]}" "${args[@]}" >"$WORK/run.log" 2>&1 &
  pid=$!
  while ! grep -q '^train epoch' "$WORK/run.log" && kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
  sleep "$delay"
  kill -9 "$pid" 2>/dev/null || true
  rc=0
  wait "$pid" 2>/dev/null || rc=$?
  if [ "$rc" -eq 137 ]; then
    kills=$((kills + 1))
  elif [ "$rc" -eq 0 ]; then
    finished_early=$((finished_early + 1))  # the run was over before the kill: increase EPOCHS
  else
    echo "kill9_loop: iteration $i: the run failed (exit $rc) instead of resuming:" >&2
    cat "$WORK/run.log" >&2
    exit 1
  fi
  tmp=$( (find "$RUN" -name '*.tmp' -newer "$WORK/started" 2>/dev/null || true) | wc -l)  # left by this run
  [ "$tmp" -gt 0 ] && mid_write=$((mid_write + 1))
  epoch=$(grep -o 'resumed .* at epoch [0-9]*' "$WORK/run.log" | grep -o '[0-9]*$' || echo 1)
  printf 'iteration %2d: killed %s s after the first batch (started at epoch %s)%s\n' "$i" "$delay" "$epoch" \
    "$([ "$tmp" -gt 0 ] && echo ', mid-write (.tmp left)' || true)"
done

args=(--out "$RUN")
[ -f "$RUN/last.ckpt" ] && args+=(--resume)
"${TRAIN[@]}" "${args[@]}" >"$WORK/final.log" 2>&1 || { cat "$WORK/final.log"; exit 1; }

same=1
for f in best.bin last.ckpt; do
  if cmp -s "$REF/$f" "$RUN/$f"; then
    echo "$f: identical to the uninterrupted run"
  else
    same=0
    echo "$f: DIFFERS from the uninterrupted run"
    "$PYTHON" - "$REF/$f" "$RUN/$f" <<'EOF' || true
import json, struct, sys
def read(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n])
    return h, b[8 + n:]
(ha, da), (hb, db) = read(sys.argv[1]), read(sys.argv[2])
for k in sorted(set(ha) | set(hb)):
    if k == '__metadata__':
        for m in sorted(set(ha[k]) | set(hb[k])):
            if ha[k].get(m) != hb[k].get(m): print('  metadata', m, 'differs')
        continue
    if k not in ha or k not in hb: print('  only in one file:', k); continue
    a0, a1 = ha[k]['data_offsets']; b0, b1 = hb[k]['data_offsets']
    if da[a0:a1] != db[b0:b1]: print('  tensor', k, 'differs')
EOF
  fi
done
echo "summary: $ITERATIONS iterations, $kills killed with SIGKILL ($mid_write while a checkpoint was being written," \
  "$resumes restarts with --resume), $finished_early finished before the kill; final weights" \
  "$([ $same -eq 1 ] && echo 'bit-identical' || echo 'DIFFERENT')"
[ $same -eq 1 ]
