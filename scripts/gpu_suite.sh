#!/usr/bin/env bash
# Runs the GPU tests from gpu-bundle/bundle.tar.xz (scripts/gpu_bundle.sh) on
# a machine with a GPU, writing one log per program under $OUT (or ./gpu-logs),
# then the quickstart on the GPU and on the CPU. With --bench, then the
# benchmarks: deco bench-layer at the deco-0.1b and deco-1.2b shapes (both
# expert paths, forced ratios) and deco bench of deco-0.1b and its dense twin.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-logs}
mkdir -p "$out"
tar xJf gpu-bundle/bundle.tar.xz -C gpu-bundle
run=gpu-bundle/bundle/run.sh
bin=gpu-bundle/bundle/bin
{ nvidia-smi; echo; ls /usr/local/ | grep -i cuda; } > "$out/machine.txt" 2>&1
status=0
for t in deco_gpu_tests deco_nccl_tests; do
  [ -x "$bin/$t" ] || continue
  "$run" "$bin/$t" > "$out/$t.log" 2>&1; rc=$?
  echo "$t: exit $rc$([ $rc -eq 77 ] && echo ' (no GPU: skipped)')"; [ $rc -eq 0 ] || status=1
done
"$run" "$bin/deco_tests" "[gpu]" > "$out/deco_tests_gpu.log" 2>&1; rc=$?
echo "deco_tests [gpu]: exit $rc"; [ $rc -eq 0 ] || status=1
# The quickstart on the GPU (float32) and on this machine's CPU, side by side:
# the banner's memory report, the loss curves and tokens/s of both.
for device in cuda cpu; do
  "$run" "$bin/deco" train --config configs/tiny.yaml --set training.device=$device \
    --run-dir "$out/tiny-$device" > "$out/tiny-$device.log" 2>&1; rc=$?
  echo "deco train tiny on $device: exit $rc ($(tail -n 2 "$out/tiny-$device.log" | head -n 1 | cut -c1-160))"
  [ $rc -eq 0 ] || status=1
done
if [ "${1:-}" = "--bench" ]; then
  for c in deco-0.1b deco-1.2b; do
    "$run" "$bin/deco" bench-layer --config configs/$c.yaml --set training.device=cuda --set training.bf16=true \
      --ratio 0.05,0.2,0.5,1.0 > "$out/bench-layer-$c.log" 2>&1; rc=$?
    echo "deco bench-layer $c: exit $rc"; [ $rc -eq 0 ] || status=1
  done
  # Whole steps: deco (float32 and bf16) and the PyTorch reference (bf16 autocast, fused attention,
  # torch.compile; routed experts dense, as the authors compute them) on the same shapes, 2 micro-batches a step.
  small="--set training.global_batch_size=16"
  python3 -c "import torch, numpy, yaml; print('torch', torch.__version__)" > "$out/python.txt" 2>&1
  for c in deco-0.1b dense-0.1b; do
    for bf16 in false true; do
      "$run" "$bin/deco" bench --config configs/$c.yaml --set training.device=cuda --set training.bf16=$bf16 $small \
        --steps 5 --warmup 2 > "$out/bench-$c-bf16-$bf16.log" 2>&1; rc=$?
      echo "deco bench $c bf16=$bf16: exit $rc ($(grep -m1 'tokens/s' "$out/bench-$c-bf16-$bf16.log"))"
      [ $rc -eq 0 ] || status=1
    done
    python3 tests/reference/bench_reference.py --config configs/$c.yaml --tokens random --steps 5 --warmup 2 \
      --threads 16 --device cuda --bf16 --sdpa --compile $small > "$out/reference-$c.json" 2> "$out/reference-$c.err"
    echo "pytorch reference $c: exit $? ($(head -c 120 "$out/reference-$c.json"))"
  done
fi
exit $status
