#!/usr/bin/env python3
"""The console: plain log lines when stdout is not a terminal, and a live
progress bar (redrawn with carriage returns) when it is one (a pseudo-terminal here).

Usage: test_console.py --deco build/deco --source-dir . --workdir DIR
"""
import argparse
import os
import pty
import shutil
import subprocess
import sys

from checks import FAILURES, check


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deco", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    args = lambda run: [a.deco, "train", "--config", os.path.join(a.source_dir, "configs/tiny.yaml"),
                        "--set", "training.train_iters=30", "--set", "schedule.lr_warmup_iters=5",
                        "--set", "schedule.lr_wsd_decay_iters=5", "--set", "training.log_interval=10",
                        "--run-dir", os.path.join(a.workdir, run)]

    plain = subprocess.run(args("plain"), capture_output=True, text=True)
    check(plain.returncode == 0, "trains with stdout to a pipe")
    check("\r" not in plain.stdout and "[==" not in plain.stdout, "no progress bar when stdout is not a terminal")
    steps = [l for l in plain.stdout.splitlines() if l.startswith(" step ")]
    check(len(steps) == 4, f"log lines at steps 1, 10, 20, 30 ({len(steps)})")
    check(all("ETA" in l for l in steps[:-1]) and "ETA" not in steps[-1], "an ETA on every line but the last")

    master, slave = pty.openpty()
    proc = subprocess.Popen(args("tty"), stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        out += chunk
    proc.wait()
    os.close(master)
    text = out.decode(errors="replace")
    check(proc.returncode == 0, "trains on a terminal")
    check(text.count("\r[") >= 20, f"a progress bar redrawn every step ({text.count(chr(13) + '[')} times)")
    check("| ETA " in text and " 15/30 " in text, "with the step count and the ETA")
    check("done: 30 steps" in text, "and the run's last line")

    print(f"{len(FAILURES)} failure(s)" if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
