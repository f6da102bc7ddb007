#!/usr/bin/env python3
"""deco train under mpirun gives the single process's results.

20 steps of configs/tiny.yaml (fp32, CPU, global batch 32) in one process,
then under mpirun with data parallel 2, expert parallel 2, data parallel 2 x
expert parallel 2 (4 ranks), and the distributed optimizer (ZeRO-1) on 2 and
on 4 ranks with expert parallel 2. At every step the losses, gradient norm,
activation ratios (overall and per layer), reg coefficient and per-expert
token counts must match the single process to a relative 1e-5 (past what a
pair flipped across z = 0 explains: compare()); the final
weights of the data-parallel run (its checkpoint) must match too. The
sharded checkpoints of step 10 (expert parallel 2 on 4 ranks, with and
without ZeRO-1) resume on 1 and 4 ranks in other layouts and continue the
single process's run. Then: a rank that fails at step 5 ends the whole job
promptly with its message, SIGUSR1 to one rank (training.exit_signal_handler)
stops both at one step with its checkpoint, and an impossible layout is
refused before any work. Gradient buckets started during the backward pass
(parallel.overlap_grad_reduce) give dp2's results bit for bit and dp2 x ep2's
to 1e-5, and with ZeRO-1 (each bucket reduced to its shard's owner) ZeRO-1's
on 2 ranks bit for bit and on 4 ranks to 1e-5.

Why optimizer.lr is 3e-4 and the regularizer L1 here (tiny.yaml: 3e-3 and
entropy): the ranks sum gradients in another order than one process
accumulating micro-batches, so results differ by float32 rounding (~1e-7).
Two things amplify that noise chaotically: AdamW's early steps divide each
gradient by its own magnitude (an element whose gradient is mostly
cancellation moves by about lr whatever its rounding), and the entropy
regularizer's gradient has a log singularity at r = relu(z) -> 0+, so a
pair whose z rounds to the other side of 0 changes the gradient by O(1).
At lr 3e-3, or with the entropy term, the difference reaches ~1e-4 within
20 steps -- and it does so in ONE process when only the micro-batch size
changes (8 vs 4), so it is not a property of parallelism. With lr 3e-4 and
L1 every quantity stays within ~1e-8, so a difference of logic is what the
1e-5 tolerance catches. (tests/mpi/test_expert_parallel.cpp checks the
expert-parallel layer with the entropy term, in float64, to 1e-10.)

Usage: test_parallel.py --deco build/deco --mpirun mpirun --source-dir . --workdir DIR
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

from checks import FAILURES, check, finish, train_command, wait_for_steps

TOL = 1e-5


def rows(run_dir):
    return [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]


def rel(a, b):
    return abs(a - b) / max(abs(a), 1e-30)


# At a step where a pair flipped (below), what the flip itself explains: the
# L1 regularizer's gradient of that pair jumps by the coefficient, which moves
# the gradient norm by ~1e-5 relative at this scale.
FLIP_TOL = 1e-4


def compare(reference, got, label, against="one process"):
    check(len(got) == len(reference), f"{label}: {len(got)} steps logged")
    worst = {}
    worst_flips = [0]
    for r, g in zip(reference, got):
        # Counts are discrete: a (token, expert) pair whose z lies within
        # rounding of 0 may land on either side, so a layer's count of
        # active pairs may differ by a pair or two. Each flip moves the
        # overall ratio by 1 / (tokens x experts x DECO layers), ~1e-5 of
        # it here, so the ratio is held to 1e-5 plus what the flips explain,
        # and at a step with a flip the gradient norm to FLIP_TOL.
        flips = 0
        for la, lb in zip(r["expert_tokens_per_layer"], g["expert_tokens_per_layer"]):
            layer_flips = sum(abs(x - y) for x, y in zip(la, lb))
            worst_flips[0] = max(worst_flips[0], layer_flips)
            flips += layer_flips
        pairs = sum(map(sum, r["expert_tokens_per_layer"]))
        slots = pairs / r["activation_ratio"] if r["activation_ratio"] > 0 else 1.0
        for key in ("lm_loss", "reg_loss", "grad_norm", "activation_ratio", "reg_coef", "lr"):
            d = rel(r[key], g[key])
            if key == "activation_ratio" and flips:
                d = max(0.0, abs(r[key] - g[key]) - flips / slots) / max(abs(r[key]), 1e-30)
            if key == "grad_norm" and flips:
                d *= TOL / FLIP_TOL
            worst[key] = max(worst.get(key, 0.0), d)
        if "val_loss" in r:
            worst["val_loss"] = max(worst.get("val_loss", 0.0), rel(r["val_loss"], g.get("val_loss", 0.0)))
    summary = ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    check(all(v <= TOL for v in worst.values()),
          f"{label} matches {against} (worst relative, past what flipped pairs explain: {summary})")
    check(worst_flips[0] <= 2, f"{label}: per-expert token counts differ by {worst_flips[0]} pair(s) at most "
                               "in a layer (allowed: 2)")


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
    # Sequences of 64 (the config has 128): the comparisons hold at any length, and the job runs
    # about 15 trainings, most of them 2 or 4 ranks oversubscribed on 2 cores.
    base = ["model.seq_length=64", "training.train_iters=20", "training.global_batch_size=32", "schedule.lr_warmup_iters=5",
            "schedule.lr_wsd_decay_iters=5", "optimizer.lr=3e-4", "sparsity.reg_type=l1", "training.threads=1",
            "training.eval_interval=10", "training.eval_iters=1"]

    def train(name, np_, extra=(), env=None, timeout=600):
        run_dir = os.path.join(work, name)
        args = train_command(deco, config, run_dir, [*base, *extra], np_, a.mpirun)
        start = time.monotonic()
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        return r, run_dir, time.monotonic() - start

    r, ref_dir, _ = train("single", 1, [f"checkpoint.save={work}/single_ckpt"])
    check(r.returncode == 0, f"single process trains ({r.stderr.strip()[-300:]})")
    reference = rows(ref_dir)

    layouts = [
        ("dp2", 2, [f"checkpoint.save={work}/dp2_ckpt"]),
        ("ep2", 2, ["parallel.expert_model_parallel_size=2"]),
        ("dp2_ep2", 4, ["parallel.expert_model_parallel_size=2", f"checkpoint.save={work}/dp2_ep2_ckpt",
                        "checkpoint.save_interval=10"]),
        ("zero_dp2", 2, ["parallel.use_distributed_optimizer=true"]),
        ("zero_dp2_ep2", 4, ["parallel.use_distributed_optimizer=true", "parallel.expert_model_parallel_size=2",
                             f"checkpoint.save={work}/zero_ckpt", "checkpoint.save_interval=10"]),
        # Gradient buckets of 50000 elements started during the backward pass (about 20 per step).
        ("overlap_dp2", 2, ["parallel.overlap_grad_reduce=true", "parallel.ddp_bucket_size=50000"]),
        ("overlap_dp2_ep2", 4, ["parallel.overlap_grad_reduce=true", "parallel.ddp_bucket_size=50000",
                                "parallel.expert_model_parallel_size=2"]),
        # The same buckets with ZeRO-1: cut at the shard boundaries, each reduced to its shard's owner.
        ("overlap_zero_dp2", 2, ["parallel.overlap_grad_reduce=true", "parallel.ddp_bucket_size=50000",
                                 "parallel.use_distributed_optimizer=true"]),
        ("overlap_zero_dp2_ep2", 4, ["parallel.overlap_grad_reduce=true", "parallel.ddp_bucket_size=50000",
                                     "parallel.use_distributed_optimizer=true",
                                     "parallel.expert_model_parallel_size=2"]),
    ]
    results = {}
    for name, np_, extra in layouts:
        r, run_dir, seconds = train(name, np_, extra)
        check(r.returncode == 0, f"{name} on {np_} ranks trains in {seconds:.0f} s ({r.stderr.strip()[-300:]})")
        if r.returncode != 0:
            continue
        got = rows(run_dir)
        results[name] = got
        compare(reference, got, name)
        if "expert_model_parallel_size=2" in " ".join(extra):
            sent = [row["expert_parallel_rows_sent"] for row in got]
            check(all(len(s) == len(reference[0]["activation_ratio_per_layer"]) for s in sent),
                  f"{name}: metrics.jsonl counts the token rows sent to other ranks per layer")
        if name == "dp2":
            check(r.stdout.count("step     20/20") == 1, "dp2: only rank 0 prints the log lines")

    # The distributed optimizer against plain data parallelism (same
    # gradients and elementwise AdamW; only the norm sums in another order).
    if "dp2" in results and "zero_dp2" in results:
        compare(results["dp2"], results["zero_dp2"], "zero_dp2", against="dp2")

    # Buckets reduce the same elements over the same ranks as one all-reduce
    # per region: with two ranks (a + b either way) the runs are bit-identical.
    if "dp2" in results and "overlap_dp2" in results:
        same = all(x[k] == y[k] for x, y in zip(results["dp2"], results["overlap_dp2"])
                   for k in ("lm_loss", "grad_norm", "reg_coef", "activation_ratio"))
        check(same and len(results["overlap_dp2"]) == 20, "overlap_dp2 is bit-identical to dp2")
    if "dp2_ep2" in results and "overlap_dp2_ep2" in results:
        compare(results["dp2_ep2"], results["overlap_dp2_ep2"], "overlap_dp2_ep2", against="dp2_ep2")
    # ZeRO-1's overlapped buckets, reduced to their owners, against ZeRO-1's
    # reduce-scatter after the backward pass: with two ranks the same sums.
    if "zero_dp2" in results and "overlap_zero_dp2" in results:
        same = all(x[k] == y[k] for x, y in zip(results["zero_dp2"], results["overlap_zero_dp2"])
                   for k in ("lm_loss", "grad_norm", "reg_coef", "activation_ratio"))
        check(same and len(results["overlap_zero_dp2"]) == 20, "overlap_zero_dp2 is bit-identical to zero_dp2")
    if "zero_dp2_ep2" in results and "overlap_zero_dp2_ep2" in results:
        compare(results["zero_dp2_ep2"], results["overlap_zero_dp2_ep2"], "overlap_zero_dp2_ep2",
                against="zero_dp2_ep2")

    # Final weights: the data-parallel run's checkpoint against the single process's.
    with h5py.File(f"{work}/single_ckpt/step_0000020/model.h5") as f1, \
         h5py.File(f"{work}/dp2_ckpt/step_0000020/model.h5") as f2:
        worst = 0.0
        for name in f1["model"]:
            w1, w2 = f1["model"][name][...], f2["model"][name][...]
            worst = max(worst, float(np.max(np.abs(w1 - w2)) / max(np.max(np.abs(w1)), 1e-30)))
        check(worst <= TOL, f"dp2 final weights match one process (worst relative {worst:.1e})")

    # Resharding: checkpoints of step 10 written by 4 ranks holding parts
    # (expert parallel 2, with and without ZeRO-1) resume in other layouts;
    # steps 11-20 must match the uninterrupted single process.
    resumes = [
        ("dp2_ep2_ckpt", "at_dp1", 1, []),
        ("dp2_ep2_ckpt", "at_dp4", 4, []),
        ("zero_ckpt", "at_dp1", 1, []),
        ("zero_ckpt", "at_zero_dp4", 4, ["parallel.use_distributed_optimizer=true"]),
    ]
    for ckpt, where, np_, extra in resumes:
        step_dir = f"{work}/{ckpt}/step_0000010"
        check(os.path.exists(f"{step_dir}/state.h5") and not os.path.exists(f"{step_dir}/model.h5"),
              f"{ckpt}: step 10 is a sharded checkpoint (rank files, no model.h5)")
        r, run_dir, _ = train(f"resume_{ckpt}_{where}", np_, [f"checkpoint.load={step_dir}", *extra])
        check(r.returncode == 0, f"{ckpt} resumes {where} ({r.stderr.strip()[-300:]})")
        if r.returncode == 0:
            got = rows(run_dir)
            check([g["step"] for g in got] == list(range(11, 21)), f"{ckpt} {where}: steps 11-20 logged")
            compare(reference[10:], got, f"{ckpt} resumed {where}", against="the uninterrupted run")

    # --load (weights only) under expert parallelism: each rank reads its blocks.
    weights = f"{work}/init.h5"
    subprocess.run([deco, "init", "--config", config, "--out", weights, "--seed", "3"], check=True,
                   capture_output=True)
    loads = []
    for name, np_, extra in [("load_single", 1, []), ("load_ep2", 2, ["parallel.expert_model_parallel_size=2"])]:
        run_dir = os.path.join(work, name)
        args = train_command(deco, config, run_dir, [*base, *extra], np_, a.mpirun, ["--load", weights])
        r = subprocess.run(args, capture_output=True, text=True, timeout=300)
        check(r.returncode == 0, f"{name}: --load trains ({r.stderr.strip()[-300:]})")
        loads.append(rows(run_dir) if r.returncode == 0 else [])
    if all(loads):
        compare(loads[0], loads[1], "--load at ep2", against="--load in one process")

    # A rank that fails at step 5 ends the job, with its message.
    r, _, seconds = train("fault", 2, env={"DECO_FAULT_INJECT": "1:5"}, timeout=120)
    out = r.stdout + r.stderr
    check(r.returncode != 0 and seconds < 60, f"a failing rank ends the job ({seconds:.1f} s, exit {r.returncode})")
    check("rank 1 of 2: fault injected by DECO_FAULT_INJECT at step 5" in out, "its message names the rank")

    # A planned stop under mpirun: SIGUSR1 to one rank only stops both at the
    # same step (each rank's flag rides on the step's all-reduce), with a
    # checkpoint of that step, and the job exits 0.
    stop_dir, stop_ckpt = os.path.join(work, "signal_dp2"), f"{work}/signal_dp2_ckpt"
    args = train_command(deco, config, stop_dir, [*base, "training.train_iters=2000", "training.exit_signal_handler=true",
                                                  "training.exit_signal=SIGUSR1", f"checkpoint.save={stop_ckpt}"],
                         2, a.mpirun)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(stop_dir, 2, timeout=120)
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "deco train"], capture_output=True,
                           text=True).stdout.split()
    check(len(ranks) == 2, f"mpirun started two ranks ({ranks})")
    if ranks:
        os.kill(int(ranks[-1]), signal.SIGUSR1)
    out, err = finish(proc, timeout=120)
    stopped = len(rows(stop_dir))
    check(proc.returncode == 0 and 2 <= stopped < 2000,
          f"SIGUSR1 to one of two ranks stops the job at step {stopped}, exit {proc.returncode} ({err.strip()[-300:]})")
    check(f"stopped at step {stopped} of 2000: SIGUSR1 was received" in out, "rank 0 says where and why")
    latest = open(os.path.join(stop_ckpt, "latest")).read().strip() if os.path.exists(stop_ckpt) else ""
    check(latest == f"step_{stopped:07d}", f"the checkpoint of that step is saved ({latest})")

    # An impossible layout is refused before any work.
    r, run_dir, seconds = train("layout", 3, ["training.micro_batch_size=1", "training.global_batch_size=24",
                                              "parallel.expert_model_parallel_size=2"], timeout=120)
    check(r.returncode != 0 and "parallel.expert_model_parallel_size (2) must divide" in r.stderr,
          f"3 ranks with expert parallel 2 are refused ({r.stderr.strip().splitlines()[-1:] if r.stderr else ''})")
    check(not os.path.exists(os.path.join(run_dir, "metrics.jsonl")), "before any training")

    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        sys.exit(1)


if __name__ == "__main__":
    main()
