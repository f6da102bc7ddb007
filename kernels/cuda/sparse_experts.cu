// The sparse expert path's products on the tensor cores, with the gather of
// token rows and the sum of per-pair rows inside them (ops.h, "sparse
// expert products"): no [P, H] matrix of gathered inputs or per-pair
// outputs is written to device memory. bfloat16 operands, float32
// accumulation, expert width D = 64 (every paper config), H a multiple of
// 64; anything else takes the gather + cuBLAS grouped GEMM + scatter
// composition in kernels/cpu/grouped.cpp.
//
// Pairs p in [offsets[e], offsets[e+1]) belong to expert e and token
// index[p], increasing within an expert (ops::build_routing). W_e(d, h) is
// an expert's weight entry: ExpertRows, w[(e*D + d) * ld + h] (a [E*D, H]
// matrix: the up and gate projections), or ExpertCols, w[h * ld + e*D + d]
// ([H, E*D]: the down projection). Three kernels, mma.sync m16n8k16
// (kernels/cuda/mma.cuh for the fragment layout), each in two block shapes:
// W warps = 8 (wide, ops::SparseExpertKernels::Wide) or 4 (narrow).
//
//  - gather GEMM, C[p, d] = sum_h x[index[p], h] W_e(d, h) (the up
//    projection; dy through the down projection): a block owns 16 W pairs
//    of one expert and all 64 columns; K = H in steps of 64, the x rows
//    loaded by pair index straight into shared memory (cp.async,
//    double-buffered). A warp owns 16 pairs.
//  - scatter GEMM, y[t, h] += sum over t's pairs p of sum_d G[p, d] W_e(d, h)
//    (the down projection; the input gradient through the up projection):
//    a block owns 32 W tokens x 64 columns of y as a float32 slice in
//    shared memory. It walks the experts in order; expert e's pairs among
//    those tokens are a contiguous run (found by binary search once per
//    call, for every chunk and expert: chunk_bounds_kernel), whose G rows and
//    W_e block arrive by cp.async while the previous expert computes. A
//    warp owns 16 of the 64 columns and every (W / 4)-th 16-pair tile of
//    the run, so no two warps write the same element within an expert, and
//    a barrier separates experts: every element of y gets its terms in
//    expert order, then y is read, added to and written once. No atomics:
//    bit-identical runs, and the same values for both shapes.
//  - weight gradient, dW_e(d, h) += sum_p G[p, d] x[index[p], h] (both
//    projections' weight gradients): a block owns expert e's 64 rows d x
//    16 W columns [h0, h0 + 16 W); K = the expert's pairs in steps of 64,
//    G^T through ldmatrix.trans. A warp owns 16 rows d of 64 columns.
//    float32 gradient, read, added to and written once per element.
//
// Why two shapes: the kernels are bounded by L2 traffic (docs/architecture.md,
// "The sparse expert path on a GPU"). The wide blocks read each weight block
// (gather: per 128 pairs; scatter: per 256 tokens) and, in the weight
// gradient, each G row (per 128 columns) half as often as the narrow ones,
// at 1-2 blocks per SM instead of 2-5; deco bench-layer times both.
//
// Shared-memory rows are 64 + 8 bf16 long, as in attention_tc.cu.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <numeric>
#include <type_traits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/storage.cuh"

