// Causal GQA attention on the tensor cores, FlashAttention-2's algorithm:
// bfloat16 operands, head_dim D = 64 or 128, float32 accumulation, the
// softmax in float32 registers, the S x S scores never in global memory.
//
// Each block has 4 warps; a warp owns 16 rows of every tile product and
// issues mma.sync m16n8k16 (bf16 in, float32 accumulate). Fragment layout
// of that instruction, lane = 4 g + c (g = lane / 4, c = lane % 4):
//   A (16 x 16, row-major) a[0] = A[g][2c, 2c+1]     a[1] = A[g+8][2c, 2c+1]
//                          a[2] = A[g][2c+8, +9]     a[3] = A[g+8][2c+8, +9]
//   B (16 x 8, k x n)      b[0] = B[2c, 2c+1][g]     b[1] = B[2c+8, +9][g]
//   C (16 x 8, float)      c[0..1] = C[g][2c, 2c+1]  c[2..3] = C[g+8][2c, 2c+1]
// (pairs packed low index in the low half). Two consequences shape the
// kernels:
//  - B[k][n] = M[n][k] for a row-major M in shared memory reads two
//    consecutive elements of one row of M: Q K^T takes K's rows as they
//    are. Products whose B is a row-major M[k][n] (P V, dS K, P^T dO,
//    dS^T Q) load it with ldmatrix.trans, which transposes 8 x 8 blocks.
//  - the accumulators of two adjacent 8-column tiles of S are, packed to
//    bf16, the A fragment of the next product over those 16 columns, so P
//    and dS go from one mma to the next in registers.
// Shared-memory rows are D + 8 elements long: the 8 lanes of a fragment
// that read 8 rows then hit 8 different bank groups, for 4-byte reads and
// for ldmatrix's 16-byte rows alike.
//
// Kernels (one thread block each):
//  - forward: 64 query rows, walking key tiles of 64 up to the diagonal
//    with the online softmax; K and V tiles arrive by cp.async, the next
//    K tile in flight during the softmax and P V, the next V during Q K^T.
//  - delta: D_i = dO_i . O_i (a warp per row).
//  - dK, dV: 64 keys of one kv group, walking every head of the group and
//    every 32-row query block that sees them, double-buffered.
//  - dQ: 64 query rows, walking the key tiles up to the diagonal,
//    double-buffered.
// Every output element is written by one thread after a fixed sequence of
// sums (no atomics): gradients are bit-identical run to run. dQ costs a
// second evaluation of S and dP (7 tile products in the backward instead
// of FlashAttention-2's 5 with atomic dQ) for that determinism.
#include "kernels/cuda/attention_tc.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/check.h"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/storage.cuh"

namespace deco::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTile = 64;      // query rows (forward, dQ) and keys (all kernels) per tile
constexpr int kQBlock = 32;    // query rows per step of the dK/dV kernel
constexpr int kPad = 8;        // bf16 elements of padding per shared-memory row
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int D> constexpr int row_len() { return D + kPad; }

struct TcDims {
  int64_t batch, heads;
  int seq, heads_per_group, tiles;  // tiles of 64 rows per sequence
  int64_t ldq, ldk;                 // row strides of q/out/dout and of k/v
  float scale, scale_log2;          // 1/sqrt(D), and times log2(e)
};

// acc[j] += A(16 x D) . M^T for the 8-column tiles j of M's rows
// [0, 8 * N): A rows [a_row0, +16) of tile `a`, M rows of tile `m`; both
// have D columns. (Q K^T, dO V^T, K Q^T, V dO^T.)
template <int D, int N>
__device__ __forceinline__ void mma_abt(float (&acc)[N][4], const bf16* a, int a_row0, const bf16* m) {
  constexpr int LD = row_len<D>();
  const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t af[4];
    load_a(af, a, LD, a_row0, kk * 16);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const bf16* p = m + (8 * j + g) * LD + kk * 16 + 2 * c;
      mma(acc[j], af, ld32(p), ld32(p + 8));
    }
  }
}

