#!/usr/bin/python3
"""Attention-speed peer of `deco bench-attention`: PyTorch's fused
scaled_dot_product_attention (causal, GQA through enable_gqa) forward and
backward on the shapes of a deco config: micro_batch_size sequences of
seq_length tokens, the config's heads, kv groups and head size, bf16 on the
GPU (or --dtype float32).

Times with CUDA events, the median of --iters after --warmup, and prints the
same causal FLOP count as deco (forward 4 B h S^2 d / 2, backward 2.5x) and
one JSON line: {"forward_ms": ..., "backward_ms": ..., "backend": ...}.

Usage:
    python3 bench_attention.py --config configs/dense-1.2b.yaml [--batch B] [--seq S] [--iters 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="deco YAML config")
    ap.add_argument("--set", action="append", default=[], metavar="section.key=value",
                    help="override a config value (as deco's --set)")
    ap.add_argument("--batch", type=int, default=0, help="sequences (default micro_batch_size)")
    ap.add_argument("--seq", type=int, default=0, help="sequence length (default seq_length)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    import deco_reference as ref

    cfg = ref.load_config(args.config, args.set)
    m, t = cfg.model, cfg.training
    batch = args.batch or int(t.micro_batch_size)
    seq = args.seq or int(m.seq_length)
    heads = int(m.num_attention_heads)
    groups = int(m.num_query_groups or heads)
    hd = int(m.hidden_size) // heads
    if not torch.cuda.is_available():
        sys.exit("bench_attention.py: no CUDA device is visible to PyTorch; this peer times the GPU kernels.")
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator(device="cuda").manual_seed(0)

    def normal(*shape):
        return torch.randn(*shape, device="cuda", dtype=dtype, generator=gen)

    q = normal(batch, heads, seq, hd).requires_grad_()
    k = normal(batch, groups, seq, hd).requires_grad_()
    v = normal(batch, groups, seq, hd).requires_grad_()
    dout = normal(batch, heads, seq, hd)
    gqa = {"enable_gqa": True} if groups != heads else {}

    fwd, bwd = [], []
    for i in range(args.warmup + args.iters):
        q.grad = k.grad = v.grad = None
        e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        e0.record()
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
        e1.record()
        out.backward(dout)
        e2.record()
        torch.cuda.synchronize()
        if i >= args.warmup:
            fwd.append(e0.elapsed_time(e1))
            bwd.append(e1.elapsed_time(e2))

    # Which fused kernel PyTorch picked: the profiler names it.
    backend = "unknown"
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa).backward(dout)
            torch.cuda.synchronize()
        names = " ".join(e.key for e in prof.key_averages()).lower()
        for key, name in (("cudnn", "cudnn"), ("flash", "flash"), ("efficient", "mem_efficient"),
                          ("fmha", "mem_efficient")):
            if key in names:
                backend = name
                break
    except Exception as exc:  # the timing stands without the label
        backend = f"unknown ({type(exc).__name__})"

    tf, tb = statistics.median(fwd), statistics.median(bwd)
    fwd_flops = 4.0 * batch * heads * seq * seq * hd / 2.0
    bwd_flops = 2.5 * fwd_flops
    print(f"PyTorch {torch.__version__} scaled_dot_product_attention ({backend}) on "
          f"{torch.cuda.get_device_name()}: batch {batch} x seq {seq}, {heads} heads over {groups} kv groups, "
          f"head_dim {hd}, {args.dtype}, median of {args.iters} after {args.warmup} warm-up")
    print(f"{'pass':<18} {'time ms':>10} {'TFLOP/s':>10}")
    print(f"{'forward':<18} {tf:10.3f} {fwd_flops / tf / 1e9:10.2f}")
    print(f"{'backward':<18} {tb:10.3f} {bwd_flops / tb / 1e9:10.2f}")
    print(f"{'forward+backward':<18} {tf + tb:10.3f} {(fwd_flops + bwd_flops) / (tf + tb) / 1e9:10.2f}")
    print(json.dumps({"forward_ms": tf, "backward_ms": tb, "batch": batch, "seq": seq, "heads": heads,
                      "groups": groups, "head_dim": hd, "dtype": args.dtype, "backend": backend,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