namespace deco::cuda {
namespace {

constexpr int kD = 64;          // expert width
constexpr int kLd = kD + 8;     // bf16 elements per shared row
constexpr int kTileRows = 64;   // pairs per K step (weight gradient); per block (narrow gather GEMM)
constexpr int kAccLd = kD + 4;  // floats per row of the scatter GEMM's slice
constexpr int kTileElems = kTileRows * kLd;

// The experts' offsets, and one more int per expert, reach the kernels as a
// kernel parameter rather than through device memory: no host-to-device copy
// per call (from pageable memory the driver may wait for the stream to
// drain first, and the calls come right after the routing's sync, when the
// GPU waits for the host), no device buffer to keep alive until the kernel
// has run. 2 x 480 ints stay under the 4 KB of parameters every CUDA
// version allows; more experts on one rank take the composition
// (sparse_expert_kernels_apply).
constexpr int kMaxExperts = 479;
struct ExpertTable {
  int32_t offsets[kMaxExperts + 1];  // expert e's pairs are [offsets[e], offsets[e + 1])
  int32_t aux[kMaxExperts + 1];      // gather GEMM: each expert's first block; weight gradient: the expert order
};
static_assert(sizeof(ExpertTable) <= 4096 - 256, "the table and the other parameters fit in 4 KB");

// The block shapes, by warps per block (4: narrow, 8: wide).
template <int WARPS>
struct Blocks {
  static_assert(WARPS == 4 || WARPS == 8, "4 or 8 warps");
  static constexpr int threads = 32 * WARPS;
  static constexpr int pairs = 16 * WARPS;   // gather GEMM: pairs per block, 16 a warp
  static constexpr int chunk = 32 * WARPS;   // scatter GEMM: tokens per block
  static constexpr int columns = 16 * WARPS; // weight gradient: columns h per block, 64 per 4 warps
};

// A 64 x 64 block of W_e into shared memory in its own layout: rows d,
// columns h in [h0, h0 + 64) (ExpertRows), or rows h in [h0, h0 + 64),
// columns d (ExpertCols). Asynchronous.
template <int THREADS>
__device__ __forceinline__ void load_w_block(bf16* dst, const bf16* w, int64_t ldw, bool expert_rows, int e,
                                             int h0) {
  for (int i = static_cast<int>(threadIdx.x); i < kD * (kD / 8); i += THREADS) {
    const int r = i / (kD / 8), ch = i % (kD / 8);
    const bf16* src = expert_rows ? w + (static_cast<int64_t>(e) * kD + r) * ldw + h0 + ch * 8
                                  : w + static_cast<int64_t>(h0 + r) * ldw + static_cast<int64_t>(e) * kD + ch * 8;
    cp_async16(dst + r * kLd + ch * 8, src, true);
  }
}
// B fragments for k rows [k0, k0 + 16) and n columns [n0, n0 + 16), two
// 8-column tiles (b[0], b[1]: columns n0..n0+7; b[2], b[3]: n0+8..n0+15), of
// a shared tile stored [n][k] (NK: B[k][n] = S[n][k], plain 4-byte reads)
// or [k][n] (ldmatrix.trans).
template <bool NK>
__device__ __forceinline__ void load_b16(uint32_t (&b)[4], const bf16* s, int k0, int n0) {
  const int lane = threadIdx.x % 32;
  if constexpr (NK) {
    const int g = lane / 4, c = lane % 4;
    const bf16* p = s + (n0 + g) * kLd + k0 + 2 * c;
    b[0] = ld32(p);
    b[1] = ld32(p + 8);
    b[2] = ld32(p + 8 * kLd);
    b[3] = ld32(p + 8 * kLd + 8);
  } else {
    // Block lane / 8 of ldmatrix: rows (k) +8 for odd blocks, columns (n) +8 for blocks 2, 3.
    const int row = (lane & 7) + ((lane >> 3) & 1) * 8, col = (lane >> 4) * 8;
    ldmatrix_x4_trans(b, s + (k0 + row) * kLd + n0 + col);
  }
}

// The A fragment of A = S^T, rows (m) [m0, m0 + 16) x k [k0, k0 + 16), for
// a shared tile S stored [k][m]: block lane / 8 of ldmatrix.trans is
// (k +8 for blocks 2, 3; m +8 for odd blocks), matching a[0..3] = A rows
// {0-7, 8-15, 0-7, 8-15} x k {0-7, 0-7, 8-15, 8-15}.
__device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], const bf16* s, int k0, int m0) {
  const int lane = threadIdx.x % 32;
  const int row = (lane & 7) + (lane >> 4) * 8, col = ((lane >> 3) & 1) * 8;
  ldmatrix_x4_trans(a, s + (k0 + row) * kLd + m0 + col);
}