// acc[n] += P(16 x 16K) . M for M's rows [0, 16K) (row-major, D columns):
// P given as K A fragments (p[t] covers columns [16t, 16t + 16)).
// (P V, dS K, P^T dO, dS^T Q.)
template <int D, int K>
__device__ __forceinline__ void mma_pm(float (&acc)[D / 8][4], const uint32_t (&p)[K][4], const bf16* m) {
  constexpr int LD = row_len<D>();
  const int lane = threadIdx.x % 32;
  // Block lane / 8 of ldmatrix: rows +8 for odd blocks, columns +8 for blocks 2, 3.
  const int row = (lane & 7) + ((lane >> 3) & 1) * 8, col = (lane >> 4) * 8;
#pragma unroll
  for (int t = 0; t < K; ++t)
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, m + (16 * t + row) * LD + 16 * n + col);
      mma(acc[2 * n], p[t], b[0], b[1]);
      mma(acc[2 * n + 1], p[t], b[2], b[3]);
    }
}

// Accumulators of 2K adjacent 8-column tiles as K bf16 A fragments.
template <int K>
__device__ __forceinline__ void to_a(uint32_t (&a)[K][4], const float (&s)[2 * K][4]) {
#pragma unroll
  for (int t = 0; t < K; ++t) {
    a[t][0] = pack(s[2 * t][0], s[2 * t][1]);
    a[t][1] = pack(s[2 * t][2], s[2 * t][3]);
    a[t][2] = pack(s[2 * t + 1][0], s[2 * t + 1][1]);
    a[t][3] = pack(s[2 * t + 1][2], s[2 * t + 1][3]);
  }
}

// Rows [row0, row0 + rows) of a sequence (row r at src + r * ld, D
// columns) into a shared tile, asynchronously; rows at or past `seq` are
// zero-filled.
template <int D>
__device__ __forceinline__ void load_rows(bf16* dst, const bf16* src, int64_t ld, int row0, int rows, int seq) {
  constexpr int LD = row_len<D>(), chunks = D / 8;
  for (int i = static_cast<int>(threadIdx.x); i < rows * chunks; i += kThreads) {
    const int r = i / chunks, ch = i % chunks, pos = row0 + r;
    const bool valid = pos < seq;
    cp_async16(dst + r * LD + ch * 8, valid ? src + pos * ld + ch * 8 : src, valid);
  }
}

// A warp's 16 rows of float accumulators (times `mul`, per row) to global
// memory through its own rows of a shared tile: rows [row0, row0 + 16) of
// the tile go to sequence rows pos0 + r < seq.
template <int D>
__device__ __forceinline__ void store_rows(bf16* dst, int64_t ld, const float (&acc)[D / 8][4], const float (&mul)[2],
                                           bf16* tile, int row0, int pos0, int seq) {
  constexpr int LD = row_len<D>(), chunks = D / 8;
  const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    *reinterpret_cast<uint32_t*>(tile + (row0 + g) * LD + 8 * n + 2 * c) = pack(acc[n][0] * mul[0], acc[n][1] * mul[0]);
    *reinterpret_cast<uint32_t*>(tile + (row0 + g + 8) * LD + 8 * n + 2 * c) =
        pack(acc[n][2] * mul[1], acc[n][3] * mul[1]);
  }
  __syncwarp();
  for (int i = lane; i < 16 * chunks; i += 32) {
    const int r = i / chunks, ch = i % chunks, pos = pos0 + r;
    if (pos < seq)
      *reinterpret_cast<uint4*>(dst + pos * ld + ch * 8) =
          *reinterpret_cast<const uint4*>(tile + (row0 + r) * LD + ch * 8);
  }
}

