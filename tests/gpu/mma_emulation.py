"""Warp-level primitives shared by the lane-level emulators of the tensor-core
kernels (emulate_attention_tc.py, emulate_sparse_experts.py).

A warp is replayed as numpy arrays over its 32 lanes, lane = 4 g + c
(G = lane / 4, C = lane % 4). Fragments are float32 arrays holding bf16
values: A [32, 4, 2] (a[0..3], each a packed pair, low half first), B
[32, 2, 2] (b0, b1), C [32, 4]. The layouts are the PTX ISA's for
mma.sync m16n8k16 and ldmatrix (the table at the top of
kernels/cuda/mma.cuh). Shared tiles are 2-D arrays [rows, row length].
"""
import numpy as np

LANES = np.arange(32)
G, C = LANES // 4, LANES % 4


def bf16(x):
    """Round float32 to bfloat16, to nearest even (__floats2bfloat162_rn)."""
    x = np.asarray(x, dtype=np.float32)
    b = x.view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def mma(c, a, b):
    """mma.sync m16n8k16 row.col f32.bf16.bf16.f32: c += A B, in place."""
    # c [32,4] float32; a [32,4,2]; b [32,2,2]
    A = np.zeros((16, 16), np.float32)
    B = np.zeros((16, 8), np.float32)
    for h in range(2):
        A[G, 2 * C + h] = a[:, 0, h]
        A[G + 8, 2 * C + h] = a[:, 1, h]
        A[G, 2 * C + 8 + h] = a[:, 2, h]
        A[G + 8, 2 * C + 8 + h] = a[:, 3, h]
        B[2 * C + h, G] = b[:, 0, h]
        B[2 * C + 8 + h, G] = b[:, 1, h]
    Cm = (A.astype(np.float64) @ B.astype(np.float64)).astype(np.float32)
    for h in range(2):
        c[:, h] += Cm[G, 2 * C + h]
        c[:, 2 + h] += Cm[G + 8, 2 * C + h]


def ld32(tile, rows, cols):  # per-lane pair
    return np.stack([tile[rows, cols], tile[rows, cols + 1]], -1)


def load_a(tile, row0, col0):
    """mma.cuh load_a: the A fragment of rows [row0, +16) x columns [col0, +16) of a row-major tile."""
    a = np.zeros((32, 4, 2), np.float32)
    r, cc = row0 + G, col0 + 2 * C
    a[:, 0] = ld32(tile, r, cc)
    a[:, 1] = ld32(tile, r + 8, cc)
    a[:, 2] = ld32(tile, r, cc + 8)
    a[:, 3] = ld32(tile, r + 8, cc + 8)
    return a


def ldmatrix_x4_trans(tile, rows, cols):
    # lane l gives row address (rows[l], cols[l]) of block l // 8, row l % 8
    out = np.zeros((32, 4, 2), np.float32)
    for i in range(4):
        M = np.stack([tile[rows[8 * i + r], cols[8 * i + r]:cols[8 * i + r] + 8] for r in range(8)])
        # transposed fragment: lane gets (M[2c][g], M[2c+1][g])
        out[:, i, 0] = M[2 * C, G]
        out[:, i, 1] = M[2 * C + 1, G]
    return out


def to_a(s, K):
    """Accumulator tiles s[2t], s[2t+1] (16 x 8 each) as the bf16 A fragments of K 16 x 16 tiles."""
    a = np.zeros((K, 32, 4, 2), np.float32)
    for t in range(K):
        a[t][:, 0] = bf16(np.stack([s[2 * t][:, 0], s[2 * t][:, 1]], -1))
        a[t][:, 1] = bf16(np.stack([s[2 * t][:, 2], s[2 * t][:, 3]], -1))
        a[t][:, 2] = bf16(np.stack([s[2 * t + 1][:, 0], s[2 * t + 1][:, 1]], -1))
        a[t][:, 3] = bf16(np.stack([s[2 * t + 1][:, 2], s[2 * t + 1][:, 3]], -1))
    return a


def rel(a, b):
    """||a - b|| / ||b||; ||a|| where b is all zero."""
    nb = np.linalg.norm(b)
    return np.linalg.norm(a - b) / nb if nb > 0 else np.linalg.norm(a)


# Flat-pointer forms, for transcribing kernels that address shared memory as
# base + row * ld + col: `mem` is a 1-D array (one __shared__ array, or the
# dynamic shared memory region of one type), `p` per-lane element offsets.
def _in(mem, p, width):
    p = np.asarray(p)
    assert (p >= 0).all() and (p + width <= mem.size).all(), "address outside the array"


def ld32_p(mem, p):
    """ld32: the bf16 pair at element offsets p, p + 1 (4-byte aligned)."""
    _in(mem, p, 2)
    assert (np.asarray(p) % 2 == 0).all(), "misaligned 4-byte read"
    return ld32(mem[None, :], 0, p)


def ldmatrix_x4_trans_p(mem, p):
    """ldmatrix.x4.trans: lane l gives the (16-byte aligned) row address p[l] of row l % 8 of block l // 8."""
    _in(mem, p, 8)
    assert (np.asarray(p) % 8 == 0).all(), "misaligned ldmatrix row"
    return ldmatrix_x4_trans(mem[None, :], np.zeros(32, np.int64), p)


def load_a_p(mem, base, ld, row0, col0):
    """mma.cuh load_a(a, tile = mem + base, ld, row0, col0)."""
    p = base + (row0 + G) * ld + col0 + 2 * C
    a = np.zeros((32, 4, 2), np.float32)
    a[:, 0] = ld32_p(mem, p)
    a[:, 1] = ld32_p(mem, p + 8 * ld)
    a[:, 2] = ld32_p(mem, p + 8)
    a[:, 3] = ld32_p(mem, p + 8 * ld + 8)
    return a
