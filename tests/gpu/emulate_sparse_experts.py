#!/usr/bin/python3
"""Lane-level emulation of kernels/cuda/sparse_experts.cu, for machines without a GPU.

The three kernels (gather_gemm_kernel<NK, WARPS>, scatter_gemm_kernel<NK,
WARPS>, weight_grad_kernel<ROWS, WARPS>, both values of each parameter: the
wide and narrow blocks) and their host-side launch code (the parameter
table: offsets, each expert's first gather block, the weight gradient's
expert order; the gather block's binary search for its expert; grids,
early returns, the weight gradient's fallback to narrow blocks when H is no
multiple of 128) are transcribed line by line: the
same global and shared offsets (flat arrays with the kernels' leading
dimensions), load_w_block, load_b16 (ld32 and ldmatrix.trans branches),
load_a_trans, the scatter kernel's chunk bounds (chunk_bounds_kernel), expert walk, padded rows
and float32 slice, and bf16 rounding where the kernels round. Each warp is
replayed lane by lane with mma.sync m16n8k16 and ldmatrix.trans from
mma_emulation.py. Results are compared with float64 products on the same
bf16 inputs, for routings built as ops::build_routing builds them (an
expert with no pairs, tokens with no expert).

Beyond the errors it checks: shared memory starts as NaN (reading a value
never written poisons the result), the padding of every global row is NaN
on input and must stay untouched on output, indices past P are garbage,
every output element is written exactly once (c; y; dw of experts with
pairs) and no two lanes of one instruction add into the same element,
every address is in bounds and aligned (16 B cp.async and ldmatrix rows,
4 B ld32), each kernel's dynamic shared-memory regions are disjoint and fit
its byte count, tokens without pairs keep y bit for bit, no two warps of a
scatter block add into one slice element within an expert (they run
concurrently there), and the wide and narrow blocks give the same bits.

It checks the indexing and algorithm as transcribed here, not the CUDA code
on hardware (tests/gpu does that on a GPU). Copies are synchronous and
blocks and warps run one after another, so it says nothing about cp.async
ordering, barriers or races between blocks. Zero-filled rows (padding to
16, rows past an expert's pairs) reach only discarded outputs in the gather
and scatter GEMMs; in the weight gradient they are K padding that enters
every dw element, and the NaN-initialised shared memory here catches a
dropped zero fill there. Keep it in step with the kernels when they change.

Measured 2026-12-03 (relative norm errors, the same for both block shapes):
gather 1.65e-3..1.67e-3 and scatter 1.1e-3..1.7e-3 (y), 1.9e-3..2.3e-3
(its increment), all from bf16 rounding of the outputs; weight gradients
3e-8..8e-8 (float32). N 150..300, E 4..7, H 64, 128 and 192, activation
ratios 0.05, 0.3 and 1, both layouts. The 1e-2 bound does not tell
truncation from round-to-nearest (2.6e-3). Mutations it catches (each
tried): warps of a wide scatter block taking the same pair tiles, or every
tile; a wide weight-gradient warp storing into the other half's columns, or
loading x into the wrong half.

Exits non-zero when an error exceeds 1e-2 or any check above fails. CTest
runs it (sparse_experts_emulation, about 25 s).

Usage: /usr/bin/python3 tests/gpu/emulate_sparse_experts.py   (numpy)
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mma_emulation import LANES, G, C, bf16, mma, ld32_p, ldmatrix_x4_trans_p, load_a_p, rel  # noqa: E402

KD = 64                       # kD: expert width
KLD = KD + 8                  # kLd: bf16 elements per shared row
KTILE_ROWS = 64               # kTileRows: pairs per weight-gradient K step
KACCLD = KD + 4               # kAccLd: floats per row of the scatter slice
KTILE_ELEMS = KTILE_ROWS * KLD
MAX_EXPERTS = 479             # kMaxExperts: the experts ExpertTable (a kernel parameter) holds


class Blocks:
    """Blocks<WARPS>: the block shapes by warps per block (8 wide, 4 narrow)."""

    def __init__(self, warps):
        assert warps in (4, 8)
        self.warps = warps
        self.threads = 32 * warps
        self.pairs = 16 * warps    # gather GEMM: pairs per block
        self.chunk = 32 * warps    # scatter GEMM: tokens per block
        self.columns = 16 * warps  # weight gradient: columns h per block


WIDE, NARROW = Blocks(8), Blocks(4)
GARBAGE_INDEX = 1 << 28       # what index[] holds past P (pair_token is N*E long)


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def smem(n):
    """A __shared__ bf16/float array: garbage (NaN) until written."""
    return np.full(n, np.nan, np.float32)


def cp_async16(dst, dst_off, src, src_off, valid):
    """16 bytes global -> shared (synchronous here); zeros when !valid, reading nothing."""
    check(dst_off % 8 == 0 and 0 <= dst_off <= dst.size - 8, f"cp.async destination {dst_off}")
    if valid:
        check(src_off % 8 == 0 and 0 <= src_off <= src.size - 8, f"cp.async source {src_off} of {src.size}")
        dst[dst_off:dst_off + 8] = src[src_off:src_off + 8]
    else:
        dst[dst_off:dst_off + 8] = 0


def inb(arr, i, what):
    i = np.asarray(i)
    check(((i >= 0) & (i < arr.size)).all(), f"{what} index out of range")
    return i


class Out:
    """An output in global memory: a flat float32 array plus a count of writes per element."""

    def __init__(self, data):
        self.data = data
        self.writes = np.zeros(data.size, np.int64)

    def rmw(self, offs, values, rounding):
        # one instruction's read-modify-write (or store) across lanes
        offs = inb(self.data, offs, "global store")
        check(np.unique(offs).size == offs.size, "two lanes store to one element in one instruction")
        self.writes[offs] += 1
        self.data[offs] = rounding(values)


# ---------------------------------------------------------------- device helpers

def load_w_block(dst, dst_base, w, ldw, expert_rows, e, h0):
    for i in range(KD * (KD // 8)):
        r, ch = i // (KD // 8), i % (KD // 8)
        src = (e * KD + r) * ldw + h0 + ch * 8 if expert_rows else (h0 + r) * ldw + e * KD + ch * 8
        cp_async16(dst, dst_base + r * KLD + ch * 8, w, src, True)


def load_b16(NK, s, base, k0, n0):
    """b[:, 0..3] of load_b16<NK>(b, s + base, k0, n0)."""
    if NK:
        p = base + (n0 + G) * KLD + k0 + 2 * C
        return np.stack([ld32_p(s, p), ld32_p(s, p + 8), ld32_p(s, p + 8 * KLD), ld32_p(s, p + 8 * KLD + 8)], 1)
    row, col = (LANES & 7) + ((LANES >> 3) & 1) * 8, (LANES >> 4) * 8
    return ldmatrix_x4_trans_p(s, base + (k0 + row) * KLD + n0 + col)


def load_a_trans(s, base, k0, m0):
    row, col = (LANES & 7) + (LANES >> 4) * 8, ((LANES >> 3) & 1) * 8
    return ldmatrix_x4_trans_p(s, base + (k0 + row) * KLD + m0 + col)


def store_pack(out, offs, lo, hi):
    """*(uint32_t*)(out + offs) = pack(lo, hi) for the lanes given."""
    check((offs % 2 == 0).all(), "misaligned 4-byte store")
    out.rmw(offs, lo, bf16)
    out.rmw(offs + 1, hi, bf16)


# ---------------------------------------------------------------- gather GEMM

class GatherSmem:
    def __init__(self, S):
        self.x_elems = S.pairs * KLD
        self.bytes = 2 * self.x_elems * 2 + 2 * KTILE_ELEMS * 2 + S.pairs * 4


def check_layout(regions, total, aligned, what):
    """Dynamic shared memory: regions (byte start, bytes) disjoint, inside total; `aligned` starts 16-byte aligned."""
    end = 0
    for start, size in sorted(regions):
        check(start >= end, f"{what} shared-memory regions overlap")
        end = start + size
    check(end <= total, f"{what} shared memory past its byte count")
    check(all(a % 16 == 0 for a in aligned), f"{what} cp.async / ldmatrix regions not 16-byte aligned")
    check(total <= 227 * 1024, f"{what}: more shared memory than a block may have")


def gather_block_expert(aux, experts, block):
    """The gather block's expert: the last e in [0, experts) with aux[e] <= block (the kernel's binary search)."""
    e, hi = 0, experts - 1
    while e < hi:
        mid = (e + hi + 1) // 2
        if aux[mid] <= block:
            e = mid
        else:
            hi = mid - 1
    return e


def gather_block_starts(offsets, experts, pairs):
    """ExpertTable::aux for the gather GEMM, as the host fills it: each expert's first block, then the grid."""
    aux, blocks = [0] * (experts + 1), 0
    for e in range(experts):
        aux[e] = blocks
        blocks += (offsets[e + 1] - offsets[e] + pairs - 1) // pairs
    aux[experts] = blocks
    return aux


