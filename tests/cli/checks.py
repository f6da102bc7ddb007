"""What every command-line test shares: one "ok"/"FAIL" line per check, the
list of failures the test's exit status comes from, and how a user error
must look."""
import os
import subprocess
import time

FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def run_deco(deco, args, **kw):
    """`deco ARGS`, output captured as text."""
    return subprocess.run([deco] + list(args), capture_output=True, text=True, **kw)


def expect_error(deco, args, must_contain, what, only_line=True):
    """A user error: exit code 1 (not a crash) and an "error: ..." line naming
    the thing: the only line on stderr, or (only_line=False, for commands
    that log progress first) the last one."""
    r = run_deco(deco, args)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    ok = (r.returncode == 1 and len(lines) >= 1 and (len(lines) == 1 or not only_line)
          and lines[-1].startswith("error: ") and all(s in lines[-1] for s in must_contain))
    check(ok, f"{what}: exit {r.returncode}, stderr {r.stderr.strip()!r}")
    return r


def train_command(deco, config, run_dir, sets, np_=1, mpirun=None, extra_args=()):
    """`deco train` of CONFIG into RUN_DIR with each of SETS as --set, under
    `mpirun -np NP --oversubscribe` (2 cores run 4 ranks) when NP > 1."""
    args = [deco, "train", "--config", config, "--run-dir", run_dir, *extra_args]
    for s in sets:
        args += ["--set", s]
    return [mpirun, "-np", str(np_), "--oversubscribe", *args] if np_ > 1 else args


def steps_logged(run_dir):
    """Complete lines of RUN_DIR/metrics.jsonl so far (deco may be writing the next one)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    return open(path).read().count("\n") if os.path.exists(path) else 0


def wait_for_steps(run_dir, steps, timeout):
    """Polls until the running deco has logged `steps` steps, or `timeout` seconds pass."""
    deadline = time.time() + timeout
    while time.time() < deadline and steps_logged(run_dir) < steps:
        time.sleep(0.01)


def finish(proc, timeout):
    """(stdout, stderr) of a Popen'd process once it ends; killed after `timeout` seconds."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()