// compute(buf) for steps [0, steps) while the next step's load(step, buf)
// is in flight: two shared buffers, one cp.async group per load.
template <typename Load, typename Compute>
__device__ __forceinline__ void double_buffered(int steps, Load&& load, Compute&& compute) {
  load(0, 0);
  for (int step = 0; step < steps; ++step) {
    const int buf = step & 1;
    if (step + 1 < steps) {
      load(step + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    compute(buf);
    __syncthreads();  // before the next step's load overwrites this buffer
  }
}

// ---------------------------------------------------------------- gather GEMM

template <int WARPS>
struct GatherSmem {
  static constexpr int x_elems = Blocks<WARPS>::pairs * kLd;  // one buffer of token rows
  static constexpr int bytes = 2 * x_elems * 2 + 2 * kTileElems * 2 + Blocks<WARPS>::pairs * 4;
};

// Block b computes pairs [first, first + 16 WARPS) of one expert (fewer at
// its end): expert e's blocks are [table.aux[e], table.aux[e + 1]), so e is
// the last expert whose first block is at most b (an expert without pairs
// has no blocks, and the last of a run of equal firsts is the one that has
// them). NK: W stored ExpertRows (its shared block is [d][h] = [n][k]).
template <bool NK, int WARPS>
__global__ void __launch_bounds__(32 * WARPS)
    gather_gemm_kernel(bf16* c, int64_t ldc, const bf16* x, int64_t ldx, const int32_t* index, const bf16* w,
                       int64_t ldw, const __grid_constant__ ExpertTable table, int experts, int H) {
  using S = Blocks<WARPS>;
  using M = GatherSmem<WARPS>;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* xs = reinterpret_cast<bf16*>(smem);                    // [2][pairs * kLd]
  bf16* ws = xs + 2 * M::x_elems;                              // [2][kTileElems]
  int32_t* tok = reinterpret_cast<int32_t*>(ws + 2 * kTileElems);  // [pairs]
  const int b = static_cast<int>(blockIdx.x);
  int e = 0;
  for (int hi = experts - 1; e < hi;) {  // the last e in [0, experts) with aux[e] <= b (aux[0] = 0)
    const int mid = (e + hi + 1) / 2;
    if (table.aux[mid] <= b)
      e = mid;
    else
      hi = mid - 1;
  }
  const int r0 = table.offsets[e] + (b - table.aux[e]) * S::pairs;
  const int rows = min(S::pairs, table.offsets[e + 1] - r0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, cc = lane % 4;
  for (int i = static_cast<int>(threadIdx.x); i < S::pairs; i += S::threads) tok[i] = i < rows ? index[r0 + i] : -1;
  __syncthreads();

  auto load = [&](int step, int buf) {
    const int h0 = step * kD;
    for (int i = static_cast<int>(threadIdx.x); i < S::pairs * (kD / 8); i += S::threads) {
      const int r = i / (kD / 8), ch = i % (kD / 8), t = tok[r];
      cp_async16(xs + buf * M::x_elems + r * kLd + ch * 8,
                 t >= 0 ? x + static_cast<int64_t>(t) * ldx + h0 + ch * 8 : x, t >= 0);
    }
    load_w_block<S::threads>(ws + buf * kTileElems, w, ldw, NK, e, h0);
    cp_async_commit();
  };

  float acc[kD / 8][4] = {};
  double_buffered(H / kD, load, [&](int buf) {
    const bf16* xb = xs + buf * M::x_elems;
    const bf16* wb = ws + buf * kTileElems;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      uint32_t a[4];
      load_a(a, xb, kLd, 16 * warp, kk * 16);
#pragma unroll
      for (int n = 0; n < kD / 16; ++n) {
        uint32_t b[4];
        load_b16<NK>(b, wb, kk * 16, n * 16);
        mma(acc[2 * n], a, b[0], b[1]);
        mma(acc[2 * n + 1], a, b[2], b[3]);
      }
    }
  });
  const int r = 16 * warp + g;
#pragma unroll
  for (int j = 0; j < kD / 8; ++j) {
    if (r < rows) *reinterpret_cast<uint32_t*>(c + (r0 + r) * ldc + 8 * j + 2 * cc) = pack(acc[j][0], acc[j][1]);
    if (r + 8 < rows)
      *reinterpret_cast<uint32_t*>(c + (r0 + r + 8) * ldc + 8 * j + 2 * cc) = pack(acc[j][2], acc[j][3]);
  }
}

// ---------------------------------------------------------------- scatter GEMM

template <int WARPS>
struct ScatterSmem {
  static constexpr int chunk = Blocks<WARPS>::chunk;
  static constexpr int acc_bytes = chunk * kAccLd * 4;
  static constexpr int g_bytes = 2 * chunk * kLd * 2;
  static constexpr int w_bytes = 2 * kTileElems * 2;
  static constexpr int tok_bytes = 2 * chunk * 4;
  static int64_t bytes(int64_t experts) { return acc_bytes + g_bytes + w_bytes + tok_bytes + 2 * experts * 4; }
};

// First position in index[lo, hi) holding a value >= t (index increasing there).
__device__ __forceinline__ int lower_bound(const int32_t* index, int lo, int hi, int t) {
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (index[mid] < t)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// bounds[c * experts + e] = the first of expert e's pairs whose token is at
// least c * chunk, for c in [0, chunks]: where each token chunk's run of the
// expert starts (and the previous one's ends). Computed once per call, not
// by each of the H / 64 blocks that share a chunk.
__global__ void chunk_bounds_kernel(int32_t* bounds, const int32_t* index, const __grid_constant__ ExpertTable table,
                                    int experts, int entries, int chunk) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= entries) return;
  const int c = i / experts, e = i % experts;
  bounds[i] = lower_bound(index, table.offsets[e], table.offsets[e + 1], c * chunk);
}

// A block owns tokens [t0, t0 + 32 WARPS) x columns [h0, h0 + 64). Warp w
// owns columns 16 (w % 4) + [0, 16) and, of each expert's run of pairs, the
// 16-row tiles w / 4, w / 4 + WARPS / 4, ...: two warps never write the same
// element within an expert (its pairs are distinct tokens), and experts are
// separated by barriers. NK: W stored ExpertCols (its shared block is [h][d]
// = [n][k]).
template <bool NK, int WARPS>
__global__ void __launch_bounds__(32 * WARPS)
    scatter_gemm_kernel(bf16* y, int64_t ldy, const bf16* gm, int64_t ldg, const int32_t* index, const bf16* w,
                        int64_t ldw, const int32_t* bounds, int experts, int N) {
  using S = Blocks<WARPS>;
  using M = ScatterSmem<WARPS>;
  constexpr int kChunk = S::chunk;
  extern __shared__ __align__(16) unsigned char smem[];
  float* acc = reinterpret_cast<float*>(smem);
  bf16* gs = reinterpret_cast<bf16*>(smem + M::acc_bytes);
  bf16* ws = reinterpret_cast<bf16*>(smem + M::acc_bytes + M::g_bytes);
  int32_t* toks = reinterpret_cast<int32_t*>(smem + M::acc_bytes + M::g_bytes + M::w_bytes);
  int32_t* first = toks + 2 * kChunk;  // [experts]: the expert's first pair among this block's tokens
  int32_t* count = first + experts;    // [experts]: how many
  const int t0 = blockIdx.x * kChunk, h0 = blockIdx.y * kD;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, cc = lane % 4;
  const int col0 = 16 * (warp % 4), tile0 = 16 * (warp / 4);
  for (int i = static_cast<int>(threadIdx.x); i < kChunk * kAccLd; i += S::threads) acc[i] = 0.0f;
  for (int e = static_cast<int>(threadIdx.x); e < experts; e += S::threads) {
    const int lo = bounds[blockIdx.x * experts + e];
    first[e] = lo;
    count[e] = bounds[(blockIdx.x + 1) * experts + e] - lo;
  }
  __syncthreads();

  // Expert e's rows (zero-filled to a multiple of 16) and W_e block into buffer `buf`.
  auto load = [&](int e, int buf) {
    const int lo = first[e], n = count[e], padded = (n + 15) / 16 * 16;
    bf16* gb = gs + buf * kChunk * kLd;
    for (int i = static_cast<int>(threadIdx.x); i < padded * (kD / 8); i += S::threads) {
      const int r = i / (kD / 8), ch = i % (kD / 8);
      cp_async16(gb + r * kLd + ch * 8, r < n ? gm + static_cast<int64_t>(lo + r) * ldg + ch * 8 : gm, r < n);
    }
    for (int r = static_cast<int>(threadIdx.x); r < n; r += S::threads) toks[buf * kChunk + r] = index[lo + r] - t0;
    load_w_block<S::threads>(ws + buf * kTileElems, w, ldw, !NK, e, h0);
    cp_async_commit();
  };
  auto next = [&](int e) {
    do ++e;
    while (e < experts && count[e] == 0);
    return e;
  };

  int e = next(-1), buf = 0;
  if (e < experts) load(e, 0);
  while (e < experts) {
    const int following = next(e);
    if (following < experts) {
      load(following, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int n = count[e];
    const bf16* gb = gs + buf * kChunk * kLd;
    const bf16* wb = ws + buf * kTileElems;
    const int32_t* tb = toks + buf * kChunk;
    for (int t = tile0; t < n; t += 16 * (WARPS / 4)) {
      float part[2][4] = {};
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        uint32_t a[4], b[4];
        load_a(a, gb, kLd, t, kk * 16);
        load_b16<NK>(b, wb, kk * 16, col0);
        mma(part[0], a, b[0], b[1]);
        mma(part[1], a, b[2], b[3]);
      }
      // Pairs of one expert are distinct tokens: no two lanes add into the same element.
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int col = col0 + 8 * j + 2 * cc;
        if (t + g < n) {
          float* p = acc + tb[t + g] * kAccLd + col;
          p[0] += part[j][0];
          p[1] += part[j][1];
        }
        if (t + g + 8 < n) {
          float* p = acc + tb[t + g + 8] * kAccLd + col;
          p[0] += part[j][2];
          p[1] += part[j][3];
        }
      }
    }
    __syncthreads();  // every add of this expert lands before the next expert's; buffers free for reloading
    e = following;
    buf ^= 1;
  }

  // y += the slice, once per element (tokens with no pair here add zero).
  for (int i = static_cast<int>(threadIdx.x); i < kChunk * (kD / 2); i += S::threads) {
    const int r = i / (kD / 2), col = (i % (kD / 2)) * 2, tkn = t0 + r;
    if (tkn >= N) continue;
    __nv_bfloat162* p = reinterpret_cast<__nv_bfloat162*>(y + static_cast<int64_t>(tkn) * ldy + h0 + col);
    const float2 v = __bfloat1622float2(*p);
    *p = __floats2bfloat162_rn(v.x + acc[r * kAccLd + col], v.y + acc[r * kAccLd + col + 1]);
  }
}

// ---------------------------------------------------------------- weight gradient

template <int WARPS>
struct WeightGradSmem {
  static constexpr int halves = WARPS / 4;  // 64-column sub-tiles of x per K step
  static constexpr int bytes = 2 * kTileElems * 2 + 2 * halves * kTileElems * 2;
};

// A block owns expert table.aux[blockIdx.y]'s rows d x columns [h0, h0 + 16 WARPS)
// (the experts with the most pairs first: a block's time grows with its
// expert's pairs, and the longest running first keeps the grid's tail short);
// warp w owns rows 16 (w % 4) + [0, 16) of the 64-column sub-tile w / 4.
// ROWS: dw is ExpertRows ([E*D, H]), else ExpertCols ([H, E*D]).
template <bool ROWS, int WARPS>
__global__ void __launch_bounds__(32 * WARPS)
    weight_grad_kernel(float* dw, int64_t lddw, const bf16* gm, int64_t ldg, const bf16* x, int64_t ldx,
                       const int32_t* index, const __grid_constant__ ExpertTable table) {
  using S = Blocks<WARPS>;
  constexpr int kHalves = WeightGradSmem<WARPS>::halves;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* gs = reinterpret_cast<bf16*>(smem);  // [2][kTileElems]: g rows [pair][d]
  bf16* xs = gs + 2 * kTileElems;            // [2][halves][kTileElems]: x rows [pair][h]
  const int h0 = blockIdx.x * S::columns, e = table.aux[blockIdx.y];
  const int lo = table.offsets[e], n = table.offsets[e + 1] - lo;
  if (n == 0) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, cc = lane % 4;
  const int d0 = 16 * (warp % 4), half = warp / 4;

  auto load = [&](int step, int buf) {
    for (int i = static_cast<int>(threadIdx.x); i < kTileRows * (kD / 8); i += S::threads) {
      const int r = i / (kD / 8), ch = i % (kD / 8), q = step * kTileRows + r;
      const bool valid = q < n;
      cp_async16(gs + buf * kTileElems + r * kLd + ch * 8, valid ? gm + (lo + static_cast<int64_t>(q)) * ldg + ch * 8 : gm,
                 valid);
    }
    for (int i = static_cast<int>(threadIdx.x); i < kTileRows * (S::columns / 8); i += S::threads) {
      const int r = i / (S::columns / 8), ch = i % (S::columns / 8), q = step * kTileRows + r;
      const bool valid = q < n;
      bf16* dst = xs + (buf * kHalves + ch / (kD / 8)) * kTileElems + r * kLd + (ch % (kD / 8)) * 8;
      cp_async16(dst, valid ? x + static_cast<int64_t>(index[lo + q]) * ldx + h0 + ch * 8 : x, valid);
    }
    cp_async_commit();
  };

  float acc[kD / 8][4] = {};
  double_buffered((n + kTileRows - 1) / kTileRows, load, [&](int buf) {
    const bf16* gb = gs + buf * kTileElems;
    const bf16* xb = xs + (buf * kHalves + half) * kTileElems;
#pragma unroll
    for (int kk = 0; kk < kTileRows / 16; ++kk) {
      uint32_t a[4];
      load_a_trans(a, gb, kk * 16, d0);  // rows d of G^T, k = pairs
#pragma unroll
      for (int nn = 0; nn < kD / 16; ++nn) {
        uint32_t b[4];
        load_b16<false>(b, xb, kk * 16, nn * 16);  // x rows stored [pair][h]
        mma(acc[2 * nn], a, b[0], b[1]);
        mma(acc[2 * nn + 1], a, b[2], b[3]);
      }
    }
  });
#pragma unroll
  for (int j = 0; j < kD / 8; ++j)
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int d = d0 + g + 8 * hi, h = h0 + kD * half + 8 * j + 2 * cc;
      const float v0 = acc[j][2 * hi], v1 = acc[j][2 * hi + 1];
      const int64_t row = static_cast<int64_t>(e) * kD + d;
      if constexpr (ROWS) {
        float* p = dw + row * lddw + h;
        p[0] += v0;
        p[1] += v1;
      } else {
        dw[static_cast<int64_t>(h) * lddw + row] += v0;
        dw[static_cast<int64_t>(h + 1) * lddw + row] += v1;
      }
    }
}

