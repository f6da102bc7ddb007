#!/usr/bin/env python3
"""Bytes each rank communicates per optimizer step, and the share of step
time they would take, for the paper's DECO configs at 8, 16 and 64 GPUs.

Computed from the configs (parameter counts and FLOPs from `deco info`) and
NOMINAL link rates, not measured ones (this project has had no multi-GPU
machine yet): NVLink 4 at 450 GB/s per direction per H100 inside a node of
8, InfiniBand NDR at 50 GB/s (400 Gb/s) per GPU between nodes, H100 SXM
bf16 dense peak 989 TFLOP/s at an assumed 40% MFU. The formulas are in
docs/parallelism.md.

Usage: scripts/comm_table.py [--deco build/deco] [--mfu 0.4]
"""
import argparse
import os
import re
import subprocess

import yaml

GPUS_PER_NODE = 8
NVLINK = 450e9   # bytes/s per direction per GPU, nominal
IB = 50e9        # bytes/s per GPU between nodes, nominal
PEAK = 989e12    # H100 SXM bf16 dense FLOP/s


def info(deco, config):
    out = subprocess.run([deco, "info", "--config", config], check=True, capture_output=True, text=True).stdout
    num = lambda label: int(re.search(label + r"\s+([\d,]+)", out).group(1).replace(",", ""))
    flops = float(re.search(r"active experts only at ratio [\d.]+\s+([\d.e+]+)", out).group(1))
    return {"total": num("total"), "experts": num("routed experts"), "flops_per_token": flops}


def ring_factor(n):  # all-reduce moves 2(n-1)/n of the buffer per rank; reduce-scatter/all-gather (n-1)/n
    return (n - 1) / n if n > 1 else 0.0


def row(deco, path, world, mfu):
    c = yaml.safe_load(open(path))
    m, t = c["model"], c["training"]
    E, D, H, S = m["num_experts"], m["moe_ffn_hidden_size"], m["hidden_size"], m["seq_length"]
    deco_layers = m["num_layers"] - m.get("dense_layers", 1)
    ratio = c.get("sparsity", {}).get("target_ratio", 0.2)
    ep = max(d for d in range(1, GPUS_PER_NODE + 1) if E % d == 0)
    counts = info(deco, path)
    dense_params = counts["total"] - counts["experts"]
    tokens = t["global_batch_size"] * S / world  # per rank per step

    # Data parallel, gradients reduced in fp32.
    spans = world > GPUS_PER_NODE
    dp_plain = 2 * ring_factor(world) * 4 * counts["total"]            # ep = 1: everything over the world
    zero = ring_factor(world) * (4 + 2) * counts["total"]             # fp32 reduce-scatter + bf16 all-gather
    # With expert parallel ep: dense over the world, local experts over world/ep ranks.
    dp_ep = 2 * ring_factor(world) * 4 * dense_params + 2 * ring_factor(world // ep) * 4 * counts["experts"] / ep
    # Expert-parallel exchange: a token goes to each other rank owning one of
    # its active experts; P(rank has one) = 1 - (1 - ratio)^(E/ep) if
    # experts activate independently. Per row: forward x (bf16) + router
    # slice (fp32) out, y back; backward dy out, dx + score grads + kappa back.
    remote = (ep - 1) * (1 - (1 - ratio) ** (E // ep))
    per_row = 4 * 2 * H + 2 * 4 * (E // ep) + 4
    ep_bytes = tokens * deco_layers * remote * per_row

    compute_s = counts["flops_per_token"] * tokens / (PEAK * mfu)
    backward_s = compute_s * 2 / 3
    dp_link = IB if spans else NVLINK

    def shares(dp_bytes, exchange_bytes):
        dp_s, ex_s = dp_bytes / dp_link, exchange_bytes / NVLINK  # expert-parallel groups stay in a node
        no_overlap = dp_s + ex_s
        overlap = max(0.0, dp_s - backward_s) + ex_s  # gradient buckets hide behind the backward pass
        return 100 * no_overlap / (compute_s + no_overlap), 100 * overlap / (compute_s + overlap)

    return dict(config=os.path.basename(path)[:-5], world=world, ep=ep, compute_ms=compute_s * 1e3,
                dp=dp_plain / 1e9, zero=zero / 1e9, dp_ep=dp_ep / 1e9, exchange=ep_bytes / 1e9,
                share_dp=shares(dp_plain, 0.0), share_ep=shares(dp_ep, ep_bytes))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deco", default="build/deco")
    ap.add_argument("--mfu", type=float, default=0.4)
    a = ap.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    print("| config | GPUs | compute (ms) | DP all-reduce (GB) | ZeRO-1 (GB) | comm share, ep=1 | ep "
          "| DP with ep (GB) | EP exchange (GB) | comm share, with ep |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("deco-0.1b", "deco-0.2b", "deco-0.5b", "deco-1.2b"):
        for world in (8, 16, 64):
            r = row(a.deco, os.path.join(root, "configs", name + ".yaml"), world, a.mfu)
            share = lambda s: f"{s[0]:.0f}% / {s[1]:.0f}%"
            print(f"| {r['config']} | {r['world']} | {r['compute_ms']:.0f} | {r['dp']:.2f} | {r['zero']:.2f} "
                  f"| {share(r['share_dp'])} | {r['ep']} | {r['dp_ep']:.2f} | {r['exchange']:.2f} "
                  f"| {share(r['share_ep'])} |")


if __name__ == "__main__":
    main()
