// CUDA: RoPE and causal grouped-query attention: float32 or bfloat16
// operands (bfloat16 widened to float32 as the tiles are loaded), float32
// arithmetic on the CUDA cores, float32 log-sum-exp. bfloat16 with
// head_dim 64 or 128 (every paper config) goes to the tensor-core kernels
// of attention_tc.cu instead; these serve float32 and other head sizes.
//
// Attention is flash-style: the S x S scores never exist in global memory.
// A thread block owns a 64 x 64 tile of scores at a time and 256 threads
// split it 16 x 16, each thread holding a 4 x 4 register block (rows
// ty + 16r, columns tx + 16c), so the 16 threads sharing a row are 16
// consecutive lanes of one warp and row reductions are warp shuffles.
// Operands sit in shared memory in one of two padded layouts:
//  - rows [64][W + 1]: read one element per row (a broadcast within a
//    half-warp, the two half-warps one bank apart);
//  - columns, i.e. transposed, [W][65]: read either along a row of 65
//    (consecutive lanes, consecutive banks) or down a column (a stride of 65
//    is one bank apart), so one copy serves both products that need it.
// W is head_dim rounded up to 64 or 128, zero-filled past head_dim.
//
// The backward pass is FlashAttention-2's, in three kernels that each write
// every output element from exactly one thread, summing in a fixed order:
// no atomics, so the gradients are bit-identical run to run.
//  1. delta: D_i = dO_i . O_i per query row (equal to sum_j P_ij (dO_i . v_j),
//     the quantity the CPU reference computes from its probabilities);
//  2. dK, dV: one block per (batch, kv group, key tile) walks every head of
//     its group and every query tile that sees the key tile, in order;
//  3. dQ: one block per (batch, head, query tile) walks its key tiles.
// Probabilities are recomputed as exp(scale * q.k - lse) from the row
// log-sum-exp the forward pass saves.
#include <climits>
#include <cmath>
#include <type_traits>

#include "kernels/cuda/attention_tc.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/storage.cuh"
#include "kernels/dispatch.h"
#include "kernels/math.h"

namespace deco::cuda {
namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------- RoPE

// One thread per (token, head, pair i): consecutive threads touch
// consecutive elements of both halves of a head vector.
template <typename T>
__global__ void rope_kernel(T* x, const acc_t<T>* table, int64_t pairs, int64_t heads, int64_t half,
                            int64_t seq, acc_t<T> sign) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= pairs) return;
  const int64_t i = idx % half, vec = idx / half, n = vec / heads;
  const acc_t<T>* row = table + (n % seq) * half * 2;
  T* v = x + vec * half * 2;
  acc_t<T> a = ld(v[i]), b = ld(v[i + half]);
  math::rope_rotate(a, b, row[2 * i], sign * row[2 * i + 1]);
  v[i] = st<T>(a);
  v[i + half] = st<T>(b);
}

// ---------------------------------------------------------------- attention tiles

constexpr int kTile = 64;                   // query rows and key rows per tile
constexpr int kSub = 16;                    // a tile is split kSub x kSub over the threads
constexpr int kPer = kTile / kSub;          // rows (and score columns) per thread
constexpr int kTileStride = kTile + 1;      // the padded column layout
static_assert(kSub * kSub == kThreads, "one thread per 16 x 16 position");

// Head dimension handled by a kernel instantiation: W = 16 * CH columns,
// CH of them per thread in the output accumulators.
template <int CH> constexpr int width() { return kSub * CH; }
template <int CH> constexpr int row_stride() { return width<CH>() + 1; }

// Shared memory of each kernel, in floats.
template <int CH> constexpr int forward_smem_floats() {
  // Q rows, K and V columns; P reuses K's space once the scores are taken.
  static_assert(width<CH>() >= kTile, "P [64][65] must fit in K's [W][65]");
  return kTile * row_stride<CH>() + 2 * width<CH>() * kTileStride;
}
template <int CH> constexpr int query_side_smem_floats() {
  // dQ: Q and dO rows, K and V columns (dS reuses V's space).
  return 2 * kTile * row_stride<CH>() + 2 * width<CH>() * kTileStride;
}
template <int CH> constexpr int key_side_smem_floats() {
  // dK/dV: K and V rows, Q and dO columns, P and dS tiles, lse and D of the query tile.
  return 2 * kTile * row_stride<CH>() + 2 * width<CH>() * kTileStride + 2 * kTile * kTileStride +
         2 * kTile;
}