// ---------------------------------------------------------------- host side

// The host offsets (where the host sized the products) in a table, aux zero.
ExpertTable table_of(const int32_t* offsets, int64_t experts) {
  DECO_ASSERT(experts >= 1 && experts <= kMaxExperts, "sparse expert kernels: ", experts,
              " experts in one call, past the ", kMaxExperts,
              " their parameter table holds (sparse_expert_kernels_apply should have said so)");
  ExpertTable t{};
  std::copy(offsets, offsets + experts + 1, t.offsets);
  return t;
}

// f(std::integral_constant<int, WARPS>) for the block shape asked for.
template <typename F>
void with_warps(bool wide, F&& f) {
  if (wide)
    f(std::integral_constant<int, 8>{});
  else
    f(std::integral_constant<int, 4>{});
}

void check_launch() { DECO_CUDA_CHECK(cudaGetLastError()); }

template <int WARPS>
void gather(const Matrix& mc, const Matrix& mx, const Tensor& index, const Matrix& mw, bool expert_rows,
            const int32_t* offsets, int64_t experts) {
  constexpr int kPairs = Blocks<WARPS>::pairs;
  ExpertTable table = table_of(offsets, experts);
  int64_t blocks = 0;  // each expert's first block, then the grid
  for (int64_t e = 0; e < experts; ++e) {
    table.aux[e] = static_cast<int32_t>(blocks);
    blocks += (offsets[e + 1] - offsets[e] + kPairs - 1) / kPairs;
    DECO_ASSERT(blocks <= INT_MAX, "expert_gather_gemm: too many blocks");
  }
  table.aux[experts] = static_cast<int32_t>(blocks);
  if (blocks == 0) return;
  auto kernel = expert_rows ? gather_gemm_kernel<true, WARPS> : gather_gemm_kernel<false, WARPS>;
  constexpr int bytes = GatherSmem<WARPS>::bytes;
  allow_dynamic_smem(kernel, bytes);
  kernel<<<static_cast<unsigned>(blocks), Blocks<WARPS>::threads, bytes, current_stream()>>>(
      static_cast<bf16*>(mc.ptr), mc.ld, static_cast<const bf16*>(mx.ptr), mx.ld, index.data<int32_t>(),
      static_cast<const bf16*>(mw.ptr), mw.ld, table, static_cast<int>(experts), static_cast<int>(mx.cols));
  check_launch();
}

