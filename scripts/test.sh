#!/usr/bin/env bash
# One test command: every test through CTest. Exits non-zero on any failure.
# GPU tests report "skipped" on machines without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/deco ] || { echo "test.sh: build/deco is missing; run scripts/setup.sh first" >&2; exit 1; }
ctest --test-dir build --output-on-failure -j"$(nproc)" "$@"