struct AttnDims {
  int64_t batch, heads, groups;
  int seq, hd, heads_per_group, tiles;
  int64_t ldq, ldk;  // row strides of q/out/dout and of k/v
  float scale;
};

// Rows [0, 64) of a row-major block src (row stride ld) into dst[r * stride + d]
// for d < w; zero past head_dim and past the `rows` valid rows (tails of the
// sequence), so padded lanes contribute exact zeros.
template <typename T>
__device__ __forceinline__ void load_rows(float* dst, int stride, const T* src, int64_t ld_src,
                                          int rows, int hd, int w) {
  for (int e = static_cast<int>(threadIdx.x); e < kTile * w; e += kThreads) {
    const int r = e / w, d = e % w;
    dst[r * stride + d] = r < rows && d < hd ? static_cast<float>(ld(src[r * ld_src + d])) : 0.0f;
  }
}

// The same block transposed: dst[d * kTileStride + r]. Global reads stay
// coalesced along d; the stride of 65 keeps the shared stores conflict-free.
template <typename T>
__device__ __forceinline__ void load_cols(float* dst, const T* src, int64_t ld_src, int rows, int hd,
                                          int w) {
  for (int e = static_cast<int>(threadIdx.x); e < kTile * w; e += kThreads) {
    const int r = e / w, d = e % w;
    dst[d * kTileStride + r] = r < rows && d < hd ? static_cast<float>(ld(src[r * ld_src + d])) : 0.0f;
  }
}