// The (batch, head, query tile) of a forward or dQ block, the longest rows
// (last query tiles) first so that the tail of the grid is short; with the
// head's kv group, the offsets of the batch's q-like and k-like rows of
// that head, and of its statistics (lse, delta [B, heads, S]).
struct QueryTile {
  int qt, q0;
  int64_t h, b, grp, qoff, koff, stats;
};
__device__ __forceinline__ QueryTile query_tile(const TcDims& a, int D) {
  QueryTile t;
  // The tile is the slowest-varying index: blocks are dispatched in about
  // blockIdx order, so the first B * heads blocks are the last query tiles.
  const int64_t idx = blockIdx.x, bh = idx % (a.batch * a.heads);
  t.qt = a.tiles - 1 - static_cast<int>(idx / (a.batch * a.heads));
  t.h = bh % a.heads;
  t.b = bh / a.heads;
  t.grp = t.h / a.heads_per_group;
  t.q0 = t.qt * kTile;
  t.qoff = t.b * a.seq * a.ldq + t.h * D;
  t.koff = t.b * a.seq * a.ldk + t.grp * D;
  t.stats = (t.b * a.heads + t.h) * a.seq;
  return t;
}

// ---------------------------------------------------------------- forward

template <int D> constexpr int forward_smem_bytes() { return 3 * kTile * row_len<D>() * 2; }

template <int D>
__global__ void __launch_bounds__(kThreads) tc_forward_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                                                              const bf16* __restrict__ q, const bf16* __restrict__ k,
                                                              const bf16* __restrict__ v, TcDims a) {
  constexpr int LD = row_len<D>();
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sq = reinterpret_cast<bf16*>(smem);  // [64][LD] Q, then the output's staging
  bf16* sk = sq + kTile * LD;                // [64][LD]
  bf16* sv = sk + kTile * LD;                // [64][LD]

  const QueryTile tile = query_tile(a, D);
  const int qt = tile.qt, q0 = tile.q0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const bf16* qb = q + tile.qoff;
  const bf16* kb = k + tile.koff;
  const bf16* vb = v + tile.koff;

  load_rows<D>(sq, qb, a.ldq, q0, kTile, a.seq);
  load_rows<D>(sk, kb, a.ldk, 0, kTile, a.seq);
  cp_async_commit();
  load_rows<D>(sv, vb, a.ldk, 0, kTile, a.seq);
  cp_async_commit();

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // running max (log2 units) and partial sums
  const int rows[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};

  for (int kt = 0; kt <= qt; ++kt) {
    cp_async_wait<1>();  // K(kt) (and, at kt = 0, Q) have landed; V(kt) may be in flight
    __syncthreads();
    float s[kTile / 8][4];
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
    mma_abt<D, kTile / 8>(s, sq, warp * 16, sk);
    __syncthreads();  // every warp is done with K(kt)
    if (kt < qt) load_rows<D>(sk, kb, a.ldk, (kt + 1) * kTile, kTile, a.seq);
    cp_async_commit();  // (possibly empty: keeps the group count uniform)

    // Scores in log2 units; the diagonal tile masks keys after the query
    // (and with them every key past the end of the sequence).
    const int k0 = kt * kTile;
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + 8 * j + 2 * c + (e & 1);
        const float x = s[j][e] * a.scale_log2;
        s[j][e] = (kt == qt && key > rows[e >> 1]) ? -INFINITY : x;
      }
    // Online softmax: row r's values sit in the 4 lanes of quad g.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // Key 0 is in tile 0 for every row, so mx is finite from the first tile on.
      const float alpha = exp2f(m[r] - mx);
      m[r] = mx;
      l[r] *= alpha;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][2 * r] *= alpha;
        o[n][2 * r + 1] *= alpha;
      }
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j) {
        s[j][2 * r] = exp2f(s[j][2 * r] - mx);
        s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - mx);
        l[r] += s[j][2 * r] + s[j][2 * r + 1];
      }
    }
    uint32_t p[kTile / 16][4];
    to_a<kTile / 16>(p, s);

    cp_async_wait<1>();  // V(kt) has landed; K(kt + 1) may be in flight
    __syncthreads();
    mma_pm<D, kTile / 16>(o, p, sv);
    __syncthreads();  // every warp is done with V(kt)
    if (kt < qt) load_rows<D>(sv, vb, a.ldk, (kt + 1) * kTile, kTile, a.seq);
    cp_async_commit();
  }

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = 1.f / l[r];
    if (c == 0 && rows[r] < a.seq) lse[tile.stats + rows[r]] = (m[r] + log2f(l[r])) * kLn2;
  }
  // Q's rows of this warp are free (its fragments were read from them in
  // every tile, the last time before the final barrier above).
  store_rows<D>(out + tile.qoff, a.ldq, o, inv, sq, warp * 16, q0 + warp * 16, a.seq);
}

