#!/usr/bin/env bash
# Installs tlengine's build and test dependencies from Debian 12 packages (run as root, or with sudo).
# The CUDA toolkit 13 with cuDNN 9 and cuBLAS is expected under /usr/local/cuda.
set -euo pipefail
PKGS=(cmake ninja-build g++ libstb-dev libgtest-dev pybind11-dev python3-dev python3-numpy python3-torch
      python3-torchvision libopenblas-dev nlohmann-json3-dev libcli11-dev libzip-dev libjpeg62-turbo-dev
      zlib1g-dev libdnnl-dev libopenmpi-dev openmpi-bin clang libclang-rt-14-dev)  # clang + libFuzzer/sanitizer runtimes: tools/fuzz.sh, tools/sanitize.sh
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The CUDA toolkit is needed for the CUDA build only; -DTL_CUDA=OFF (and tools/fuzz.sh, tools/sanitize.sh) build the
# CPU-only engine without it. TL_CPU_ONLY=1 skips this check.
[ "${TL_CPU_ONLY:-0}" = 1 ] || [ -x /usr/local/cuda/bin/nvcc ] || {
  echo "CUDA toolkit not found at /usr/local/cuda (nvcc): install CUDA 13 with cuDNN 9, or set TL_CPU_ONLY=1 and" \
       "configure with -DTL_CUDA=OFF for the CPU-only engine" >&2
  exit 1
}