// acc[r][c] += sum_{d < hd} A[row r][d] * B[col c][d] for this thread's 4 x 4
// block, A in the row layout, B in the column layout.
__device__ __forceinline__ void tile_dot(float (&acc)[kPer][kPer], const float* A, int a_stride,
                                         const float* Bt, int hd, int ty, int tx) {
#pragma unroll 4
  for (int d = 0; d < hd; ++d) {
    float a[kPer], b[kPer];
#pragma unroll
    for (int r = 0; r < kPer; ++r) a[r] = A[(ty + kSub * r) * a_stride + d];
#pragma unroll
    for (int c = 0; c < kPer; ++c) b[c] = Bt[d * kTileStride + tx + kSub * c];
#pragma unroll
    for (int r = 0; r < kPer; ++r)
#pragma unroll
      for (int c = 0; c < kPer; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
  }
}

// acc[r][c] += sum_{j < 64} P[row r][j] * B[j][col c] over the W output
// columns: P a [64][65] tile, B in the column layout (Bt[col][j]).
template <int CH>
__device__ __forceinline__ void tile_product(float (&acc)[kPer][CH], const float* P, const float* Bt,
                                             int ty, int tx) {
#pragma unroll 4
  for (int j = 0; j < kTile; ++j) {
    float p[kPer], b[CH];
#pragma unroll
    for (int r = 0; r < kPer; ++r) p[r] = P[(ty + kSub * r) * kTileStride + j];
#pragma unroll
    for (int c = 0; c < CH; ++c) b[c] = Bt[(tx + kSub * c) * kTileStride + j];
#pragma unroll
    for (int r = 0; r < kPer; ++r)
#pragma unroll
      for (int c = 0; c < CH; ++c) acc[r][c] = fmaf(p[r], b[c], acc[r][c]);
  }
}

// Reductions over the 16 threads of a row: lanes differing in their low 4 bits.
__device__ __forceinline__ float row_max(float v) {
  for (int o = kSub / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float row_sum(float v) {
  for (int o = kSub / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The probability the forward pass normalized, from the saved log-sum-exp.
__device__ __forceinline__ float prob(float dot, float scale, float lse) { return expf(dot * scale - lse); }

// The tile of causal rows a block works on, heaviest first: query tile
// `tiles - 1` sees every key tile, so it starts first and the short ones
// fill in at the end.
__device__ __forceinline__ int query_tile_of_block(int tiles, int64_t per_tile) {
  return tiles - 1 - static_cast<int>(blockIdx.x / per_tile);
}

// out = softmax(scale q k^T, causal) v and lse = log sum_j exp(scale q.k_j)
// for one (batch, head, query tile), streaming over key tiles with a running
// max and sum per row.
template <int CH, typename T>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(T* out, float* lse, const T* q, const T* k, const T* v, AttnDims a) {
  extern __shared__ float smem[];
  float* Qs = smem;                                  // [64][W + 1]
  float* Kt = Qs + kTile * row_stride<CH>();         // [W][65]
  float* Vt = Kt + width<CH>() * kTileStride;        // [W][65]
  float* Ps = Kt;                                    // [64][65], after the scores are taken
  const int64_t bh_count = a.batch * a.heads;
  const int qt = query_tile_of_block(a.tiles, bh_count);
  const int64_t bh = blockIdx.x % bh_count, b = bh / a.heads;
  const int h = static_cast<int>(bh % a.heads), g = h / a.heads_per_group;
  const int tx = static_cast<int>(threadIdx.x) % kSub, ty = static_cast<int>(threadIdx.x) / kSub;
  const int i0 = qt * kTile;
  const int64_t row0 = b * a.seq;

  load_rows(Qs, row_stride<CH>(), q + (row0 + i0) * a.ldq + h * a.hd, a.ldq, min(kTile, a.seq - i0),
            a.hd, width<CH>());

  float acc[kPer][CH] = {};
  float m[kPer], l[kPer];
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
  }
  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kTile, rows = min(kTile, a.seq - j0);
    __syncthreads();  // the previous tile's P and V are read to the end
    load_cols(Kt, k + (row0 + j0) * a.ldk + g * a.hd, a.ldk, rows, a.hd, width<CH>());
    load_cols(Vt, v + (row0 + j0) * a.ldk + g * a.hd, a.ldk, rows, a.hd, width<CH>());
    __syncthreads();
    float s[kPer][kPer] = {};
    tile_dot(s, Qs, row_stride<CH>(), Kt, a.hd, ty, tx);
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int i = i0 + ty + kSub * r;
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        // Keys past the sequence end only ever meet rows past it too (j > i
        // otherwise), whose results are dropped.
        s[r][c] = j0 + tx + kSub * c <= i ? s[r][c] * a.scale : -INFINITY;
        mx = fmaxf(mx, s[r][c]);
      }
      // Finite: key tile 0 holds key 0, which every row sees, so m is finite
      // from the first tile on and exp(m_old - m_new) below is never NaN.
      const float m_new = fmaxf(m[r], row_max(mx));
      const float rescale = expf(m[r] - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        s[r][c] = expf(s[r][c] - m_new);
        sum += s[r][c];
      }
      l[r] = l[r] * rescale + row_sum(sum);
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < CH; ++c) acc[r][c] *= rescale;
    }
    __syncthreads();  // every thread is done with K before P overwrites it
#pragma unroll
    for (int r = 0; r < kPer; ++r)
#pragma unroll
      for (int c = 0; c < kPer; ++c) Ps[(ty + kSub * r) * kTileStride + tx + kSub * c] = s[r][c];
    __syncthreads();
    tile_product<CH>(acc, Ps, Vt, ty, tx);
  }

#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int i = i0 + ty + kSub * r;
    if (i >= a.seq) continue;
    T* o = out + (row0 + i) * a.ldq + h * a.hd;
#pragma unroll
    for (int c = 0; c < CH; ++c)
      if (tx + kSub * c < a.hd) o[tx + kSub * c] = st<T>(acc[r][c] / l[r]);
    if (tx == 0) lse[bh * a.seq + i] = m[r] + logf(l[r]);
  }
}

