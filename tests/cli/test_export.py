#!/usr/bin/env python3
"""`deco export` and `deco import` against independent readers and writers.

deco init -> deco export (fp32 and bf16) -> the Python `safetensors` package
reads every tensor with the names, shapes and dtype of deco-model.md section 6
and the values h5py reads from the weights file (bf16: exactly PyTorch's
round-to-nearest-even of them); config.json holds the architecture keys;
deco import gives the weights back bit for bit (bf16: their rounding). A file
written by the `safetensors` package itself (F16 and F32 mixed) imports
exactly. Bad input (a config of another shape, no model.safetensors, a
config.json that disagrees, a truncated file) is one line naming the problem.

Usage: test_export.py --deco build/deco --source-dir . --workdir DIR --pydeps build/pydeps
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import yaml

import checks
from checks import FAILURES, check


def run(args):
    return subprocess.run([DECO] + args, capture_output=True, text=True)


def run_ok(args, what):
    r = run(args)
    check(r.returncode == 0, f"{what}: exit {r.returncode} {r.stderr.strip()!r}")
    return r


def expect_error(args, must_contain, what):
    return checks.expect_error(DECO, args, must_contain, what, only_line=True)


def read_h5(path):
    with h5py.File(path, "r") as f:
        return {name: ds[()] for name, ds in f["model"].items()}


def bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def expected_names(layers, dense_layers, gated, with_gamma, experts=True):
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(layers):
        p = f"model.layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        names |= {p + f"self_attn.{x}_proj.weight" for x in "qkvo"}
        if not experts or i < dense_layers:
            names |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
            continue
        names |= {p + "mlp.moe_router.weight", p + "mlp.router_norm.weight",
                  p + "mlp.expert_up_proj.weight", p + "mlp.expert_down_proj.weight"}
        names |= {p + f"mlp.shared_experts.{x}_proj.weight" for x in ("gate", "up", "down")}
        if gated:
            names.add(p + "mlp.expert_gate_proj.weight")
        if with_gamma:
            names.add(p + "mlp.expert_act.rms_norm.weight")
    return names


def test_fp32_round_trip(work, tiny):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    w = os.path.join(work, "W.h5")
    out = os.path.join(work, "fp32")
    run_ok(["init", "--config", tiny, "--out", w], "deco init")
    r = run_ok(["export", "--checkpoint", w, "--out", out, "--dtype", "fp32", "--config", tiny],
               "deco export --dtype fp32")
    check("965,904 parameters in 54 tensors (float32)" in r.stdout,
          f"export reports its size: {r.stdout.strip()!r}")
    check(sorted(os.listdir(out)) == ["config.json", "model.safetensors"],
          f"export writes exactly model.safetensors and config.json: {sorted(os.listdir(out))}")

    ref = read_h5(w)
    got = load_file(os.path.join(out, "model.safetensors"))
    check(set(got) == expected_names(4, 1, False, True),
          "safetensors.numpy reads the names of deco-model.md section 6")
    check(set(got) == set(ref), f"same {len(ref)} tensors as the .h5")
    check(got["model.embed_tokens.weight"].shape == (512, 128)
          and got["model.layers.1.mlp.expert_up_proj.weight"].shape == (16 * 32, 128)
          and got["model.layers.1.mlp.expert_down_proj.weight"].shape == (128, 16 * 32)
          and got["model.layers.1.mlp.router_norm.weight"].shape == (16,)
          and got["model.layers.1.mlp.expert_act.rms_norm.weight"].shape == (32,),
          "logical shapes, [out, in] for matrices")
    check(all(got[k].dtype == np.float32 for k in got), "every tensor is F32")
    check(all(bits_equal(got[k], ref[k]) for k in ref), "fp32 values equal h5py's read bit for bit")
    check(float(got["model.layers.2.mlp.router_norm.weight"][0]) == np.float32(0.1),
          "expert scales hold their init 0.1")
    with safe_open(os.path.join(out, "model.safetensors"), framework="np") as f:
        meta = f.metadata()
    check(meta.get("format") == "pt", f"metadata format pt (transformers requires it): {meta}")

    cfg = json.load(open(os.path.join(out, "config.json")))
    model = yaml.safe_load(open(tiny))["model"]
    want = {
        "num_layers": 4, "hidden_size": 128, "ffn_hidden_size": 352, "num_attention_heads": 4,
        "num_query_groups": 4, "num_experts": 16, "moe_ffn_hidden_size": 32,
        "moe_shared_expert_intermediate_size": 32, "moe_layer_freq": [0, 1, 1, 1],
        "expert_act_func": "norm_silu", "expert_not_gated": True, "router_act_func": "relu",
        "norm_epsilon": 1e-5, "vocab_size": 512, "seq_length": 128, "max_position_embeddings": 128,
        "rotary_base": 10000.0, "init_method_std": 0.02, "dense_layers": 1,
        "router_scale_init": 0.1, "torch_dtype": "float32",
    }
    for key, value in want.items():
        check(cfg.get(key) == value, f"config.json {key} = {cfg.get(key)!r}, want {value!r}")
    check(model["hidden_size"] == cfg["hidden_size"] and model["num_experts"] == cfg["num_experts"],
          "config.json agrees with tiny.yaml")

    w2 = os.path.join(work, "W2.h5")
    r = run_ok(["import", "--safetensors", out, "--config", tiny, "--out", w2], "deco import fp32")
    back = read_h5(w2)
    check(set(back) == set(ref) and all(bits_equal(back[k], ref[k]) for k in ref),
          "init -> export fp32 -> import is bit-identical")

    # Exporting again replaces the files in place, leaving no temporaries.
    run_ok(["export", "--checkpoint", w, "--out", out, "--dtype", "fp32", "--config", tiny], "re-export")
    check(sorted(os.listdir(out)) == ["config.json", "model.safetensors"],
          "re-export leaves no temporaries")
    return w, out


def test_bf16(work, tiny, w):
    import torch
    from safetensors.torch import load_file

    out = os.path.join(work, "bf16")
    # No --config: the config deco init stored in W.h5; bf16 is the default.
    r = run_ok(["export", "--checkpoint", w, "--out", out], "deco export (stored config, default bf16)")
    check("(bfloat16)" in r.stdout, f"bf16 is the default: {r.stdout.strip()!r}")
    ref = read_h5(w)
    got = load_file(os.path.join(out, "model.safetensors"))
    check(set(got) == set(ref), "bf16 export has every tensor")
    check(all(got[k].dtype == torch.bfloat16 for k in got), "every tensor is BF16")
    rounded = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in ref.items()}
    check(all(torch.equal(got[k].view(torch.int16), rounded[k].view(torch.int16)) for k in ref),
          "bf16 values equal PyTorch's round-to-nearest-even of the float32 weights, bit for bit")
    ulp_ok = all(bool((np.abs(got[k].float().numpy() - ref[k]) <= np.abs(ref[k]) * 2.0 ** -8).all())
                 for k in ref)
    check(ulp_ok, "every bf16 value is within half a bf16 ulp of its float32 source")
    cfg = json.load(open(os.path.join(out, "config.json")))
    check(cfg.get("torch_dtype") == "bfloat16", "config.json torch_dtype bfloat16")

    w3 = os.path.join(work, "W3.h5")
    run_ok(["import", "--safetensors", out, "--config", tiny, "--out", w3], "deco import bf16")
    back = read_h5(w3)
    check(all(bits_equal(back[k], rounded[k].float().numpy()) for k in ref),
          "export bf16 -> import gives exactly the bf16 rounding of the weights")

    # deco eval reads the imported file; bf16 weights move the loss only slightly.
    tokens = os.path.join(work, "tokens.npy")
    run_ok(["data", "samples", "--config", tiny, "--first", "2", "--out", tokens], "data samples")
    losses = []
    for weights in (w, w3):
        r = run_ok(["eval", "--config", tiny, "--weights", weights, "--tokens", tokens], f"eval {weights}")
        losses.append(json.loads(r.stdout)["lm_loss"] if r.returncode == 0 else float("nan"))
    check(abs(losses[0] - losses[1]) < 1e-2 and abs(losses[0] - np.log(512)) < 0.1,
          f"deco eval of the imported bf16 weights: lm_loss {losses[1]:.5f} vs {losses[0]:.5f} (float32)")
    return out


def test_python_written_file(work, tiny, w):
    """A file from the safetensors package itself: F16 and F32 tensors mixed."""
    from safetensors.numpy import save_file

    ref = read_h5(w)
    d = os.path.join(work, "from_python")
    os.makedirs(d, exist_ok=True)
    tensors = {}
    for i, (k, v) in enumerate(sorted(ref.items())):
        tensors[k] = v.astype(np.float16) if i % 2 == 0 else v
    save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    w4 = os.path.join(work, "W4.h5")
    run_ok(["import", "--safetensors", d, "--config", tiny, "--out", w4],
           "import a file the safetensors package wrote")
    back = read_h5(w4)
    check(all(bits_equal(back[k], tensors[k].astype(np.float32)) for k in ref),
          "F16 and F32 tensors written by the safetensors package import exactly")


def test_variants(work, tiny):
    """Gated experts with plain SiLU (no gamma), and a dense model."""
    from safetensors.numpy import load_file

    for tag, sets, names in [
        ("gated_silu", ["--set", "model.expert_gated=true", "--set", "model.expert_act=silu"],
         expected_names(4, 1, True, False)),
        ("dense", ["--set", "model.num_experts=0"], expected_names(4, 0, False, False, experts=False)),
    ]:
        w = os.path.join(work, f"{tag}.h5")
        out = os.path.join(work, tag)
        run_ok(["init", "--config", tiny, "--out", w] + sets, f"{tag}: init")
        run_ok(["export", "--checkpoint", w, "--out", out, "--dtype", "fp32"], f"{tag}: export")
        got = load_file(os.path.join(out, "model.safetensors"))
        check(set(got) == names, f"{tag}: tensor names")
        cfg = json.load(open(os.path.join(out, "config.json")))
        if tag == "dense":
            check(cfg["num_experts"] is None and cfg["moe_layer_freq"] == [0, 0, 0, 0],
                  f"{tag}: num_experts null, moe_layer_freq all dense: "
                  f"{cfg['num_experts']}, {cfg['moe_layer_freq']}")
        else:
            check(cfg["expert_not_gated"] is False and cfg["expert_act_func"] == "silu",
                  f"{tag}: expert_not_gated false, expert_act_func silu")
        w2 = os.path.join(work, f"{tag}_back.h5")
        run_ok(["import", "--safetensors", out, "--config", tiny, "--out", w2] + sets, f"{tag}: import")
        ref, back = read_h5(w), read_h5(w2)
        check(all(bits_equal(back[k], ref[k]) for k in ref), f"{tag}: round trip is bit-identical")


def test_checkpoint(work, tiny):
    """A training run's checkpoints: a save directory (its latest) and a step directory."""
    from safetensors.numpy import load_file

    save = os.path.join(work, "save")
    sets = ["training.train_iters=4", "schedule.lr_warmup_iters=1", "schedule.lr_wsd_decay_iters=2",
            "training.eval_interval=0", f"checkpoint.save={save}", "checkpoint.save_interval=2"]
    args = ["train", "--config", tiny, "--run-dir", os.path.join(work, "run")]
    for x in sets:
        args += ["--set", x]
    r = run(args)
    check(r.returncode == 0 and os.path.isdir(os.path.join(save, "step_0000004")),
          f"a 4-step run saves checkpoints: exit {r.returncode} {r.stderr.strip()[-300:]!r}")
    if r.returncode != 0:
        return
    out = os.path.join(work, "from_save_dir")
    # No --config: the run's config comes from the checkpoint's state.h5.
    r = run_ok(["export", "--checkpoint", save, "--out", out, "--dtype", "fp32"],
               "export a save directory without --config")
    check("step_0000004" in r.stdout, f"a save directory exports its latest step: {r.stdout.strip()!r}")
    ref = read_h5(os.path.join(save, "step_0000004", "model.h5"))
    got = load_file(os.path.join(out, "model.safetensors"))
    check(set(got) == set(ref) and all(bits_equal(got[k], ref[k]) for k in ref),
          "the exported tensors are the checkpoint's float32 master weights, bit for bit")
    trained = ref["model.layers.1.mlp.router_norm.weight"]
    check(not np.all(trained == np.float32(0.1)), "the checkpoint holds trained (not initial) weights")
    w = os.path.join(work, "from_ckpt.h5")
    run_ok(["import", "--safetensors", out, "--config", tiny, "--out", w], "import a checkpoint's export")
    back = read_h5(w)
    check(all(bits_equal(back[k], ref[k]) for k in ref), "checkpoint -> export -> import is bit-identical")

    step2 = os.path.join(save, "step_0000002")
    run_ok(["export", "--checkpoint", step2, "--out", os.path.join(work, "from_step"), "--dtype", "fp32"],
           "export a step directory")
    ref2 = read_h5(os.path.join(step2, "model.h5"))
    got2 = load_file(os.path.join(work, "from_step", "model.safetensors"))
    check(all(bits_equal(got2[k], ref2[k]) for k in ref2)
          and not all(bits_equal(ref2[k], ref[k]) for k in ref),
          "a step directory exports its own weights (step 2, not the latest)")
    expect_error(["export", "--checkpoint", step2, "--out", os.path.join(work, "e"), "--config", tiny,
                  "--set", "model.expert_gated=true"],
                 ["step_0000002/model.h5", "expert_gate_proj"], "export a checkpoint with a wrong config")