template <int WARPS>
void scatter(const Matrix& my, const Matrix& mg, const Tensor& index, const Matrix& mw, bool expert_rows,
             const int32_t* offsets, int64_t experts) {
  constexpr int kChunk = Blocks<WARPS>::chunk;
  DECO_ASSERT(my.rows <= INT_MAX - kChunk && experts <= INT_MAX, "expert_scatter_gemm: too many rows");
  const int64_t bytes64 = ScatterSmem<WARPS>::bytes(experts);
  DECO_ASSERT(bytes64 <= smem_optin_bytes(), "expert_scatter_gemm: ", experts, " experts need ", bytes64,
              " bytes of shared memory per block, past the ", smem_optin_bytes(),
              " this GPU allows (sparse_expert_kernels_apply should have said so)");
  const int bytes = static_cast<int>(bytes64);
  const ExpertTable table = table_of(offsets, experts);
  const int64_t chunks = (my.rows + kChunk - 1) / kChunk, entries = (chunks + 1) * experts;
  DECO_ASSERT(entries <= INT_MAX, "expert_scatter_gemm: too many token chunks x experts");
  Buffer bounds(DType::I32, Device::CUDA, Shape{entries});
  chunk_bounds_kernel<<<static_cast<unsigned>((entries + 255) / 256), 256, 0, current_stream()>>>(
      bounds.tensor().data<int32_t>(), index.data<int32_t>(), table, static_cast<int>(experts),
      static_cast<int>(entries), kChunk);
  check_launch();
  // ExpertCols weights have their shared block as [h][d] = [n][k].
  auto kernel = expert_rows ? scatter_gemm_kernel<false, WARPS> : scatter_gemm_kernel<true, WARPS>;
  allow_dynamic_smem(kernel, bytes);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(my.cols / kD));
  kernel<<<grid, Blocks<WARPS>::threads, static_cast<size_t>(bytes), current_stream()>>>(
      static_cast<bf16*>(my.ptr), my.ld, static_cast<const bf16*>(mg.ptr), mg.ld, index.data<int32_t>(),
      static_cast<const bf16*>(mw.ptr), mw.ld, bounds.tensor().data<int32_t>(), static_cast<int>(experts),
      static_cast<int>(my.rows));
  check_launch();
}

