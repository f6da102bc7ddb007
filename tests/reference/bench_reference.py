#!/usr/bin/python3
"""Training-speed peer: trains the PyTorch reference DECO model (CPU or GPU).

Builds the model of a deco YAML config in float32 (deco_reference.py, routed
experts computed densely as the authors' code does), initializes it as spec
section 4 says, and trains it with torch.optim.AdamW (the config's lr schedule,
betas, eps, weight decay except on 1-D tensors), gradient clipping at
optimizer.clip_grad, global_batch_size / micro_batch_size micro-batches per
step with gradient accumulation, and the entropy (or configured) regularizer
with a constant small coefficient.  Token batches are consecutive rows of an
.npy file of shape [N_samples, S+1] (wrapping around).

On a GPU (--device cuda) it is the side-by-side peer of `deco bench` that
the GPU issues ask for: --bf16 runs under torch.autocast(bfloat16) with
float32 master weights (the router stays float32, as deco's does), --sdpa
replaces the explicit softmax by torch's fused scaled_dot_product_attention,
--compile wraps each decoder layer in torch.compile. --tokens random draws uniform
token ids instead of reading an .npy file.

Prints one JSON line:
    {"tokens_per_second": ..., "step_time_s": ..., "threads": ..., ...}
timed over --steps optimizer steps after --warmup untimed ones.

Usage:
    /usr/bin/python3 bench_reference.py --config F.yaml --tokens S.npy --steps 10 --threads 16 [--warmup 2]
    python3 bench_reference.py --config configs/deco-0.1b.yaml --tokens random --steps 5 --threads 16 \
        --device cuda --bf16 --sdpa --compile
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)



def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="deco YAML config")
    ap.add_argument("--set", action="append", default=[], metavar="section.key=value",
                    help="override a config value (as deco's --set)")
    ap.add_argument("--tokens", required=True, help=".npy of token ids, shape [N_samples, S+1], or 'random'")
    ap.add_argument("--steps", type=int, required=True, help="timed optimizer steps")
    ap.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    ap.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    ap.add_argument("--reg-coef", type=float, default=1e-8, help="constant regularizer coefficient")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bf16", action="store_true", help="torch.autocast(bfloat16) around forward and loss")
    ap.add_argument("--sdpa", action="store_true", help="fused scaled_dot_product_attention")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = ap.parse_args()

    # Debian's torch calls OpenBLAS (pthread build), whose pool defaults to every core:
    # size both pools to --threads unless the caller chose otherwise, before torch loads.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    # OpenMP threads spinning after a parallel region starve the OpenBLAS pthreads (and collapse
    # under any other load); passive waiting is the robust default. OMP_WAIT_POLICY=ACTIVE
    # in the environment overrides it (may be a little faster on an idle machine: try both).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    global np, torch, ref
    import numpy as np
    import torch
    import deco_reference as ref

    torch.set_num_threads(args.threads)
    cfg = ref.load_config(args.config, args.set)
    m, t, o = cfg.model, cfg.training, cfg.optimizer
    if t.global_batch_size % t.micro_batch_size:
        raise SystemExit("global_batch_size must be a multiple of micro_batch_size")
    n_micro = t.global_batch_size // t.micro_batch_size

    if args.tokens == "random":  # enough distinct samples for the run, drawn once
        rng = np.random.default_rng(t.seed)
        data = rng.integers(0, m.vocab_size, size=(4 * t.global_batch_size, m.seq_length + 1), dtype=np.int64)
    else:
        data = np.load(args.tokens, mmap_mode="r")
    if data.ndim != 2:
        raise SystemExit(f"{args.tokens}: expected a 2-D array [N, S+1], got shape {data.shape}")
    S = data.shape[1] - 1
    if S > m.seq_length:
        raise SystemExit(f"token rows hold S={S} > model.seq_length={m.seq_length}")
    if data.shape[0] < t.micro_batch_size:
        raise SystemExit(f"{args.tokens}: {data.shape[0]} samples < micro_batch_size {t.micro_batch_size}")

    torch.manual_seed(t.seed)
    device = torch.device(args.device)
    ref.Attention.use_sdpa = args.sdpa
    model = ref.DecoForCausalLM(m, dtype=torch.float32)
    model.init_weights(torch.Generator().manual_seed(t.seed))
    model.to(device)
    model.train()
    params = [p for p in model.parameters()]
    loss_fn = model.loss
    if args.compile:
        # Each decoder layer compiled on its own: torch.compile(model).loss
        # would run eagerly (the wrapper compiles forward only, and loss calls
        # the original module's forward), and one graph of the whole model
        # takes minutes to compile at 32 layers. The LM head and loss stay
        # eager. (torch.compile needs PyTorch 2: Debian's is 1.13, the lent
        # GPU machine's 2.11. Run on the CPU with PyTorch 2.11.0 from PyPI in a
        # venv, 2026-12-03: tiny.yaml --bf16 --sdpa --compile trains; the GPU
        # path itself is unrun.)
        layers = model.model.layers
        for i in range(len(layers)):
            layers[i] = torch.compile(layers[i])
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(ref.param_groups_for_weight_decay(model, o.weight_decay), lr=o.lr,
                            betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps)

    cursor = [0]

    def next_micro_batch():
        n = data.shape[0]
        rows = [(cursor[0] + i) % n for i in range(t.micro_batch_size)]
        cursor[0] = (cursor[0] + t.micro_batch_size) % n
        return torch.from_numpy(np.asarray(data[rows], dtype=np.int64)).to(device, non_blocking=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    reg_type = cfg.sparsity.reg_type
    last = {}

    def train_step(step):
        lr = ref.lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        lm_sum, ratio_sum = 0.0, 0.0
        for _ in range(n_micro):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16):
                out = loss_fn(next_micro_batch(), reg_coef=args.reg_coef, reg_type=reg_type)
            (out.loss / n_micro).backward()
            lm_sum += float(out.lm_loss.detach())
            ratio_sum += out.activation_ratio
        if o.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, o.clip_grad)
        opt.step()
        last.update(lm_loss=lm_sum / n_micro, activation_ratio=ratio_sum / n_micro, lr=lr)

    for s in range(args.warmup):
        train_step(s)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for s in range(args.warmup, args.warmup + args.steps):
        train_step(s)
    sync()
    elapsed = time.perf_counter() - t0

    tokens = args.steps * t.global_batch_size * S
    print(json.dumps({
        "tokens_per_second": tokens / elapsed if elapsed > 0 else None,
        "step_time_s": elapsed / max(1, args.steps),
        "threads": args.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "tokens_per_step": t.global_batch_size * S,
        "micro_batches_per_step": n_micro,
        "parameters": n_params,
        "final_lm_loss": last.get("lm_loss"),
        "final_activation_ratio": last.get("activation_ratio"),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "bf16": args.bf16, "sdpa": args.sdpa, "compile": args.compile,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
