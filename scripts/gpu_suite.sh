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
    "$run" "$bin/deco" bench-layer --config configs/$c.yaml --set training.device=cuda \
      --ratio 0.05,0.2,0.5,1.0 > "$out/bench-layer-$c.log" 2>&1; rc=$?
    echo "deco bench-layer $c: exit $rc"; [ $rc -eq 0 ] || status=1
  done
  for c in deco-0.1b dense-0.1b; do
    "$run" "$bin/deco" bench --config configs/$c.yaml --set training.device=cuda --steps 5 --warmup 2 \
      > "$out/bench-$c.log" 2>&1; rc=$?
    echo "deco bench $c: exit $rc ($(grep -m1 'tokens/s' "$out/bench-$c.log"))"; [ $rc -eq 0 ] || status=1
  done
fi
exit $status