template <int WARPS>
void weight_grad(const Matrix& mdw, bool expert_rows, const Matrix& mg, const Matrix& mx, const Tensor& index,
                 const int32_t* offsets, int64_t experts) {
  ExpertTable table = table_of(offsets, experts);  // experts <= kMaxExperts: within the grid's 65535 rows
  // Experts by pairs, most first (ties by index: the order, like the sums, depends on the routing only).
  int32_t* order = table.aux;
  std::iota(order, order + experts, 0);
  std::stable_sort(order, order + experts, [&](int32_t a, int32_t b) {
    return offsets[a + 1] - offsets[a] > offsets[b + 1] - offsets[b];
  });
  auto kernel = expert_rows ? weight_grad_kernel<true, WARPS> : weight_grad_kernel<false, WARPS>;
  constexpr int bytes = WeightGradSmem<WARPS>::bytes;
  allow_dynamic_smem(kernel, bytes);
  const dim3 grid(static_cast<unsigned>(mx.cols / Blocks<WARPS>::columns), static_cast<unsigned>(experts));
  kernel<<<grid, Blocks<WARPS>::threads, bytes, current_stream()>>>(static_cast<float*>(mdw.ptr), mdw.ld,
                                                  static_cast<const bf16*>(mg.ptr), mg.ld,
                                                  static_cast<const bf16*>(mx.ptr), mx.ld, index.data<int32_t>(),
                                                  table);
  check_launch();
}

}  // namespace