// ---------------------------------------------------------------- backward

// delta[b, h, s] = dO . O over the head's D columns, a warp per row.
template <int D>
__global__ void tc_delta_kernel(float* __restrict__ delta, const bf16* __restrict__ dout,
                                const bf16* __restrict__ out, TcDims a) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;  // (b, s, h)
  const int lane = threadIdx.x % 32;
  if (row >= a.batch * a.seq * a.heads) return;
  const int64_t h = row % a.heads, token = row / a.heads;
  const int64_t s = token % a.seq, b = token / a.seq;
  const bf16* x = dout + token * a.ldq + h * D;
  const bf16* y = out + token * a.ldq + h * D;
  float sum = 0.f;
  for (int d = 2 * lane; d < D; d += 64) {
    const float2 xf = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(x + d));
    const float2 yf = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(y + d));
    sum += xf.x * yf.x + xf.y * yf.y;
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) delta[(b * a.heads + h) * a.seq + s] = sum;
}

template <int D> constexpr int dkdv_smem_bytes() {
  return (2 * kTile + 4 * kQBlock) * row_len<D>() * 2 + 2 * 2 * kQBlock * 4;
}

// One block per (batch, kv group, key tile): dK and dV of 64 keys, summed
// over the group's heads and the query rows at or after the tile.
template <int D>
__global__ void __launch_bounds__(kThreads)
    tc_dkdv_kernel(bf16* __restrict__ dk, bf16* __restrict__ dv, const bf16* __restrict__ dout,
                   const float* __restrict__ lse, const float* __restrict__ delta, const bf16* __restrict__ q,
                   const bf16* __restrict__ k, const bf16* __restrict__ v, TcDims a) {
  constexpr int LD = row_len<D>();
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sk = reinterpret_cast<bf16*>(smem);  // [64][LD]
  bf16* sv = sk + kTile * LD;                // [64][LD]
  bf16* sq = sv + kTile * LD;                // [2][32][LD]
  bf16* sdo = sq + 2 * kQBlock * LD;         // [2][32][LD]
  float* slse = reinterpret_cast<float*>(sdo + 2 * kQBlock * LD);  // [2][32], log2 units
  float* sdelta = slse + 2 * kQBlock;                              // [2][32]

  // The first key tiles see the most query rows: they go first (the tile is
  // the slowest-varying index of the grid, dispatched in about blockIdx order).
  const int64_t groups = a.heads / a.heads_per_group;
  const int64_t idx = blockIdx.x, bg = idx % (a.batch * groups);
  const int kt = static_cast<int>(idx / (a.batch * groups));
  const int64_t grp = bg % groups, b = bg / groups;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int k0 = kt * kTile;
  const bf16* kb = k + b * a.seq * a.ldk + grp * D;
  const bf16* vb = v + b * a.seq * a.ldk + grp * D;
  load_rows<D>(sk, kb, a.ldk, k0, kTile, a.seq);
  load_rows<D>(sv, vb, a.ldk, k0, kTile, a.seq);

  // Steps: (head i of the group, query block qb), query blocks from k0 on.
  const int qblocks = (a.seq - k0 + kQBlock - 1) / kQBlock;
  const int steps = a.heads_per_group * qblocks;
  auto load_step = [&](int step, int buf) {
    const int64_t h = grp * a.heads_per_group + step / qblocks;
    const int qs = k0 + (step % qblocks) * kQBlock;
    const int64_t off = b * a.seq * a.ldq + h * D;
    load_rows<D>(sq + buf * kQBlock * LD, q + off, a.ldq, qs, kQBlock, a.seq);
    load_rows<D>(sdo + buf * kQBlock * LD, dout + off, a.ldq, qs, kQBlock, a.seq);
    const int t = static_cast<int>(threadIdx.x);
    if (t < kQBlock) {  // plain loads: seen by all threads after the step's barrier
      const int pos = qs + t;
      const int64_t at = (b * a.heads + h) * a.seq + pos;
      slse[buf * kQBlock + t] = pos < a.seq ? lse[at] * kLog2e : 0.f;
      sdelta[buf * kQBlock + t] = pos < a.seq ? delta[at] : 0.f;
    }
  };
  load_step(0, 0);
  cp_async_commit();

  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.f;
  const int keys[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};

  for (int step = 0; step < steps; ++step) {
    const int buf = step & 1;
    __syncthreads();  // every warp is done with step - 1, whose buffer the next load reuses
    if (step + 1 < steps) load_step(step + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // this step's tiles (and K, V) have landed
    __syncthreads();
    const bf16* tq = sq + buf * kQBlock * LD;
    const bf16* tdo = sdo + buf * kQBlock * LD;
    const float* tl = slse + buf * kQBlock;
    const float* td = sdelta + buf * kQBlock;
    const int qs = k0 + (step % qblocks) * kQBlock;

    // S^T = K Q^T and dP^T = V dO^T for the warp's 16 keys x 32 queries.
    float st[kQBlock / 8][4], dpt[kQBlock / 8][4];
#pragma unroll
    for (int j = 0; j < kQBlock / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0.f;
    mma_abt<D, kQBlock / 8>(st, sk, warp * 16, tq);
    mma_abt<D, kQBlock / 8>(dpt, sv, warp * 16, tdo);

    // P^T and dS^T = P^T o (dP^T - D): column (query) 8j + 2c + (e & 1),
    // row (key) g + 8 (e >> 1). Queries before the key and past the end
    // of the sequence are masked.
    const bool edge = qs < k0 + kTile || qs + kQBlock > a.seq;
#pragma unroll
    for (int j = 0; j < kQBlock / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * c + (e & 1), query = qs + col;
        float p = exp2f(st[j][e] * a.scale_log2 - tl[col]);
        if (edge && (query < keys[e >> 1] || query >= a.seq)) p = 0.f;
        st[j][e] = p;
        dpt[j][e] = p * (dpt[j][e] - td[col]);
      }
    uint32_t pa[kQBlock / 16][4], dsa[kQBlock / 16][4];
    to_a<kQBlock / 16>(pa, st);
    to_a<kQBlock / 16>(dsa, dpt);
    mma_pm<D, kQBlock / 16>(dva, pa, tdo);  // dV += P^T dO
    mma_pm<D, kQBlock / 16>(dka, dsa, tq);  // dK += dS^T Q (scaled at the end)
  }

  // Each warp stages through its own 16 rows of K and V (read by no other warp).
  const float one[2] = {1.f, 1.f}, scale[2] = {a.scale, a.scale};
  store_rows<D>(dk + b * a.seq * a.ldk + grp * D, a.ldk, dka, scale, sk, warp * 16, k0 + warp * 16, a.seq);
  store_rows<D>(dv + b * a.seq * a.ldk + grp * D, a.ldk, dva, one, sv, warp * 16, k0 + warp * 16, a.seq);
}

template <int D> constexpr int dq_smem_bytes() { return (2 * kTile + 4 * kTile) * row_len<D>() * 2; }

// One block per (batch, head, query tile): dQ of 64 query rows over the
// key tiles up to the diagonal.
template <int D>
__global__ void __launch_bounds__(kThreads)
    tc_dq_kernel(bf16* __restrict__ dq, const bf16* __restrict__ dout, const float* __restrict__ lse,
                 const float* __restrict__ delta, const bf16* __restrict__ q, const bf16* __restrict__ k,
                 const bf16* __restrict__ v, TcDims a) {
  constexpr int LD = row_len<D>();
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sq = reinterpret_cast<bf16*>(smem);  // [64][LD], then dQ's staging
  bf16* sdo = sq + kTile * LD;               // [64][LD]
  bf16* sk = sdo + kTile * LD;               // [2][64][LD]
  bf16* sv = sk + 2 * kTile * LD;            // [2][64][LD]

  const QueryTile tile = query_tile(a, D);
  const int qt = tile.qt, q0 = tile.q0;
  const int64_t qoff = tile.qoff;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const bf16* kb = k + tile.koff;
  const bf16* vb = v + tile.koff;

  load_rows<D>(sq, q + qoff, a.ldq, q0, kTile, a.seq);
  load_rows<D>(sdo, dout + qoff, a.ldq, q0, kTile, a.seq);
  load_rows<D>(sk, kb, a.ldk, 0, kTile, a.seq);
  load_rows<D>(sv, vb, a.ldk, 0, kTile, a.seq);
  cp_async_commit();

  const int rows[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  float rl[2], rd[2];  // the rows' log2-sum-exp and D (0 past the end: those rows are not stored)
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t at = tile.stats + rows[r];
    rl[r] = rows[r] < a.seq ? lse[at] * kLog2e : 0.f;
    rd[r] = rows[r] < a.seq ? delta[at] : 0.f;
  }
  float dqa[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dqa[n][0] = dqa[n][1] = dqa[n][2] = dqa[n][3] = 0.f;

  for (int kt = 0; kt <= qt; ++kt) {
    const int buf = kt & 1;
    __syncthreads();  // every warp is done with tile kt - 1, whose buffer the next load reuses
    if (kt < qt) {
      load_rows<D>(sk + (buf ^ 1) * kTile * LD, kb, a.ldk, (kt + 1) * kTile, kTile, a.seq);
      load_rows<D>(sv + (buf ^ 1) * kTile * LD, vb, a.ldk, (kt + 1) * kTile, kTile, a.seq);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bf16* tk = sk + buf * kTile * LD;
    const bf16* tv = sv + buf * kTile * LD;

    float s[kTile / 8][4], dp[kTile / 8][4];
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.f;
    mma_abt<D, kTile / 8>(s, sq, warp * 16, tk);
    mma_abt<D, kTile / 8>(dp, sdo, warp * 16, tv);
    const int k0 = kt * kTile;
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + 8 * j + 2 * c + (e & 1), r = e >> 1;
        float p = exp2f(s[j][e] * a.scale_log2 - rl[r]);
        if (kt == qt && key > rows[r]) p = 0.f;  // also every key past the end of the sequence
        dp[j][e] = p * (dp[j][e] - rd[r]);
      }
    uint32_t dsa[kTile / 16][4];
    to_a<kTile / 16>(dsa, dp);
    mma_pm<D, kTile / 16>(dqa, dsa, tk);  // dQ += dS K (scaled at the end)
  }
  const float scale[2] = {a.scale, a.scale};
  store_rows<D>(dq + qoff, a.ldq, dqa, scale, sq, warp * 16, q0 + warp * 16, a.seq);
}

// ---------------------------------------------------------------- host side

TcDims dims_of(const ops::AttentionShape& s) {
  DECO_ASSERT(s.seq <= INT_MAX - kTile, "sequence length ", s.seq, " too long for the attention kernels");
  TcDims a{};
  a.batch = s.batch;
  a.heads = s.heads;
  a.seq = static_cast<int>(s.seq);
  a.heads_per_group = static_cast<int>(s.heads / s.groups);
  a.tiles = static_cast<int>((s.seq + kTile - 1) / kTile);
  a.ldq = s.heads * s.head_dim;
  a.ldk = s.groups * s.head_dim;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  a.scale_log2 = a.scale * kLog2e;
  return a;
}

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), int64_t blocks, int bytes, Args... args) {
  DECO_ASSERT(blocks <= INT_MAX, "attention grid of ", blocks, " blocks exceeds the grid limit");
  allow_dynamic_smem(kernel, bytes);
  kernel<<<static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(bytes), current_stream()>>>(args...);
  DECO_CUDA_CHECK(cudaGetLastError());
}

template <typename F> void with_head_dim(int64_t hd, F&& f) {
  DECO_ASSERT(hd == 64 || hd == 128, "tensor-core attention for head_dim ", hd, " (tc_attention_applies admits 64 and 128)");
  if (hd == 64)
    f(std::integral_constant<int, 64>{});
  else
    f(std::integral_constant<int, 128>{});
}

// The most shared memory any of the three kernels asks for at head size D.
template <int D> constexpr int max_smem_bytes() {
  return std::max(forward_smem_bytes<D>(), std::max(dkdv_smem_bytes<D>(), dq_smem_bytes<D>()));
}

const bf16* cptr(const Tensor& t) { return static_cast<const bf16*>(t.raw()); }
bf16* mptr(const Tensor& t) { return static_cast<bf16*>(t.raw()); }

}  // namespace