// delta[b, h, i] = dO_i . O_i, the row term of dS = P (dP - delta): equal
// to sum_{j <= i} P_ij (dO_i . v_j) since O_i = sum_j P_ij v_j (as in
// FlashAttention), so no pass over the keys. A warp per row, summing in
// the accumulation type.
template <typename T>
__global__ void attention_delta_kernel(float* delta, const T* dout, const T* out, AttnDims a) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;  // (b, s, h)
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (row >= a.batch * a.seq * a.heads) return;
  const int64_t h = row % a.heads, token = row / a.heads;
  const int64_t s = token % a.seq, b = token / a.seq;
  const T* x = dout + token * a.ldq + h * a.hd;
  const T* y = out + token * a.ldq + h * a.hd;
  acc_t<T> sum = 0;
  for (int d = lane; d < a.hd; d += 32) sum += ld(x[d]) * ld(y[d]);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) delta[(b * a.heads + h) * a.seq + s] = static_cast<float>(sum);
}

// dQ_i = scale sum_{j <= i} dS_ij k_j for one (batch, head, query tile).
template <int CH, typename T>
__global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(T* dq, const T* dout, const float* lse, const float* delta, const T* q, const T* k,
                        const T* v, AttnDims a) {
  extern __shared__ float smem[];
  float* Qs = smem;                                  // [64][W + 1]
  float* dOs = Qs + kTile * row_stride<CH>();        // [64][W + 1]
  float* Kt = dOs + kTile * row_stride<CH>();        // [W][65]
  float* Vt = Kt + width<CH>() * kTileStride;        // [W][65]
  float* dSs = Vt;                                   // [64][65], after dP is taken
  const int64_t bh_count = a.batch * a.heads;
  const int qt = query_tile_of_block(a.tiles, bh_count);
  const int64_t bh = blockIdx.x % bh_count, b = bh / a.heads;
  const int h = static_cast<int>(bh % a.heads), g = h / a.heads_per_group;
  const int tx = static_cast<int>(threadIdx.x) % kSub, ty = static_cast<int>(threadIdx.x) / kSub;
  const int i0 = qt * kTile, q_rows = min(kTile, a.seq - i0);
  const int64_t row0 = b * a.seq;

  load_rows(Qs, row_stride<CH>(), q + (row0 + i0) * a.ldq + h * a.hd, a.ldq, q_rows, a.hd, width<CH>());
  load_rows(dOs, row_stride<CH>(), dout + (row0 + i0) * a.ldq + h * a.hd, a.ldq, q_rows, a.hd,
            width<CH>());
  float row_lse[kPer], row_delta[kPer];
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int i = i0 + ty + kSub * r;
    row_lse[r] = i < a.seq ? lse[bh * a.seq + i] : 0.0f;
    row_delta[r] = i < a.seq ? delta[bh * a.seq + i] : 0.0f;
  }
  float acc[kPer][CH] = {};
  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kTile, rows = min(kTile, a.seq - j0);
    __syncthreads();  // the previous tile's dS and K are read to the end
    load_cols(Kt, k + (row0 + j0) * a.ldk + g * a.hd, a.ldk, rows, a.hd, width<CH>());
    load_cols(Vt, v + (row0 + j0) * a.ldk + g * a.hd, a.ldk, rows, a.hd, width<CH>());
    __syncthreads();
    float s[kPer][kPer] = {}, dp[kPer][kPer] = {};
    tile_dot(s, Qs, row_stride<CH>(), Kt, a.hd, ty, tx);
    tile_dot(dp, dOs, row_stride<CH>(), Vt, a.hd, ty, tx);
#pragma unroll
    for (int r = 0; r < kPer; ++r)
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        const float p = j0 + tx + kSub * c <= i0 + ty + kSub * r ? prob(s[r][c], a.scale, row_lse[r]) : 0.0f;
        s[r][c] = p * (dp[r][c] - row_delta[r]);
      }
    __syncthreads();  // every thread is done with V before dS overwrites it
#pragma unroll
    for (int r = 0; r < kPer; ++r)
#pragma unroll
      for (int c = 0; c < kPer; ++c) dSs[(ty + kSub * r) * kTileStride + tx + kSub * c] = s[r][c];
    __syncthreads();
    tile_product<CH>(acc, dSs, Kt, ty, tx);
  }

#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int i = i0 + ty + kSub * r;
    if (i >= a.seq) continue;
    T* o = dq + (row0 + i) * a.ldq + h * a.hd;
#pragma unroll
    for (int c = 0; c < CH; ++c)
      if (tx + kSub * c < a.hd) o[tx + kSub * c] = st<T>(acc[r][c] * a.scale);
  }
}

