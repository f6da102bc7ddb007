#!/usr/bin/env bash
# Runs the GPU tests from gpu-bundle/bundle.tar.xz (scripts/gpu_bundle.sh) on
# a machine with a GPU, writing one log per program under $OUT (or ./gpu-logs),
# then the quickstart on the GPU and on the CPU. With --bench, then the
# benchmarks: deco bench-attention against PyTorch's SDPA (dense-0.1b and
# dense-1.2b shapes), deco bench-layer at the deco-0.1b and deco-1.2b shapes
# (both expert paths, forced ratios), and deco bench of the four paper
# configs against the PyTorch reference. With --sanitize, instead of the
# benchmarks: the GPU tests under compute-sanitizer (memcheck, then racecheck
# on the tensor-core and sparse-expert kernels), for a session chasing a
# failure (slow: minutes).
#
# Every program runs under `timeout` (a hung kernel or collective costs its
# step's limit, not the device's whole lease) and logs line by line, so a
# run cut short still returns what it reached.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-logs}
mkdir -p "$out"
tar xJf gpu-bundle/bundle.tar.xz -C gpu-bundle
run=gpu-bundle/bundle/run.sh
bin=gpu-bundle/bundle/bin
{ nvidia-smi; echo; ls /usr/local/ | grep -i cuda; } > "$out/machine.txt" 2>&1
status=0
# timeout SECONDS: what a step may take (exit 124 when it ran out).
limit() { local s=$1; shift; timeout --kill-after=10 "$s" "$@"; }
for t in deco_gpu_tests deco_nccl_tests; do
  [ -x "$bin/$t" ] || continue
  limit 240 "$run" "$bin/$t" > "$out/$t.log" 2>&1; rc=$?
  echo "$t: exit $rc$([ $rc -eq 77 ] && echo ' (no GPU: skipped)')$([ $rc -eq 124 ] && echo ' (timed out)')"
  [ $rc -eq 0 ] || status=1
done
limit 180 "$run" "$bin/deco_tests" "[gpu]" > "$out/deco_tests_gpu.log" 2>&1; rc=$?
echo "deco_tests [gpu]: exit $rc"; [ $rc -eq 0 ] || status=1
if [ "${1:-}" = "--sanitize" ]; then
  limit 400 "$run" compute-sanitizer --tool memcheck --error-exitcode 3 "$bin/deco_gpu_tests" \
    > "$out/memcheck.log" 2>&1; rc=$?
  echo "compute-sanitizer memcheck deco_gpu_tests: exit $rc ($(grep -m1 'ERROR SUMMARY' "$out/memcheck.log"))"
  [ $rc -eq 0 ] || status=1
  for f in attention_tensor_cores sparse_expert_kernels; do
    limit 200 "$run" compute-sanitizer --tool racecheck --error-exitcode 3 "$bin/deco_gpu_tests" "$f" \
      > "$out/racecheck-$f.log" 2>&1; rc=$?
    echo "compute-sanitizer racecheck $f: exit $rc ($(grep -m1 'RACECHECK SUMMARY\|ERROR SUMMARY' "$out/racecheck-$f.log"))"
    [ $rc -eq 0 ] || status=1
  done
  exit $status
fi
# The quickstart on the GPU (float32) and on this machine's CPU, side by side:
# the banner's memory report, the loss curves and tokens/s of both.
for device in cuda cpu; do
  limit 120 "$run" "$bin/deco" train --config configs/tiny.yaml --set training.device=$device \
    --run-dir "$out/tiny-$device" > "$out/tiny-$device.log" 2>&1; rc=$?
  echo "deco train tiny on $device: exit $rc ($(tail -n 2 "$out/tiny-$device.log" | head -n 1 | cut -c1-160))"
  [ $rc -eq 0 ] || status=1
done
if [ "${1:-}" = "--bench" ]; then
  # In order of what the GPU issues ask, cheapest first, so a run cut short
  # by the device's time limit still has the first tables.
  python3 -c "import torch, numpy, yaml; print('torch', torch.__version__)" > "$out/python.txt" 2>&1
  # Attention alone (bf16, tensor-core kernels) against PyTorch's fused SDPA on the same shapes.
  for c in dense-0.1b dense-1.2b; do
    limit 90 "$run" "$bin/deco" bench-attention --config configs/$c.yaml --set training.device=cuda --set training.bf16=true \
      > "$out/bench-attention-$c.log" 2>&1; rc=$?
    echo "deco bench-attention $c: exit $rc ($(grep -m1 'forward+backward' "$out/bench-attention-$c.log"))"
    [ $rc -eq 0 ] || status=1
    limit 120 python3 tests/reference/bench_attention.py --config configs/$c.yaml > "$out/sdpa-$c.log" 2>&1
    echo "pytorch sdpa $c: exit $? ($(grep -m1 'forward+backward' "$out/sdpa-$c.log"))"
  done
  for c in deco-0.1b deco-1.2b; do
    limit 150 "$run" "$bin/deco" bench-layer --config configs/$c.yaml --set training.device=cuda --set training.bf16=true \
      --ratio 0.05,0.2,0.5,1.0 > "$out/bench-layer-$c.log" 2>&1; rc=$?
    echo "deco bench-layer $c: exit $rc"; [ $rc -eq 0 ] || status=1
  done
  # Whole steps: deco in bf16 (and float32 for the 0.1b pair) and the PyTorch reference (bf16
  # autocast, fused attention, torch.compile; routed experts dense, as the authors compute them)
  # on the same shapes, 2 micro-batches a step.
  for c in dense-0.1b deco-0.1b dense-1.2b deco-1.2b; do
    micro=$(grep -m1 'micro_batch_size' configs/$c.yaml | awk '{print $2}')
    small="--set training.global_batch_size=$((2 * micro))"
    precisions="true"; case $c in *0.1b) precisions="false true";; esac
    for bf16 in $precisions; do
      limit 150 "$run" "$bin/deco" bench --config configs/$c.yaml --set training.device=cuda --set training.bf16=$bf16 $small \
        --steps 5 --warmup 2 > "$out/bench-$c-bf16-$bf16.log" 2>&1; rc=$?
      echo "deco bench $c bf16=$bf16: exit $rc ($(grep -m1 'tokens/s' "$out/bench-$c-bf16-$bf16.log"))"
      [ $rc -eq 0 ] || status=1
    done
    limit 300 python3 tests/reference/bench_reference.py --config configs/$c.yaml --tokens random --steps 5 --warmup 2 \
      --threads 16 --device cuda --bf16 --sdpa --compile $small > "$out/reference-$c.json" 2> "$out/reference-$c.err"
    echo "pytorch reference $c: exit $? ($(head -c 120 "$out/reference-$c.json"))"
  done
fi
exit $status
