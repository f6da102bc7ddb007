#!/usr/bin/env bash
# Data pipeline throughput, on texts every Debian system ships
# (/usr/share/common-licenses, repeated to a few tens of MB):
#  1. deco preprocess tokens/s with 1 and 2 workers (SentencePiece BPE, 8000 pieces);
#  2. the time configs/tiny.yaml's training waited for data, as a share of
#     step time, on the synthetic corpus and on the preprocessed corpus.
# Usage: scripts/bench_data.sh [--repeat N]   (default 150 copies, ~37 MB of JSONL)
set -euo pipefail
cd "$(dirname "$0")/.."
repeat=150
[ "${1:-}" = "--repeat" ] && repeat=$2
py=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

$py - "$work/licenses.jsonl" "$repeat" <<'PY'
import glob, json, sys
paragraphs = []
for path in sorted(glob.glob("/usr/share/common-licenses/*")):
    try:
        paragraphs += [p.strip() for p in open(path, errors="replace").read().split("\n\n") if p.strip()]
    except IsADirectoryError:
        pass
with open(sys.argv[1], "w") as f:
    for _ in range(int(sys.argv[2])):
        for p in paragraphs:
            f.write(json.dumps({"text": p}) + "\n")
PY
build/deco tokenizer train --input /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 \
  --vocab-size 8000 --output "$work/tok.model" >/dev/null 2>&1 ||
  build/deco tokenizer train --input /usr/share/common-licenses/GPL-3 --vocab-size 2000 --output "$work/tok.model" >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "input: $(du -m "$work/licenses.jsonl" | cut -f1) MB of JSONL ($repeat copies of /usr/share/common-licenses)"
printf '%-28s %14s %10s\n' "preprocess" "tokens/s" "seconds"
for workers in 1 2; do
  start=$(date +%s.%N)
  out=$(build/deco preprocess --input "$work/licenses.jsonl" --output-prefix "$work/corpus$workers" \
          --tokenizer-type sentencepiece --tokenizer-model "$work/tok.model" --append-eod --workers $workers 2>&1)
  end=$(date +%s.%N)
  tokens=$($py -c "import numpy as np; print(np.fromfile('$work/corpus$workers.bin', dtype=np.uint16).size)")
  $py -c "t=$end-$start; print(f'{\"$workers worker(s)\":<28} {$tokens/t:>14,.0f} {t:>10.2f}')"
done
cmp -s "$work/corpus1.bin" "$work/corpus2.bin" && cmp -s "$work/corpus1.idx" "$work/corpus2.idx" &&
  echo "1 and 2 workers wrote identical files"

wait_share() {  # share of step time spent waiting for data, steps 2..N
  $py -c "
import json
rows = [json.loads(l) for l in open('$1/metrics.jsonl')][1:]
w = sum(r['data_wait_s'] for r in rows); s = sum(r['step_time_s'] for r in rows)
print(f'{w * 1000:.2f} ms of {s:.2f} s = {100 * w / s:.3f}%')"
}
printf '\n%-40s %s\n' "tiny.yaml, 300 steps" "time waiting for data"
build/deco train --config configs/tiny.yaml --run-dir "$work/synthetic" --set training.eval_interval=0 >/dev/null
printf '%-40s %s\n' "synthetic corpus" "$(wait_share "$work/synthetic")"
build/deco train --config configs/tiny.yaml --run-dir "$work/megatron" --set training.eval_interval=0 \
  --set model.vocab_size=8000 --set data.data_path="$work/corpus2" --set data.split=100,0,0 >/dev/null
printf '%-40s %s\n' "preprocessed corpus (.bin/.idx)" "$(wait_share "$work/megatron")"
