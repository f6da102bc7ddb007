#!/usr/bin/env python3
"""scripts/scaling_runs.sh on two small scales (tiny-sized DECO and dense
configs written here, 20 steps each), as a user runs the paper's four:

- every run trains in its own directory with checkpoints, and `deco report
  --compare` summarizes them: a table in order of parameters on stdout and in
  scaling_report.html, whose scaling chart has a DECO and a dense line;
- relaunching the script trains nothing again (each run resumes at its last
  step and ends); a run that died before its first checkpoint is moved aside,
  not deleted, and trained again; --report-only only reports;
- --slurm --no-submit writes a Slurm array script with one task per run;
- a scale without configs is one clear error.

Usage: test_scaling.py --deco build/deco --source-dir . --workdir DIR
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import yaml

from checks import FAILURES, check

STEPS = 20


def write_configs(src, configs):
    """deco-s1/dense-s1 (hidden 64) and deco-s2/dense-s2 (hidden 128) from configs/tiny.yaml."""
    os.makedirs(configs)
    tiny = yaml.safe_load(open(os.path.join(src, "configs/tiny.yaml")))
    for scale, hidden, ffn in [("s1", 64, 176), ("s2", 128, 352)]:
        for kind in ["deco", "dense"]:
            c = json.loads(json.dumps(tiny))
            c["model"].update(hidden_size=hidden, ffn_hidden_size=ffn, num_experts=16 if kind == "deco" else 0)
            c["training"].update(train_iters=STEPS, eval_interval=10, log_interval=10)
            c["schedule"].update(lr_warmup_iters=2, lr_wsd_decay_iters=4)
            with open(os.path.join(configs, f"{kind}-{scale}.yaml"), "w") as f:
                yaml.safe_dump(c, f)


def rows(run_dir):
    return [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if l.strip()]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--deco", required=True)
    p.add_argument("--source-dir", required=True)
    p.add_argument("--workdir", required=True)
    a = p.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    configs, out = os.path.join(a.workdir, "configs"), os.path.join(a.workdir, "scaling")
    write_configs(a.source_dir, configs)
    script = os.path.join(a.source_dir, "scripts/scaling_runs.sh")
    base = [script, "--deco", os.path.abspath(a.deco), "--configs", configs, "--out", out, "--scales", "s1 s2",
            "--save-interval", "10"]
    names = ["deco-s1", "dense-s1", "deco-s2", "dense-s2"]

    r = subprocess.run(base, capture_output=True, text=True)
    check(r.returncode == 0, f"scaling_runs.sh: exit {r.returncode} {r.stderr.strip()[-400:]!r}")
    if r.returncode != 0:
        print(r.stdout[-2000:])
        return 1
    for n in names:
        d = os.path.join(out, n)
        got = rows(d) if os.path.exists(os.path.join(d, "metrics.jsonl")) else []
        check([x["step"] for x in got] == list(range(1, STEPS + 1)), f"{n}: steps 1..{STEPS} in its run directory")
        check(os.path.exists(os.path.join(d, "checkpoints/latest")), f"{n}: checkpoints in its run directory")
    table = [l.split() for l in r.stdout.splitlines() if l.split() and l.split()[0] in names]
    check([t[0] for t in table] == ["dense-s1", "deco-s1", "dense-s2", "deco-s2"],
          f"the summary table on stdout, in order of parameters: {[t[0] for t in table]}")
    final = {n: sum(x["lm_loss"] for x in rows(os.path.join(out, n))[-2:]) / 2 for n in names}
    check(all(t[5] == f"{final[t[0]]:.4g}" for t in table), "with each run's final train loss (last 10% of steps)")
    report = os.path.join(out, "scaling_report.html")
    check(os.path.exists(report), "scaling_report.html")
    if os.path.exists(report):
        text = open(report).read()
        chart = re.search(r'data-chart="scaling".*?</svg>', text, re.S)
        series = re.findall(r'<g class="series" data-label="([^"]+)">', chart.group(0)) if chart else []
        check(series == ["DECO: final train loss", "DECO: last val loss", "dense: final train loss",
                         "dense: last val loss"], f"scaling chart: DECO and dense series ({series})")
        lines = re.findall(r'<polyline[^>]*points="([^"]*)"', chart.group(0)) if chart else []
        check(len(lines) == 4 and all(len(l.split()) == 2 for l in lines), "each joining the two scales")

    # Relaunch: nothing is trained again.
    r = subprocess.run(base, capture_output=True, text=True)
    check(r.returncode == 0 and all(len(rows(os.path.join(out, n))) == STEPS for n in names),
          f"relaunching resumes each finished run at its last step: exit {r.returncode}, no new rows")
    # A run that died before its first checkpoint: moved aside, trained again.
    shutil.rmtree(os.path.join(out, "dense-s2/checkpoints"))
    r = subprocess.run(base, capture_output=True, text=True)
    aside = [d for d in os.listdir(out) if d.startswith("dense-s2.incomplete-")]
    check(r.returncode == 0 and len(aside) == 1 and os.path.exists(os.path.join(out, aside[0], "metrics.jsonl")),
          f"an unresumable run is moved aside ({aside}), its files kept")
    check(len(rows(os.path.join(out, "dense-s2"))) == STEPS, "and trained again from the start")

    r = subprocess.run(base + ["--report-only"], capture_output=True, text=True)
    check(r.returncode == 0 and "training" not in r.stdout and "deco-s2" in r.stdout,
          f"--report-only reports without training: exit {r.returncode}")

    # Slurm: one array task per run.
    r = subprocess.run(base + ["--slurm", "--no-submit", "--launcher", "mpirun -np 2", "--sbatch",
                               "--nodes=1 --time=01:00:00"], capture_output=True, text=True)
    sbatch = os.path.join(out, "scaling.sbatch")
    check(r.returncode == 0 and os.path.exists(sbatch), f"--slurm --no-submit writes {sbatch}")
    if os.path.exists(sbatch):
        text = open(sbatch).read()
        syntax = subprocess.run(["bash", "-n", sbatch], capture_output=True, text=True)
        tasks = re.findall(r"^  (\d)\) exec mpirun -np 2 \S+ train --config (\S+) --run-dir (\S+) ", text, re.M)
        check(syntax.returncode == 0 and "#SBATCH --array=0-3" in text and "#SBATCH --nodes=1" in text
              and "#SBATCH --time=01:00:00" in text, "a valid script with the array and the extra #SBATCH lines")
        check([t[0] for t in tasks] == ["0", "1", "2", "3"] and
              [os.path.basename(t[1]) for t in tasks] == [n + ".yaml" for n in names] and
              all(t[2].endswith(n) for t, n in zip(tasks, names)) and text.count("checkpoint.load=auto") == 4,
              f"one task per run, launched by mpirun, resuming from its checkpoints: {tasks}")

    r = subprocess.run(base + ["--scales", "9b"], capture_output=True, text=True)
    check(r.returncode == 1 and "deco-9b.yaml does not exist" in r.stderr,
          f"an unknown scale: one error line ({r.stderr.strip()!r})")

    print(f"{len(FAILURES)} failure(s)" if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