def check_block_decode():
    """Every gather block finds its expert for tables with empty experts first, last and in runs."""
    for offsets in ([0, 0, 0, 5, 5, 200, 200], [0, 0, 1], [0, 3, 3, 3], [7, 7, 300, 300, 301],
                    [0, 128, 128, 129], [0, 64, 64, 64, 64, 65]):
        experts = len(offsets) - 1
        for pairs in (64, 128):
            aux = gather_block_starts(offsets, experts, pairs)
            decoded = []
            for b in range(aux[experts]):
                e = gather_block_expert(aux, experts, b)
                decoded.append((e, offsets[e] + (b - aux[e]) * pairs))
            expected = [(e, r) for e in range(experts) for r in range(offsets[e], offsets[e + 1], pairs)]
            check(decoded == expected, f"gather block decode for offsets {offsets}, {pairs} pairs a block")


def gather_gemm_kernel(NK, S, block, c, ldc, x, ldx, index, w, ldw, offsets, aux, experts, H):
    M = GatherSmem(S)
    ws_at = 2 * M.x_elems * 2
    tok_at = ws_at + 2 * KTILE_ELEMS * 2
    check_layout([(0, 2 * M.x_elems * 2), (ws_at, 2 * KTILE_ELEMS * 2), (tok_at, S.pairs * 4)], M.bytes,
                 [0, ws_at, ws_at + KTILE_ELEMS * 2, M.x_elems * 2], "gather")
    xs, ws = smem(2 * M.x_elems), smem(2 * KTILE_ELEMS)
    tok = np.full(S.pairs, -(1 << 30), np.int64)
    e = gather_block_expert(aux, experts, block)
    r0 = offsets[e] + (block - aux[e]) * S.pairs
    rows = min(S.pairs, offsets[e + 1] - r0)
    check(rows > 0 and offsets[e] <= r0, f"gather block {block} decodes to expert {e} without pairs left")
    for i in range(S.pairs):
        tok[i] = index[inb(index, r0 + i, "index")] if i < rows else -1

    def load(step, buf):
        h0 = step * KD
        for i in range(S.pairs * (KD // 8)):
            r, ch = i // (KD // 8), i % (KD // 8)
            t = int(tok[r])
            cp_async16(xs, buf * M.x_elems + r * KLD + ch * 8, x, t * ldx + h0 + ch * 8 if t >= 0 else 0, t >= 0)
        load_w_block(ws, buf * KTILE_ELEMS, w, ldw, NK, e, h0)

    acc = np.zeros((S.warps, KD // 8, 32, 4), np.float32)
    steps = H // KD
    load(0, 0)
    for step in range(steps):
        buf = step & 1
        if step + 1 < steps:
            load(step + 1, buf ^ 1)
        for warp in range(S.warps):
            for kk in range(KD // 16):
                a = load_a_p(xs, buf * M.x_elems, KLD, 16 * warp, kk * 16)
                for n in range(KD // 16):
                    b = load_b16(NK, ws, buf * KTILE_ELEMS, kk * 16, n * 16)
                    mma(acc[warp, 2 * n], a, b[:, 0:2])
                    mma(acc[warp, 2 * n + 1], a, b[:, 2:4])
    for warp in range(S.warps):
        r = 16 * warp + G
        for j in range(KD // 8):
            m = r < rows
            store_pack(c, ((r0 + r) * ldc + 8 * j + 2 * C)[m], acc[warp, j][m, 0], acc[warp, j][m, 1])
            m = r + 8 < rows
            store_pack(c, ((r0 + r + 8) * ldc + 8 * j + 2 * C)[m], acc[warp, j][m, 2], acc[warp, j][m, 3])


def expert_gather_gemm(c, ldc, x, ldx, x_cols, index, w, ldw, expert_rows, offsets, experts, wide):
    S = WIDE if wide else NARROW
    check(1 <= experts <= MAX_EXPERTS, "the parameter table holds the experts")
    aux = gather_block_starts(offsets, experts, S.pairs)
    for block in range(aux[experts]):
        gather_gemm_kernel(expert_rows, S, block, c, ldc, x, ldx, index, w, ldw, offsets, aux, experts, x_cols)


# ---------------------------------------------------------------- scatter GEMM

class ScatterSmem:
    def __init__(self, S):
        self.chunk = S.chunk
        self.acc_bytes = S.chunk * KACCLD * 4
        self.g_bytes = 2 * S.chunk * KLD * 2
        self.w_bytes = 2 * KTILE_ELEMS * 2
        self.tok_bytes = 2 * S.chunk * 4

    def bytes(self, experts):
        return self.acc_bytes + self.g_bytes + self.w_bytes + self.tok_bytes + 2 * experts * 4


def check_scatter_layout(S, experts):
    """The kernel's pointer casts into smem: regions disjoint, inside bytes(experts), 16-byte aligned."""
    M = ScatterSmem(S)
    gs = M.acc_bytes
    ws = M.acc_bytes + M.g_bytes
    toks = M.acc_bytes + M.g_bytes + M.w_bytes
    first = toks + 4 * (2 * S.chunk)
    count = first + 4 * experts
    regions = [(0, S.chunk * KACCLD * 4), (gs, 2 * S.chunk * KLD * 2), (ws, 2 * KTILE_ELEMS * 2),
               (toks, 2 * S.chunk * 4), (first, 4 * experts), (count, 4 * experts)]
    check_layout(regions, M.bytes(experts), [gs, ws, ws + KTILE_ELEMS * 2, gs + S.chunk * KLD * 2], "scatter")


def lower_bound(index, lo, hi, t):
    while lo < hi:
        mid = lo + (hi - lo) // 2
        if index[inb(index, mid, "index")] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo


def chunk_bounds_kernel(index, offsets, experts, entries, chunk):
    """bounds[c * experts + e]: expert e's first pair with token >= c * chunk (one thread each)."""
    bounds = np.full(entries, -(1 << 30), np.int64)
    for i in range(entries):
        c, e = i // experts, i % experts
        bounds[i] = lower_bound(index, offsets[e], offsets[e + 1], c * chunk)
    return bounds


def scatter_gemm_kernel(NK, S, bx, by, y, ldy, gm, ldg, index, w, ldw, bounds, experts, N):
    KCHUNK = S.chunk
    acc = smem(KCHUNK * KACCLD)
    gs = smem(2 * KCHUNK * KLD)
    ws = smem(2 * KTILE_ELEMS)
    toks = np.full(2 * KCHUNK, -(1 << 30), np.int64)
    first = np.full(experts, -(1 << 30), np.int64)
    count = np.full(experts, -(1 << 30), np.int64)
    t0, h0 = bx * KCHUNK, by * KD
    for i in range(KCHUNK * KACCLD):
        acc[i] = 0.0
    for e in range(experts):
        lo = bounds[inb(bounds, bx * experts + e, "bounds")]
        first[e] = lo
        count[e] = bounds[inb(bounds, (bx + 1) * experts + e, "bounds")] - lo

    def load(e, buf):
        lo, n = int(first[e]), int(count[e])
        padded = (n + 15) // 16 * 16
        gb = buf * KCHUNK * KLD
        for i in range(padded * (KD // 8)):
            r, ch = i // (KD // 8), i % (KD // 8)
            cp_async16(gs, gb + r * KLD + ch * 8, gm, (lo + r) * ldg + ch * 8 if r < n else 0, r < n)
        for r in range(n):
            toks[inb(toks, buf * KCHUNK + r, "toks")] = index[inb(index, lo + r, "index")] - t0
        load_w_block(ws, buf * KTILE_ELEMS, w, ldw, not NK, e, h0)

    def next_(e):
        e += 1
        while e < experts and count[e] == 0:
            e += 1
        return e

    e, buf = next_(-1), 0
    if e < experts:
        load(e, 0)
    while e < experts:
        following = next_(e)
        if following < experts:
            load(following, buf ^ 1)
        n = int(count[e])
        gb, wb, tb = buf * KCHUNK * KLD, buf * KTILE_ELEMS, buf * KCHUNK
        touched = []  # per warp: the slice elements it adds into for this expert (warps run concurrently)
        for warp in range(S.warps):
            col0, tile0 = 16 * (warp % 4), 16 * (warp // 4)
            mine = []
            for t in range(tile0, n, 16 * (S.warps // 4)):
                part = np.zeros((2, 32, 4), np.float32)
                for kk in range(KD // 16):
                    a = load_a_p(gs, gb, KLD, t, kk * 16)
                    b = load_b16(NK, ws, wb, kk * 16, col0)
                    mma(part[0], a, b[:, 0:2])
                    mma(part[1], a, b[:, 2:4])
                for j in range(2):
                    col = col0 + 8 * j + 2 * C
                    for rr, lo_hi in ((G, (0, 1)), (G + 8, (2, 3))):
                        m = t + rr < n
                        rows = toks[inb(toks, tb + t + rr[m], "toks")]
                        p = inb(acc, rows * KACCLD + col[m], "slice")
                        inb(acc, p + 1, "slice")
                        check(np.unique(p).size == p.size, "two lanes add into one slice element")
                        acc[p] += part[j][m, lo_hi[0]]
                        acc[p + 1] += part[j][m, lo_hi[1]]
                        mine += [p, p + 1]
            touched.append(np.concatenate(mine) if mine else np.zeros(0, np.int64))
        every = np.concatenate(touched)
        check(np.unique(every).size == every.size, "two warps add into one slice element within an expert")
        e = following
        buf ^= 1

    for i in range(KCHUNK * (KD // 2)):
        r, col = i // (KD // 2), (i % (KD // 2)) * 2
        tkn = t0 + r
        if tkn >= N:
            continue
        p = tkn * ldy + h0 + col
        v = y.data[inb(y.data, np.array([p, p + 1]), "y")]
        y.rmw(np.array([p, p + 1]), v + acc[[r * KACCLD + col, r * KACCLD + col + 1]], bf16)


def expert_scatter_gemm(y, y_rows, y_cols, ldy, gm, ldg, index, w, ldw, expert_rows, offsets, experts, wide):
    if offsets[experts] == offsets[0] or y_rows == 0:
        return
    S = WIDE if wide else NARROW
    check(1 <= experts <= MAX_EXPERTS, "the parameter table holds the experts")
    check_scatter_layout(S, experts)
    NK = not expert_rows
    chunks = (y_rows + S.chunk - 1) // S.chunk
    bounds = chunk_bounds_kernel(index, offsets, experts, (chunks + 1) * experts, S.chunk)
    grid = (chunks, y_cols // KD)
    for bx in range(grid[0]):
        for by in range(grid[1]):
            scatter_gemm_kernel(NK, S, bx, by, y, ldy, gm, ldg, index, w, ldw, bounds, experts, y_rows)


# ---------------------------------------------------------------- weight gradient

def weight_grad_kernel(ROWS, S, bx, by, dw, lddw, gm, ldg, x, ldx, index, offsets, order):
    halves = S.warps // 4
    xs_at = 2 * KTILE_ELEMS * 2
    total = 2 * KTILE_ELEMS * 2 + 2 * halves * KTILE_ELEMS * 2  # WeightGradSmem<WARPS>::bytes
    check_layout([(0, 2 * KTILE_ELEMS * 2), (xs_at, 2 * halves * KTILE_ELEMS * 2)], total,
                 [0, KTILE_ELEMS * 2] + [xs_at + k * KTILE_ELEMS * 2 for k in range(2 * halves)], "weight gradient")
    h0, e = bx * S.columns, order[by]
    lo, n = offsets[e], offsets[e + 1] - offsets[e]
    if n == 0:
        return
    gs, xs = smem(2 * KTILE_ELEMS), smem(2 * halves * KTILE_ELEMS)

    def load(step, buf):
        for i in range(KTILE_ROWS * (KD // 8)):
            r, ch = i // (KD // 8), i % (KD // 8)
            q = step * KTILE_ROWS + r
            valid = q < n
            cp_async16(gs, buf * KTILE_ELEMS + r * KLD + ch * 8, gm, (lo + q) * ldg + ch * 8 if valid else 0, valid)
        for i in range(KTILE_ROWS * (S.columns // 8)):
            r, ch = i // (S.columns // 8), i % (S.columns // 8)
            q = step * KTILE_ROWS + r
            valid = q < n
            dst = (buf * halves + ch // (KD // 8)) * KTILE_ELEMS + r * KLD + (ch % (KD // 8)) * 8
            cp_async16(xs, dst, x, int(index[inb(index, lo + q, "index")]) * ldx + h0 + ch * 8 if valid else 0, valid)

    acc = np.zeros((S.warps, KD // 8, 32, 4), np.float32)
    steps = (n + KTILE_ROWS - 1) // KTILE_ROWS
    load(0, 0)
    for step in range(steps):
        buf = step & 1
        if step + 1 < steps:
            load(step + 1, buf ^ 1)
        for warp in range(S.warps):
            d0, half = 16 * (warp % 4), warp // 4
            for kk in range(KTILE_ROWS // 16):
                a = load_a_trans(gs, buf * KTILE_ELEMS, kk * 16, d0)
                for nn in range(KD // 16):
                    b = load_b16(False, xs, (buf * halves + half) * KTILE_ELEMS, kk * 16, nn * 16)
                    mma(acc[warp, 2 * nn], a, b[:, 0:2])
                    mma(acc[warp, 2 * nn + 1], a, b[:, 2:4])
    f32 = lambda v: np.asarray(v, np.float32)  # noqa: E731
    for warp in range(S.warps):
        d0, half = 16 * (warp % 4), warp // 4
        for j in range(KD // 8):
            for hi in range(2):
                d, h = d0 + G + 8 * hi, h0 + KD * half + 8 * j + 2 * C
                v0, v1 = acc[warp, j][:, 2 * hi], acc[warp, j][:, 2 * hi + 1]
                row = e * KD + d
                if ROWS:
                    p = row * lddw + h
                    dw.rmw(p, dw.data[inb(dw.data, p, "dw")] + v0, f32)
                    dw.rmw(p + 1, dw.data[inb(dw.data, p + 1, "dw")] + v1, f32)
                else:
                    p0, p1 = h * lddw + row, (h + 1) * lddw + row
                    dw.rmw(p0, dw.data[inb(dw.data, p0, "dw")] + v0, f32)
                    dw.rmw(p1, dw.data[inb(dw.data, p1, "dw")] + v1, f32)


def expert_weight_grad(dw, lddw, expert_rows, gm, ldg, x, ldx, x_cols, index, offsets, experts, wide):
    if offsets[experts] == offsets[0]:
        return
    check(1 <= experts <= MAX_EXPERTS, "the parameter table holds the experts")
    S = WIDE if wide and x_cols % WIDE.columns == 0 else NARROW
    # Experts by pairs, most first, ties by index (std::stable_sort on the host).
    order = sorted(range(experts), key=lambda e: (-(offsets[e + 1] - offsets[e]), e))
    check(sorted(order) == list(range(experts)), "the weight gradient's expert order is a permutation")
    for bx in range(x_cols // S.columns):
        for by in range(experts):
            weight_grad_kernel(expert_rows, S, bx, by, dw, lddw, gm, ldg, x, ldx, index, offsets, order)


# ---------------------------------------------------------------- test

def build_routing(z):
    """ops::build_routing (kernels/cpu/router.cpp): offsets[E+1], pair_token[N*E]."""
    N, E = z.shape
    off = np.zeros(E + 1, np.int64)
    for t in range(N):
        for e in range(E):
            off[e + 1] += z[t, e] > 0
    for e in range(E):
        off[e + 1] += off[e]
    cursor = off[:E].copy()
    tok = np.full(N * E, GARBAGE_INDEX, np.int32)  # past P: not written by build_routing
    for t in range(N):
        for e in range(E):
            if z[t, e] > 0:
                tok[cursor[e]] = t
                cursor[e] += 1
    return [int(o) for o in off], tok


def matrix(rng, rows, cols, ld, scale=1.0, nan_pad=True):
    """bf16 values in a flat [rows, ld] array; columns past cols NaN."""
    m = np.full((rows, ld), np.nan if nan_pad else 0, np.float32)
    m[:, :cols] = bf16(rng.standard_normal((rows, cols)) * scale)
    return m.reshape(-1)


def run_case(rng, N, E, H, ratio, pad):
    D = KD
    # A ReLU router's z at this activation ratio. Expert 1 gets no pairs, the last expert at most
    # 64 (one full narrow tile), every 11th token past the first wide chunk none (so at ratio 1
    # the first chunks, 256 and 2 x 128 tokens, have full runs of an expert: no padded rows).
    z = np.where(rng.random((N, E)) < ratio, rng.random((N, E)) + 0.1, -rng.random((N, E)))
    z[:, 1] = -1
    z[WIDE.chunk + 3::11, :] = -1
    active = np.flatnonzero(z[:, E - 1] > 0)
    if active.size > 64:
        z[rng.choice(active, active.size - 64, replace=False), E - 1] = -1
    offsets, index = build_routing(z)
    P = offsets[E]
    pair_expert = np.repeat(np.arange(E), np.diff(offsets))
    tok = index[:P].astype(np.int64)

    We = bf16(rng.standard_normal((E, D, H)) / 8).astype(np.float64)  # W_e(d, h)
    ld_rows, ld_cols = H + pad, E * D + pad
    w_rows = np.full((E * D, ld_rows), np.nan, np.float32)
    w_rows[:, :H] = We.reshape(E * D, H)
    w_cols = np.full((H, ld_cols), np.nan, np.float32)
    w_cols[:, :E * D] = We.transpose(2, 0, 1).reshape(H, E * D)
    w_layouts = {True: (w_rows.reshape(-1), ld_rows), False: (w_cols.reshape(-1), ld_cols)}
    ldx, ldg = H + pad, D + pad
    x = matrix(rng, N, H, ldx)
    gm = matrix(rng, max(P, 1), D, ldg)
    X = x.reshape(N, ldx)[:, :H].astype(np.float64)
    Gm = gm.reshape(-1, ldg)[:P, :D].astype(np.float64)

    errs, bad = {}, []
    written_e = np.diff(offsets) > 0
    for expert_rows in (True, False):
        w, ldw = w_layouts[expert_rows]
        # Inputs of the accumulating products, the same for both block shapes.
        ldy = H + pad
        y0 = matrix(rng, N, H, ldy)
        shape = (E * D, ld_rows) if expert_rows else (H, ld_cols)
        dw0 = np.full(shape, np.nan, np.float32)
        if expert_rows:
            dw0[:, :H] = rng.standard_normal((E * D, H))
        else:
            dw0[:, :E * D] = rng.standard_normal((H, E * D))
        bits = {}
        for wide in (True, False):
            name = ("wide-" if wide else "narrow-") + ("rows" if expert_rows else "cols")

            # gather: c[p, d] = sum_h x[index[p], h] W_e(d, h); c overwritten, so NaN first
            ldc = D + pad
            c = Out(np.full(max(P, 1) * ldc, np.nan, np.float32))
            expert_gather_gemm(c, ldc, x, ldx, H, index, w, ldw, expert_rows, offsets, E, wide)
            ref = np.einsum("pdh,ph->pd", We[pair_expert], X[tok])
            cm = c.data.reshape(-1, ldc)[:P]
            cw = c.writes.reshape(-1, ldc)
            errs[f"gather-{name}"] = rel(cm[:, :D].astype(np.float64), ref)
            if np.isnan(cm[:, :D]).any() or (cw[:P, :D] != 1).any() or cw[:, D:].any():
                bad.append(f"gather-{name}: {int(np.isnan(cm[:, :D]).sum())} unwritten, "
                           f"{int((cw[:P, :D] != 1).sum())} not written once, {int(cw[:, D:].sum())} pad writes")

            # scatter: y[t, h] += sum_{p: index[p] = t} sum_d g[p, d] W_e(d, h)
            y = Out(y0.copy())
            expert_scatter_gemm(y, N, H, ldy, gm, ldg, index, w, ldw, expert_rows, offsets, E, wide)
            delta = np.zeros((N, H))
            np.add.at(delta, tok, np.einsum("pd,pdh->ph", Gm, We[pair_expert]))
            ym = y.data.reshape(N, ldy)
            Y0 = y0.reshape(N, ldy)[:, :H].astype(np.float64)
            errs[f"scatter-{name}"] = rel(ym[:, :H].astype(np.float64), Y0 + delta)
            errs[f"scatter-{name} increment"] = rel(ym[:, :H] - Y0, delta)
            yw = y.writes.reshape(N, ldy)
            idle = np.setdiff1d(np.arange(N), tok)
            if (np.isnan(ym[:, :H]).any() or (yw[:, :H] != 1).any() or yw[:, H:].any() or
                    not np.array_equal(ym[idle, :H].view(np.uint32), y0.reshape(N, ldy)[idle, :H].view(np.uint32))):
                bad.append(f"scatter-{name}: {int(np.isnan(ym[:, :H]).sum())} NaN, {int((yw[:, :H] != 1).sum())} "
                           f"not written once, {int(yw[:, H:].sum())} pad writes, or an idle token's row changed")

            # weight gradient: dW_e(d, h) += sum_p g[p, d] x[index[p], h], float32 in W's layout
            dw = Out(dw0.reshape(-1).copy())
            expert_weight_grad(dw, shape[1], expert_rows, gm, ldg, x, ldx, H, index, offsets, E, wide)
            dref = np.zeros((E, D, H))
            np.add.at(dref, pair_expert, Gm[:, :, None] * X[tok][:, None, :])
            if expert_rows:
                got = (dw.data.reshape(shape)[:, :H].astype(np.float64) - dw0[:, :H]).reshape(E, D, H)
                wr = dw.writes.reshape(shape)[:, :H].reshape(E, D, H)
                pad_writes = dw.writes.reshape(shape)[:, H:].sum()
            else:
                got = (dw.data.reshape(shape)[:, :E * D].astype(np.float64) - dw0[:, :E * D]).reshape(H, E, D)
                got = got.transpose(1, 2, 0)
                wr = dw.writes.reshape(shape)[:, :E * D].reshape(H, E, D).transpose(1, 2, 0)
                pad_writes = dw.writes.reshape(shape)[:, E * D:].sum()
            errs[f"wgrad-{name}"] = rel(got, dref)
            if (np.isnan(got).any() or (wr[written_e] != 1).any() or wr[~written_e].any() or pad_writes):
                bad.append(f"wgrad-{name}: {int(np.isnan(got).sum())} NaN, {int((wr[written_e] != 1).sum())} not "
                           f"written once, {int(wr[~written_e].sum())} writes to experts without pairs, "
                           f"{int(pad_writes)} pad writes")
            bits[wide] = [c.data.view(np.uint32).copy(), y.data.view(np.uint32).copy(), dw.data.view(np.uint32).copy()]
        for what, wide_bits, narrow_bits in zip(("gather", "scatter", "wgrad"), bits[True], bits[False]):
            same = np.array_equal(wide_bits, narrow_bits)
            if not same:
                bad.append(f"{what}-{'rows' if expert_rows else 'cols'}: wide and narrow blocks differ in "
                           f"{int((wide_bits != narrow_bits).sum())} elements")
    counts = np.diff(offsets)
    return P, counts, errs, bad


CASES = [  # N, E, H, activation ratio, row padding of every matrix (elements)
    (300, 4, 128, 1.0, 8),
    (300, 6, 192, 0.3, 8),
    (150, 5, 64, 1.0, 0),
    (257, 7, 192, 0.05, 16),
    (200, 6, 64, 1.0, 8),
]

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    worst, failures = 0.0, []
    start = time.time()
    try:
        check_block_decode()
        print("gather block decode (empty experts first, last, in runs; offsets from non-zero): ok")
    except Failure as f:
        print(f"gather block decode: FAIL {f}")
        failures.append(f"gather block decode: {f}")
    for (N, E, H, ratio, pad) in CASES:
        label = f"N{N} E{E} H{H} ratio {ratio} pad {pad}"
        try:
            P, counts, errs, bad = run_case(rng, N, E, H, ratio, pad)
        except Failure as f:
            print(f"{label}: FAIL {f}")
            failures.append(f"{label}: {f}")
            continue
        errs = {k: (v if np.isfinite(v) else float("inf")) for k, v in errs.items()}
        worst = max(worst, *errs.values())
        print(f"{label}: P {P} (pairs per expert {' '.join(map(str, counts))}): " +
              " ".join(f"{k} {v:.2e}" for k, v in errs.items()))
        for b in bad:
            print(f"  FAIL {b}")
        failures += [f"{label}: {b}" for b in bad]
        sys.stdout.flush()
    ok = worst < 1e-2 and not failures
    print(f"worst relative error {worst:.2e}, {len(failures)} failed checks, {time.time() - start:.1f} s: "
          f"{'ok' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)
