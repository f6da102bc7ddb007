#!/usr/bin/env bash
# CPU training throughput: deco against the PyTorch reference (tests/reference),
# same model (configs/tiny.yaml unless --config), same token batches (deco's
# synthetic samples, written to .npy), AdamW, float32, same thread count,
# measured side by side in one run.
#
# Usage: scripts/bench_cpu.sh [--config F] [--rounds R] [--threads T]
#
# Rows:
#  - deco sparse: the config's own training run (adaptive sparsity
#    coefficient); tokens/s over steps 11-60, where the activation ratio is
#    still near its initial ~0.5, and over the last half of the run, where it
#    sits near the 0.2 target. Only the sparse path's speed depends on it.
#  - deco dense experts: steps 11-60 (its speed does not depend on the ratio).
#  - PyTorch reference: steps 11-60, computing all experts as the authors'
#    code does, with OpenMP's PASSIVE and ACTIVE wait policies (the faster
#    one is the comparison).
# Each row is the median over R rounds; the rounds interleave the runs so
# that drift in the machine's speed touches every row alike.
set -euo pipefail
cd "$(dirname "$0")/.."

config=configs/tiny.yaml rounds=3 threads=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "bench_cpu.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done
py=/usr/bin/python3
warmup=10 timed=50
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

iters=$($py -c "import yaml; print(yaml.safe_load(open('$config'))['training']['train_iters'])")
global=$($py -c "import yaml; print(yaml.safe_load(open('$config'))['training']['global_batch_size'])")
build/deco data samples --config "$config" --first $(((warmup + timed) * global)) --out "$work/tokens.npy" >/dev/null

# tokens/s over metrics.jsonl rows [first, last) (0-based step indices)
rate() { $py -c "
import json
rows = [json.loads(l) for l in open('$1/metrics.jsonl')][$2:$3]
t = sum(r['step_time_s'] for r in rows)
print(sum(r['tokens_per_second'] * r['step_time_s'] for r in rows) / t,
      sum(r['activation_ratio'] or 0 for r in rows) / len(rows))"; }

deco_args=(--set training.eval_interval=0 --set training.threads="$threads")
short=(--set training.train_iters=$((warmup + timed)) --set schedule.lr_warmup_iters=$warmup
       --set schedule.lr_wsd_decay_iters=$timed)
: > "$work/results"
for r in $(seq "$rounds"); do
  build/deco train --config "$config" --run-dir "$work/sparse$r" "${deco_args[@]}" --set model.expert_compute=sparse >/dev/null
  read -r tps ratio < <(rate "$work/sparse$r" $warmup $((warmup + timed)))
  echo "sparse_early $tps $ratio" >> "$work/results"
  read -r tps ratio < <(rate "$work/sparse$r" $((iters / 2)) "$iters")
  echo "sparse_target $tps $ratio" >> "$work/results"
  build/deco train --config "$config" --run-dir "$work/dense$r" "${deco_args[@]}" "${short[@]}" \
    --set model.expert_compute=dense >/dev/null
  read -r tps _ < <(rate "$work/dense$r" $warmup $((warmup + timed)))
  echo "dense $tps 0" >> "$work/results"
  for policy in PASSIVE ACTIVE; do
    tps=$(OMP_WAIT_POLICY=$policy $py tests/reference/bench_reference.py --config "$config" \
            --tokens "$work/tokens.npy" --steps $timed --warmup $warmup --threads "$threads" "${short[@]}" |
          $py -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['tokens_per_second'])")
    echo "torch_$policy $tps 0" >> "$work/results"
  done
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), threads $threads"
echo "config: $config; median of $rounds interleaved rounds; float32"
$py - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, tps, ratio = line.split()
    rows.setdefault(name, []).append((float(tps), float(ratio)))
med = {k: (statistics.median(t for t, _ in v), statistics.mean(r for _, r in v)) for k, v in rows.items()}
torch_policy = max(("torch_PASSIVE", "torch_ACTIVE"), key=lambda k: med[k][0])
ref = med[torch_policy][0]
table = [
    ("deco sparse experts, steps 11-60 (ratio %.2f)" % med["sparse_early"][1], med["sparse_early"][0]),
    ("deco sparse experts, 2nd half of run (ratio %.2f)" % med["sparse_target"][1], med["sparse_target"][0]),
    ("deco dense experts, steps 11-60", med["dense"][0]),
    ("PyTorch reference, OMP_WAIT_POLICY=PASSIVE", med["torch_PASSIVE"][0]),
    ("PyTorch reference, OMP_WAIT_POLICY=ACTIVE", med["torch_ACTIVE"][0]),
]
print(f"{'run':<52}{'tokens/s':>10}{'vs PyTorch':>12}")
for name, tps in table:
    print(f"{name:<52}{tps:>10.0f}{tps / ref:>11.2f}x")
print(f"(vs PyTorch = against {torch_policy.replace('torch_', 'OMP_WAIT_POLICY=')}, the faster reference run)")
PY
