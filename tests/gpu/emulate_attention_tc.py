#!/usr/bin/python3
"""Lane-level emulation of kernels/cuda/attention_tc.cu, for machines without a GPU.

Each warp of the CUDA kernels is replayed lane by lane in numpy: the same
fragment loads (load_a, mma_abt, mma_pm, to_a, store_rows), masks, online
softmax and loops, with mma.sync m16n8k16 and ldmatrix.trans given the
fragment layouts the PTX ISA documents (the layout table at the top of
attention_tc.cu). Results are compared with a float64 causal GQA attention
on the same bf16 inputs. It checks the kernels' indexing and algorithm as
transcribed here, not the CUDA code itself (tests/gpu does that on a GPU),
and copies are synchronous, so it says nothing about the cp.async ordering.
Keep it in step with the kernels when they change.

Measured 2026-12-02 (relative norm errors, all from bf16 rounding of O, P
and dS): out 1.8e-3, lse 4e-8, dq/dk/dv 2.2e-3..2.8e-3 at S 37, 70, 129,
D 64 and 128, MHA and GQA; S = 1 exact.

The replay works on one (batch, head) view at a time; the kernels' block
and row decodes into the flat layouts (batch > 1, GQA) are transcribed and
checked separately (check_grid_decode).

Exits non-zero when an error exceeds 1e-2 (the GPU test's bf16 bound), a
value the kernels must write is left unwritten (NaN), or a decode fails. CTest runs it
(attention_tc_emulation, a few seconds).

The warp primitives (bf16 rounding, mma, ldmatrix) are in mma_emulation.py.

Usage: /usr/bin/python3 tests/gpu/emulate_attention_tc.py   (numpy)
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mma_emulation import LANES, G, C, bf16, mma, ld32, load_a, ldmatrix_x4_trans, to_a, rel  # noqa: E402

KT, QB, PAD = 64, 32, 8


def mma_abt(acc, a_tile, a_row0, m, D, N):
    for kk in range(D // 16):
        af = load_a(a_tile, a_row0, kk * 16)
        for j in range(N):
            r = 8 * j + G
            cc = kk * 16 + 2 * C
            b = np.stack([ld32(m, r, cc), ld32(m, r, cc + 8)], 1)
            mma(acc[j], af, b)


def mma_pm(acc, p, m, D, K):
    row = (LANES & 7) + ((LANES >> 3) & 1) * 8
    col = (LANES >> 4) * 8
    for t in range(K):
        for n in range(D // 16):
            b = ldmatrix_x4_trans(m, 16 * t + row, 16 * n + col)
            mma(acc[2 * n], p[t], b[:, 0:2])
            mma(acc[2 * n + 1], p[t], b[:, 2:4])


def load_rows(src, row0, rows, seq, D):
    # src: [seq, D] view of one (batch, head); zero-filled past seq
    t = np.zeros((rows, D + PAD), np.float32)
    for r in range(rows):
        if row0 + r < seq:
            t[r, :D] = src[row0 + r]
    return t


def store_rows(dst, acc, mul, row0_pos, seq, D):
    tile = np.zeros((16, D + PAD), np.float32)
    for n in range(D // 8):
        tile[G, 8 * n + 2 * C] = bf16(acc[n][:, 0] * mul[0])
        tile[G, 8 * n + 2 * C + 1] = bf16(acc[n][:, 1] * mul[0])
        tile[G + 8, 8 * n + 2 * C] = bf16(acc[n][:, 2] * mul[1])
        tile[G + 8, 8 * n + 2 * C + 1] = bf16(acc[n][:, 3] * mul[1])
    for r in range(16):
        if row0_pos + r < seq:
            dst[row0_pos + r] = tile[r, :D]


LOG2E = np.float32(1.4426950408889634)


def dims(S, heads, groups, D):
    """TcDims: 64-row tiles per sequence, heads per kv group, 1/sqrt(D) and it times log2(e)."""
    scale = np.float32(1.0 / np.sqrt(D))
    return (S + KT - 1) // KT, heads // groups, scale, np.float32(scale * LOG2E)


def forward(q, k, v, heads, groups, D):
    # q [B, S, heads, D], k/v [B, S, groups, D]
    Bn, S = q.shape[:2]
    tiles, hpg, scale, sl2 = dims(S, heads, groups, D)
    out = np.full(q.shape, np.nan, np.float32)
    lse = np.full((Bn, heads, S), np.nan, np.float32)
    for b in range(Bn):
        for h in range(heads):
            grp = h // hpg
            for qt in range(tiles):
                q0 = qt * KT
                sq = load_rows(q[b, :, h], q0, KT, S, D)
                for warp in range(4):
                    o = np.zeros((D // 8, 32, 4), np.float32)
                    m = [np.full(32, -np.inf, np.float32) for _ in range(2)]
                    l = [np.zeros(32, np.float32) for _ in range(2)]
                    rows = [q0 + warp * 16 + G, q0 + warp * 16 + G + 8]
                    for kt in range(qt + 1):
                        sk = load_rows(k[b, :, grp], kt * KT, KT, S, D)
                        sv = load_rows(v[b, :, grp], kt * KT, KT, S, D)
                        s = np.zeros((KT // 8, 32, 4), np.float32)
                        mma_abt(s, sq, warp * 16, sk, D, KT // 8)
                        k0 = kt * KT
                        for j in range(KT // 8):
                            for e in range(4):
                                key = k0 + 8 * j + 2 * C + (e & 1)
                                x = s[j][:, e] * sl2
                                s[j][:, e] = np.where((kt == qt) & (key > rows[e >> 1]), -np.inf, x)
                        for r in range(2):
                            mx = m[r].copy()
                            for j in range(KT // 8):
                                mx = np.maximum(mx, np.maximum(s[j][:, 2 * r], s[j][:, 2 * r + 1]))
                            mx = np.maximum(mx, mx[LANES ^ 1])
                            mx = np.maximum(mx, mx[LANES ^ 2])
                            alpha = np.exp2(m[r] - mx)
                            m[r] = mx
                            l[r] = l[r] * alpha
                            for n in range(D // 8):
                                o[n][:, 2 * r] *= alpha
                                o[n][:, 2 * r + 1] *= alpha
                            for j in range(KT // 8):
                                s[j][:, 2 * r] = np.exp2(s[j][:, 2 * r] - mx)
                                s[j][:, 2 * r + 1] = np.exp2(s[j][:, 2 * r + 1] - mx)
                                l[r] = l[r] + s[j][:, 2 * r] + s[j][:, 2 * r + 1]
                        p = to_a(s, KT // 16)
                        mma_pm(o, p, sv, D, KT // 16)
                    inv = []
                    for r in range(2):
                        l[r] = l[r] + l[r][LANES ^ 1]
                        l[r] = l[r] + l[r][LANES ^ 2]
                        inv.append(1.0 / l[r])
                        for lane in range(32):
                            if C[lane] == 0 and rows[r][lane] < S:
                                lse[b, h, rows[r][lane]] = (m[r][lane] + np.log2(l[r][lane])) * 0.6931471805599453
                    store_rows(out[b, :, h], o, inv, q0 + warp * 16, S, D)
    return out, lse


def backward(q, k, v, out, dout, lse, heads, groups, D):
    Bn, S = q.shape[:2]
    tiles, hpg, scale, sl2 = dims(S, heads, groups, D)
    log2e = LOG2E
    delta = np.einsum("bshd,bshd->bhs", dout.astype(np.float32), out.astype(np.float32)).astype(np.float32)
    dq = np.full(q.shape, np.nan, np.float32)
    dk = np.full(k.shape, np.nan, np.float32)
    dv = np.full(v.shape, np.nan, np.float32)
    # dK, dV
    for b in range(Bn):
        for grp in range(groups):
            for kt in range(tiles):
                k0 = kt * KT
                sk = load_rows(k[b, :, grp], k0, KT, S, D)
                sv = load_rows(v[b, :, grp], k0, KT, S, D)
                qblocks = (S - k0 + QB - 1) // QB
                steps = hpg * qblocks
                bufs = [None, None]

                def load_step(step, buf):
                    h = grp * hpg + step // qblocks
                    qs = k0 + (step % qblocks) * QB
                    tq = load_rows(q[b, :, h], qs, QB, S, D)
                    tdo = load_rows(dout[b, :, h], qs, QB, S, D)
                    tl = np.array([lse[b, h, qs + t] * log2e if qs + t < S else 0 for t in range(QB)], np.float32)
                    td = np.array([delta[b, h, qs + t] if qs + t < S else 0 for t in range(QB)], np.float32)
                    bufs[buf] = (tq, tdo, tl, td)
                load_step(0, 0)
                accs = [(np.zeros((D // 8, 32, 4), np.float32), np.zeros((D // 8, 32, 4), np.float32)) for _ in range(4)]
                for step in range(steps):
                    buf = step & 1
                    if step + 1 < steps:
                        load_step(step + 1, buf ^ 1)
                    tq, tdo, tl, td = bufs[buf]
                    qs = k0 + (step % qblocks) * QB
                    for warp in range(4):
                        dka, dva = accs[warp]
                        keys = [k0 + warp * 16 + G, k0 + warp * 16 + G + 8]
                        st = np.zeros((QB // 8, 32, 4), np.float32)
                        dpt = np.zeros((QB // 8, 32, 4), np.float32)
                        mma_abt(st, sk, warp * 16, tq, D, QB // 8)
                        mma_abt(dpt, sv, warp * 16, tdo, D, QB // 8)
                        edge = qs < k0 + KT or qs + QB > S
                        for j in range(QB // 8):
                            for e in range(4):
                                col = 8 * j + 2 * C + (e & 1)
                                query = qs + col
                                p = np.exp2(st[j][:, e] * sl2 - tl[col])
                                if edge:
                                    p = np.where((query < keys[e >> 1]) | (query >= S), 0, p)
                                st[j][:, e] = p
                                dpt[j][:, e] = p * (dpt[j][:, e] - td[col])
                        pa = to_a(st, QB // 16)
                        dsa = to_a(dpt, QB // 16)
                        mma_pm(dva, pa, tdo, D, QB // 16)
                        mma_pm(dka, dsa, tq, D, QB // 16)
                for warp in range(4):
                    dka, dva = accs[warp]
                    store_rows(dk[b, :, grp], dka, [scale, scale], k0 + warp * 16, S, D)
                    store_rows(dv[b, :, grp], dva, [1, 1], k0 + warp * 16, S, D)
    # dQ
    for b in range(Bn):
        for h in range(heads):
            grp = h // hpg
            for qt in range(tiles):
                q0 = qt * KT
                sq = load_rows(q[b, :, h], q0, KT, S, D)
                sdo = load_rows(dout[b, :, h], q0, KT, S, D)
                for warp in range(4):
                    rows = [q0 + warp * 16 + G, q0 + warp * 16 + G + 8]
                    rl = [np.where(rows[r] < S, lse[b, h, np.minimum(rows[r], S - 1)] * log2e, 0).astype(np.float32) for r in range(2)]
                    rd = [np.where(rows[r] < S, delta[b, h, np.minimum(rows[r], S - 1)], 0).astype(np.float32) for r in range(2)]
                    dqa = np.zeros((D // 8, 32, 4), np.float32)
                    for kt in range(qt + 1):
                        tk = load_rows(k[b, :, grp], kt * KT, KT, S, D)
                        tv = load_rows(v[b, :, grp], kt * KT, KT, S, D)
                        s = np.zeros((KT // 8, 32, 4), np.float32)
                        dp = np.zeros((KT // 8, 32, 4), np.float32)
                        mma_abt(s, sq, warp * 16, tk, D, KT // 8)
                        mma_abt(dp, sdo, warp * 16, tv, D, KT // 8)
                        k0 = kt * KT
                        for j in range(KT // 8):
                            for e in range(4):
                                key = k0 + 8 * j + 2 * C + (e & 1)
                                r = e >> 1
                                p = np.exp2(s[j][:, e] * sl2 - rl[r])
                                if kt == qt:
                                    p = np.where(key > rows[r], 0, p)
                                dp[j][:, e] = p * (dp[j][:, e] - rd[r])
                        dsa = to_a(dp, KT // 16)
                        mma_pm(dqa, dsa, tk, D, KT // 16)
                    store_rows(dq[b, :, h], dqa, [scale, scale], q0 + warp * 16, S, D)
    return dq, dk, dv


def reference(q, k, v, dout, heads, groups, D):
    q, k, v, dout = (x.astype(np.float64) for x in (q, k, v, dout))
    Bn, S = q.shape[:2]
    hpg = heads // groups
    out = np.zeros_like(q)
    lse = np.zeros((Bn, heads, S))
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    scale = 1 / np.sqrt(D)
    mask = np.tril(np.ones((S, S), bool))
    for b in range(Bn):
        for h in range(heads):
            g = h // hpg
            s = q[b, :, h] @ k[b, :, g].T * scale
            s = np.where(mask, s, -np.inf)
            mx = s.max(1, keepdims=True)
            e = np.exp(s - mx)
            z = e.sum(1, keepdims=True)
            p = e / z
            lse[b, h] = (mx + np.log(z))[:, 0]
            out[b, :, h] = p @ v[b, :, g]
            dp = dout[b, :, h] @ v[b, :, g].T
            D_ = (p * dp).sum(1, keepdims=True)
            ds = p * (dp - D_)
            dq[b, :, h] = ds @ k[b, :, g] * scale
            dk[b, :, g] += ds.T @ q[b, :, h] * scale
            dv[b, :, g] += p.T @ dout[b, :, h]
    return out, lse, dq, dk, dv


def check_grid_decode(Bn, S, heads, groups, D):
    """The kernels' block and row decodes, which the replay above does not use (it loops over
    (batch, head) views): query_tile (forward and dQ grids), tc_dkdv_kernel's block decode and
    tc_delta_kernel's row decode, transcribed, must visit every tile or row once, the tiles with the
    most work first, and address it
    in the flat [B*S, heads*D] / [B*S, groups*D] layouts the ops take (TcDims: ldq = heads*D,
    ldk = groups*D; statistics [B, heads, S]). Returns a list of failures."""
    tiles, hpg = (S + KT - 1) // KT, heads // groups
    ldq, ldk = heads * D, groups * D
    bad = []
    seen = set()
    last = tiles
    for block in range(tiles * Bn * heads):  # query_tile
        bh = block % (Bn * heads)
        qt = tiles - 1 - block // (Bn * heads)
        h, b = bh % heads, bh // heads
        if qt > last:
            bad.append("query_tile hands out a longer tile after a shorter one (the longest go first)")
        last = qt
        grp = h // hpg
        qoff, koff, stats = b * S * ldq + h * D, b * S * ldk + grp * D, (b * heads + h) * S
        seen.add((b, h, qt))
        s_ = min(S - 1, qt * KT)
        if qoff + s_ * ldq != ((b * S + s_) * heads + h) * D:
            bad.append(f"query_tile q offset of (b {b}, h {h}, row {s_})")
        if koff + s_ * ldk != ((b * S + s_) * groups + grp) * D:
            bad.append(f"query_tile k offset of (b {b}, group {grp}, row {s_})")
        if stats + s_ != (b * heads + h) * S + s_:
            bad.append("query_tile statistics offset")
    if seen != {(b, h, t) for b in range(Bn) for h in range(heads) for t in range(tiles)}:
        bad.append("query_tile does not visit every (batch, head, query tile) once")
    seen = set()
    last = 0
    for block in range(tiles * Bn * groups):  # tc_dkdv_kernel
        bg = block % (Bn * groups)
        kt = block // (Bn * groups)
        grp, b = bg % groups, bg // groups
        if kt < last:
            bad.append("tc_dkdv_kernel hands out a longer key tile after a shorter one (the longest go first)")
        last = kt
        seen.add((b, grp, kt))
        for i in range(hpg):
            h = grp * hpg + i
            if h // hpg != grp:
                bad.append("dK/dV block walks a head outside its group")
            qs = min(S - 1, kt * KT)
            if b * S * ldq + h * D + qs * ldq != ((b * S + qs) * heads + h) * D:
                bad.append("dK/dV block's q offset")
        if b * S * ldk + grp * D + kt * KT * ldk != ((b * S + kt * KT) * groups + grp) * D:
            bad.append("dK/dV block's k offset")
    if seen != {(b, g, t) for b in range(Bn) for g in range(groups) for t in range(tiles)}:
        bad.append("tc_dkdv_kernel's grid does not visit every (batch, group, key tile) once")
    seen = set()
    for row in range(Bn * S * heads):  # tc_delta_kernel, a warp per row
        h, token = row % heads, row // heads
        s_, b = token % S, token // S
        if token * ldq + h * D != ((b * S + s_) * heads + h) * D:
            bad.append("tc_delta_kernel's row offset")
        seen.add((b * heads + h) * S + s_)
    if seen != set(range(Bn * heads * S)):
        bad.append("tc_delta_kernel does not write every delta once")
    return sorted(set(bad))


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    worst, unwritten = 0.0, 0
    decode_failures = []
    for shape in [(2, 130, 4, 2, 64), (3, 64, 6, 2, 128), (2, 1, 2, 1, 64), (1, 257, 6, 3, 128)]:
        decode_failures += [f"B{shape[0]} S{shape[1]} h{shape[2]} g{shape[3]}: {f}" for f in check_grid_decode(*shape)]
    for f in decode_failures:
        print(f"FAIL grid decode {f}")
    print(f"grid decodes (query_tile, dK/dV blocks, delta rows) at batch 1-3, GQA: "
          f"{'ok' if not decode_failures else 'FAIL'}")
    for (Bn, S, heads, groups, D) in [(1, 70, 2, 1, 64), (1, 37, 3, 3, 64), (1, 129, 2, 1, 128), (1, 1, 2, 2, 64)]:
        q = bf16(rng.standard_normal((Bn, S, heads, D)))
        k = bf16(rng.standard_normal((Bn, S, groups, D)))
        v = bf16(rng.standard_normal((Bn, S, groups, D)))
        dout = bf16(rng.standard_normal((Bn, S, heads, D)))
        out, lse = forward(q, k, v, heads, groups, D)
        ro, rl, rdq, rdk, rdv = reference(q, k, v, dout, heads, groups, D)
        dq, dk, dv = backward(q, k, v, out, dout, lse, heads, groups, D)
        errs = [rel(out, ro), rel(lse, rl), rel(dq, rdq), rel(dk, rdk), rel(dv, rdv)]
        nans = int(sum(np.isnan(x).sum() for x in (out, lse, dq, dk, dv)))
        worst = max(worst, *errs) if not np.isnan(errs).any() else float("inf")
        unwritten += nans
        print(f"S{S} h{heads} g{groups} D{D}: out {errs[0]:.2e} lse {errs[1]:.2e} dq {errs[2]:.2e} "
              f"dk {errs[3]:.2e} dv {errs[4]:.2e} unwritten {nans}")
        sys.stdout.flush()
    ok = worst < 1e-2 and unwritten == 0 and not decode_failures
    print(f"worst relative error {worst:.2e}, unwritten values {unwritten}: {'ok' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)
