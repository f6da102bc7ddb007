#!/usr/bin/env bash
# MpiComm bandwidth on this machine: all-reduce (sum, fp32) and all-to-all
# (equal counts) from 1 KB to 256 MB per rank, with nccl-tests' algorithm
# and bus bandwidths. Needs ~2 x 512 MB of memory per rank.
# Usage: scripts/bench_comm.sh [--np N] [--build DIR] [-- deco_bench_comm options]
#        (default 2 ranks, build/; options: --min-bytes B --max-bytes B --iters K --warmup W)
set -euo pipefail
cd "$(dirname "$0")/.."
np=2
build=build
while [ $# -gt 0 ]; do
  case "$1" in
    --np) np=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: scripts/bench_comm.sh [--np N] [--build DIR] [-- deco_bench_comm options]" >&2; exit 2 ;;
  esac
done
[ -x "$build/tests/deco_bench_comm" ] || cmake --build "$build" --target deco_bench_comm -j"$(nproc)"
# Open MPI refuses root without these; --oversubscribe allows more ranks than cores.
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "shared-memory single copy: ${OMPI_MCA_btl_vader_single_copy_mechanism:-the Open MPI default}"
mpirun -np "$np" --oversubscribe "$build/tests/deco_bench_comm" "$@"