bool tc_attention_supports(DType dtype, int64_t head_dim) {
  if (dtype != DType::BF16 || (head_dim != 64 && head_dim != 128)) return false;
  // dQ at head size 128 needs 102 KB, more than sm_86/89 GPUs give a block:
  // those take the CUDA-core kernels.
  return (head_dim == 64 ? max_smem_bytes<64>() : max_smem_bytes<128>()) <= smem_optin_bytes();
}

bool tc_attention_applies(DType dtype, const ops::AttentionShape& shape,
                          std::initializer_list<const Tensor*> operands) {
  if (!ops::attention_tensor_cores() || !tc_attention_supports(dtype, shape.head_dim)) return false;
  for (const Tensor* t : operands)
    if (reinterpret_cast<uintptr_t>(t->raw()) % 16 != 0) return false;
  return true;
}

void tc_attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                          const ops::AttentionShape& shape) {
  const TcDims a = dims_of(shape);
  if (a.batch * a.heads * a.seq == 0) return;
  with_head_dim(shape.head_dim, [&](auto d) {
    constexpr int D = decltype(d)::value;
    launch(tc_forward_kernel<D>, a.tiles * a.batch * a.heads, forward_smem_bytes<D>(), mptr(out), lse.data<float>(),
           cptr(q), cptr(k), cptr(v), a);
  });
}

