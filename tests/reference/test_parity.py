#!/usr/bin/python3
"""Parity test: the C++ `deco` binary against the independent PyTorch reference.

For a case (a list of --set overrides on parity.yaml) it runs
    deco init --config parity.yaml --set ... --out W.h5 --seed N
    deco eval --config parity.yaml --set ... --weights W.h5 --tokens T.npy --reg-coef X --dump-grads G.h5
loads W.h5 into the float64 reference (deco_reference.py), computes lm_loss, reg_loss,
the activation ratios and the gradient of (lm_loss + reg_loss) with autograd, and checks

    |lm_loss rel err|  <= 1e-5
    |reg_loss rel err| <= 1e-5          (absolute 1e-9 when the reference's is 0)
    activation_ratio and the per-layer ratios equal (ratios are counts / (tokens*E))
    for EVERY parameter: ||g_deco - g_ref|| / ||g_ref|| <= 1e-4
    G.h5 holds exactly the reference's set of names, with the same shapes.

`--case selfcheck` needs no deco binary: it checks the reference against central
finite differences (float64) and a few independent re-derivations.
`--case init_stats` checks that `deco init` follows spec section 4.

Usage:
    /usr/bin/python3 test_parity.py --deco build/deco --workdir /tmp/parity [--case NAME] [--list]
Exit status is non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import deco_reference as ref  # noqa: E402

BASE_CONFIG = os.path.join(HERE, "parity.yaml")

LM_RTOL = 1e-5
REG_RTOL = 1e-5
REG_ATOL_ZERO = 1e-9
GRAD_RTOL = 1e-4
Z_MARGIN = 1e-5     # |z| below this: the sign may legitimately differ in float32

STD = "model.init_method_std=0.2"

# name -> dict(sets=[...], reg_coef=float, batch=B, seq=S, token_dtype)
CASES = {
    "deco_norm_silu_sparse": dict(sets=[STD, "model.expert_compute=sparse"]),
    "deco_norm_silu_dense": dict(sets=[STD, "model.expert_compute=dense"], token_dtype="int32"),
    "deco_gated": dict(sets=[STD, "model.expert_gated=true"]),
    "deco_gated_dense": dict(sets=[STD, "model.expert_gated=true", "model.expert_compute=dense"]),
    "deco_nomean": dict(sets=[STD, "model.expert_act=norm_silu_nomean"], token_dtype="int32"),
    "deco_nomean_dense": dict(sets=[STD, "model.expert_act=norm_silu_nomean", "model.expert_compute=dense"]),
    "deco_norms": dict(sets=[STD, "model.expert_act=norm_silu_norms"]),
    "deco_norms_dense": dict(sets=[STD, "model.expert_act=norm_silu_norms", "model.expert_compute=dense"]),
    "deco_silu": dict(sets=[STD, "model.expert_act=silu"], token_dtype="int32"),
    "deco_silu_dense": dict(sets=[STD, "model.expert_act=silu", "model.expert_compute=dense"]),
    "deco_l1": dict(sets=[STD, "sparsity.reg_type=l1"]),
    "deco_l1_dense": dict(sets=[STD, "sparsity.reg_type=l1", "model.expert_compute=dense"]),
    "reg_none": dict(sets=[STD, "sparsity.reg_type=none"]),
    "gqa": dict(sets=[STD, "model.num_attention_heads=4", "model.num_query_groups=2"]),
    "gqa_mqa": dict(sets=[STD, "model.num_attention_heads=4", "model.num_query_groups=1",
                          "model.expert_compute=dense"]),
    "dense_model": dict(sets=[STD, "model.num_experts=0"]),
    "no_shared": dict(sets=[STD, "model.moe_shared_expert_intermediate_size=0"]),
    "no_shared_dense": dict(sets=[STD, "model.moe_shared_expert_intermediate_size=0",
                                  "model.expert_compute=dense"]),
    "all_deco": dict(sets=[STD, "model.dense_layers=0"]),
    "rope_eps": dict(sets=[STD, "model.rotary_base=500.0", "model.norm_epsilon=0.01"]),
    "short_seq": dict(sets=[STD], batch=2, seq=9),                 # S < model.seq_length
    "batch3": dict(sets=[STD], batch=3, seq=16, token_dtype="int32"),  # B != micro_batch_size
    "short_batch": dict(sets=[STD], batch=3, seq=9, token_dtype="int32"),
    "wide_experts": dict(sets=[STD, "model.num_experts=6", "model.moe_ffn_hidden_size=12",
                               "model.num_layers=4", "model.dense_layers=2"]),
}
SPECIAL_CASES = ("selfcheck", "init_stats")


# --------------------------------------------------------------------------- helpers

class CaseFailure(Exception):
    pass


def read_h5_model(path):
    """All datasets under /model, keyed by their path relative to /model."""
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        if "model" not in f:
            raise CaseFailure(f"{path}: no /model group (top-level keys: {list(f.keys())})")

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = np.array(obj[()])
        f["model"].visititems(visit)
    return out


def run_cmd(cmd, log_path, timeout=240):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CaseFailure(f"timed out after {timeout}s: {' '.join(cmd)}")
    with open(log_path, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n--- stdout\n" + p.stdout + "\n--- stderr\n" + p.stderr)
    print(f"  ran ({time.time() - t0:.2f}s): {' '.join(cmd)}")
    if p.returncode != 0:
        raise CaseFailure(f"exit status {p.returncode}: {' '.join(cmd)}\n--- stdout\n{p.stdout[-4000:]}"
                          f"\n--- stderr\n{p.stderr[-4000:]}")
    return p.stdout


def parse_json_line(stdout):
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip().startswith("{")]
    if len(lines) != 1:
        raise CaseFailure(f"expected exactly one JSON line on stdout, found {len(lines)}:\n{stdout[-4000:]}")
    try:
        return json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise CaseFailure(f"bad JSON line ({e}): {lines[0]}")


def rel_err(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def set_args(sets):
    out = []
    for s in sets:
        out += ["--set", s]
    return out


def reference_eval(cfg, weights, tokens, reg_coef, dtype=torch.float64):
    model = ref.DecoForCausalLM(cfg.model, dtype=dtype)
    model.load_state(weights, strict=True)
    model.zero_grad(set_to_none=True)
    out = model.loss(torch.as_tensor(tokens.astype(np.int64)), reg_coef=reg_coef, reg_type=cfg.sparsity.reg_type)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    # share of the regularizer in the router gradients (to show the reg path is exercised)
    share = None
    if cfg.model.deco_layer_indices and cfg.sparsity.reg_type != "none":
        model.zero_grad(set_to_none=True)
        out2 = model.loss(torch.as_tensor(tokens.astype(np.int64)), reg_coef=reg_coef, reg_type=cfg.sparsity.reg_type)
        out2.reg_loss.backward()
        num = den = 0.0
        for n, p in model.named_parameters():
            if n.endswith("mlp.moe_router.weight"):
                num += float(p.grad.norm()) ** 2
                den += float(grads[n].norm()) ** 2
        share = math.sqrt(num / den) if den > 0 else None
    return model, out, grads, share


# --------------------------------------------------------------------------- a parity case

def run_parity_case(name, spec, deco, workdir):
    sets = list(spec["sets"])
    reg_coef = spec.get("reg_coef", 0.1)
    seed = spec.get("seed", 20240607)
    cfg = ref.load_config(BASE_CONFIG, sets)
    B = spec.get("batch", cfg.training.micro_batch_size)
    S = spec.get("seq", cfg.model.seq_length)
    os.makedirs(workdir, exist_ok=True)
    w_path = os.path.join(workdir, "W.h5")
    g_path = os.path.join(workdir, "G.h5")
    t_path = os.path.join(workdir, "tokens.npy")
    for p in (w_path, g_path):
        if os.path.exists(p):
            os.remove(p)

    print(f"case {name}: overrides {sets}, B={B} S={S} reg_coef={reg_coef} reg_type={cfg.sparsity.reg_type}")
    run_cmd([deco, "init", "--config", BASE_CONFIG, *set_args(sets), "--out", w_path, "--seed", str(seed)],
            os.path.join(workdir, "init.log"))
    rng = np.random.default_rng(seed + 1)
    tokens = rng.integers(0, cfg.model.vocab_size, size=(B, S + 1)).astype(spec.get("token_dtype", "int64"))
    np.save(t_path, tokens)
    stdout = run_cmd([deco, "eval", "--config", BASE_CONFIG, *set_args(sets), "--weights", w_path,
                      "--tokens", t_path, "--reg-coef", repr(reg_coef), "--dump-grads", g_path],
                     os.path.join(workdir, "eval.log"))
    got = parse_json_line(stdout)

    failures = []
    weights = read_h5_model(w_path)
    ref_names = [n for n, _ in ref.DecoForCausalLM(cfg.model, dtype=torch.float64).named_parameters()]
    wmissing = sorted(set(ref_names) - set(weights))
    wextra = sorted(set(weights) - set(ref_names))
    if wmissing or wextra:
        raise CaseFailure(f"W.h5 names differ from the reference: missing {wmissing}, extra {wextra}")
    for n, a in weights.items():
        if a.dtype != np.float32:
            failures.append(f"W.h5 {n}: dtype {a.dtype}, expected float32")

    model, out, grads, share = reference_eval(cfg, weights, tokens, reg_coef)
    n_deco = len(cfg.model.deco_layer_indices)

    # ---- losses
    for key in ("lm_loss", "reg_loss", "activation_ratio"):
        if key not in got:
            failures.append(f"eval JSON lacks '{key}': {got}")
    lm_ref, reg_ref = float(out.lm_loss), float(out.reg_loss)
    lm_got = float(got.get("lm_loss", float("nan")))
    reg_got = float(got.get("reg_loss", float("nan")))
    lm_e = rel_err(lm_got, lm_ref)
    print(f"  lm_loss   deco {lm_got:.10g}  ref {lm_ref:.10g}  rel err {lm_e:.3e} (tol {LM_RTOL:g})")
    if not lm_e <= LM_RTOL:
        failures.append(f"lm_loss rel err {lm_e:.3e} > {LM_RTOL:g}")
    if reg_ref != 0.0:
        reg_e = rel_err(reg_got, reg_ref)
        print(f"  reg_loss  deco {reg_got:.10g}  ref {reg_ref:.10g}  rel err {reg_e:.3e} (tol {REG_RTOL:g})")
        if not reg_e <= REG_RTOL:
            failures.append(f"reg_loss rel err {reg_e:.3e} > {REG_RTOL:g}")
    else:
        print(f"  reg_loss  deco {reg_got:.10g}  ref 0")
        if not abs(reg_got) <= REG_ATOL_ZERO:
            failures.append(f"reg_loss {reg_got!r}, expected 0")
    if share is not None:
        print(f"  (regularizer's share of the router gradient norm: {share:.3f})")

    # ---- activation ratios
    ratio_got = got.get("activation_ratio")
    ratio_ref = out.activation_ratio
    zmin = min((float(z.abs().min()) for z in out.router_logits), default=float("inf"))
    print(f"  activation_ratio deco {ratio_got}  ref {ratio_ref!r}  per layer ref {out.activation_ratio_per_layer}"
          f"  (min |z| {zmin:.2e})")
    tol_ratio = 1e-9
    if n_deco == 0:
        if ratio_got not in (None, 0, 0.0):
            failures.append(f"activation_ratio {ratio_got!r} for a model without DECO layers (expected 0 or null)")
    else:
        if ratio_got is None or not abs(float(ratio_got) - ratio_ref) <= tol_ratio:
            extra = "" if zmin > Z_MARGIN else f" (note: a router logit is within {Z_MARGIN:g} of 0)"
            failures.append(f"activation_ratio deco {ratio_got!r} != ref {ratio_ref!r}{extra}")
        if not 0.0 < ratio_ref < 1.0:
            failures.append(f"reference activation ratio {ratio_ref} not strictly inside (0, 1): the case "
                            "does not exercise the routing")
    per_got = got.get("activation_ratio_per_layer")
    per_ref = out.activation_ratio_per_layer
    if per_got is None:
        failures.append("eval JSON lacks 'activation_ratio_per_layer'")
    elif len(per_got) == n_deco:
        for k, (a, b) in enumerate(zip(per_got, per_ref)):
            if a is None or not abs(float(a) - b) <= tol_ratio:
                failures.append(f"activation_ratio_per_layer[{k}] (layer {cfg.model.deco_layer_indices[k]}): "
                                f"deco {a!r} != ref {b!r}")
    elif len(per_got) == cfg.model.num_layers:
        it = iter(per_ref)
        for i, a in enumerate(per_got):
            if cfg.model.is_deco_layer(i):
                b = next(it)
                if a is None or not abs(float(a) - b) <= tol_ratio:
                    failures.append(f"activation_ratio_per_layer[{i}]: deco {a!r} != ref {b!r}")
            elif a not in (None, 0, 0.0):
                failures.append(f"activation_ratio_per_layer[{i}] = {a!r} for dense layer {i}")
    else:
        failures.append(f"activation_ratio_per_layer has {len(per_got)} entries; expected {n_deco} "
                        f"(DECO layers) or {cfg.model.num_layers} (all layers)")

    # ---- gradients
    dumped = read_h5_model(g_path)
    missing = sorted(set(grads) - set(dumped))
    extra = sorted(set(dumped) - set(grads))
    for n in missing:
        failures.append(f"G.h5 lacks gradient {n}")
    for n in extra:
        failures.append(f"G.h5 has unexpected name {n}")
    rows = []
    for n in ref_names:
        if n not in dumped:
            continue
        g_ref = grads[n]
        g = dumped[n]
        if tuple(g.shape) != tuple(g_ref.shape):
            failures.append(f"{n}: gradient shape {tuple(g.shape)} != {tuple(g_ref.shape)}")
            continue
        if g.dtype != np.float32:
            failures.append(f"G.h5 {n}: dtype {g.dtype}, expected float32")
        g_t = torch.as_tensor(g.astype(np.float64))
        ref_norm = float(g_ref.norm())
        diff = float((g_t - g_ref).norm())
        if not np.all(np.isfinite(g)):
            err = float("inf")
        elif ref_norm > 0:
            err = diff / ref_norm
        else:
            err = 0.0 if diff <= 1e-12 else float("inf")
        rows.append((err, n, tuple(g.shape), ref_norm, float(g_t.norm())))
        if not err <= GRAD_RTOL:
            failures.append(f"{n}: gradient rel err {err:.3e} > {GRAD_RTOL:g}")
        if ref_norm == 0.0:
            failures.append(f"{n}: reference gradient is exactly zero (the case does not exercise it)")

    print(f"  {'parameter':58s} {'shape':>12s} {'||g_ref||':>11s} {'||g_deco||':>11s} {'rel err':>10s}")
    for err, n, shape, rn, dn in rows:
        mark = "" if err <= GRAD_RTOL else "  <-- FAIL"
        print(f"  {n:58s} {str(list(shape)):>12s} {rn:11.4e} {dn:11.4e} {err:10.3e}{mark}")
    worst = sorted(rows, reverse=True)[:5]
    print("  worst: " + ", ".join(f"{n} {e:.2e}" for e, n, *_ in worst))
    return failures


# --------------------------------------------------------------------------- init statistics

def run_init_stats(deco, workdir):
    """`deco init` with the base config at a larger size: names, shapes, constants, stds (spec section 4)."""
    sets = ["model.hidden_size=64", "model.ffn_hidden_size=96", "model.num_layers=4",
            "model.num_experts=16", "model.moe_ffn_hidden_size=16", "model.moe_shared_expert_intermediate_size=32",
            "model.vocab_size=128", "model.init_method_std=0.02", "model.router_scale_init=0.1",
            "model.expert_gated=true"]
    cfg = ref.load_config(BASE_CONFIG, sets)
    os.makedirs(workdir, exist_ok=True)
    w_path = os.path.join(workdir, "W.h5")
    if os.path.exists(w_path):
        os.remove(w_path)
    run_cmd([deco, "init", "--config", BASE_CONFIG, *set_args(sets), "--out", w_path, "--seed", "7"],
            os.path.join(workdir, "init.log"))
    weights = read_h5_model(w_path)
    model = ref.DecoForCausalLM(cfg.model, dtype=torch.float64)
    expected = {n: tuple(p.shape) for n, p in model.named_parameters()}
    failures = []
    for n in sorted(set(expected) - set(weights)):
        failures.append(f"missing {n}")
    for n in sorted(set(weights) - set(expected)):
        failures.append(f"unexpected {n}")
    std = cfg.model.init_method_std
    scaled = std / math.sqrt(2 * cfg.model.num_layers)
    print(f"  {'parameter':58s} {'shape':>12s} {'mean':>10s} {'std':>10s} {'expected':>10s}")
    for n, shape in expected.items():
        if n not in weights:
            continue
        w = weights[n].astype(np.float64)
        if tuple(w.shape) != shape:
            failures.append(f"{n}: shape {tuple(w.shape)} != {shape}")
            continue
        if len(shape) == 1:
            want = cfg.model.router_scale_init if n.endswith("router_norm.weight") else 1.0
            ok = np.allclose(w, want, rtol=1e-6, atol=0)
            print(f"  {n:58s} {str(list(shape)):>12s} {w.mean():10.4g} {w.std():10.3g} {'const ' + repr(want):>10s}"
                  f"{'' if ok else '  <-- FAIL'}")
            if not ok:
                failures.append(f"{n}: expected all {want}, got min {w.min()} max {w.max()}")
            continue
        s_exp = scaled if (n.endswith("o_proj.weight") or n.endswith("mlp.down_proj.weight")
                           or n.endswith("shared_experts.down_proj.weight")) else std
        cnt = w.size
        s_got = w.std()
        # sampling error of the std ~ s/sqrt(2n); of the mean ~ s/sqrt(n); allow 6 sigma (+2% slack)
        ok_s = abs(s_got - s_exp) <= s_exp * (6.0 / math.sqrt(2 * cnt) + 0.02)
        ok_m = abs(w.mean()) <= 6.0 * s_exp / math.sqrt(cnt)
        print(f"  {n:58s} {str(list(shape)):>12s} {w.mean():10.3e} {s_got:10.4g} {s_exp:10.4g}"
              f"{'' if (ok_s and ok_m) else '  <-- FAIL'}")
        if not ok_s:
            failures.append(f"{n}: std {s_got:.5g}, expected {s_exp:.5g}")
        if not ok_m:
            failures.append(f"{n}: mean {w.mean():.3g} too far from 0 (std {s_exp:.3g}, n={cnt})")
    return failures


# --------------------------------------------------------------------------- self-check of the reference

def _tiny_config(**model_over):
    raw = {
        "model": dict(num_layers=3, hidden_size=8, num_attention_heads=2, num_query_groups=1,
                      ffn_hidden_size=12, vocab_size=11, seq_length=6, norm_epsilon=1e-5, rotary_base=10000.0,
                      init_method_std=0.3, num_experts=4, moe_ffn_hidden_size=3,
                      moe_shared_expert_intermediate_size=5, dense_layers=1, expert_act="norm_silu",
                      expert_gated=False, router_scale_init=0.5),
        "training": dict(micro_batch_size=2, global_batch_size=2, train_iters=1),
        "optimizer": dict(lr=1e-3),
    }
    raw["model"].update(model_over)
    return ref.config_from_dict(raw)


def _expected_names(m):
    """Parameter names as listed in spec section 6, built independently of the module tree."""
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(m.num_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        if m.is_deco_layer(i):
            names += [p + "mlp.moe_router.weight", p + "mlp.router_norm.weight", p + "mlp.expert_up_proj.weight",
                      p + "mlp.expert_down_proj.weight"]
            if m.expert_gated:
                names.append(p + "mlp.expert_gate_proj.weight")
            if m.expert_act in ("norm_silu", "norm_silu_nomean"):
                names.append(p + "mlp.expert_act.rms_norm.weight")
            if m.moe_shared_expert_intermediate_size > 0:
                names += [p + f"mlp.shared_experts.{x}_proj.weight" for x in ("gate", "up", "down")]
        else:
            names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
    return names


def _np_deco_mlp(h, W):
    """Loop-based numpy re-derivation of one DECO layer for a single token h [H] (spec section 2)."""
    E, D, kind, gated, eps = W["E"], W["D"], W["act"], W["gated"], W["eps"]

    def silu(v):
        return v / (1.0 + np.exp(-v))

    def normsilu(u):
        c = u.copy()
        if kind in ("norm_silu", "norm_silu_norms"):
            c = c - u.sum() / (E * D)
        if kind in ("norm_silu", "norm_silu_nomean"):
            for e in range(E):
                blk = c[e * D:(e + 1) * D]
                c[e * D:(e + 1) * D] = blk / math.sqrt((blk ** 2).sum() / D + eps) * W["gamma"]
        return silu(c)

    z = W["router"] @ h
    r = np.maximum(z, 0.0)
    g = r * W["s"]
    a = normsilu(W["gate"] @ h) * (W["up"] @ h) if gated else normsilu(W["up"] @ h)
    y = np.zeros_like(h)
    for e in range(E):
        for d in range(D):
            y += W["down"][:, e * D + d] * g[e] * a[e * D + d]
    if W["sh_gate"] is not None:
        y += W["sh_down"] @ (silu(W["sh_gate"] @ h) * (W["sh_up"] @ h))
    return y, r, z


def _check_cmake_registration():
    """Every case of this file is registered in CMakeLists.txt (and nothing else is)."""
    import re
    with open(os.path.join(HERE, "CMakeLists.txt")) as f:
        text = f.read()
    m = re.search(r"set\(DECO_PARITY_CASES(.*?)\)", text, re.S)
    if not m:
        return ["CMakeLists.txt: no set(DECO_PARITY_CASES ...)"]
    registered = set(re.sub(r"#.*", "", m.group(1)).split())
    expected = set(CASES) | {"init_stats"}
    if registered != expected:
        return [f"CMakeLists.txt DECO_PARITY_CASES differs from test_parity.py: "
                f"unregistered {sorted(expected - registered)}, unknown {sorted(registered - expected)}"]
    print(f"  selfcheck cmake registration: ok ({len(registered)} cases + selfcheck)")
    return []


def run_selfcheck():
    failures = _check_cmake_registration()
    torch.manual_seed(0)
    variants = [
        dict(name="norm_silu/entropy", over={}, reg="entropy"),
        dict(name="norm_silu_nomean/l1", over=dict(expert_act="norm_silu_nomean"), reg="l1"),
        dict(name="norm_silu_norms/entropy", over=dict(expert_act="norm_silu_norms"), reg="entropy"),
        dict(name="silu/entropy", over=dict(expert_act="silu"), reg="entropy"),
        dict(name="gated norm_silu/entropy", over=dict(expert_gated=True), reg="entropy"),
        dict(name="no shared, all DECO, MHA", over=dict(moe_shared_expert_intermediate_size=0, dense_layers=0,
                                                       num_query_groups=2), reg="entropy"),
        dict(name="dense model", over=dict(num_experts=0), reg="entropy"),
    ]
    reg_coef = 0.3
    for v in variants:
        cfg = _tiny_config(**v["over"])
        m = cfg.model
        gen = torch.Generator().manual_seed(11)
        model = ref.DecoForCausalLM(m, dtype=torch.float64)
        model.init_weights(gen)
        # perturb the 1-D weights so that their gradients are generic
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.dim() == 1:
                    p.mul_(1.0 + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        tokens = torch.randint(0, m.vocab_size, (2, m.seq_length + 1), generator=gen)

        # 1. names exactly as spec section 6
        names = [n for n, _ in model.named_parameters()]
        exp = _expected_names(m)
        if sorted(names) != sorted(exp):
            failures.append(f"[{v['name']}] parameter names {sorted(set(names) ^ set(exp))} differ from spec")

        # 2. autograd vs central finite differences
        def f():
            return float(model.loss(tokens, reg_coef=reg_coef, reg_type=v["reg"]).loss)
        model.zero_grad(set_to_none=True)
        out = model.loss(tokens, reg_coef=reg_coef, reg_type=v["reg"])
        out.loss.backward()
        worst = 0.0
        n_checked = 0
        for n, p in model.named_parameters():
            g = p.grad.detach().clone()
            flat = p.data.view(-1)
            idx = torch.randperm(flat.numel(), generator=gen)[:3]
            for j in idx.tolist():
                h = 1e-6
                old = float(flat[j])
                with torch.no_grad():
                    flat[j] = old + h
                lp = f()
                with torch.no_grad():
                    flat[j] = old - h
                lm = f()
                with torch.no_grad():
                    flat[j] = old
                fd = (lp - lm) / (2 * h)
                ad = float(g.view(-1)[j])
                err = abs(fd - ad) / (abs(ad) + 1e-6)
                worst = max(worst, err)
                n_checked += 1
                if abs(fd - ad) > 1e-7 + 1e-5 * abs(ad):
                    failures.append(f"[{v['name']}] {n}[{j}]: autograd {ad:.10g} vs finite diff {fd:.10g}")
        z_all = torch.cat([z.reshape(-1) for z in out.router_logits]) if out.router_logits else torch.zeros(0)
        print(f"  selfcheck [{v['name']}]: {n_checked} entries, worst |fd-ad|/(|ad|+1e-6) = {worst:.2e}; "
              f"lm {float(out.lm_loss):.6f} reg {float(out.reg_loss):.3e} ratio {out.activation_ratio:.3f}"
              + (f" min|z| {float(z_all.abs().min()):.1e}" if z_all.numel() else ""))
        if m.num_experts > 0 and not 0.0 < out.activation_ratio < 1.0:
            failures.append(f"[{v['name']}] activation ratio {out.activation_ratio} not inside (0, 1)")

        # 3. loop-based numpy re-derivation of the DECO layers, the reg loss and the ratio
        if m.deco_layer_indices:
            with torch.no_grad():
                inputs = tokens[:, :-1]
                S = inputs.shape[1]
                cos, sin = ref.rotary_cos_sin(S, m.head_dim, m.rotary_base, torch.float64)
                x = model.model.embed_tokens(inputs)
                reg_np, act, tot = 0.0, 0, 0
                for i, layer in enumerate(model.model.layers):
                    x = x + layer.self_attn(layer.input_layernorm(x), cos, sin)
                    hN = layer.post_attention_layernorm(x)
                    y_mod = layer.mlp(hN)[0] if layer.is_deco else layer.mlp(hN)
                    if layer.is_deco:
                        mlp = layer.mlp
                        W = dict(E=m.num_experts, D=m.moe_ffn_hidden_size, act=m.expert_act, gated=m.expert_gated,
                                 eps=m.norm_epsilon, router=mlp.moe_router.weight.numpy(),
                                 s=mlp.router_norm.weight.numpy(), up=mlp.expert_up_proj.weight.numpy(),
                                 gate=mlp.expert_gate_proj.weight.numpy() if m.expert_gated else None,
                                 down=mlp.expert_down_proj.weight.numpy(),
                                 gamma=(mlp.expert_act.rms_norm.weight.numpy()
                                        if hasattr(mlp.expert_act, "rms_norm") else None),
                                 sh_gate=None)
                        if mlp.shared_experts is not None:
                            W.update(sh_gate=mlp.shared_experts.gate_proj.weight.numpy(),
                                     sh_up=mlp.shared_experts.up_proj.weight.numpy(),
                                     sh_down=mlp.shared_experts.down_proj.weight.numpy())
                        ent_sum, l1_sum = 0.0, 0.0
                        hn = hN.numpy()
                        for b in range(hn.shape[0]):
                            for t in range(hn.shape[1]):
                                y, r, z = _np_deco_mlp(hn[b, t], W)
                                if not np.allclose(y, y_mod[b, t].numpy(), rtol=1e-10, atol=1e-12):
                                    failures.append(f"[{v['name']}] layer {i} token ({b},{t}): DECO output differs "
                                                    "from the loop re-derivation")
                                p = r / (r.sum() + 1e-5)
                                ent_sum += -sum(pe * math.log(pe + 1e-5) for pe in p)
                                l1_sum += r.sum()
                                act += int((z > 0).sum())
                                tot += z.size
                        ntok = hn.shape[0] * hn.shape[1]
                        reg_np += reg_coef * (ent_sum if v["reg"] == "entropy" else l1_sum) / ntok / m.num_layers
                    x = x + y_mod
                if not math.isclose(reg_np, float(out.reg_loss), rel_tol=1e-10):
                    failures.append(f"[{v['name']}] reg_loss {float(out.reg_loss)!r} != loop value {reg_np!r}")
                if act / tot != out.activation_ratio:
                    failures.append(f"[{v['name']}] ratio {out.activation_ratio} != loop value {act / tot}")

    # 4. causality: changing the last input token leaves earlier logits unchanged
    cfg = _tiny_config()
    model = ref.DecoForCausalLM(cfg.model, dtype=torch.float64)
    model.init_weights(torch.Generator().manual_seed(3))
    inp = torch.randint(0, cfg.model.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    inp2 = inp.clone()
    inp2[:, -1] = (inp2[:, -1] + 1) % cfg.model.vocab_size
    with torch.no_grad():
        l1, _ = model(inp)
        l2, _ = model(inp2)
    if not torch.allclose(l1[:, :-1], l2[:, :-1], rtol=0, atol=1e-13) or torch.allclose(l1[:, -1], l2[:, -1]):
        failures.append("causality check failed")
    else:
        print("  selfcheck causality: ok")

    # 5. RoPE: q.k after rotation depends only on the position difference, and p=0 is the identity
    hd = 8
    cos, sin = ref.rotary_cos_sin(12, hd, 10000.0, torch.float64)
    q = torch.randn(hd, dtype=torch.float64)
    k = torch.randn(hd, dtype=torch.float64)
    rq = ref.apply_rope(q.expand(12, hd), cos, sin)
    rk = ref.apply_rope(k.expand(12, hd), cos, sin)
    d1 = float(rq[5] @ rk[3])
    d2 = float(rq[9] @ rk[7])
    # explicit rotation of pairs (i, i+hd/2) by angle p*theta_i
    p = 5
    explicit = q.clone()
    for i in range(hd // 2):
        th = p * 10000.0 ** (-2 * i / hd)
        a, b = float(q[i]), float(q[i + hd // 2])
        explicit[i] = a * math.cos(th) - b * math.sin(th)
        explicit[i + hd // 2] = b * math.cos(th) + a * math.sin(th)
    if (abs(d1 - d2) > 1e-12 or not torch.allclose(rq[0], q) or not torch.allclose(rq[5], explicit, atol=1e-14)):
        failures.append("RoPE check failed")
    else:
        print("  selfcheck rope: ok")

    # 6. GQA: groups=1 equals groups=heads with the kv heads duplicated
    c1 = _tiny_config(num_query_groups=1, num_experts=0)
    c2 = _tiny_config(num_query_groups=2, num_experts=0)
    m1 = ref.DecoForCausalLM(c1.model, dtype=torch.float64)
    m1.init_weights(torch.Generator().manual_seed(5))
    m2 = ref.DecoForCausalLM(c2.model, dtype=torch.float64)
    sd = {n: p.detach().clone() for n, p in m1.named_parameters()}
    for n in list(sd):
        if n.endswith("k_proj.weight") or n.endswith("v_proj.weight"):
            sd[n] = torch.cat([sd[n], sd[n]], 0)
    m2.load_state(sd)
    with torch.no_grad():
        if not torch.allclose(m1(inp)[0], m2(inp)[0], rtol=1e-12, atol=1e-12):
            failures.append("GQA check failed")
        else:
            print("  selfcheck gqa: ok")
    return failures


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deco", help="path to the deco binary")
    ap.add_argument("--workdir", default="parity_work")
    ap.add_argument("--case", action="append",
                    help="case name (repeatable; default: every parity case, the selfcheck and init_stats)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny problems: one thread is fastest and immune to a loaded machine
    all_cases = list(SPECIAL_CASES) + list(CASES)
    if args.list:
        print("\n".join(all_cases))
        return 0
    cases = args.case or all_cases
    unknown = [c for c in cases if c not in all_cases]
    if unknown:
        print(f"unknown case(s) {unknown}; known: {all_cases}")
        return 2
    if any(c != "selfcheck" for c in cases):
        if not args.deco or not os.path.isfile(args.deco):
            print(f"FAIL: deco binary not found: {args.deco!r}")
            return 1
        args.deco = os.path.abspath(args.deco)

    results = {}
    for c in cases:
        print(f"=== {c}")
        t0 = time.time()
        try:
            if c == "selfcheck":
                fails = run_selfcheck()
            elif c == "init_stats":
                fails = run_init_stats(args.deco, os.path.join(args.workdir, c) if len(cases) > 1 else args.workdir)
            else:
                wd = os.path.join(args.workdir, c) if len(cases) > 1 else args.workdir
                fails = run_parity_case(c, CASES[c], args.deco, wd)
        except CaseFailure as e:
            fails = [str(e)]
        except Exception:  # a crash of the harness is a failure, with its traceback
            fails = ["exception:\n" + traceback.format_exc()]
        results[c] = fails
        status = "PASS" if not fails else "FAIL"
        print(f"--- {c}: {status} ({time.time() - t0:.1f}s)")
        for f_ in fails:
            print(f"    FAIL: {f_}")
    n_fail = sum(1 for f_ in results.values() if f_)
    print(f"=== summary: {len(results) - n_fail}/{len(results)} passed"
          + (f"; failed: {[c for c, f_ in results.items() if f_]}" if n_fail else ""))
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