bool sparse_expert_kernels_support(int64_t block, int64_t hidden, int64_t experts) {
  if (block != kD || hidden <= 0 || hidden % kD != 0 || hidden > INT_MAX) return false;
  if (experts < 1 || experts > kMaxExperts) return false;  // the kernels' parameter table (ExpertTable)
  // The scatter block keeps two ints per expert in shared memory: past what
  // the GPU gives a block even in the narrow shape, the composition runs
  // instead (at kMaxExperts the narrow block needs 95 KB, within sm_86/89's 99).
  return ScatterSmem<4>::bytes(experts) <= smem_optin_bytes();
}

bool sparse_expert_kernels_apply(int64_t block, int64_t hidden, int64_t experts,
                                 std::initializer_list<const Tensor*> bf16_operands) {
  if (!sparse_expert_kernels_support(block, hidden, experts)) return false;
  for (const Tensor* t : bf16_operands) {
    if (t->dtype() != DType::BF16 || t->device() != Device::CUDA) return false;
    if (reinterpret_cast<uintptr_t>(t->raw()) % 16 != 0 || t->matrix().ld % 8 != 0) return false;
  }
  return true;
}

// The kernels trust their operands' shapes: W is [E*64, H] (ExpertRows) or
// [H, E*64] (ExpertCols) for the E experts of offsets and the H of the
// token rows, and c/g are [P, 64].
void check_expert_weight(const char* op, const Tensor& w, bool expert_rows, int64_t experts, int64_t hidden) {
  const int64_t rows = expert_rows ? experts * kD : hidden, cols = expert_rows ? hidden : experts * kD;
  DECO_ASSERT(w.ndim() == 2 && w.size(0) == rows && w.size(1) == cols, op, ": the expert weight is [", w.size(0), ", ",
              w.ndim() > 1 ? w.size(1) : 0, "], not [", rows, ", ", cols, "] for ", experts, " experts of width ", kD,
              " and hidden size ", hidden);
}