// dV_j = sum_i P_ij dO_i and dK_j = scale sum_i dS_ij q_i for one (batch, kv
// group, key tile): the block walks the heads of its group, and for each the
// query tiles at or after its key tile, in order, so the group's sum over
// heads is a plain register accumulation.
template <int CH, typename T>
__global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(T* dk, T* dv, const T* dout, const float* lse, const float* delta, const T* q,
                          const T* k, const T* v, AttnDims a) {
  extern __shared__ float smem[];
  float* Ks = smem;                                  // [64][W + 1]
  float* Vs = Ks + kTile * row_stride<CH>();         // [64][W + 1]
  float* Qt = Vs + kTile * row_stride<CH>();         // [W][65]
  float* dOt = Qt + width<CH>() * kTileStride;       // [W][65]
  float* Ps = dOt + width<CH>() * kTileStride;       // [64][65], key rows by query columns
  float* dSs = Ps + kTile * kTileStride;             // [64][65]
  float* lse_s = dSs + kTile * kTileStride;          // [64]
  float* delta_s = lse_s + kTile;                    // [64]
  const int64_t bg_count = a.batch * a.groups;
  // Key tile 0 is seen by every query tile: the heaviest blocks come first.
  const int kt = static_cast<int>(blockIdx.x / bg_count);
  const int64_t bg = blockIdx.x % bg_count, b = bg / a.groups;
  const int g = static_cast<int>(bg % a.groups);
  const int tx = static_cast<int>(threadIdx.x) % kSub, ty = static_cast<int>(threadIdx.x) / kSub;
  const int j0 = kt * kTile;
  const int64_t row0 = b * a.seq;

  load_rows(Ks, row_stride<CH>(), k + (row0 + j0) * a.ldk + g * a.hd, a.ldk, min(kTile, a.seq - j0), a.hd,
            width<CH>());
  load_rows(Vs, row_stride<CH>(), v + (row0 + j0) * a.ldk + g * a.hd, a.ldk, min(kTile, a.seq - j0), a.hd,
            width<CH>());
  float acc_k[kPer][CH] = {}, acc_v[kPer][CH] = {};
  for (int h = g * a.heads_per_group; h < (g + 1) * a.heads_per_group; ++h) {
    const int64_t bh = b * a.heads + h;
    for (int qt = kt; qt < a.tiles; ++qt) {
      const int i0 = qt * kTile, rows = min(kTile, a.seq - i0);
      __syncthreads();  // the previous tile's Q, dO, P and dS are read to the end
      load_cols(Qt, q + (row0 + i0) * a.ldq + h * a.hd, a.ldq, rows, a.hd, width<CH>());
      load_cols(dOt, dout + (row0 + i0) * a.ldq + h * a.hd, a.ldq, rows, a.hd, width<CH>());
      for (int t = static_cast<int>(threadIdx.x); t < kTile; t += kThreads) {
        lse_s[t] = t < rows ? lse[bh * a.seq + i0 + t] : 0.0f;
        delta_s[t] = t < rows ? delta[bh * a.seq + i0 + t] : 0.0f;
      }
      __syncthreads();
      // Transposed scores: st[r][c] pairs key row ty + 16r with query column tx + 16c.
      float st[kPer][kPer] = {}, dpt[kPer][kPer] = {};
      tile_dot(st, Ks, row_stride<CH>(), Qt, a.hd, ty, tx);
      tile_dot(dpt, Vs, row_stride<CH>(), dOt, a.hd, ty, tx);
#pragma unroll
      for (int r = 0; r < kPer; ++r)
#pragma unroll
        for (int c = 0; c < kPer; ++c) {
          const int ci = tx + kSub * c, i = i0 + ci;
          const float p = j0 + ty + kSub * r <= i && i < a.seq ? prob(st[r][c], a.scale, lse_s[ci]) : 0.0f;
          Ps[(ty + kSub * r) * kTileStride + ci] = p;
          dSs[(ty + kSub * r) * kTileStride + ci] = p * (dpt[r][c] - delta_s[ci]);
        }
      __syncthreads();
      tile_product<CH>(acc_v, Ps, dOt, ty, tx);
      tile_product<CH>(acc_k, dSs, Qt, ty, tx);
    }
  }

#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int j = j0 + ty + kSub * r;
    if (j >= a.seq) continue;
    T* ok = dk + (row0 + j) * a.ldk + g * a.hd;
    T* ov = dv + (row0 + j) * a.ldk + g * a.hd;
#pragma unroll
    for (int c = 0; c < CH; ++c)
      if (tx + kSub * c < a.hd) {
        ok[tx + kSub * c] = st<T>(acc_k[r][c] * a.scale);
        ov[tx + kSub * c] = st<T>(acc_v[r][c]);
      }
  }
}

