#!/usr/bin/env bash
# Builds the CPU-only engine with AddressSanitizer + UndefinedBehaviorSanitizer (every target, library, tests and
# tools, instrumented; -fno-sanitize-recover=undefined) and runs the test suite there, the PyTorch fixture step
# included (Debian's python3 is not instrumented and needs no preload: only tlengine's own binaries carry the
# sanitizer runtime). Any report fails the test that triggered it. The folder is the one tools/fuzz.sh uses
# (clang, -DTL_FUZZ=ON, which implies the sanitizers and adds coverage counters): one instrumented build for both.
#
#   tools/sanitize.sh [--build DIR] [--jobs N] [-R REGEX]      (-R: only the ctest tests matching REGEX)
set -euo pipefail
cd "$(dirname "$0")/.."
build=build-asan
jobs=$(nproc)
filter=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -R) filter=(-R "$2"); shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "tools/sanitize.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DTL_CUDA=OFF \
  -DTL_SANITIZE=ON -DTL_FUZZ=ON "${launcher[@]}" >/dev/null
cmake --build "$build" -j"$jobs"
# Leaks are findings too; the embedded CPython of convert_pth keeps its interpreter state at exit by design.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$build" --output-on-failure -j"$jobs" "${filter[@]}"