void expert_gather_gemm(const Tensor& c, const Tensor& x, const Tensor& index, const Tensor& w, bool expert_rows,
                        const int32_t* offsets, int64_t experts, bool wide) {
  check_expert_weight(__func__, w, expert_rows, experts, x.size(1));
  DECO_ASSERT(c.size(1) == kD && index.numel() >= c.size(0), "expert_gather_gemm: c is [P, 64], an index per pair");
  with_warps(wide, [&](auto warps) {
    gather<decltype(warps)::value>(c.matrix(), x.matrix(), index, w.matrix(), expert_rows, offsets, experts);
  });
}

void expert_scatter_gemm(const Tensor& y, const Tensor& g, const Tensor& index, const Tensor& w, bool expert_rows,
                         const int32_t* offsets, int64_t experts, bool wide) {
  const Matrix my = y.matrix();
  check_expert_weight(__func__, w, expert_rows, experts, my.cols);
  DECO_ASSERT(g.size(1) == kD && index.numel() >= g.size(0), "expert_scatter_gemm: g is [P, 64], an index per pair");
  if (offsets[experts] == offsets[0] || my.rows == 0) return;
  // The wide block's shared memory grows with the experts: past the GPU's limit, the narrow block.
  wide = wide && ScatterSmem<8>::bytes(experts) <= smem_optin_bytes();
  with_warps(wide, [&](auto warps) {
    scatter<decltype(warps)::value>(my, g.matrix(), index, w.matrix(), expert_rows, offsets, experts);
  });
}

void expert_weight_grad(const Tensor& dw, bool expert_rows, const Tensor& g, const Tensor& x, const Tensor& index,
                        const int32_t* offsets, int64_t experts, bool wide) {
  check_expert_weight(__func__, dw, expert_rows, experts, x.size(1));
  DECO_ASSERT(g.size(1) == kD && index.numel() >= g.size(0), "expert_weight_grad: g is [P, 64], an index per pair");
  if (offsets[experts] == offsets[0]) return;
  DECO_ASSERT(dw.dtype() == DType::F32, "expert_weight_grad: float32 gradients on the GPU");
  // The wide block's 128 columns need H a multiple of 128; otherwise the narrow block.
  with_warps(wide && x.matrix().cols % Blocks<8>::columns == 0, [&](auto warps) {
    weight_grad<decltype(warps)::value>(dw.matrix(), expert_rows, g.matrix(), x.matrix(), index, offsets, experts);
  });
}

}  // namespace deco::cuda
