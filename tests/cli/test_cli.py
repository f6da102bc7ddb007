#!/usr/bin/env python3
"""End-to-end tests of the `deco` command line: what users type and see.

Checks exit codes and messages for bad input (one line, starting with
"error:", naming the file and the key), the parameter counts `deco info`
prints for the paper configs, a short `deco train` run and its outputs,
`deco eval` and `deco data samples`.

Usage: test_cli.py --deco build/deco --source-dir . --workdir DIR
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np

import checks
from checks import FAILURES, check


def run(args, **kw):
    return subprocess.run([DECO] + args, capture_output=True, text=True, **kw)


def expect_error(args, must_contain, what):
    return checks.expect_error(DECO, args, must_contain, what, only_line=True)


def test_info(src):
    """Non-embedding counts within 3% of the paper's names; DECO within 2% of its dense twin."""
    names = {"0.1b": 0.11e9, "0.2b": 0.24e9, "0.5b": 0.53e9, "1.2b": 1.18e9}
    for size, target in names.items():
        counts = {}
        for kind in ("deco", "dense"):
            r = run(["info", "--config", f"{src}/configs/{kind}-{size}.yaml"])
            check(r.returncode == 0, f"deco info {kind}-{size} runs")
            got = {m.group(1): int(m.group(2).replace(",", ""))
                   for m in re.finditer(r"^\s+(total|non-embedding)\s+([\d,]+)", r.stdout, re.M)}
            counts[kind] = got
        ne = counts["deco"]["non-embedding"]
        check(abs(ne - target) / target < 0.03, f"deco-{size} non-embedding {ne:,} within 3% of {target:,.0f}")
        t_deco, t_dense = counts["deco"]["total"], counts["dense"]["total"]
        check(abs(t_deco - t_dense) / t_dense < 0.02, f"deco-{size} total {t_deco:,} within 2% of dense {t_dense:,}")


def test_bad_config(src, work):
    tiny = f"{src}/configs/tiny.yaml"
    bad = os.path.join(work, "typo.yaml")
    with open(bad, "w") as f:
        f.write(open(tiny).read().replace("hidden_size:", "hiden_size:"))
    expect_error(["train", "--config", bad], ["typo.yaml", "model.hiden_size", "model.hidden_size"], "unknown key suggests")
    expect_error(["info", "--config", os.path.join(work, "missing.yaml")], ["missing.yaml"], "missing config file")
    expect_error(["info", "--config", tiny, "--set", "model.num_layers=abc"], ["model.num_layers", "integer"], "wrong type")
    expect_error(["info", "--config", tiny, "--set", "model.num_attention_heads=5"],
                 ["tiny.yaml", "model.hidden_size", "model.num_attention_heads"], "hidden not divisible by heads")
    expect_error(["info", "--config", tiny, "--set", "model.num_query_groups=3"],
                 ["model.num_query_groups"], "groups not dividing heads")
    expect_error(["info", "--config", tiny, "--set", "training.global_batch_size=12"],
                 ["training.global_batch_size", "micro_batch_size"], "global batch not divisible")
    expect_error(["info", "--config", tiny, "--set", "optimizer.lrr=1"], ["optimizer.lrr", "optimizer.lr"], "unknown --set key")
    nolr = os.path.join(work, "nolr.yaml")
    with open(nolr, "w") as f:
        f.write(re.sub(r"\n  lr: .*\n", "\n", open(tiny).read()))
    expect_error(["info", "--config", nolr], ["nolr.yaml", "optimizer.lr", "missing"], "missing required key")
    broken = os.path.join(work, "broken.yaml")
    with open(broken, "w") as f:
        f.write("model: [1, 2\n")
    expect_error(["info", "--config", broken], ["broken.yaml", "line"], "YAML syntax error")


