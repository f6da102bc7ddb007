#!/usr/bin/env python3
"""From raw text to a trained model, as a user would do it offline.

Trains a SentencePiece tokenizer on a text every Debian system ships
(/usr/share/common-licenses/GPL-3, from base-files), preprocesses it into a
Megatron indexed dataset, trains configs/tiny.yaml on it with a validation
split, and checks the loss falls, validation runs, the loader keeps up, the
samples command agrees with the corpus, and a vocabulary too small for the
corpus is refused naming the file.

Usage: test_train_on_text.py --deco build/deco --source-dir . --workdir DIR
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np

from checks import FAILURES, check

TEXT = "/usr/share/common-licenses/GPL-3"


def deco(*args):
    return subprocess.run([DECO, *args], capture_output=True, text=True)


def main():
    global DECO
    ap = argparse.ArgumentParser()
    ap.add_argument("--deco", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    DECO = os.path.abspath(a.deco)
    work = a.workdir
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    if not os.path.exists(TEXT):
        print(f"{TEXT} is missing (Debian's base-files ships it)")
        return 1

    # 1. Tokenizer and corpus: one document per paragraph.
    model = os.path.join(work, "gpl.model")
    r = deco("tokenizer", "train", "--input", TEXT, "--vocab-size", "500", "--output", model)
    check(r.returncode == 0, f"tokenizer train ({r.stderr.strip()[-200:]})")
    jsonl = os.path.join(work, "gpl.jsonl")
    paragraphs = [p.strip() for p in open(TEXT).read().split("\n\n") if p.strip()]
    with open(jsonl, "w") as f:
        for p in paragraphs:
            f.write(json.dumps({"text": p}) + "\n")
    prefix = os.path.join(work, "gpl")
    r = deco("preprocess", "--input", jsonl, "--output-prefix", prefix, "--tokenizer-type", "sentencepiece",
             "--tokenizer-model", model, "--append-eod", "--workers", "2")
    check(r.returncode == 0 and os.path.exists(prefix + ".bin") and os.path.exists(prefix + ".idx"),
          f"preprocess writes gpl.bin/.idx ({r.stderr.strip()[-200:]})")
    tokens = np.fromfile(prefix + ".bin", dtype=np.uint16)
    print(f"corpus: {len(paragraphs)} documents, {tokens.size} tokens, max id {tokens.max()}")

    # 2. Train on it: 64-token sequences, 90/10/0 split, ~7 epochs of the training split.
    run_dir = os.path.join(work, "run")
    sets = ["model.vocab_size=512", "model.seq_length=64", f"data.data_path={prefix}", "data.split=90,10,0",
            f"data.data_cache_path={os.path.join(work, 'cache')}", "training.train_iters=80",
            "training.eval_interval=40", "training.eval_iters=1", "training.log_interval=20",
            "schedule.lr_warmup_iters=8", "schedule.lr_wsd_decay_iters=20"]
    args = ["train", "--config", os.path.join(a.source_dir, "configs/tiny.yaml"), "--run-dir", run_dir]
    for s in sets:
        args += ["--set", s]
    r = deco(*args)
    check(r.returncode == 0, f"deco train on the preprocessed corpus ({r.stderr.strip()[-300:]})")
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))] if r.returncode == 0 else []
    if rows:
        first, last = rows[0]["lm_loss"], np.mean([x["lm_loss"] for x in rows[-10:]])
        check(abs(first - math.log(512)) < 0.2, f"starts near ln(512) ({first:.3f})")
        check(last < first - 1.5, f"loss falls by a wide margin ({first:.3f} -> {last:.3f})")
        vals = [x["val_loss"] for x in rows if "val_loss" in x]
        check(len(vals) == 2 and vals[-1] < first - 1.0, f"validation at steps 40 and 80 ({vals})")
        wait = sum(x["data_wait_s"] for x in rows[1:])
        step = sum(x["step_time_s"] for x in rows[1:])
        print(f"loader wait: {wait:.4f} s of {step:.2f} s of steps ({100 * wait / step:.3f}%)")
        check(wait < 0.05 * step, "the prefetching loader keeps up (waits < 5% of step time)")
        check(os.path.isdir(os.path.join(work, "cache")) and len(os.listdir(os.path.join(work, "cache"))) > 0,
              "sample indices cached in data.data_cache_path")

    # 3. The samples command writes what the loader feeds: each sample is a
    #    run of seq_length + 1 consecutive corpus tokens (within a document
    #    or across document boundaries of the shuffled document order).
    out = os.path.join(work, "samples.npy")
    r = deco("data", "samples", "--config", os.path.join(a.source_dir, "configs/tiny.yaml"),
             *sum((["--set", s] for s in sets), []), "--first", "8", "--out", out)
    check(r.returncode == 0, f"data samples ({r.stderr.strip()[-200:]})")
    if r.returncode == 0:
        s = np.load(out)
        check(s.shape == (8, 65) and s.max() < 512, f"samples are [8, 65] ids below the vocabulary {s.shape}")
        corpus = tokens.tobytes()
        inside = sum(1 for row in s if row[:20].astype(np.uint16).tobytes() in corpus)
        check(inside >= 6, f"sample starts are runs of the corpus ({inside} of 8 found verbatim)")

    # 4. A vocabulary smaller than the corpus's ids is refused, naming the file.
    small = deco("train", "--config", os.path.join(a.source_dir, "configs/tiny.yaml"), "--run-dir",
                 os.path.join(work, "small"), *sum((["--set", s] for s in sets + ["model.vocab_size=300"]), []))
    check(small.returncode == 1 and "gpl.bin" in small.stderr and "model.vocab_size" in small.stderr,
          f"vocab too small is refused naming the .bin ({small.stderr.strip()})")

    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
