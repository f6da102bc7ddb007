#!/usr/bin/env bash
# Runs the GPU checks from gpu-bundle/bundle.tar.xz (scripts/gpu_bundle.sh) on
# a machine with a GPU, writing one log per program under $OUT (or ./gpu-logs).
#
#   scripts/gpu_suite.sh [STAGE...]      stages, in the order given:
#     tests     the GPU test programs, deco_tests "[gpu]" and the quickstart on
#               the GPU (about 2-3 minutes)
#     kernels   deco bench-attention against PyTorch's SDPA (dense-0.1b and
#               dense-1.2b shapes), deco bench-layer at the deco-0.1b and
#               deco-1.2b shapes (dense, sparse wide and narrow, composition,
#               each path also with the shared expert in line; forced ratios)
#               (about 4-5 minutes)
#     steps     deco bench of the four paper configs beside the PyTorch
#               reference (bf16 autocast, SDPA, torch.compile per layer)
#               (about 5-6 minutes)
#     sanitize  the GPU tests under compute-sanitizer (memcheck, then racecheck
#               on the tensor-core and sparse-expert kernels), for a session
#               chasing a failure (slow: minutes)
#     steps-small, steps-large   the same for the 0.1b or the 1.2b pair
#               alone (each fits one device command with room to spare)
#   No stage: tests. --bench: tests kernels steps (more than one device
#   command's 10 minutes: split it, e.g. `tests kernels`, then `steps`).
#
# Every program runs under `timeout` (a hung kernel or collective costs its
# step's limit, not the device's whole lease; deco_gpu_tests also stops a
# test that runs past 90 s) and logs line by line, so a run cut short still
# returns what it reached. Only 8 files come back from a device command's
# $OUT, so the logs are written to $GPU_LOGS (default /tmp/gpu-logs) and
# packed into $OUT/logs.tgz after every program, beside $OUT/summary.txt
# (the one-line results, also printed). Exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests)
[ "${stages[0]}" = "--bench" ] && stages=(tests kernels steps)
[ "${stages[0]}" = "--sanitize" ] && stages=(tests sanitize)
for s in "${stages[@]}"; do
  case $s in tests|kernels|steps|steps-small|steps-large|sanitize) ;;
    *) echo "gpu_suite.sh: unknown stage $s (tests, kernels, steps, steps-small, steps-large, sanitize)" >&2; exit 2;;
  esac
done
dest=${OUT:-gpu-logs}
out=${GPU_LOGS:-/tmp/gpu-logs}
mkdir -p "$dest" "$out"
# always the archive just built; without it every step would fail
rm -rf gpu-bundle/bundle && tar xJf gpu-bundle/bundle.tar.xz -C gpu-bundle ||
  { echo "gpu_suite.sh: cannot unpack gpu-bundle/bundle.tar.xz; run scripts/gpu_bundle.sh and carry gpu-bundle" >&2; exit 2; }
