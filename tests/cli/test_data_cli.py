#!/usr/bin/env python3
"""End-to-end tests of `deco tokenizer train`, `deco preprocess` and `deco data inspect`.

Trains a SentencePiece model on GPL-3 (always on Debian, from base-files),
preprocesses GPL-3's paragraphs as JSONL, and reads the .idx/.bin back with
NumPy straight from the format (magic, version, dtype code, counts, lengths,
pointers, document indices), independently of deco's reader. The byte
tokenizer gives ids Python can compute itself (the UTF-8 bytes + 256), so the
tokens are checked exactly. Also the messages for bad input.

Usage: test_data_cli.py --deco build/deco --source-dir . --workdir DIR
"""
import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np

import checks
from checks import FAILURES, check

GPL3 = "/usr/share/common-licenses/GPL-3"


def run(args):
    return subprocess.run([DECO] + args, capture_output=True, text=True)


def expect_error(args, must_contain, what):
    return checks.expect_error(DECO, args, must_contain, what, only_line=False)


def paragraphs():
    text = open(GPL3, encoding="utf-8").read()
    out, cur = [], []
    for line in text.split("\n"):
        if line.strip():
            cur.append(line)
        elif cur:
            out.append("\n".join(cur))
            cur = []
    if cur:
        out.append("\n".join(cur))
    return out


def read_megatron(prefix):
    """The .idx fields and the .bin tokens, parsed from the bytes per Megatron's layout."""
    idx = open(prefix + ".idx", "rb").read()
    header = {
        "magic": idx[:9],
        "version": int(np.frombuffer(idx, "<u8", 1, 9)[0]),
        "dtype": idx[17],
        "S": int(np.frombuffer(idx, "<u8", 1, 18)[0]),
        "D": int(np.frombuffer(idx, "<u8", 1, 26)[0]),
        "size": len(idx),
    }
    s, d = header["S"], header["D"]
    lengths = np.frombuffer(idx, "<i4", s, 34)
    pointers = np.frombuffer(idx, "<i8", s, 34 + 4 * s)
    docs = np.frombuffer(idx, "<i8", d, 34 + 12 * s)
    dtypes = {8: "<u2", 4: "<i4"}
    tokens = np.fromfile(prefix + ".bin", dtype=dtypes.get(header["dtype"], "<u2"))
    return header, lengths, pointers, docs, tokens


def check_format(prefix, n_docs, dtype_code, itemsize, what):
    h, lengths, pointers, docs, tokens = read_megatron(prefix)
    check(h["magic"] == b"MMIDIDX\x00\x00", f"{what}: magic MMIDIDX\\0\\0")
    check(h["version"] == 1, f"{what}: version 1")
    check(h["dtype"] == dtype_code, f"{what}: dtype code {h['dtype']} == {dtype_code}")
    check(h["S"] == n_docs and h["D"] == n_docs + 1, f"{what}: S={h['S']}, D={h['D']} for {n_docs} documents")
    check(h["size"] == 34 + 12 * h["S"] + 8 * h["D"], f"{what}: .idx is {h['size']} bytes = 34 + 12S + 8D")
    check(os.path.getsize(prefix + ".bin") == int(lengths.sum()) * itemsize,
          f"{what}: .bin size = sum(lengths) * {itemsize}")
    expected_ptr = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) * itemsize)[:-1]])
    check(np.array_equal(pointers, expected_ptr), f"{what}: pointers are the running byte sum")
    check(np.array_equal(docs, np.arange(n_docs + 1)), f"{what}: document indices 0..S")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [tokens[offsets[i]:offsets[i + 1]] for i in range(n_docs)]


def test_train(work):
    model = os.path.join(work, "gpl3.model")
    r = run(["tokenizer", "train", "--input", GPL3, "--vocab-size", "500", "--output", model, "--threads", "1"])
    check(r.returncode == 0, f"tokenizer train exits 0 ({r.stderr.strip()!r})")
    check(os.path.isfile(model), "tokenizer train writes the .model")
    check(re.search(r"wrote .*gpl3\.model: SentencePiece bpe model, vocabulary 500, EOD id 2", r.stdout) is not None,
          f"tokenizer train reports the model: {r.stdout.strip()!r}")
    check(sorted(os.listdir(work)) == ["gpl3.model"], "no temporary files are left")
    expect_error(["tokenizer", "train", "--input", GPL3, "--vocab-size", "100", "--output",
                  os.path.join(work, "tiny.model")], ["Vocabulary size"], "vocabulary too small for the corpus")
    check(not os.path.exists(os.path.join(work, "tiny.model")), "a failed training writes no model")
    expect_error(["tokenizer", "train", "--input", os.path.join(work, "nope.txt"), "--vocab-size", "500",
                  "--output", os.path.join(work, "x.model")], ["nope.txt", "does not exist"], "missing training input")
    return model


