#!/usr/bin/env python3
"""GPU training under mpirun gives the single GPU's results, on the CUDA emulator.

deco_emulated (tests/cuda_emu) is deco with its CUDA kernels, the CUDA
runtime, cuBLAS and NCCL served on the CPU; DECO_CUDA_EMULATOR_DEVICES=2
gives each of two ranks its own emulated GPU. So the multi-GPU code that
only runs with training.device cuda runs here: NcclComm's collectives on
device buffers, the gradient buckets on the communicator's stream, ZeRO-1's
device shards, the expert-parallel token exchange from device memory, and
the sharded checkpoint written from the GPU in the background.

8 steps of configs/tiny.yaml (sequences of 64, global batch 16) on one
emulated GPU, then on two ranks with data parallel 2, expert parallel 2 with
ZeRO-1, and data parallel 2 with gradient buckets started during the
backward pass, each compared with the one GPU at every step as
tests/cli/test_parallel.py compares CPU runs (same tolerance, 1e-5, and the
same reasons for lr 3e-4 and the L1 regularizer). The expert-parallel ZeRO-1
run's checkpoint of step 4 (sharded, written by both ranks) resumes on one
GPU and continues the uninterrupted run. A rank that fails at step 3 ends
the two-rank job, its message printed, and so does an asynchronous NCCL
error on one rank (DECO_CUDA_EMULATOR_NCCL_FAIL). In bf16 (training.bf16) data
parallel 2 is held to the one GPU's bf16 run: its first step to the same
1e-5, its loss curve to 1e-3 (below: the bf16 rounding of weights
amplifies the sum order's float32 difference).

Usage: test_parallel_emulated_gpu.py --deco build/tests/cuda_emu/deco_emulated --mpirun mpirun
           --source-dir . --workdir DIR
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

from checks import FAILURES, check, train_command
from test_parallel import compare, rows

STEPS = 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deco", required=True)
    ap.add_argument("--mpirun", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    deco = os.path.abspath(a.deco)
    work = a.workdir
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    config = os.path.join(a.source_dir, "configs/tiny.yaml")
    base = ["training.device=cuda", "model.seq_length=64", "training.micro_batch_size=4",
            "training.global_batch_size=16", f"training.train_iters={STEPS}", "schedule.lr_warmup_iters=2",
            "schedule.lr_wsd_decay_iters=2", "optimizer.lr=3e-4", "sparsity.reg_type=l1", "training.threads=1",
            "training.eval_interval=0", "training.log_interval=1"]
    env = {**os.environ, "DECO_CUDA_EMULATOR_DEVICES": "2", "OMP_NUM_THREADS": "1"}

    def train(name, np_, extra=()):
        run_dir = os.path.join(work, name)
        start = time.monotonic()
        r = subprocess.run(train_command(deco, config, run_dir, [*base, *extra], np_, a.mpirun), capture_output=True,
                           text=True, timeout=900, env=env)
        seconds = time.monotonic() - start
        check(r.returncode == 0, f"{name} on {np_} emulated GPU(s) trains in {seconds:.0f} s "
                                 f"({r.stderr.strip()[-300:]})")
        return rows(run_dir) if r.returncode == 0 else None, r

    reference, r = train("single", 1)
    check(reference is not None and "deco CUDA emulator" in r.stdout, "the run is on the emulated GPU")
    # The kernels that run, not the ones asked for (tiny's defaults), and why.
    check("gpu kernels: attention cuda_cores (model.attention_backend tensor_cores needs training.bf16), "
          "sparse experts composition (model.sparse_expert_kernels wide needs training.bf16)" in r.stdout,
          "in float32 rank 0 reports the CUDA-core attention and the composition")
    if reference is None:
        sys.exit(1)

    layouts = [
        ("dp2", []),
        ("zero_ep2", ["parallel.expert_model_parallel_size=2", "parallel.use_distributed_optimizer=true",
                      f"checkpoint.save={work}/zero_ep2_ckpt", "checkpoint.save_interval=4"]),
        # Buckets of 50000 elements started during the backward pass (about 10 per step).
        ("overlap_dp2", ["parallel.overlap_grad_reduce=true", "parallel.ddp_bucket_size=50000"]),
    ]
    for name, extra in layouts:
        got, r = train(name, 2, extra)
        if got is None:
            continue
        compare(reference, got, name, against="one emulated GPU")
        check("NCCL" in r.stdout, f"{name}: rank 0 reports its device collectives (NCCL)")
        if name == "zero_ep2":
            sent = [sum(row["expert_parallel_rows_sent"]) for row in got]
            check(all(s > 0 for s in sent), f"{name}: token rows are exchanged between the ranks ({sent[:3]}...)")

    # The sharded checkpoint of step 4, written from both GPUs, on one GPU.
    step_dir = f"{work}/zero_ep2_ckpt/step_0000004"
    check(os.path.exists(f"{step_dir}/state.h5") and not os.path.exists(f"{step_dir}/model.h5"),
          "zero_ep2: step 4 is a sharded checkpoint (rank files, no model.h5)")
    got, _ = train("resume_single", 1, [f"checkpoint.load={step_dir}"])
    if got is not None:
        check([g["step"] for g in got] == list(range(5, STEPS + 1)), "resumed: steps 5-8 logged")
        compare(reference[4:], got, "zero_ep2's checkpoint resumed on one GPU", against="the uninterrupted run")

    def failing(name, hook):
        """A dp2 run with a fault hook in the environment: (result, seconds, steps logged)."""
        run_dir = os.path.join(work, name)
        start = time.monotonic()
        r = subprocess.run(train_command(deco, config, run_dir, base, 2, a.mpirun), capture_output=True, text=True,
                           timeout=300, env={**env, **hook})
        logged = len(rows(run_dir)) if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) else 0
        return r, time.monotonic() - start, logged

    # Each ends the job within 120 s: a whole 8-step run takes ~18 s, and
    # the collective timeout (10 min) is far off, so it is the failing
    # rank's abort that ends it, not a watchdog.
    # A rank that fails at step 3 ends the job while the other waits in an
    # NCCL collective, with its message.
    r, seconds, _ = failing("fault_dp2", {"DECO_FAULT_INJECT": "1:3"})
    check(r.returncode != 0 and seconds < 120,
          f"fault_dp2: a failing rank ends the job ({seconds:.0f} s, exit {r.returncode})")
    check("rank 1 of 2: fault injected by DECO_FAULT_INJECT at step 3" in r.stdout + r.stderr,
          "fault_dp2: its message names the rank")
    # NCCL reporting an error (rank 1's 10th collective, in step 5: the
    # emulated NCCL's asynchronous network error) ends the job the same way,
    # after NcclComm aborts the communicator.
    r, seconds, logged = failing("nccl_fault_dp2", {"DECO_CUDA_EMULATOR_NCCL_FAIL": "1:10"})
    check(r.returncode != 0 and seconds < 120 and 0 < logged < STEPS,
          f"nccl_fault_dp2: an NCCL error mid-run ends the job ({seconds:.0f} s, exit {r.returncode}, "
          f"{logged} steps logged)")
    check("rank 1 of 2: NCCL error" in r.stderr and "injected by DECO_CUDA_EMULATOR_NCCL_FAIL" in r.stderr,
          f"nccl_fault_dp2: its message names the rank and NCCL's error ({r.stderr.strip()[-300:]})")

    # Mixed precision: the same comparison between bf16 runs.
    bf16_single, r = train("bf16_single", 1, ["training.bf16=true"])
    check("attention cuda_cores (model.attention_backend tensor_cores needs head_dim 64 or 128, not 32)" in r.stdout
          and "composition (model.sparse_expert_kernels wide needs expert width 64" in r.stdout,
          "in bf16 at tiny's shapes too, and why")
    bf16_dp2, _ = train("bf16_dp2", 2, ["training.bf16=true"])
    if bf16_single is not None and bf16_dp2 is not None:
        # Step 1 starts from the same bf16 weights: the float32 tolerance.
        # After it the float32 master weights differ by the sum order
        # (~1e-8), which can flip the bf16 rounding of a few of tiny's ~1M
        # weights (2^-9 relative each) and routing with them. Whether it does
        # depends on the host BLAS's kernels (the emulated cuBLAS): on one
        # machine step 2 still agreed to 1e-5, on another (OpenBLAS's
        # Cooperlake kernels) its gradient norm differed by 7.2e-5 and the
        # loss by 1.5e-5 by step 8. So the curve is held to 1e-3.
        compare(bf16_single[:1], bf16_dp2[:1], "bf16 dp2, step 1", against="bf16 on one emulated GPU")
        worst = max(abs(x["lm_loss"] - y["lm_loss"]) / x["lm_loss"] for x, y in zip(bf16_single, bf16_dp2))
        check(len(bf16_dp2) == STEPS and worst < 1e-3,
              f"bf16 dp2's loss curve tracks one emulated GPU's (worst relative {worst:.1e}, allowed 1e-3)")

    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        sys.exit(1)


if __name__ == "__main__":
    main()
