#!/usr/bin/env python3
"""TensorBoard event files read by TensorBoard's own reader.

A short tiny run (`deco train ... --run-dir D`), then D read with the
`tensorboard` package (installed into build/pydeps by scripts/setup.sh; it
runs without TensorFlow on Debian's python3-protobuf and numpy): every
scalar of every metrics.jsonl row is under its tag at its step with the same
value (float32), the per-layer tags exist for every DECO layer, the file
starts with file_version brain.Event:2, and the reader's CRC checks pass.

Usage: test_tensorboard.py --deco build/deco --source-dir . --workdir DIR --pydeps build/pydeps
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from checks import FAILURES, check


# metrics.jsonl key -> TensorBoard tag, for the scalar keys.
SCALARS = {
    "lm_loss": "train/lm_loss", "reg_loss": "train/reg_loss", "lr": "train/lr",
    "grad_norm": "train/grad_norm", "reg_coef": "train/reg_coef",
    "tokens_per_second": "train/tokens_per_second", "tflops": "train/tflops",
    "data_wait_s": "train/data_wait_s", "skipped_steps": "train/skipped_steps",
    "val_loss": "val/loss", "activation_ratio": "sparsity/activation_ratio",
}
# Per-DECO-layer lists -> tag with the model layer index.
PER_LAYER = {
    "activation_ratio_per_layer": "sparsity/layer_{:02d}/activation_ratio",
    "expert_max_violation": "experts/layer_{:02d}/max_violation",
    "dead_experts": "experts/layer_{:02d}/dead_experts",
    "idle_token_share": "experts/layer_{:02d}/idle_token_share",
    "router_entropy": "experts/layer_{:02d}/router_entropy",
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--deco", required=True)
    p.add_argument("--source-dir", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--pydeps", required=True)
    a = p.parse_args()
    sys.path.insert(0, os.path.abspath(a.pydeps))
    try:
        from tensorboard.backend.event_processing import event_file_loader
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as e:
        print(f"FAIL cannot import the tensorboard package from {a.pydeps} ({e}); run scripts/setup.sh")
        return 1

    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    run_dir = os.path.join(a.workdir, "run")
    r = subprocess.run([a.deco, "train", "--config", os.path.join(a.source_dir, "configs/tiny.yaml"),
                        "--set", "training.train_iters=30", "--set", "schedule.lr_warmup_iters=5",
                        "--set", "schedule.lr_wsd_decay_iters=5", "--run-dir", run_dir],
                       capture_output=True, text=True)
    check(r.returncode == 0, f"deco train: exit {r.returncode} {r.stderr.strip()[-500:]!r}")
    if r.returncode != 0:
        return 1
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if l.strip()]
    check(len(rows) == 30, f"30 rows in metrics.jsonl (got {len(rows)})")

    files = sorted(f for f in os.listdir(run_dir) if f.startswith("events.out.tfevents."))
    check(len(files) == 1, f"one event file in the run directory: {files}")
    if not files:
        return 1
    # The raw events, through TensorBoard's loader (which checks every CRC).
    events = list(event_file_loader.EventFileLoader(os.path.join(run_dir, files[0])).Load())
    check(len(events) > 0 and events[0].file_version == "brain.Event:2",
          "the first event is file_version brain.Event:2")

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    series = {t: {e.step: e.value for e in acc.Scalars(t)} for t in tags}

    expected = {}  # (tag, step) -> value
    for row in rows:
        step = row["step"]
        for key, tag in SCALARS.items():
            if row.get(key) is not None:
                expected[(tag, step)] = row[key]
        expected[("train/peak_memory_gib", step)] = row["peak_memory_bytes"] / 2**30
        layers = row["deco_layers"]
        for key, fmt in PER_LAYER.items():
            for layer, v in zip(layers, row.get(key, [])):
                expected[(fmt.format(layer), step)] = v
    missing, wrong = [], []
    for (tag, step), v in expected.items():
        got = series.get(tag, {}).get(step)
        if got is None:
            missing.append((tag, step))
        elif np.float32(got) != np.float32(v):
            wrong.append((tag, step, got, v))
    check(not missing, f"every scalar of metrics.jsonl is in the event file ({len(expected)} values; "
                       f"missing {missing[:5]})")
    check(not wrong, f"with the same float32 value (differing: {wrong[:5]})")
    extra = {(t, s) for t, ss in series.items() for s in ss} - set(expected)
    check(not extra, f"and nothing else ({sorted(extra)[:5]})")

    layers = rows[0]["deco_layers"]
    check(len(layers) == 3, f"tiny has 3 DECO layers: {layers}")
    for layer in layers:
        for fmt in PER_LAYER.values():
            check(fmt.format(layer) in tags, f"tag {fmt.format(layer)}")
    check(any(r.get("val_loss") is not None for r in rows) and "val/loss" in tags, "val/loss on evaluation steps")
    check(all(t in tags for t in SCALARS.values()), "every train/ tag")
    check(all(0 < r["peak_memory_bytes"] < 2**34 for r in rows), "peak memory in bytes (a tiny run: under 16 GiB)")

    # Histograms on log steps (log_interval 20: steps 1, 20, 30 and the
    # evaluation steps): per layer each expert's share of the step's tokens,
    # and the spread of the activation ratio over layers.
    tokens = 16 * 128  # global batch x sequence length of configs/tiny.yaml
    log_steps = sorted({1, 20, 30} | {r["step"] for r in rows if r.get("val_loss") is not None})
    hist_tags = set(acc.Tags()["histograms"])
    want = {"sparsity/activation_ratio_per_layer"} | {f"experts/layer_{l:02d}/token_share" for l in layers}
    check(hist_tags == want, f"histogram tags {sorted(hist_tags)}")
    by_step = {r["step"]: r for r in rows}
    for tag in sorted(want & hist_tags):
        events = acc.Histograms(tag)
        check([e.step for e in events] == log_steps, f"{tag} on the log steps {log_steps}: {[e.step for e in events]}")
        for e in events:
            row, h = by_step[e.step], e.histogram_value
            if tag.startswith("experts/"):
                i = layers.index(int(tag.split("/")[1][len("layer_"):]))
                values = [c / tokens for c in row["expert_tokens_per_layer"][i]]
            else:
                values = row["activation_ratio_per_layer"]
            ok = (h.num == len(values) and abs(h.sum - sum(values)) < 1e-9 and h.min == min(values)
                  and h.max == max(values) and sum(h.bucket) == len(values)
                  and list(h.bucket_limit) == sorted(h.bucket_limit))
            # Every value lies in its bucket (previous limit, limit].
            edges = [-np.inf] + list(h.bucket_limit)
            placed = [sum(1 for v in values if edges[k] < v <= edges[k + 1]) for k in range(len(h.bucket))]
            check(ok and placed == list(h.bucket),
                  f"{tag} step {e.step}: num {h.num}, sum {h.sum}, buckets {list(h.bucket)} of {values}")

    # A resumed run in the same directory: its event file starts with a
    # restart marker, so TensorBoard drops what the first run logged after
    # the checkpoint and shows every step once, with the resumed run's values.
    resumed_dir = os.path.join(a.workdir, "resumed")
    base = [a.deco, "train", "--config", os.path.join(a.source_dir, "configs/tiny.yaml"), "--run-dir", resumed_dir,
            "--set", "training.train_iters=30", "--set", "schedule.lr_warmup_iters=5",
            "--set", "schedule.lr_wsd_decay_iters=5", "--set", f"checkpoint.save={a.workdir}/ckpt",
            "--set", "checkpoint.save_interval=10"]
    r1 = subprocess.run(base, capture_output=True, text=True)
    r2 = subprocess.run(base + ["--set", f"checkpoint.load={a.workdir}/ckpt/step_0000010"], capture_output=True,
                        text=True)
    check(r1.returncode == 0 and r2.returncode == 0, f"train, then resume from step 10 ({r2.stderr.strip()[-300:]!r})")
    if r1.returncode == 0 and r2.returncode == 0:
        files = sorted(f for f in os.listdir(resumed_dir) if f.startswith("events.out.tfevents."))
        check(len(files) == 2, f"two event files after the resume: {files}")
        acc = EventAccumulator(resumed_dir, size_guidance={"scalars": 0})
        acc.Reload()
        speed = [(e.step, e.value) for e in acc.Scalars("train/tokens_per_second")]
        check([st for st, _ in speed] == list(range(1, 31)), f"every step once ({[st for st, _ in speed][:40]})")
        rows = {json.loads(l)["step"]: json.loads(l) for l in open(os.path.join(resumed_dir, "metrics.jsonl"))}
        check(all(np.float32(v) == np.float32(rows[st]["tokens_per_second"]) for st, v in speed),
              "with the values metrics.jsonl holds (the resumed run's from step 11)")

    print(f"{len(FAILURES)} failure(s)" if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