def test_bad_input(work, tiny, w, fp32_dir):
    expect_error(["import", "--safetensors", fp32_dir, "--config", tiny, "--set", "model.hidden_size=64",
                  "--out", os.path.join(work, "x.h5")],
                 ["model.embed_tokens.weight", "[512, 128]", "[512, 64]", "hidden_size = 128",
                  "model.hidden_size = 64"],
                 "import with a config of another shape names the tensor and both shapes")
    empty = os.path.join(work, "empty_dir")
    os.makedirs(empty, exist_ok=True)
    expect_error(["import", "--safetensors", empty, "--config", tiny, "--out", os.path.join(work, "x.h5")],
                 ["empty_dir", "model.safetensors"], "missing model.safetensors")

    bad = os.path.join(work, "bad_config_json")
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(fp32_dir, bad)
    cfg = json.load(open(os.path.join(bad, "config.json")))
    cfg["expert_act_func"] = "silu"
    json.dump(cfg, open(os.path.join(bad, "config.json"), "w"))
    expect_error(["import", "--safetensors", bad, "--config", tiny, "--out", os.path.join(work, "x.h5")],
                 ["config.json", 'expert_act_func = "silu"', "model.expert_act = norm_silu"],
                 "config.json disagreeing with --config names the key and both values")
    cfg["expert_act_func"] = "norm_silu"
    cfg["norm_epsilon"] = 1e-6
    json.dump(cfg, open(os.path.join(bad, "config.json"), "w"))
    expect_error(["import", "--safetensors", bad, "--config", tiny, "--out", os.path.join(work, "x.h5")],
                 ["norm_epsilon", "1e-06", "1e-05"], "a different norm_epsilon is refused")
    cfg["norm_epsilon"] = 1e-5
    cfg["moe_layer_freq"] = "([0]*2+[1]*2)"
    json.dump(cfg, open(os.path.join(bad, "config.json"), "w"))
    expect_error(["import", "--safetensors", bad, "--config", tiny, "--out", os.path.join(work, "x.h5")],
                 ["moe_layer_freq", "([0]*2+[1]*2)", "model.dense_layers = 1", "[0,1,1,1]"],
                 "Megatron's moe_layer_freq expression is understood and compared")
    cfg["moe_layer_freq"] = "([0]*1+[1]*3)"
    json.dump(cfg, open(os.path.join(bad, "config.json"), "w"))
    r = run(["import", "--safetensors", bad, "--config", tiny, "--out", os.path.join(work, "expr.h5")])
    check(r.returncode == 0, f"the matching expression ([0]*1+[1]*3) imports: {r.stderr.strip()!r}")

    trunc = os.path.join(work, "truncated")
    os.makedirs(trunc, exist_ok=True)
    data = open(os.path.join(fp32_dir, "model.safetensors"), "rb").read()
    open(os.path.join(trunc, "model.safetensors"), "wb").write(data[: len(data) - 100])
    expect_error(["import", "--safetensors", trunc, "--config", tiny, "--out", os.path.join(work, "x.h5")],
                 ["model.safetensors", "lm_head.weight", "truncated"], "a truncated file is refused")
    check(not os.path.exists(os.path.join(work, "x.h5")), "failed imports write nothing")

    expect_error(["export", "--checkpoint", os.path.join(work, "nope.h5"),
                  "--out", os.path.join(work, "e")],
                 ["nope.h5", "does not exist"], "export of a missing checkpoint")
    expect_error(["export", "--checkpoint", w, "--out", w, "--config", tiny],
                 ["--out", "W.h5", "is a file"], "export into a file instead of a directory")
    expect_error(["export", "--checkpoint", w, "--out", os.path.join(work, "e"), "--config", tiny,
                  "--set", "model.num_layers=3"],
                 ["W.h5", "model.layers.3"], "export with a config that does not match the weights")


def main():
    global DECO
    ap = argparse.ArgumentParser()
    ap.add_argument("--deco", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--pydeps", required=True)
    a = ap.parse_args()
    if not os.path.isdir(os.path.join(a.pydeps, "safetensors")):
        print(f"test_export.py: the Python safetensors package is not in {a.pydeps}; run "
              f"scripts/setup.sh, or /usr/bin/python3 -m pip install --no-deps --target "
              f"{a.pydeps} safetensors==0.4.5", file=sys.stderr)
        return 1
    sys.path.insert(0, os.path.abspath(a.pydeps))
    DECO = os.path.abspath(a.deco)
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    tiny = os.path.join(a.source_dir, "configs", "tiny.yaml")
    w, fp32_dir = test_fp32_round_trip(a.workdir, tiny)
    test_bf16(a.workdir, tiny, w)
    test_python_written_file(a.workdir, tiny, w)
    test_variants(a.workdir, tiny)
    test_checkpoint(a.workdir, tiny)
    test_bad_input(a.workdir, tiny, w, fp32_dir)
    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