// ---------------------------------------------------------------- host side

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Operands in one dtype, float32 or bfloat16, on the device.
void check_operand(const Tensor& t, DType dtype, const char* what) {
  DECO_ASSERT(t.device() == Device::CUDA, "attention on the GPU: ", what, " is not a device tensor");
  DECO_ASSERT(t.dtype() == dtype && (dtype == DType::F32 || dtype == DType::BF16),
              "the CUDA attention kernels take float32 or bfloat16 operands in one dtype; ", what, " holds ",
              dtype_name(t.dtype()), " next to ", dtype_name(dtype));
}

void check_lse(const Tensor& t) {
  DECO_ASSERT(t.device() == Device::CUDA && t.dtype() == DType::F32,
              "attention on the GPU keeps its log-sum-exp in float32 device memory; got ", dtype_name(t.dtype()));
}

// Calls f(T{}) for the operands' storage: float or bf16.
template <typename F> void dispatch_operands(DType dtype, F&& f) {
  if (dtype == DType::BF16)
    f(bf16{});
  else
    f(float{});
}

AttnDims dims_of(const ops::AttentionShape& s) {
  DECO_ASSERT(s.head_dim >= 1 && s.head_dim <= 128,
              "the CUDA attention kernels support head_dim 1..128 (one 64- or 128-column tile per head); got ",
              s.head_dim);
  DECO_ASSERT(s.seq <= INT_MAX - kTile, "sequence length ", s.seq, " too long for the attention kernels");
  AttnDims a{};
  a.batch = s.batch;
  a.heads = s.heads;
  a.groups = s.groups;
  a.seq = static_cast<int>(s.seq);
  a.hd = static_cast<int>(s.head_dim);
  a.heads_per_group = static_cast<int>(s.heads / s.groups);
  a.tiles = static_cast<int>((s.seq + kTile - 1) / kTile);
  a.ldq = s.heads * s.head_dim;
  a.ldk = s.groups * s.head_dim;
  // The float the CPU reference scales its scores by.
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  return a;
}

// Calls f(std::integral_constant<int, CH>) with the narrowest instantiation
// that holds head_dim.
template <typename F> void with_width(int hd, F&& f) {
  if (hd <= 64)
    f(std::integral_constant<int, 4>{});
  else
    f(std::integral_constant<int, 8>{});
}

// Launches one attention kernel over `blocks` blocks of kThreads with
// `floats` floats of dynamic shared memory (above the default 48 KiB, which
// needs the kernel's opt-in).
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), int64_t blocks, int floats, Args... args) {
  DECO_ASSERT(blocks <= INT_MAX, "attention grid of ", blocks, " blocks exceeds the grid limit");
  const int bytes = floats * static_cast<int>(sizeof(float));
  const int limit = smem_optin_bytes();
  DECO_ASSERT(bytes <= limit, "the attention kernel needs ", bytes,
              " bytes of shared memory per block and this GPU allows ", limit, "; head_dim <= 64 needs less");
  allow_dynamic_smem(kernel, bytes);
  kernel<<<static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(bytes), current_stream()>>>(args...);
  DECO_CUDA_CHECK(cudaGetLastError());
}