void tc_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                           const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                           const ops::AttentionShape& shape) {
  const TcDims a = dims_of(shape);
  if (a.batch * a.heads * a.seq == 0) return;
  Buffer delta(DType::F32, Device::CUDA, Shape{a.batch, a.heads, a.seq});
  with_head_dim(shape.head_dim, [&](auto d) {
    constexpr int D = decltype(d)::value;
    const int64_t rows = a.batch * a.seq * a.heads, per_block = 256 / 32;
    tc_delta_kernel<D><<<static_cast<unsigned>((rows + per_block - 1) / per_block), 256, 0, current_stream()>>>(
        delta.data<float>(), cptr(dout), cptr(out), a);
    DECO_CUDA_CHECK(cudaGetLastError());
    launch(tc_dkdv_kernel<D>, a.tiles * a.batch * (a.heads / a.heads_per_group), dkdv_smem_bytes<D>(), mptr(dk),
           mptr(dv), cptr(dout), lse.data<float>(), delta.data<float>(), cptr(q), cptr(k), cptr(v), a);
    launch(tc_dq_kernel<D>, a.tiles * a.batch * a.heads, dq_smem_bytes<D>(), mptr(dq), cptr(dout),
           lse.data<float>(), delta.data<float>(), cptr(q), cptr(k), cptr(v), a);
  });
}

}  // namespace deco::cuda
