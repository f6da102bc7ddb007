#!/usr/bin/env python3
"""How a multi-process job ends when something goes wrong, in bounded time.

Runs tests/mpi/fault_probe.cpp under mpirun:
  (a) one rank calls abort_job while the other waits in a collective: the
      job ends within seconds, non-zero, with that rank's message;
  (b) one rank skips a collective (watchdog timeout 3 s): the job ends
      within ~10 s with the watchdog's message;
  (c) a layout error (3 processes, expert-parallel size 2) is refused on
      stderr with a non-zero exit before any collective;
  (d) Ctrl-C (SIGINT to mpirun) while a rank waits in a collective ends
      every rank;
  (e) the happy path finalizes cleanly, and a process started without
      mpirun never calls an MPI function (checked with the dynamic
      loader's binding log) and reports errors without a rank.

Usage: test_faults.py --probe build/tests/deco_fault_probe --mpirun mpirun --workdir DIR
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

FAILURES = []


def check(cond, what, output=""):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)
        if output:
            print("     output was:\n" + "\n".join("     | " + l for l in output.splitlines()[-30:]))


def mpirun_env():
    env = dict(os.environ)
    # As root in a container: Open MPI's consent variables and no CMA.
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    return env


def single_process_env():
    """The environment of a process no launcher started."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_", "PMIX_"))}


def run_job(mpirun, probe, np, scenario, limit=120):
    """Runs the probe under mpirun; returns (exit code, stdout + stderr, stderr, seconds)."""
    start = time.monotonic()
    r = subprocess.run([mpirun, "-np", str(np), "--oversubscribe", probe, scenario], capture_output=True,
                       text=True, env=mpirun_env(), timeout=limit)
    return r.returncode, r.stdout + r.stderr, r.stderr, time.monotonic() - start


def alive(pid):
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_abort(mpirun, probe):
    rc, out, err, seconds = run_job(mpirun, probe, 2, "abort")
    check(rc != 0, f"(a) abort_job on one rank: mpirun exits non-zero (exit {rc})", out)
    check(seconds < 10, f"(a) ... within 10 s of the start, the failing rank waiting 1 s ({seconds:.1f} s)", out)
    check("error: rank 1 of 2: probe: this rank gave up" in err, "(a) ... and stderr holds the rank's message", out)
    check("sum" not in out, "(a) ... while the other rank never left its collective", out)


def test_stall(mpirun, probe):
    rc, out, err, seconds = run_job(mpirun, probe, 2, "stall")
    message = ("error: rank 0 of 2: all_reduce on the world group has waited 3 s; another rank has probably "
               "failed or stopped (see its error above); aborting the job")
    check(rc != 0, f"(b) a rank skipping a collective: mpirun exits non-zero (exit {rc})", out)
    check(3 <= seconds < 10, f"(b) ... after the 3 s watchdog timeout, within 10 s ({seconds:.1f} s)", out)
    check(message in err, "(b) ... with the watchdog's message naming the collective and the group", out)


def test_layout(mpirun, probe):
    rc, out, err, seconds = run_job(mpirun, probe, 3, "layout")
    check(rc != 0, f"(c) 3 processes with expert-parallel size 2: non-zero exit (exit {rc})", out)
    # Every rank finds the error and reports it; mpirun ends the job when the first of them exits, so
    # which ranks' lines get out first varies (rank 0's was missing in 1 of about 40 runs).
    check(re.search(r"error: rank [0-2] of 3: parallel\.expert_model_parallel_size \(2\) must divide the number of "
                    r"processes \(3\); launch a multiple of 2 processes or change the key\.", err) is not None,
          "(c) ... the layout message on stderr", out)
    check("entering" not in out, "(c) ... before any collective", out)
    check(seconds < 10, f"(c) ... at once ({seconds:.1f} s)", out)


def test_interrupt(mpirun, probe, workdir):
    pid_file = os.path.join(workdir, "hang.pid")
    job = subprocess.Popen([mpirun, "-np", "2", "--oversubscribe", probe, "hang", "--pid-file", pid_file],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=mpirun_env())
    # Wait until rank 0 waits in its collective (it prints before entering).
    line = job.stdout.readline()
    pids = []
    for rank in range(2):
        deadline = time.monotonic() + 30
        while not os.path.exists(f"{pid_file}.{rank}") and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(f"{pid_file}.{rank}") as f:
            pids.append(int(f.read()))
    time.sleep(0.5)
    start = time.monotonic()
    job.send_signal(signal.SIGINT)
    try:
        rest, _ = job.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        job.kill()
        rest, _ = job.communicate()
    mpirun_seconds = time.monotonic() - start
    while any(alive(p) for p in pids) and time.monotonic() - start < 30:
        time.sleep(0.05)
    all_gone_seconds = time.monotonic() - start
    check("entering all_reduce" in line, "(d) rank 0 waits in its collective", line + rest)
    check(job.returncode != 0, f"(d) Ctrl-C: mpirun exits non-zero (exit {job.returncode})", line + rest)
    check(mpirun_seconds < 5, f"(d) ... within 5 s ({mpirun_seconds:.1f} s)", line + rest)
    check(not any(alive(p) for p in pids) and all_gone_seconds < 10,
          f"(d) ... and every rank has ended within 10 s ({all_gone_seconds:.1f} s)", line + rest)


def test_clean_runs(mpirun, probe):
    rc, out, _, _ = run_job(mpirun, probe, 2, "ok")
    check(rc == 0 and "rank 0 sum 1" in out and "rank 1 sum 1" in out,
          "(e) the happy path under mpirun sums the ranks and finalizes (exit 0)", out)

    env = single_process_env()
    r = subprocess.run([probe, "ok"], capture_output=True, text=True, env=env, timeout=60)
    check(r.returncode == 0 and "rank 0 sum 0" in r.stdout, "(e) without mpirun the probe runs alone",
          r.stdout + r.stderr)
    # Functions are bound lazily, on their first call, so the loader's log
    # names every MPI function the program called.
    r = subprocess.run([probe, "ok"], capture_output=True, text=True, env=dict(env, LD_DEBUG="bindings"), timeout=60)
    calls = sorted({l.rsplit("`", 1)[1].rstrip("'") for l in r.stderr.splitlines()
                    if "deco_fault_probe [0] to" in l and "`MPI_" in l})
    check(r.returncode == 0 and not calls, f"(e) ... calling no MPI function (called: {calls})")
    r = subprocess.run([probe, "abort"], capture_output=True, text=True, env=env, timeout=60)
    check(r.returncode == 3 and r.stderr == "error: probe: this rank gave up\n",
          "(e) ... and abort_job prints 'error: <message>' and exits with the code", r.stdout + r.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--probe", required=True)
    ap.add_argument("--mpirun", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    probe = os.path.abspath(a.probe)
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    test_abort(a.mpirun, probe)
    test_stall(a.mpirun, probe)
    test_layout(a.mpirun, probe)
    test_interrupt(a.mpirun, probe, a.workdir)
    test_clean_runs(a.mpirun, probe)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        return 1
    print("all fault checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