def test_train(src, work):
    tiny = f"{src}/configs/tiny.yaml"
    run_dir = os.path.join(work, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    short = ["--set", "training.train_iters=12", "--set", "schedule.lr_warmup_iters=2",
             "--set", "schedule.lr_wsd_decay_iters=4", "--set", "training.log_interval=5"]
    r = run(["train", "--config", tiny, "--run-dir", run_dir] + short)
    check(r.returncode == 0, f"deco train runs (exit {r.returncode}) {r.stderr[-300:]!r}")
    check("resolved config" in r.stdout and "act ratio" in r.stdout, "console shows the resolved config and log lines")
    log_lines = [l for l in r.stdout.splitlines() if l.startswith(" step")]
    check(len(log_lines) == 4, f"log lines at steps 1, 5, 10, 12 (got {len(log_lines)})")
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    check(len(rows) == 12, "one metrics.jsonl row per step")
    required = ["step", "lm_loss", "reg_loss", "lr", "grad_norm", "activation_ratio",
                "activation_ratio_per_layer", "reg_coef", "tokens_per_second"]
    check(all(k in rows[-1] for k in required), "metrics rows carry the required keys")
    check(rows[-1]["lm_loss"] < rows[0]["lm_loss"], "loss falls over 12 steps")
    check(os.path.exists(os.path.join(run_dir, "config.yaml")), "resolved config saved in the run dir")
    check(run(["info", "--config", os.path.join(run_dir, "config.yaml")]).returncode == 0, "the saved config loads")
    before = open(os.path.join(run_dir, "metrics.jsonl"), "rb").read()
    expect_error(["train", "--config", tiny, "--run-dir", run_dir] + short, ["metrics.jsonl", "already exists"],
                 "an existing run is not overwritten")
    check(open(os.path.join(run_dir, "metrics.jsonl"), "rb").read() == before, "its metrics.jsonl is unchanged")
    expect_error(["train", "--config", tiny, "--run-dir", os.path.join(work, "r2"), "--set", "checkpoint.load=auto"],
                 ["checkpoint.load", "checkpoint.save"], "resuming needs a checkpoint directory")
    # A run that cannot fit in memory is refused before it starts, not OOM-killed
    # (micro-batches of 512 x 4096 tokens of deco-1.2b need terabytes of activations).
    expect_error(["train", "--config", f"{src}/configs/deco-1.2b.yaml", "--run-dir", os.path.join(work, "r3"),
                  "--set", "training.micro_batch_size=512"],
                 ["deco-1.2b.yaml", "GiB", "training.micro_batch_size"], "a run too big for memory is refused")
    check(not os.path.exists(os.path.join(work, "r3", "metrics.jsonl")), "and leaves no run directory behind")
    # A dense model trains too, and reports no activation ratio.
    dense_dir = os.path.join(work, "dense")
    shutil.rmtree(dense_dir, ignore_errors=True)
    r = run(["train", "--config", tiny, "--run-dir", dense_dir, "--set", "model.num_experts=0"] + short)
    rows = [json.loads(l) for l in open(os.path.join(dense_dir, "metrics.jsonl"))] if r.returncode == 0 else []
    check(r.returncode == 0 and rows[-1]["activation_ratio"] is None, "dense model trains, ratio null")


def test_eval_and_samples(src, work):
    tiny = f"{src}/configs/tiny.yaml"
    w = os.path.join(work, "w.h5")
    check(run(["init", "--config", tiny, "--out", w]).returncode == 0, "deco init writes weights")
    samples = os.path.join(work, "s.npy")
    r = run(["data", "samples", "--config", tiny, "--first", "4", "--out", samples])
    check(r.returncode == 0, "deco data samples runs")
    s = np.load(samples)
    check(s.shape == (4, 129) and s.dtype == np.int32 and s.min() >= 0 and s.max() < 512,
          f"samples are [4, seq+1] int32 in the vocabulary ({s.shape}, {s.dtype})")
    again = os.path.join(work, "s2.npy")
    run(["data", "samples", "--config", tiny, "--first", "2", "--out", again])
    check(np.array_equal(np.load(again), s[:2]), "samples are deterministic")

    g = os.path.join(work, "g.h5")
    r = run(["eval", "--config", tiny, "--weights", w, "--tokens", samples, "--reg-coef", "0.01", "--dump-grads", g])
    out = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {}
    check(r.returncode == 0 and abs(out["lm_loss"] - np.log(512)) < 0.1, f"eval at init: loss ~ ln(512) ({out.get('lm_loss')})")
    check(0 < out.get("activation_ratio", 0) < 1 and len(out.get("activation_ratio_per_layer", [])) == 3,
          "eval reports the activation ratio overall and per DECO layer")
    import h5py
    with h5py.File(g, "r") as f, h5py.File(w, "r") as fw:
        check(sorted(f["model"].keys()) == sorted(fw["model"].keys()), "gradient file has every parameter's name")
        check(float(np.abs(f["model"]["lm_head.weight"][...]).sum()) > 0, "gradients are non-zero")

    bad = os.path.join(work, "bad_tokens.npy")
    np.save(bad, np.full((2, 129), 512, dtype=np.int64))
    expect_error(["eval", "--config", tiny, "--weights", w, "--tokens", bad], ["bad_tokens.npy", "512"], "token id out of range")
    long = os.path.join(work, "long.npy")
    np.save(long, np.zeros((1, 300), dtype=np.int32))
    expect_error(["eval", "--config", tiny, "--weights", w, "--tokens", long], ["long.npy", "seq_length"], "sequence too long")
    trunc = os.path.join(work, "trunc.npy")
    open(trunc, "wb").write(open(samples, "rb").read()[:-10])
    expect_error(["eval", "--config", tiny, "--weights", w, "--tokens", trunc], ["trunc.npy"], "truncated .npy")
    expect_error(["eval", "--config", tiny, "--set", "model.hidden_size=64", "--weights", w, "--tokens", samples],
                 ["w.h5", "shape"], "mis-shaped tensor")
    expect_error(["eval", "--config", tiny, "--set", "model.expert_gated=true", "--weights", w, "--tokens", samples],
                 ["w.h5", "expert_gate_proj"], "missing tensor")
    garbage = os.path.join(work, "garbage.h5")
    open(garbage, "wb").write(b"not an hdf5 file at all" * 10)
    expect_error(["eval", "--config", tiny, "--weights", garbage, "--tokens", samples], ["garbage.h5"], "not an HDF5 file")


def test_bench_layer(src):
    """deco bench-layer: the forced ratios are met, the sparse path executes only the active pairs' FLOPs."""
    tiny = f"{src}/configs/tiny.yaml"
    r = run(["bench-layer", "--config", tiny, "--ratio", "0.1,1.0", "--tokens", "256", "--iters", "2", "--warmup", "1"])
    check(r.returncode == 0, f"deco bench-layer runs (stderr: {r.stderr.strip()[:200]})")
    rows = {}
    for m in re.finditer(r"^(dense|sparse)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", r.stdout, re.M):
        path, asked, ratio, ms, gflop, tflops = m.groups()
        rows[(path, float(asked))] = (float(ratio), float(ms), float(gflop), float(tflops))
    check(len(rows) == 4, f"bench-layer prints a row per path and ratio ({len(rows)} rows)")
    if len(rows) != 4:
        return
    for (path, asked), (ratio, ms, gflop, tflops) in rows.items():
        # 256 tokens x 16 experts = 4096 pairs: the forced ratio within a few standard deviations.
        check(abs(ratio - asked) < 0.04, f"{path} at asked ratio {asked}: measured {ratio}")
        check(ms > 0 and tflops > 0, f"{path} at {asked}: positive time and rate")
    dense, sparse = rows[("dense", 0.1)], rows[("sparse", 0.1)]
    check(dense[2] == rows[("dense", 1.0)][2], "the dense path's FLOPs do not depend on the ratio")
    check(sparse[2] < 0.5 * dense[2], f"at ratio 0.1 sparse executes far fewer FLOPs ({sparse[2]} vs {dense[2]} GFLOP)")
    check(abs(rows[("sparse", 1.0)][2] - dense[2]) < 0.01 * dense[2], "at ratio 1 both paths execute the same FLOPs")
    check("vs dense" in r.stdout and "floors from peaks measured now" in r.stdout, "the table names its floors")
    expect_error(["bench-layer", "--config", tiny, "--ratio", "1.5"], ["--ratio", "(0, 1]"], "ratio out of range")
    expect_error(["bench-layer", "--config", tiny, "--path", "both"], ["--path", "dense"], "unknown path")
    expect_error(["bench-layer", "--config", f"{src}/configs/dense-0.1b.yaml"], ["dense-0.1b.yaml", "model.num_experts"],
                 "a dense config has no DECO layer")


def test_bench_attention(src):
    """deco bench-attention: the config's attention shapes, timed forward and backward, as a table and JSON."""
    tiny = f"{src}/configs/tiny.yaml"
    r = run(["bench-attention", "--config", tiny, "--batch", "2", "--seq", "96", "--iters", "2", "--warmup", "1"])
    check(r.returncode == 0, f"deco bench-attention runs (stderr: {r.stderr.strip()[:200]})")
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    check(len(lines) == 1, "bench-attention ends with one JSON line")
    if len(lines) != 1:
        return
    got = json.loads(lines[0])
    # tiny: hidden 128 over 4 heads and 4 kv groups.
    check((got["batch"], got["seq"], got["heads"], got["groups"], got["head_dim"]) == (2, 96, 4, 4, 32),
          f"the shapes are the config's with --batch and --seq ({got})")
    check(got["forward_ms"] > 0 and got["backward_ms"] > 0, "positive forward and backward times")
    check(re.search(r"^forward\+backward\s+[\d.]+\s+[\d.]+$", r.stdout, re.M) is not None,
          "a forward+backward row with time and TFLOP/s")


def test_bench_profile(src):
    """deco bench --profile: the extra steps' regions, nested, with a time and a share of the step."""
    tiny = f"{src}/configs/tiny.yaml"
    r = run(["bench", "--config", tiny, "--steps", "1", "--warmup", "1", "--profile", "1",
             "--set", "training.global_batch_size=2", "--set", "training.micro_batch_size=2"])
    check(r.returncode == 0, f"deco bench --profile runs (stderr: {r.stderr.strip()[:200]})")
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"^\s+([a-z_.]+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)$", r.stdout, re.M)}
    for name in ("step", "forward_backward", "attention.forward", "attention.backward", "deco_ffn.forward",
                 "deco_ffn.routed_experts.backward", "deco_ffn.shared_expert.forward", "lm_head_loss", "optimizer"):
        check(name in rows, f"bench --profile reports the region {name}")
    if "step" in rows and "deco_ffn.forward" in rows:
        check(rows["step"][1] == 100.0 and 0 < rows["deco_ffn.forward"][1] < 100.0,
              f"shares are of the step ({rows['step']}, {rows['deco_ffn.forward']})")
        # tiny: 4 layers, the first dense: three DECO layers per micro-batch, one micro-batch.
        check(rows["deco_ffn.forward"][2] == 3.0, f"calls per step ({rows['deco_ffn.forward']})")
    expect_error(["bench", "--config", tiny, "--steps", "2", "--warmup", "1", "--profile", "100000"],
                 ["train_iters", "--profile"], "profile steps beyond train_iters")


def main():
    global DECO
    ap = argparse.ArgumentParser()
    ap.add_argument("--deco", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    DECO = os.path.abspath(a.deco)
    os.makedirs(a.workdir, exist_ok=True)
    test_info(a.source_dir)
    test_bad_config(a.source_dir, a.workdir)
    test_train(a.source_dir, a.workdir)
    test_eval_and_samples(a.source_dir, a.workdir)
    test_bench_layer(a.source_dir)
    test_bench_attention(a.source_dir)
    test_bench_profile(a.source_dir)
    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