def test_preprocess(work, model):
    paras = paragraphs()
    jsonl = os.path.join(work, "gpl3.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
        for i, p in enumerate(paras):
            f.write(json.dumps({"id": i, "text": p}) + "\n")
    n = len(paras)
    check(n > 100, f"GPL-3 has {n} paragraphs")

    # SentencePiece: the format exactly, EOD (= </s> = 2) ending every document.
    sp = os.path.join(work, "sp")
    r = run(["preprocess", "--input", jsonl, "--output-prefix", sp, "--tokenizer-type", "sentencepiece",
             "--tokenizer-model", model, "--append-eod", "--workers", "2"])
    check(r.returncode == 0, f"preprocess (sentencepiece) exits 0 ({r.stderr.strip()[-300:]!r})")
    check(f"{n:,} documents (0 empty)" in r.stderr and "tokens as uint16" in r.stderr,
          f"preprocess summary: {r.stderr.strip().splitlines()[-1]!r}")
    docs = check_format(sp, n, 8, 2, "sentencepiece dataset")
    check(all(len(d) > 1 and d[-1] == 2 for d in docs), "every document ends with EOD 2")
    check(max(int(d.max()) for d in docs) < 500, "every id is below the vocabulary 500")

    # Megatron's flag spellings: GPTSentencePieceTokenizer, --json-keys; one worker; same bytes.
    mg = os.path.join(work, "mg")
    r = run(["preprocess", "--input", jsonl, "--output-prefix", mg, "--tokenizer-type",
             "GPTSentencePieceTokenizer", "--tokenizer-model", model, "--json-keys", "text", "--append-eod",
             "--workers", "1"])
    check(r.returncode == 0, "preprocess with Megatron's flag names exits 0")
    check(open(mg + ".bin", "rb").read() == open(sp + ".bin", "rb").read()
          and open(mg + ".idx", "rb").read() == open(sp + ".idx", "rb").read(),
          "1 and 2 workers (and Megatron's names) write byte-identical files")

    # Byte tokenizer: the ids are the UTF-8 bytes, known without deco; gzipped input, another key.
    gz = os.path.join(work, "gpl3-content.jsonl.gz")
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        for p in paras:
            f.write(json.dumps({"content": p}, ensure_ascii=False) + "\n")
    by = os.path.join(work, "bytes")
    r = run(["preprocess", "--input", gz, "--output-prefix", by, "--tokenizer-type", "byte",
             "--text-key", "content", "--append-eod"])
    check(r.returncode == 0, f"preprocess (byte, .gz) exits 0 ({r.stderr.strip()[-300:]!r})")
    docs = check_format(by, n, 8, 2, "byte dataset")
    expected = [list(p.encode("utf-8")) + [256] for p in paras]
    check(all(d.tolist() == e for d, e in zip(docs, expected)), "byte ids are each paragraph's UTF-8 bytes + 256")

    # Plain text, one document per line.
    r = run(["preprocess", "--input", GPL3, "--output-prefix", os.path.join(work, "lines"),
             "--tokenizer-type", "byte"])
    nonblank = sum(1 for l in open(GPL3, encoding="utf-8").read().split("\n") if l.strip())
    check(r.returncode == 0 and f"{nonblank:,} documents" in r.stderr,
          f"plain text: one document per non-blank line ({nonblank})")
    return sp, by, paras


def test_inspect(work, model, sp, by, paras):
    _, lengths, _, _, tokens = read_megatron(sp)
    r = run(["data", "inspect", sp, "--document", "5", "--tokens", "12", "--tokenizer-type", "sentencepiece",
             "--tokenizer-model", model])
    check(r.returncode == 0, f"data inspect exits 0 ({r.stderr.strip()!r})")
    out = r.stdout
    field = lambda name: (re.search(rf"^{name}\s+(.*)$", out, re.M) or [None, ""])[1]
    check(field("dtype") == "uint16", "inspect: dtype uint16")
    check(field("sequences") == str(len(paras)) and field("documents") == str(len(paras)),
          f"inspect: {len(paras)} sequences and documents")
    check(field("tokens") == str(len(tokens)), f"inspect: {len(tokens)} tokens")
    check(field("token range") == f"min {tokens.min()}, max {tokens.max()}",
          f"inspect: token range {field('token range')!r} = NumPy's min {tokens.min()}, max {tokens.max()}")
    check(field("EOD").startswith(f"{len(paras)} of {len(paras)} documents end with EOD id 2"),
          "inspect: every document ends with EOD")
    start = int(lengths[:5].sum())
    first = " ".join(str(t) for t in tokens[start:start + 12])
    check(f"\n{first}\n" in out, "inspect: the first 12 tokens of document 5 as NumPy reads them")
    text = out.split("text:\n", 1)[-1]
    check(len(text) > 10 and paras[5].startswith(text.rstrip("\n")),
          f"inspect: detokenized text {text.strip()!r} starts paragraph 5")

    r = run(["data", "inspect", by, "--document", "0", "--tokens", "3"])
    check(r.returncode == 0 and "\n" + " ".join(str(b) for b in paras[0].encode()[:3]) + "\n" in r.stdout,
          "inspect without a tokenizer prints ids only")
    expect_error(["data", "inspect", sp, "--document", str(len(paras))], [str(len(paras)), "documents"],
                 "inspect: document out of range")
    expect_error(["data", "inspect", os.path.join(work, "missing")], ["missing.idx"], "inspect: missing dataset")


def test_bad_input(work, model):
    bad = os.path.join(work, "bad.jsonl")
    with open(bad, "w") as f:
        f.write('{"text": "one"}\n{"text": "two"}\n{"text": "three"\n{"text": "four"}\n')
    out = os.path.join(work, "bad_out")
    args = ["preprocess", "--input", bad, "--output-prefix", out, "--tokenizer-type", "byte"]
    expect_error(args, ["bad.jsonl:3:", "malformed JSON", "--on-bad-line skip"], "malformed JSON line names file:line")
    check(not any(n.startswith("bad_out") for n in os.listdir(work)), "a failed preprocess leaves no files")
    r = run(args + ["--on-bad-line", "skip"])
    check(r.returncode == 0 and "skipped 1 malformed lines" in r.stderr and "3 documents" in r.stderr
          and "bad.jsonl:3:" in r.stderr, "--on-bad-line skip warns, counts and writes the rest")
    nokey = os.path.join(work, "nokey.jsonl")
    with open(nokey, "w") as f:
        f.write('{"body": "x"}\n')
    expect_error(["preprocess", "--input", nokey, "--output-prefix", out, "--tokenizer-type", "byte"],
                 ["nokey.jsonl:1:", 'no key "text"', "body"], "missing text key")
    expect_error(["preprocess", "--input", os.path.join(work, "absent.jsonl"), "--output-prefix", out,
                  "--tokenizer-type", "byte"], ["absent.jsonl", "does not exist"], "missing input file")
    expect_error(["preprocess", "--input", bad, "--output-prefix", out, "--tokenizer-type", "sentencepiece",
                  "--tokenizer-model", os.path.join(work, "absent.model")], ["absent.model", "does not exist"],
                 "missing tokenizer model")
    expect_error(["preprocess", "--input", bad, "--output-prefix", out, "--tokenizer-type", "sentencepiece",
                  "--tokenizer-model", GPL3], ["GPL-3", "not a valid SentencePiece model"], "corrupt tokenizer model")
    expect_error(["preprocess", "--input", bad, "--output-prefix", out, "--tokenizer-type",
                  "SentencePieceTokenizer", "--tokenizer-model", model], ["GPTSentencePieceTokenizer"],
                 "Megatron's BERT-style SentencePieceTokenizer is refused with the alternative")
    expect_error(["preprocess", "--input", bad, "--output-prefix", out, "--tokenizer-type", "byte",
                  "--json-keys", "text", "title"], ["one key"], "several --json-keys")


def main():
    global DECO
    ap = argparse.ArgumentParser()
    ap.add_argument("--deco", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    DECO = os.path.abspath(a.deco)
    work = os.path.abspath(os.path.join(a.workdir, "data_cli"))
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    model = test_train(work)
    sp, by, paras = test_preprocess(work, model)
    test_inspect(work, model, sp, by, paras)
    test_bad_input(work, model)
    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
