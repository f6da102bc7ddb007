#!/usr/bin/env python3
"""Each model and training option on the emulated GPU against the CPU.

deco_emulated (tests/cuda_emu) runs deco's CUDA kernels on the CPU. The
other whole-model runs on it use tiny's defaults, whose shapes (head_dim 32,
expert width 32) never reach the tensor-core attention or the sparse
experts' own kernels, and whose options leave the gated experts, three of
the four expert activations, the dense and auto expert paths, recomputation,
grouped-query attention and gradient accumulation unrun. Here each of them
trains 2 steps of configs/tiny.yaml (sequences of 64, global batch 8) with
training.device cuda and again on the CPU (build/deco), and the logged
metrics must agree:

- float32: step 1 starts from the same weights, so its loss to 1e-6 and
  gradient norm to 1e-5 (measured: 4e-10 and 3e-8 at worst), its activation
  ratio to 1e-4 (measured equal; a (token, expert) pair whose router value
  lies within rounding of 0 may flip between the two devices' summation
  orders, 4e-5 each); step 2's loss, after the GPU's AdamW update, to 1e-5
  (measured 3e-7).
- bf16 (training.bf16 on both devices), at tiny's shapes and at head_dim 64
  with expert width 64, where the tensor-core kernels run (the start-up line
  says which): step 1's loss to 1e-4, gradient norm and activation ratio to
  5e-3 (measured 9e-6, 4.4e-4 and 1e-3: the devices round different
  intermediate sums to bf16, and pairs flip with them), step 2's loss to
  1e-3 (measured 1.4e-4).

CTest runs it with DECO_CUDA_NO_MEMORY_CACHING=1: every device block is an
allocation of its own, which the emulator ends with an inaccessible page and
fills with poison (NaN), so a kernel reading or writing past a block, or
using memory it never wrote, fails here too.

Usage: test_gpu_variants_emulated.py --deco build/deco --deco-emulated build/tests/cuda_emu/deco_emulated
           --source-dir . --workdir DIR [NAME...]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

from checks import FAILURES, check, train_command

BASE = ["model.seq_length=64", "training.micro_batch_size=4", "training.global_batch_size=8",
        "training.train_iters=2", "schedule.lr_warmup_iters=1", "schedule.lr_wsd_decay_iters=1",
        "training.threads=1", "training.eval_interval=0", "training.log_interval=1"]
# Head size 64 (2 heads of 128) and expert width 64: the paper configs' kernels.
TC = ["training.bf16=true", "model.num_attention_heads=2", "model.num_query_groups=2",
      "model.moe_ffn_hidden_size=64"]

VARIANTS = {
    "dense_experts": ["model.expert_compute=dense"],
    "auto_experts": ["model.expert_compute=auto"],
    "gated": ["model.expert_gated=true"],
    "norm_silu_nomean": ["model.expert_act=norm_silu_nomean"],
    "norm_silu_norms": ["model.expert_act=norm_silu_norms"],
    "silu": ["model.expert_act=silu"],
    "recompute_full": ["training.recompute=full"],
    "recompute_selective": ["training.recompute=selective"],
    "gqa": ["model.num_query_groups=2"],
    "grad_accumulation": ["training.micro_batch_size=2"],
    "bf16": ["training.bf16=true"],
    "bf16_gated_dense": ["training.bf16=true", "model.expert_gated=true", "model.expert_compute=dense"],
    "tc_wide": TC,
    "tc_narrow": TC + ["model.sparse_expert_kernels=narrow"],
    "tc_composition_cuda_cores": TC + ["model.sparse_expert_kernels=composition",
                                       "model.attention_backend=cuda_cores"],
    "tc_gqa_gated_recompute": TC + ["model.num_query_groups=1", "model.expert_gated=true",
                                    "training.recompute=full"],
}
# What the start-up line must name for the tensor-core shapes.
KERNELS = {
    "tc_wide": "gpu kernels: attention tensor_cores, sparse experts wide",
    "tc_narrow": "gpu kernels: attention tensor_cores, sparse experts narrow",
    "tc_composition_cuda_cores": "gpu kernels: attention cuda_cores, sparse experts composition",
    "tc_gqa_gated_recompute": "gpu kernels: attention tensor_cores, sparse experts wide",
}


def rel(a, b):
    return abs(a - b) / max(abs(a), 1e-30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deco", required=True)
    ap.add_argument("--deco-emulated", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("names", nargs="*", help="variants to run (default: all)")
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    config = os.path.join(a.source_dir, "configs/tiny.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(deco, name, sets):
        run_dir = os.path.join(a.workdir, name)
        r = subprocess.run(train_command(deco, config, run_dir, sets), capture_output=True, text=True,
                           timeout=600, env=env)
        check(r.returncode == 0, f"{name} trains ({r.stderr.strip()[-300:]})")
        rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))] if r.returncode == 0 else []
        return rows, r.stdout

    for name in a.names or VARIANTS:
        sets = BASE + VARIANTS[name]
        cpu, _ = train(a.deco, f"{name}_cpu", sets + ["training.device=cpu"])
        gpu, out = train(a.deco_emulated, f"{name}_gpu", sets + ["training.device=cuda"])
        if len(cpu) != 2 or len(gpu) != 2:
            check(False, f"{name}: 2 steps logged on each device")
            continue
        bf16 = "training.bf16=true" in sets
        loss_1, norm_1, ratio_1, loss_2 = (1e-4, 5e-3, 5e-3, 1e-3) if bf16 else (1e-6, 1e-5, 1e-4, 1e-5)
        c, g = cpu[0], gpu[0]
        d_loss, d_norm = rel(c["lm_loss"], g["lm_loss"]), rel(c["grad_norm"], g["grad_norm"])
        d_ratio, d_loss_2 = rel(c["activation_ratio"], g["activation_ratio"]), rel(cpu[1]["lm_loss"], gpu[1]["lm_loss"])
        check(d_loss <= loss_1 and d_norm <= norm_1 and d_ratio <= ratio_1 and d_loss_2 <= loss_2,
              f"{name}: the emulated GPU matches the CPU (step 1: loss {d_loss:.1e}, gradient norm {d_norm:.1e}, "
              f"activation ratio {d_ratio:.1e}; step 2: loss {d_loss_2:.1e}; allowed {loss_1:g}, {norm_1:g}, "
              f"{ratio_1:g}, {loss_2:g})")
        if name in KERNELS:
            check(KERNELS[name] in out, f"{name}: rank 0 reports '{KERNELS[name]}'")

    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        sys.exit(1)


if __name__ == "__main__":
    main()
