#!/usr/bin/env bash
# Packs the GPU test programs for a lent GPU machine (DEVELOPERS.md,
# "Machines and tools"): builds build/ (CUDA for sm_90 unless configured
# otherwise), then gpu-bundle/bundle.tar.xz with deco, the unit tests, the
# CUDA op tests and the NCCL tests and their non-system libraries.
# On the device, from the repository root (carry gpu-bundle):
#   scripts/gpu_suite.sh          # logs under $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --build build -j"$(nproc)"
bins=(build/deco build/tests/deco_tests)
for b in build/tests/deco_gpu_tests build/tests/deco_nccl_tests; do [ -x "$b" ] && bins+=("$b"); done
mkdir -p gpu-bundle
../shared/tools/bundle-runtime gpu-bundle/bundle.tar.xz "${bins[@]}"
ls -l gpu-bundle/bundle.tar.xz
