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
#    still near its initial ~0.5, over the last half of the run, where it
#    sits near the 0.2 target, and over the whole run after the 10 warm-up
#    steps. Only the sparse path's speed depends on the ratio.
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
  read -r tps ratio < <(rate "$work/sparse$r" $warmup "$iters")
  echo "sparse_run $tps $ratio" >> "$work/results"
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
$py - "$work/results" "$rounds" <<'PY'
import statistics, sys
lines = [l.split() for l in open(sys.argv[1])]
rounds = int(sys.argv[2])
per_round = len(lines) // rounds
runs = {}  # name -> [(tokens/s, ratio) per round]
for r in range(rounds):
    for name, tps, act in lines[r * per_round:(r + 1) * per_round]:
        runs.setdefault(name, []).append((float(tps), float(act)))
# The PyTorch peer of each round: its faster wait policy in that round.
torch = [max(p, a) for (p, _), (a, _) in zip(runs["torch_PASSIVE"], runs["torch_ACTIVE"])]
rows = [
    ("sparse_early", "deco sparse experts, steps 11-60 (ratio %.2f)"),
    ("sparse_target", "deco sparse experts, 2nd half of run (ratio %.2f)"),
    ("sparse_run", "deco sparse experts, whole run after warm-up"),
    ("dense", "deco dense experts, steps 11-60"),
    ("torch_PASSIVE", "PyTorch reference, OMP_WAIT_POLICY=PASSIVE"),
    ("torch_ACTIVE", "PyTorch reference, OMP_WAIT_POLICY=ACTIVE"),
]
print(f"{'run':<52}{'tokens/s':>10}{'vs PyTorch':>12}{'  per-round range':>20}")
for key, label in rows:
    tps = [t for t, _ in runs[key]]
    ratio = statistics.mean(a for _, a in runs[key])
    vs = [t / p for t, p in zip(tps, torch)]
    name = label % ratio if "%" in label else label
    print(f"{name:<52}{statistics.median(tps):>10.0f}{statistics.median(vs):>11.2f}x"
          f"{'':>5}{min(vs):.2f}x - {max(vs):.2f}x")
print("tokens/s: median over rounds; vs PyTorch: median over rounds of the ratio to that round's faster")
print("PyTorch run (runs of one round are back to back, so the ratio is robust to the machine's drift)")
PY