run=gpu-bundle/bundle/run.sh
bin=gpu-bundle/bundle/bin
# DECO_SETS="key=value ...": --set overrides for every deco train and bench
# command, to route around a kernel the tests found failing, e.g.
# DECO_SETS="model.attention_backend=cuda_cores model.sparse_expert_kernels=composition".
sets=()
for kv in ${DECO_SETS:-}; do sets+=(--set "$kv"); done
[ ${#sets[@]} -gt 0 ] && echo "gpu_suite.sh: every deco command gets ${sets[*]}"
# The unit tests read configs/ and tests/reference/ from the source tree: this one.
export DECO_SOURCE_DIR=$PWD
export PYTHONUNBUFFERED=1  # the reference scripts' lines reach their logs as they are printed
{ git rev-parse HEAD 2>/dev/null; nvidia-smi; echo; ls /usr/local/ | grep -i cuda; } > "$out/machine.txt" 2>&1
status=0
# limit SECONDS CMD...: what a step may take (exit 124 when it ran out).
limit() { local s=$1; shift; timeout --kill-after=10 "$s" "$@"; }
# note LINE: printed, kept in $dest/summary.txt, and the logs so far packed into $dest/logs.tgz.
note() {
  echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$dest/summary.txt"
  tar czf "$dest/logs.tgz.tmp" -C "$out" . 2>/dev/null && mv "$dest/logs.tgz.tmp" "$dest/logs.tgz"
}

stage_tests() {
  for t in deco_gpu_tests deco_nccl_tests; do
    if [ ! -x "$bin/$t" ]; then note "$t: missing from the bundle (built without CUDA or NCCL?)"; status=1; continue; fi
    limit $([ $t = deco_gpu_tests ] && echo 180 || echo 90) "$run" "$bin/$t" > "$out/$t.log" 2>&1; rc=$?
    note "$t: exit $rc$([ $rc -eq 77 ] && echo ' (no GPU: skipped)')$([ $rc -eq 124 ] && echo ' (timed out)')"
    [ $rc -eq 0 ] || status=1
  done
  limit 150 "$run" "$bin/deco_tests" "[gpu]" > "$out/deco_tests_gpu.log" 2>&1; rc=$?
  note "deco_tests [gpu]: exit $rc"; [ $rc -eq 0 ] || status=1
  # The quickstart on the GPU (float32): the banner's memory report, the loss
  # curve and tokens/s (the CPU's curve is the same command here, or the README's).
  limit 120 "$run" "$bin/deco" train --config configs/tiny.yaml --set training.device=cuda ${sets[@]+"${sets[@]}"} \
    --run-dir "$out/tiny-cuda" > "$out/tiny-cuda.log" 2>&1; rc=$?
  note "deco train tiny on cuda: exit $rc ($(tail -n 2 "$out/tiny-cuda.log" | head -n 1 | cut -c1-160))"
  [ $rc -eq 0 ] || status=1
}

stage_sanitize() {
  # Each block its own cudaMalloc, so memcheck sees every block's bounds
  # (inside a cached segment, an access past a block's end is in bounds to it).
  export DECO_CUDA_NO_MEMORY_CACHING=1
  limit 400 "$run" compute-sanitizer --tool memcheck --error-exitcode 3 "$bin/deco_gpu_tests" \
    > "$out/memcheck.log" 2>&1; rc=$?
  unset DECO_CUDA_NO_MEMORY_CACHING
  note "compute-sanitizer memcheck deco_gpu_tests: exit $rc ($(grep -m1 'ERROR SUMMARY' "$out/memcheck.log"))"
  [ $rc -eq 0 ] || status=1
  # Shared-memory races (racecheck), and barriers every thread must reach and cp.async waits
  # (synccheck), on the kernels with the most of them.
  for tool in racecheck synccheck; do
    for f in attention_tensor_cores sparse_expert_kernels; do
      limit 200 "$run" compute-sanitizer --tool $tool --error-exitcode 3 "$bin/deco_gpu_tests" "$f" \
        > "$out/$tool-$f.log" 2>&1; rc=$?
      note "compute-sanitizer $tool $f: exit $rc ($(grep -m1 'RACECHECK SUMMARY\|ERROR SUMMARY' "$out/$tool-$f.log"))"
      [ $rc -eq 0 ] || status=1
    done
  done
}

stage_kernels() {
  python3 -c "import torch, numpy, yaml; print('torch', torch.__version__)" > "$out/python.txt" 2>&1
  # Attention alone (bf16, tensor-core kernels and CUDA-core ones) against PyTorch's fused SDPA on the same shapes.
  for c in dense-0.1b dense-1.2b; do
    limit 90 "$run" "$bin/deco" bench-attention --config configs/$c.yaml --set training.device=cuda ${sets[@]+"${sets[@]}"} \
      --set training.bf16=true > "$out/bench-attention-$c.log" 2>&1; rc=$?
    note "deco bench-attention $c: exit $rc ($(grep -m1 'forward+backward' "$out/bench-attention-$c.log"))"
    [ $rc -eq 0 ] || status=1
    limit 120 python3 tests/reference/bench_attention.py --config configs/$c.yaml > "$out/sdpa-$c.log" 2>&1; rc=$?
    note "pytorch sdpa $c: exit $rc ($(grep -m1 'forward+backward' "$out/sdpa-$c.log"))"
    [ $rc -eq 0 ] || status=1
  done
  # One DECO layer, dense against sparse (wide and narrow blocks, and the composition).
  for c in deco-0.1b deco-1.2b; do
    limit 180 "$run" "$bin/deco" bench-layer --config configs/$c.yaml --set training.device=cuda ${sets[@]+"${sets[@]}"} \
      --set training.bf16=true --ratio 0.05,0.2,0.5,1.0 > "$out/bench-layer-$c.log" 2>&1; rc=$?
    note "deco bench-layer $c: exit $rc ($(grep -m1 '^sparse *0.20' "$out/bench-layer-$c.log" | tr -s ' '))"
    [ $rc -eq 0 ] || status=1
  done
}

# steps_of CONFIG...: whole steps, deco in bf16 and the PyTorch reference
# (bf16 autocast, fused attention, each layer torch.compiled; routed experts
# dense, as the authors compute them) on the same tokens per step: 2 of
# deco's micro-batches. At 1.2b the reference keeps every activation (no
# recomputation), which does not fit at micro-batch 8 x 4096: it takes 8
# micro-batches of 2. The side-by-side pairs come first; the extras (float32
# at 0.1b, the shared expert in line at deco-0.1b) after every pair.
steps_of() {
  local c micro small ref_micro rc
  for c in "$@"; do
    micro=$(grep -m1 'micro_batch_size' configs/$c.yaml | awk '{print $2}')
    small="--set training.global_batch_size=$((2 * micro))"
    limit 150 "$run" "$bin/deco" bench --config configs/$c.yaml --set training.device=cuda ${sets[@]+"${sets[@]}"} --set training.bf16=true \
      $small --steps 5 --warmup 2 --profile 2 > "$out/bench-$c-bf16-true.log" 2>&1; rc=$?
    note "deco bench $c bf16: exit $rc ($(grep -m1 'tokens/s' "$out/bench-$c-bf16-true.log"))"
    [ $rc -eq 0 ] || status=1
    ref_micro=""; case $c in *1.2b) ref_micro="--set training.micro_batch_size=2";; esac
    limit 240 python3 tests/reference/bench_reference.py --config configs/$c.yaml --tokens random --steps 5 --warmup 2 \
      --threads 16 --device cuda --bf16 --sdpa --compile $small $ref_micro > "$out/reference-$c.json" \
      2> "$out/reference-$c.err"; rc=$?
    note "pytorch reference $c: exit $rc ($(head -c 120 "$out/reference-$c.json"))"
    [ $rc -eq 0 ] || status=1
  done
  for c in "$@"; do
    micro=$(grep -m1 'micro_batch_size' configs/$c.yaml | awk '{print $2}')
    small="--set training.global_batch_size=$((2 * micro))"
    case $c in
      *0.1b)
        limit 100 "$run" "$bin/deco" bench --config configs/$c.yaml --set training.device=cuda ${sets[@]+"${sets[@]}"} --set training.bf16=false \
          $small --steps 3 --warmup 1 > "$out/bench-$c-bf16-false.log" 2>&1; rc=$?
        note "deco bench $c float32: exit $rc ($(grep -m1 'tokens/s' "$out/bench-$c-bf16-false.log"))"
        [ $rc -eq 0 ] || status=1;;
    esac
    # The shared expert in line instead of on its second stream (deco-0.1b; bench-layer has both sizes).
    if [ $c = deco-0.1b ]; then
      limit 100 "$run" "$bin/deco" bench --config configs/$c.yaml --set training.device=cuda ${sets[@]+"${sets[@]}"} --set training.bf16=true \
        --set model.moe_shared_expert_overlap=false $small --steps 5 --warmup 2 > "$out/bench-$c-serial.log" 2>&1; rc=$?
      note "deco bench $c shared expert in line: exit $rc ($(grep -m1 'tokens/s' "$out/bench-$c-serial.log"))"
      [ $rc -eq 0 ] || status=1
    fi
  done
}

stage_steps() { steps_of dense-0.1b deco-0.1b dense-1.2b deco-1.2b; }
stage_steps-small() { steps_of dense-0.1b deco-0.1b; }
stage_steps-large() { steps_of dense-1.2b deco-1.2b; }

for s in "${stages[@]}"; do
  note "stage $s"
  "stage_$s"
done
note "done (exit $status)"
exit $status
