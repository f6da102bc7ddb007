#!/usr/bin/env bash
# Checkpoint save and load throughput for configs/deco-0.1b.yaml (weights and
# both AdamW moments, ~2.7 GB), against dd writing as many bytes with fsync to
# the same filesystem, in alternating rounds. Needs ~6 GB free on the target
# filesystem and ~6.5 GB of memory.
# Usage: scripts/bench_checkpoint.sh [--rounds N] [--dir D]   (default 3 rounds, a temporary
#        directory under build/)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
parent=build
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --dir) parent=$2; shift 2 ;;
    *) echo "usage: scripts/bench_checkpoint.sh [--rounds N] [--dir D]" >&2; exit 2 ;;
  esac
done
[ -x build/tests/deco_bench_checkpoint ] || cmake --build build --target deco_bench_checkpoint -j"$(nproc)"
work=$(mktemp -d "$parent/bench_checkpoint.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "filesystem: $(df -hT "$work" | awk 'NR==2 {print $1, $2, $3 " total"}')"
build/tests/deco_bench_checkpoint --config configs/deco-0.1b.yaml --dir "$work" --rounds "$rounds"
