#!/usr/bin/env python3
"""A run killed with SIGKILL and relaunched resumes exactly.

Trains configs/tiny.yaml for 60 steps with a checkpoint every 7 steps,
kills it with SIGKILL once it has saved (possibly in the middle of its next
save), relaunches the same command with checkpoint.load: auto, and checks
that metrics.jsonl then equals an uninterrupted run's, step for step and
bit for bit, and that the checkpoint directory holds only complete
checkpoints and `latest`. Then the planned stops: training.exit_interval
(stopped at 25 and 50, relaunched twice) and SIGUSR1 with
training.exit_signal_handler each save the step they stop at, exit 0, and
continue to the same metrics; training.exit_duration_in_mins stops a run
early too.

Usage: test_resume_cli.py --deco build/deco --source-dir . --workdir DIR
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from checks import FAILURES, check, finish, wait_for_steps


def rows(run_dir):
    return [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deco", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    deco = os.path.abspath(a.deco)
    work = a.workdir
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)

    def command(run_dir, save_dir, extra=()):
        sets = ["training.train_iters=60", "schedule.lr_warmup_iters=5", "schedule.lr_wsd_decay_iters=20",
                "training.eval_interval=20", "training.eval_iters=1", f"checkpoint.save={save_dir}",
                "checkpoint.save_interval=7", "checkpoint.keep_last=2", *extra]
        args = [deco, "train", "--config", os.path.join(a.source_dir, "configs/tiny.yaml"), "--run-dir", run_dir]
        for s in sets:
            args += ["--set", s]
        return args

    # The uninterrupted reference.
    ref_dir = os.path.join(work, "reference")
    r = subprocess.run(command(ref_dir, os.path.join(work, "ref_ckpt")), capture_output=True, text=True)
    check(r.returncode == 0, f"uninterrupted run ({r.stderr.strip()[-200:]})")
    reference = rows(ref_dir)

    # The same run, killed once a checkpoint exists.
    run_dir, save_dir = os.path.join(work, "run"), os.path.join(work, "ckpt")
    proc = subprocess.Popen(command(run_dir, save_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.exists(os.path.join(save_dir, "step_0000014")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(rows(run_dir))
    check(14 <= killed_at < 60, f"killed mid-run, after step {killed_at}")
    latest = open(os.path.join(save_dir, "latest")).read().strip()
    check(latest.startswith("step_"), f"latest names a complete checkpoint ({latest})")

    # Relaunch: the same command, resuming automatically.
    r = subprocess.run(command(run_dir, save_dir, ["checkpoint.load=auto"]), capture_output=True, text=True)
    check(r.returncode == 0, f"resumed run ({r.stderr.strip()[-300:]})")
    check("resumed from" in r.stdout, "the resumed run says where it resumed from")
    resumed = rows(run_dir)
    check([x["step"] for x in resumed] == list(range(1, 61)), "one metrics row per step, 1 to 60")
    same = all(x[k] == y[k] for x, y in zip(resumed, reference)
               for k in ("lm_loss", "reg_loss", "grad_norm", "reg_coef", "lr", "activation_ratio",
                         "activation_ratio_per_layer"))
    check(same and len(resumed) == len(reference), "every step's metrics equal the uninterrupted run's exactly")
    vals = [(x["step"], x.get("val_loss")) for x in resumed if "val_loss" in x]
    check(vals == [(x["step"], x.get("val_loss")) for x in reference if "val_loss" in x],
          f"validation losses equal too ({vals})")
    entries = sorted(os.listdir(save_dir))
    check(entries == ["latest", "step_0000056", "step_0000060"],
          f"keep_last 2 leaves the last two checkpoints and no temporaries ({entries})")

    # Planned stops (training.exit_interval, exit_signal_handler): the run
    # saves the step it stopped at and exits 0, and relaunching with
    # checkpoint.load: auto continues it to the uninterrupted run's metrics.
    def same_as_reference(run, what):
        got = rows(run)
        check([x["step"] for x in got] == list(range(1, 61)), f"{what}: one metrics row per step, 1 to 60")
        check(all(x[k] == y[k] for x, y in zip(got, reference)
                  for k in ("lm_loss", "reg_loss", "grad_norm", "reg_coef", "lr", "activation_ratio")),
              f"{what}: every step's metrics equal the uninterrupted run's exactly")

    run_dir, save_dir = os.path.join(work, "interval"), os.path.join(work, "interval_ckpt")
    stops = []
    for _ in range(3):  # stops at 25 and 50, then runs to the end
        r = subprocess.run(command(run_dir, save_dir, ["training.exit_interval=25", "checkpoint.load=auto"]),
                           capture_output=True, text=True)
        check(r.returncode == 0, f"a run with training.exit_interval 25 exits 0 ({r.stderr.strip()[-300:]})")
        stops.append(next((l for l in r.stdout.splitlines() if l.startswith("stopped at")), "done"))
    check(stops[0].startswith("stopped at step 25 of 60: the step is a multiple of training.exit_interval (25); "
                              f"saved {save_dir}/step_0000025"), f"the first stops at 25 and says so ({stops[0]})")
    check(stops[1].startswith("stopped at step 50 of 60") and stops[2] == "done",
          f"the second stops at 50, the third finishes ({stops[1:]})")
    same_as_reference(run_dir, "25 + 25 + 10 steps (exit_interval)")

    run_dir, save_dir = os.path.join(work, "duration"), os.path.join(work, "duration_ckpt")
    r = subprocess.run(command(run_dir, save_dir, ["training.exit_duration_in_mins=0.002"]), capture_output=True,
                       text=True)
    line = next((l for l in r.stdout.splitlines() if l.startswith("stopped at")), "")
    check(r.returncode == 0 and "the run has lasted training.exit_duration_in_mins (0.002 minutes)" in line,
          f"training.exit_duration_in_mins 0.002 stops the run early ({line or r.stderr.strip()[-200:]})")

    run_dir, save_dir = os.path.join(work, "signal"), os.path.join(work, "signal_ckpt")
    stopping = ["training.exit_signal_handler=true", "training.exit_signal=SIGUSR1"]
    proc = subprocess.Popen(command(run_dir, save_dir, stopping), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_steps(run_dir, 3, timeout=300)
    proc.send_signal(signal.SIGUSR1)
    out, err = finish(proc, timeout=120)
    stopped = len(rows(run_dir))
    check(proc.returncode == 0, f"SIGUSR1 with training.exit_signal_handler: exit 0 ({err.strip()[-300:]})")
    check(3 <= stopped < 60, f"it stopped early, after step {stopped}")
    check(f"stopped at step {stopped} of 60: SIGUSR1 was received (training.exit_signal_handler); "
          f"saved {save_dir}/step_{stopped:07d}" in out, "it says where it stopped and what it saved")
    latest = open(os.path.join(save_dir, "latest")).read().strip()
    check(latest == f"step_{stopped:07d}", f"latest names the stopped step ({latest})")
    r = subprocess.run(command(run_dir, save_dir, [*stopping, "checkpoint.load=auto"]), capture_output=True, text=True)
    check(r.returncode == 0, f"the run continues ({r.stderr.strip()[-300:]})")
    same_as_reference(run_dir, f"{stopped} steps + SIGUSR1 + the rest")

    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