void rope_apply(const Tensor& x, const Tensor& table, int64_t seq, double sign) {
  DECO_ASSERT(table.device() == Device::CUDA,
              "rope on the GPU needs the table on the device (ops::rope_table fills one)");
  DECO_ASSERT(table.dtype() == accumulate_dtype(x.dtype()), "rope table holds ", dtype_name(table.dtype()), ", x ",
              dtype_name(x.dtype()), " (the table is in x's accumulate dtype)");
  const int64_t half = x.size(2) / 2, pairs = x.size(0) * x.size(1) * half;
  if (pairs == 0) return;
  dispatch_activation(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    rope_kernel<T><<<blocks_for(pairs), kThreads, 0, current_stream()>>>(ptr<T>(x), acc_data<T>(table, "rope", "table"), pairs,
                                                    x.size(1), half, seq, static_cast<acc_t<T>>(sign));
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void rope_forward(const Tensor& x, const Tensor& table, int64_t seq) { rope_apply(x, table, seq, 1.0); }

void rope_backward(const Tensor& dx, const Tensor& table, int64_t seq) { rope_apply(dx, table, seq, -1.0); }

void attention_forward(const Tensor& out, const Tensor& saved, const Tensor& q, const Tensor& k,
                       const Tensor& v, const ops::AttentionShape& shape) {
  for (const auto& [t, what] : {std::pair{&out, "out"}, {&q, "q"}, {&k, "k"}, {&v, "v"}})
    check_operand(*t, q.dtype(), what);
  check_lse(saved);
  DECO_ASSERT(out.numel() == q.numel(), "attention out shape ", out.shape().to_string());
  if (tc_attention_applies(q.dtype(), shape, {&out, &q, &k, &v})) {
    tc_attention_forward(out, saved, q, k, v, shape);
    return;
  }
  const AttnDims a = dims_of(shape);
  if (a.batch * a.heads * a.seq == 0) return;
  dispatch_operands(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    with_width(a.hd, [&](auto ch) {
      constexpr int CH = decltype(ch)::value;
      const T* pq = ptr<T>(q);
      const T* pk = ptr<T>(k);
      const T* pv = ptr<T>(v);
      launch(attention_forward_kernel<CH, T>, a.tiles * a.batch * a.heads, forward_smem_floats<CH>(), ptr<T>(out),
             saved.data<float>(), pq, pk, pv, a);
    });
  });
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& out, const Tensor& saved, const Tensor& q, const Tensor& k,
                        const Tensor& v, const ops::AttentionShape& shape) {
  for (const auto& [t, what] : {std::pair{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&dout, "dout"}, {&out, "out"},
                                {&q, "q"}, {&k, "k"}, {&v, "v"}})
    check_operand(*t, q.dtype(), what);
  check_lse(saved);
  DECO_ASSERT(dq.numel() == q.numel() && dout.numel() == q.numel() && out.numel() == q.numel() &&
                  dk.numel() == k.numel() && dv.numel() == k.numel(),
              "attention gradient shapes");
  if (tc_attention_applies(q.dtype(), shape, {&dq, &dk, &dv, &dout, &out, &q, &k, &v})) {
    tc_attention_backward(dq, dk, dv, dout, out, saved, q, k, v, shape);
    return;
  }
  const AttnDims a = dims_of(shape);
  if (a.batch * a.heads * a.seq == 0) return;
  Buffer delta(DType::F32, Device::CUDA, Shape{a.batch, a.heads, a.seq});
  dispatch_operands(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    with_width(a.hd, [&](auto ch) {
      constexpr int CH = decltype(ch)::value;
      const T* pq = ptr<T>(q);
      const T* pk = ptr<T>(k);
      const T* pv = ptr<T>(v);
      const T* pdo = ptr<T>(dout);
      const float* lse = saved.data<float>();
      float* pdelta = delta.data<float>();
      const int64_t rows = a.batch * a.seq * a.heads;
      attention_delta_kernel<T><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, current_stream()>>>(pdelta, pdo, ptr<T>(out), a);
      DECO_CUDA_CHECK(cudaGetLastError());
      launch(attention_dkdv_kernel<CH, T>, a.tiles * a.batch * a.groups, key_side_smem_floats<CH>(), ptr<T>(dk),
             ptr<T>(dv), pdo, lse, pdelta, pq, pk, pv, a);
      launch(attention_dq_kernel<CH, T>, a.tiles * a.batch * a.heads, query_side_smem_floats<CH>(), ptr<T>(dq), pdo,
             lse, pdelta, pq, pk, pv, a);
    });
  });
}

}  // namespace deco::cuda
