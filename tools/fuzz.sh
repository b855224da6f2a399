#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, CPU-only engine, ASan + UBSan) and runs each one for
# --seconds S (default 30, the CI setting). Exits non-zero when any target finds a crash, a sanitizer report, a
# leak or a timeout; the reproducer is left in <build>/fuzz/crashes/<target>/ and the command to rerun it printed.
#
#   tools/fuzz.sh [--seconds S] [--build DIR] [--targets "image npy ..."] [--jobs N]
#
# Seeds: tools/fuzz_corpus.py (images, safetensors, .npy) and checkpoint_seeds (checkpoints), regenerated each
# run; the corpus each target grows is kept in <build>/fuzz/corpus/<target> across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=30
build=build-asan
targets="image safetensors npy checkpoint pth"
jobs=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "tools/fuzz.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# The same configuration as tools/sanitize.sh (one instrumented build folder for both).
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DTL_CUDA=OFF \
  -DTL_SANITIZE=ON -DTL_FUZZ=ON "${launcher[@]}" >/dev/null
cmake --build "$build" -j"$jobs" --target fuzz_all

fz="$build/fuzz"
rm -rf "$fz/seeds"
/usr/bin/python3 tools/fuzz_corpus.py "$fz/seeds" >/dev/null
mkdir -p "$fz/seeds/checkpoint"
"$fz/checkpoint_seeds" "$fz/seeds/checkpoint"

# Largest input per target: a few times the largest seed (the readers' size checks are what matters).
# -timeout=30: one input may decode a 4-megapixel image under ASan (about 1 s); 10 s gave false timeouts on a
# loaded machine.
declare -A max_len=([image]=16384 [safetensors]=4096 [npy]=2048 [checkpoint]=16384 [pth]=8192)
declare -A seeds=([image]=image [safetensors]=safetensors [npy]=npy [checkpoint]=checkpoint [pth]=pth)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
for t in $targets; do
  [ -n "${max_len[$t]:-}" ] || { echo "tools/fuzz.sh: unknown target '$t'" >&2; exit 2; }
  mkdir -p "$fz/corpus/$t" "$fz/crashes/$t"
  echo "== fuzz_$t: ${seconds}s"
  if ! "$fz/fuzz_$t" "$fz/corpus/$t" "$fz/seeds/${seeds[$t]}" -max_total_time="$seconds" -max_len="${max_len[$t]}" \
       -rss_limit_mb=2048 -timeout=30 -artifact_prefix="$fz/crashes/$t/" -print_final_stats=1 \
       >"$fz/fuzz_$t.log" 2>&1; then
    grep -E 'ERROR|SUMMARY|Test unit written' "$fz/fuzz_$t.log" | head -20 || true
    for r in "$fz/crashes/$t"/*; do [ -f "$r" ] && echo "reproduce: $fz/fuzz_$t $r"; done
    failed+=("$t")
  fi
  grep -E '^stat::number_of_executed_units|^Done' "$fz/fuzz_$t.log" | tail -2 || true
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "tools/fuzz.sh: findings in: ${failed[*]} (logs: $fz/fuzz_<target>.log)" >&2
  exit 1
fi
echo "tools/fuzz.sh: no findings (${seconds}s per target)"
