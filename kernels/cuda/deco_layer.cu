// CUDA: the DECO layer's own ops, ReLU routing, the sparsity regularizers,
// the routing structure of the sparse expert path, and NormSiLU. The
// reference is kernels/cpu/router.cpp and the NormSiLU half of
// kernels/cpu/norm.cpp.
//
// Every sum that leaves a kernel (dscale, dgamma, the regularizer values) is
// reduced in an order fixed by the shapes alone, never by thread timing: a
// first kernel cuts the rows into slabs that depend only on the row count,
// sums each slab in a fixed pattern (in double) and writes one partial per
// slab; column_sum_kernel then adds the partials of each column in a fixed
// tree. The only atomics are on integer counts (and idle_rows_kernel's
// double count of rows, integers below 2^53), whose sums are exact in any order. Row-wise work on expert blocks (NormSiLU)
// and on tokens (the entropy) runs one warp per row, the natural shape for
// D = 64 and E of 16 to 102.
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "core/caching_allocator.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/storage.cuh"
#include "kernels/dispatch.h"
#include "kernels/math.h"

namespace deco::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;
constexpr unsigned kFullMask = 0xffffffffu;

// Two-stage reductions: at least this many rows per slab (so a slab's
// fixed overhead, one partial row, stays small against its work), and at
// most this many slabs (so the second stage's walk over them stays short).
constexpr int64_t kMinSlabRows = 64;
constexpr int64_t kMaxSlabs = 1024;
// Elements per CTA when counting active entries: enough work per CTA to
// amortize its one global atomic per expert.
constexpr int64_t kCountChunk = 4096;
// Per-expert counters of a counting CTA live in (default, 48 KiB) shared memory.
constexpr int64_t kMaxCountExperts = 8192;
// build_routing places pairs with CTAs this wide: N / 1024 steps of one
// ballot and two barriers each.
constexpr int kPlaceThreads = 1024;
constexpr int kPlaceWarps = kPlaceThreads / kWarp;
// NormSiLU keeps a block row in registers, at most 16 values per lane.
constexpr int64_t kMaxWidth = 16 * kWarp;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
unsigned blocks_for(int64_t n, int64_t per_block) { return static_cast<unsigned>(ceil_div(n, per_block)); }

// The row partition of a two-stage reduction over `rows` > 0 rows. It
// depends on the row count only (not on the GPU), so the sums come out
// bit-identical on every run. Trailing slabs may be empty; their partials are 0.
struct Slabs {
  int64_t count, rows;
};
Slabs slabs_for(int64_t rows, int64_t min_rows) {
  const int64_t count = std::min(ceil_div(rows, min_rows), kMaxSlabs);
  return {count, ceil_div(rows, count)};
}

// Device memory for partial sums and counters, tagged as workspace. It goes
// back to the allocator's cache at scope exit without a synchronization:
// the kernels that used it run on the current stream, and whoever gets the
// memory next is ordered after them (the same stream, or, while a side
// stream runs, after the join: core/stream.h holds frees until then).
class Scratch {
 public:
  explicit Scratch(size_t bytes) {
    MemoryCategoryScope scope(MemoryCategory::Workspace);
    ptr_ = device_alloc(Device::CUDA, bytes > 0 ? bytes : 1);
  }
  ~Scratch() { device_free(Device::CUDA, ptr_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T> T* as(size_t byte_offset = 0) const {
    return reinterpret_cast<T*>(static_cast<char*>(ptr_) + byte_offset);
  }

 private:
  void* ptr_ = nullptr;
};

// A kernel argument read on the device must not be a host pointer.
void require_device(const Tensor& t, const char* op, const char* what) {
  DECO_ASSERT(t.device() == Device::CUDA, op, ": ", what, " must be in device memory like the other operands");
}

// std::max(v, 0) exactly (NaN stays NaN), as the CPU reference computes r = relu(z).
template <typename T> __device__ __forceinline__ T relu(T v) { return v < T(0) ? T(0) : v; }

// Second stage: out[c] (= or +=) the sum over parts of partial[part, c].
// One CTA per column: thread t adds parts t, t + 256, ... (at most
// kMaxSlabs / 256 of them), then the CTA's fixed tree.
template <typename Out>
__global__ void column_sum_kernel(Out* out, const double* partial, int64_t parts, int64_t cols, bool accumulate) {
  __shared__ double scratch[kThreads];
  const int64_t c = blockIdx.x;
  double acc = 0.0;
  for (int64_t p = threadIdx.x; p < parts; p += blockDim.x) acc += partial[p * cols + c];
  const double total = block_sum(acc, scratch);
  if (threadIdx.x == 0) out[c] = accumulate ? out[c] + static_cast<Out>(total) : static_cast<Out>(total);
}

template <typename Out> void column_sum(Out* out, const double* partial, int64_t parts, int64_t cols, bool accumulate) {
  column_sum_kernel<Out><<<static_cast<unsigned>(cols), kThreads, 0, current_stream()>>>(out, partial, parts, cols, accumulate);
}

// ---------------------------------------------------------------- routing

// g = relu(z) * scale over one chunk of the N*E entries per CTA (g null:
// count only), and the chunk's active entries per expert counted in shared
// memory, then added to counts with one 64-bit atomic per expert.
template <typename T>
__global__ void route_forward_kernel(T* g, unsigned long long* counts, const T* z, const T* scale, int64_t n,
                                     int64_t E) {
  extern __shared__ unsigned int chunk_counts[];  // [E] when counting
  if (counts != nullptr) {
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) chunk_counts[e] = 0;
    __syncthreads();
  }
  const int64_t begin = blockIdx.x * kCountChunk;
  const int64_t end = begin + kCountChunk < n ? begin + kCountChunk : n;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int64_t e = i % E;
    const T v = z[i];
    const bool active = v > T(0);
    if (g != nullptr) g[i] = active ? v * scale[e] : T(0);
    if (counts != nullptr && active) atomicAdd(&chunk_counts[e], 1u);
  }
  if (counts == nullptr) return;
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x)
    if (chunk_counts[e] != 0) atomicAdd(&counts[e], static_cast<unsigned long long>(chunk_counts[e]));
}

template <typename T>
void launch_route_forward(T* g, unsigned long long* counts, const T* z, const T* scale, int64_t n, int64_t E) {
  const size_t shared = counts != nullptr ? static_cast<size_t>(E) * sizeof(unsigned int) : 0;
  route_forward_kernel<T><<<blocks_for(n, kCountChunk), kThreads, shared, current_stream()>>>(g, counts, z, scale, n, E);
}

// One warp per row of z [N, E]: a row is idle when no lane saw a positive
// entry; the CTA's idle rows are added with one atomic (into a double, as
// the statistics keep it: integer counts, so exact in any order).
template <typename T>
__global__ void idle_rows_kernel(double* idle, const T* z, int64_t N, int64_t E) {
  __shared__ unsigned int block_idle;
  if (threadIdx.x == 0) block_idle = 0;
  __syncthreads();
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row < N) {
    bool any = false;
    for (int64_t e = lane; e < E; e += kWarp) any = any || z[row * E + e] > T(0);
    if (__ballot_sync(kFullMask, any) == 0 && lane == 0) atomicAdd(&block_idle, 1u);
  }
  __syncthreads();
  if (threadIdx.x == 0 && block_idle != 0) atomicAdd(idle, static_cast<double>(block_idle));
}

// dz = (dg * scale + dr_extra) where z > 0, else 0, and each row slab's
// share of dscale = sum of dg * z over active entries. CTA (32, 8) covers
// experts [32 * blockIdx.y, +32) of slab blockIdx.x; thread (x, y) walks
// the slab's rows y, y + 8, ..., reads of a row are coalesced over x, and
// the eight row sums of a column are added in y order.
template <typename T>
__global__ void route_backward_kernel(T* dz, double* partial, const T* dg, const T* extra, const T* z,
                                      const T* scale, int64_t N, int64_t E, int64_t slab_rows) {
  __shared__ double sums[kWarps][kWarp];
  const int64_t e = blockIdx.y * static_cast<int64_t>(kWarp) + threadIdx.x;
  const int64_t begin = blockIdx.x * slab_rows;
  const int64_t end = begin + slab_rows < N ? begin + slab_rows : N;
  double acc = 0.0;
  if (e < E) {
    const T s = scale[e];
    for (int64_t t = begin + threadIdx.y; t < end; t += kWarps) {
      const int64_t i = t * E + e;
      const T dr = dg[i] * s + (extra != nullptr ? extra[i] : T(0));
      const bool active = z[i] > T(0);
      dz[i] = active ? dr : T(0);
      if (active) acc += static_cast<double>(dg[i] * z[i]);
    }
  }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && e < E) {
    double total = 0.0;
    for (int y = 0; y < kWarps; ++y) total += sums[y][threadIdx.x];
    partial[blockIdx.x * E + e] = total;
  }
}

// ---------------------------------------------------------------- regularizers

// One warp per token, eight per CTA over a slab of tokens; each token's
// entropy (terms in T as on the CPU, summed in double) is added into its
// warp's total, and the warps' totals in warp order make the slab's partial.
template <typename T>
__global__ void entropy_forward_kernel(double* partial, const T* z, int64_t N, int64_t E, int64_t slab_rows) {
  __shared__ double warp_totals[kWarps];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t begin = blockIdx.x * slab_rows;
  const int64_t end = begin + slab_rows < N ? begin + slab_rows : N;
  const T log_eps = static_cast<T>(math::kEntropyLogEps);
  double acc = 0.0;
  for (int64_t t = begin + warp; t < end; t += kWarps) {
    const T* row = z + t * E;
    double sum = 0.0;  // the CPU forward sums r in double too
    for (int64_t e = lane; e < E; e += kWarp) sum += static_cast<double>(relu(row[e]));
    const T denom = static_cast<T>(warp_sum(sum) + math::kEntropySumEps);
    double h = 0.0;
    for (int64_t e = lane; e < E; e += kWarp) {
      const T p = relu(row[e]) / denom;
      h -= static_cast<double>(p * log(p + log_eps));
    }
    acc += warp_sum(h);
  }
  if (lane == 0) warp_totals[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kWarps; ++w) total += warp_totals[w];
    partial[blockIdx.x] = total;
  }
}

// dr += coef * dH/dr, one warp per token. The CPU backward keeps sum r and
// the weighted sum in T; here they are summed in double and rounded to T,
// and dH/dp is recomputed in the last pass by the same expression rather
// than stored.
template <typename T> __global__ void entropy_backward_kernel(T* dr, const T* z, int64_t N, int64_t E, T coef) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / kWarp;
  if (t >= N) return;  // the whole warp: the shuffles below stay full
  const int lane = threadIdx.x % kWarp;
  const T* row = z + t * E;
  const T eps = static_cast<T>(math::kEntropyLogEps);
  double sum = 0.0;
  for (int64_t e = lane; e < E; e += kWarp) sum += static_cast<double>(relu(row[e]));
  const T denom = static_cast<T>(warp_sum(sum)) + static_cast<T>(math::kEntropySumEps);
  // H(p) = -sum p log(p+eps): dH/dp_e = -(log(p_e+eps) + p_e/(p_e+eps));
  // p_e = r_e/denom: dH/dr_j = (dH/dp_j - sum_e p_e dH/dp_e) / denom
  double weighted = 0.0;
  for (int64_t e = lane; e < E; e += kWarp) {
    const T p = relu(row[e]) / denom;
    const T dh_dp = -(log(p + eps) + p / (p + eps));
    weighted += static_cast<double>(p * dh_dp);
  }
  const T w = static_cast<T>(warp_sum(weighted));
  for (int64_t e = lane; e < E; e += kWarp) {
    const T p = relu(row[e]) / denom;
    const T dh_dp = -(log(p + eps) + p / (p + eps));
    dr[t * E + e] += coef * (dh_dp - w) / denom;
  }
}

// Each slab's sum of relu(z): strided over the CTA, then its fixed tree.
template <typename T> __global__ void relu_sum_kernel(double* partial, const T* z, int64_t n, int64_t slab) {
  __shared__ double scratch[kThreads];
  const int64_t begin = blockIdx.x * slab;
  const int64_t end = begin + slab < n ? begin + slab : n;
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) acc += static_cast<double>(relu(z[i]));
  const double total = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

template <typename T> __global__ void add_scalar_kernel(T* x, T v, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] += v;
}

// ---------------------------------------------------------------- build_routing

// offsets = exclusive scan of the per-expert counts. E is at most a few
// hundred, so a single thread is cheaper than anything parallel.
__global__ void offsets_kernel(int32_t* offsets, const unsigned long long* counts, int64_t E) {
  unsigned long long run = 0;
  offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) {
    run += counts[e];
    offsets[e + 1] = static_cast<int32_t>(run);
  }
}

// CTA e walks the tokens in order, 1024 at a time: a ballot numbers the
// active ones within each warp and the warps' counts number the warps, so
// expert e's pairs fill [offsets[e], offsets[e+1]) in token order, the CPU's order.
template <typename T>
__global__ void place_pairs_kernel(int32_t* pair_token, int32_t* pair_flat, const int32_t* offsets, const T* z,
                                   int64_t N, int64_t E) {
  __shared__ int warp_counts[kPlaceWarps];
  const int64_t e = blockIdx.x;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const unsigned lanes_below = (1u << lane) - 1u;
  int64_t next = offsets[e];  // where this expert's next pair goes
  for (int64_t base = 0; base < N; base += kPlaceThreads) {
    const int64_t t = base + threadIdx.x;
    const bool active = t < N && z[t * E + e] > T(0);
    const unsigned ballot = __ballot_sync(kFullMask, active);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < kPlaceWarps; ++w) {
      const int c = warp_counts[w];
      before += w < warp ? c : 0;
      total += c;
    }
    if (active) {
      const int64_t p = next + before + __popc(ballot & lanes_below);
      pair_token[p] = static_cast<int32_t>(t);
      pair_flat[p] = static_cast<int32_t>(t * E + e);
    }
    next += total;
    __syncthreads();  // warp_counts is rewritten by the next step
  }
}

// ---------------------------------------------------------------- NormSiLU

// Calls f(std::integral_constant<int, K>) with the fewest values per lane
// K (a power of two) for which a warp's 32 * K lanes cover a row of D.
template <typename F> void with_values_per_lane(int64_t D, F&& f) {
  if (D <= 1 * kWarp)
    f(std::integral_constant<int, 1>{});
  else if (D <= 2 * kWarp)
    f(std::integral_constant<int, 2>{});
  else if (D <= 4 * kWarp)
    f(std::integral_constant<int, 4>{});
  else if (D <= 8 * kWarp)
    f(std::integral_constant<int, 8>{});
  else
    f(std::integral_constant<int, 16>{});
}

// One warp per block row b; lane l holds entries l, l + 32, ... in registers.
// mean null: no mean step; has_rms false: xhat = c, act = silu(c), rs untouched.
// Storage T (float, double or bf16), arithmetic and rs in A = acc_t<T>.
// Under bf16, act is computed from the unrounded xhat; the backward reads
// the rounded xhat it stored (as the CPU reference does).
// ga non-null (normsilu_scaled_forward): also ga = act * score[b], from the
// unrounded act (under bf16 the CPU reference scales the rounded one).
template <typename T, int K>
__global__ void normsilu_forward_kernel(T* act, T* xhat, acc_t<T>* rs, const T* u, const T* mean,
                                        const int32_t* block_token, int64_t blocks_per_token, const T* gamma,
                                        int64_t P, int64_t D, acc_t<T> eps, bool has_rms, T* ga,
                                        const acc_t<T>* score) {
  using A = acc_t<T>;
  const int64_t b = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / kWarp;
  if (b >= P) return;  // the whole warp
  const int lane = threadIdx.x % kWarp;
  const int64_t base = b * D;
  A shift = A(0);
  if (mean != nullptr) shift = ld(mean[block_token != nullptr ? block_token[b] : b / blocks_per_token]);
  A c[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t d = lane + k * kWarp;
    c[k] = d < D ? ld(u[base + d]) - shift : A(0);
  }
  const A g_b = ga != nullptr ? score[b] : A(0);
  if (!has_rms) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t d = lane + k * kWarp;
      if (d < D) {
        xhat[base + d] = st<T>(c[k]);
        const A a = math::silu(c[k]);
        act[base + d] = st<T>(a);
        if (ga != nullptr) ga[base + d] = st<T>(a * g_b);
      }
    }
    return;
  }
  double ss = 0.0;
#pragma unroll
  for (int k = 0; k < K; ++k) ss += static_cast<double>(c[k] * c[k]);  // lanes past D hold 0
  const A r = A(1) / sqrt(static_cast<A>(warp_sum(ss)) / static_cast<A>(D) + eps);
  if (lane == 0) rs[b] = r;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t d = lane + k * kWarp;
    if (d < D) {
      const A x = c[k] * r;
      xhat[base + d] = st<T>(x);
      const A a = math::silu(x * ld(gamma[d]));
      act[base + d] = st<T>(a);
      if (ga != nullptr) ga[base + d] = st<T>(a * g_b);
    }
  }
}

// The RMS variants' backward: one warp per block row, eight warps per CTA
// over a slab of rows (warp w takes rows w, w + 8, ...). Each lane sums
// dgamma for its columns in registers; the warps' sums are added in warp
// order through shared memory into the slab's partial row.
// q non-null (normsilu_scaled_backward): dact = q * score[b] is formed in
// registers and dscore[b] = rowdot(q, act) taken on the way (dact unused).
template <typename T, int K>
__global__ void normsilu_backward_kernel(T* dc, double* partial, const T* dact, const T* xhat, const acc_t<T>* rs,
                                         const T* gamma, int64_t P, int64_t D, int64_t slab_rows, const T* q,
                                         const T* act, const acc_t<T>* score, acc_t<T>* dscore) {
  using A = acc_t<T>;
  extern __shared__ double warp_dgamma[];  // [kWarps][D]
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t begin = blockIdx.x * slab_rows;
  const int64_t end = begin + slab_rows < P ? begin + slab_rows : P;
  A g[K];
  double dg[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t d = lane + k * kWarp;
    g[k] = d < D ? ld(gamma[d]) : A(0);
    dg[k] = 0.0;
  }
  for (int64_t b = begin + warp; b < end; b += kWarps) {
    const int64_t base = b * D;
    A x[K], dx[K];
    double dot = 0.0;
    A s_b = A(0);
    if (q != nullptr) {  // the score's gradient first: every lane needs the row's q . act
      double qa = 0.0;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int64_t d = lane + k * kWarp;
        if (d < D) qa += static_cast<double>(ld(q[base + d]) * ld(act[base + d]));
      }
      qa = warp_sum(qa);
      if (lane == 0) dscore[b] = static_cast<A>(qa);
      s_b = score[b];
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t d = lane + k * kWarp;
      x[k] = A(0);
      dx[k] = A(0);
      if (d < D) {
        // n = xhat*gamma, act = silu(n): dn = dact * silu'(n), dgamma += dn * xhat, dxhat = dn * gamma
        x[k] = ld(xhat[base + d]);
        const A da = q != nullptr ? ld(q[base + d]) * s_b : ld(dact[base + d]);
        const A dn = da * math::silu_grad(x[k] * g[k]);
        dg[k] += static_cast<double>(dn * x[k]);
        dx[k] = dn * g[k];
        dot += static_cast<double>(dx[k] * x[k]);
      }
    }
    // dc = rs * (dxhat - xhat * mean(dxhat * xhat)), the RMSNorm backward of the block
    const A mean_dot = static_cast<A>(warp_sum(dot)) / static_cast<A>(D);
    const A r = rs[b];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t d = lane + k * kWarp;
      if (d < D) dc[base + d] = st<T>(r * (dx[k] - x[k] * mean_dot));
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t d = lane + k * kWarp;
    if (d < D) warp_dgamma[warp * D + d] = dg[k];
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    double total = 0.0;
    for (int w = 0; w < kWarps; ++w) total += warp_dgamma[w * D + d];
    partial[blockIdx.x * D + d] = total;
  }
}

// Without the RMS step act = silu(c): dc = dact * silu'(c), elementwise.
template <typename T> __global__ void silu_backward_kernel(T* dc, const T* dact, const T* c, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) dc[i] = st<T>(ld(dact[i]) * math::silu_grad(ld(c[i])));
}

// The same with the scores: one warp per block row b takes dscore[b] =
// rowdot(q, act), then dc = q * score[b] * silu'(c).
template <typename T>
__global__ void silu_scaled_backward_kernel(T* dc, acc_t<T>* dscore, const T* q, const T* act, const T* c,
                                            const acc_t<T>* score, int64_t P, int64_t D) {
  using A = acc_t<T>;
  const int64_t b = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / kWarp;
  if (b >= P) return;  // the whole warp
  const int lane = threadIdx.x % kWarp;
  const int64_t base = b * D;
  double qa = 0.0;
  for (int64_t d = lane; d < D; d += kWarp) qa += static_cast<double>(ld(q[base + d]) * ld(act[base + d]));
  qa = warp_sum(qa);
  if (lane == 0) dscore[b] = static_cast<A>(qa);
  const A s_b = score[b];
  for (int64_t d = lane; d < D; d += kWarp) dc[base + d] = st<T>(ld(q[base + d]) * s_b * math::silu_grad(ld(c[base + d])));
}

}  // namespace

void relu_route_forward(const Tensor& g, const Tensor& counts, const Tensor& z, const Tensor& scale) {
  const Matrix m = z.matrix();  // [N, E]
  const int64_t n = m.rows * m.cols, E = m.cols;
  DECO_ASSERT(scale.numel() == E && g.numel() == z.numel(), "relu_route_forward shapes");
  require_device(g, __func__, "g");
  require_device(scale, __func__, "scale");
  unsigned long long* pc = nullptr;
  if (counts.defined()) {
    DECO_ASSERT(counts.numel() == E, "one count per expert");
    require_device(counts, __func__, "counts");
    DECO_ASSERT(E <= kMaxCountExperts, "relu_route_forward on the GPU counts at most ", kMaxCountExperts,
                " experts per layer (shared-memory counters), got ", E);
    pc = reinterpret_cast<unsigned long long*>(counts.data<int64_t>());
  }
  if (n == 0) return;
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    launch_route_forward<T>(g.data<T>(), pc, z.data<T>(), scale.data<T>(), n, E);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void relu_route_backward(const Tensor& dz, const Tensor& dscale, const Tensor& dg, const Tensor& dr_extra,
                         const Tensor& z, const Tensor& scale) {
  const Matrix m = z.matrix();
  const int64_t N = m.rows, E = m.cols;
  DECO_ASSERT(dz.numel() == z.numel() && dg.numel() == z.numel() && scale.numel() == E && dscale.numel() == E &&
                  (!dr_extra.defined() || dr_extra.numel() == z.numel()),
              "relu_route_backward shapes");
  for (const Tensor* t : {&dz, &dscale, &dg, &scale}) require_device(*t, __func__, "every operand");
  if (dr_extra.defined()) require_device(dr_extra, __func__, "dr_extra");
  if (N == 0 || E == 0) return;
  const Slabs slabs = slabs_for(N, kMinSlabRows);
  Scratch partial(static_cast<size_t>(slabs.count * E) * sizeof(double));
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const dim3 grid(static_cast<unsigned>(slabs.count), blocks_for(E, kWarp));
    route_backward_kernel<T><<<grid, dim3(kWarp, kWarps), 0, current_stream()>>>(
        dz.data<T>(), partial.as<double>(), dg.data<T>(), dr_extra.defined() ? dr_extra.data<T>() : nullptr,
        z.data<T>(), scale.data<T>(), N, E, slabs.rows);
    column_sum<T>(dscale.data<T>(), partial.as<double>(), slabs.count, E, true);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

// The *_into functions write one statistic of z into a device double (set,
// not added); device_value brings one to the host (the caller's sync).
template <typename Into> static double device_value(Into&& into, const Tensor& z) {
  Scratch scratch(sizeof(double));
  into(scratch.as<double>(), z);
  double host = 0.0;
  device_copy(Device::CPU, &host, Device::CUDA, scratch.as<double>(), sizeof(double));
  return host;
}

// Rows of z with no positive entry.
static void idle_rows_into(double* idle, const Tensor& z) {
  const Matrix m = z.matrix();
  DECO_CUDA_CHECK(cudaMemsetAsync(idle, 0, sizeof(double), current_stream()));
  if (m.rows == 0) return;
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    idle_rows_kernel<T><<<blocks_for(m.rows, kWarps), kThreads, 0, current_stream()>>>(idle, z.data<T>(), m.rows, m.cols);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

int64_t count_idle_rows(const Tensor& z) { return static_cast<int64_t>(device_value(idle_rows_into, z)); }

// The entropy sum: the slabs' partials, then the total behind them.
static void entropy_sum_into(double* total, const Tensor& z) {
  const Matrix m = z.matrix();
  const int64_t N = m.rows, E = m.cols;
  if (N == 0 || E == 0) {
    DECO_CUDA_CHECK(cudaMemsetAsync(total, 0, sizeof(double), current_stream()));
    return;
  }
  const Slabs slabs = slabs_for(N, kMinSlabRows);
  Scratch scratch(static_cast<size_t>(slabs.count) * sizeof(double));
  double* partial = scratch.as<double>();
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    entropy_forward_kernel<T><<<static_cast<unsigned>(slabs.count), kThreads, 0, current_stream()>>>(partial, z.data<T>(), N, E,
                                                                                 slabs.rows);
  });
  column_sum<double>(total, partial, slabs.count, 1, false);
  DECO_CUDA_CHECK(cudaGetLastError());
}

double entropy_reg_forward(const Tensor& z) { return device_value(entropy_sum_into, z); }

void entropy_reg_backward(const Tensor& dr, const Tensor& z, double coef) {
  const Matrix m = z.matrix();
  const int64_t N = m.rows, E = m.cols;
  DECO_ASSERT(dr.numel() == z.numel(), "entropy_reg_backward shapes");
  require_device(dr, __func__, "dr");
  if (N == 0 || E == 0) return;
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    entropy_backward_kernel<T><<<blocks_for(N, kWarps), kThreads, 0, current_stream()>>>(dr.data<T>(), z.data<T>(), N, E,
                                                                     static_cast<T>(coef));
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

// sum relu(z).
static void relu_sum_into(double* total, const Tensor& z) {
  const int64_t n = z.numel();
  if (n == 0) {
    DECO_CUDA_CHECK(cudaMemsetAsync(total, 0, sizeof(double), current_stream()));
    return;
  }
  const Slabs slabs = slabs_for(n, 8 * kThreads);
  Scratch scratch(static_cast<size_t>(slabs.count) * sizeof(double));
  double* partial = scratch.as<double>();
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    relu_sum_kernel<T><<<static_cast<unsigned>(slabs.count), kThreads, 0, current_stream()>>>(partial, z.data<T>(), n, slabs.rows);
  });
  column_sum<double>(total, partial, slabs.count, 1, false);
  DECO_CUDA_CHECK(cudaGetLastError());
}

double l1_reg_forward(const Tensor& z) { return device_value(relu_sum_into, z); }

void router_statistics(const Tensor& out, const Tensor& z) {
  require_device(out, __func__, "out");
  double* p = out.data<double>();
  entropy_sum_into(p, z);
  relu_sum_into(p + 1, z);
  idle_rows_into(p + 2, z);
}

void l1_reg_backward(const Tensor& dr, const Tensor& z, double coef) {
  // d(sum r)/dr = 1 everywhere; relu_route_backward masks the inactive entries.
  const int64_t n = z.numel();
  DECO_ASSERT(dr.numel() == n, "l1_reg_backward shapes");
  require_device(dr, __func__, "dr");
  if (n == 0) return;
  dispatch_float(dr.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    add_scalar_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, current_stream()>>>(dr.data<T>(), static_cast<T>(coef), n);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

int64_t build_routing(const Tensor& expert_offsets, const Tensor& pair_token, const Tensor& pair_flat,
                      const Tensor& z) {
  const Matrix m = z.matrix();
  const int64_t N = m.rows, E = m.cols;
  DECO_ASSERT(expert_offsets.numel() == E + 1 && pair_token.numel() >= N * E && pair_flat.numel() >= N * E,
              "build_routing shapes");
  DECO_ASSERT(N * E <= std::numeric_limits<int32_t>::max(), "build_routing numbers the N*E = ", N * E,
              " (token, expert) entries with int32; split the micro-batch");
  DECO_ASSERT(E <= kMaxCountExperts, "build_routing on the GPU counts at most ", kMaxCountExperts,
              " experts per layer (shared-memory counters), got ", E);
  require_device(pair_token, __func__, "pair_token");
  require_device(pair_flat, __func__, "pair_flat");
  int32_t* tok = pair_token.data<int32_t>();
  int32_t* flat = pair_flat.data<int32_t>();
  // Offsets in host memory (what grouped_gemm takes) are computed in
  // scratch after the counts and copied back whole; offsets on the device
  // are written in place and only P comes back.
  const bool host_offsets = expert_offsets.device() == Device::CPU;
  int32_t* offsets_host = host_offsets ? expert_offsets.data<int32_t>() : nullptr;
  const size_t counts_bytes = static_cast<size_t>(E) * sizeof(unsigned long long);
  Scratch scratch(counts_bytes + (host_offsets ? static_cast<size_t>(E + 1) * sizeof(int32_t) : 0));
  unsigned long long* counts = scratch.as<unsigned long long>();
  int32_t* offsets = host_offsets ? scratch.as<int32_t>(counts_bytes) : expert_offsets.data<int32_t>();

  DECO_CUDA_CHECK(cudaMemsetAsync(counts, 0, counts_bytes, current_stream()));
  dispatch_float(z.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    if (N > 0 && E > 0) launch_route_forward<T>(nullptr, counts, z.data<T>(), nullptr, N * E, E);
    offsets_kernel<<<1, 1, 0, current_stream()>>>(offsets, counts, E);
    if (N > 0 && E > 0)
      place_pairs_kernel<T><<<static_cast<unsigned>(E), kPlaceThreads, 0, current_stream()>>>(tok, flat, offsets, z.data<T>(), N, E);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
  // The one synchronization of the layer: the host needs P (and the
  // offsets) to size and split the expert GEMMs.
  int32_t pairs = 0;
  if (host_offsets) {
    device_copy(Device::CPU, offsets_host, Device::CUDA, offsets,
                static_cast<size_t>(E + 1) * sizeof(int32_t));
    pairs = offsets_host[E];
  } else {
    device_copy(Device::CPU, &pairs, Device::CUDA, offsets + E, sizeof(int32_t));
  }
  return pairs;
}

namespace {

// normsilu_forward, and with ga/score defined normsilu_scaled_forward.
void launch_normsilu_forward(const Tensor& act, const Tensor& xhat, const Tensor& rs, const Tensor& u,
                             const Tensor& mean, const Tensor& block_token, int64_t blocks_per_token,
                             const Tensor& gamma, ops::ExpertAct variant, double eps, const Tensor& ga,
                             const Tensor& score) {
  const Matrix m = u.matrix();  // [P, D]
  const int64_t P = m.rows, D = m.cols;
  const bool has_mean = ops::expert_act_has_mean(variant), has_rms = ops::expert_act_has_rms(variant);
  DECO_ASSERT(block_token.defined() || blocks_per_token > 0, "normsilu_forward needs a block-to-token map");
  DECO_ASSERT(D <= kMaxWidth, "normsilu_forward on the GPU keeps a block row in registers: expert width at most ",
              kMaxWidth, ", got ", D);
  DECO_ASSERT(act.numel() == u.numel() && xhat.numel() == u.numel(), "normsilu_forward shapes");
  DECO_ASSERT(!block_token.defined() || block_token.numel() >= P, "normsilu_forward: one token per block");
  DECO_ASSERT(!has_rms || (rs.numel() >= P && gamma.numel() == D), "normsilu_forward shapes of rs and gamma");
  DECO_ASSERT(!ga.defined() || (ga.numel() == u.numel() && score.numel() >= P), "normsilu_scaled_forward shapes");
  require_device(act, __func__, "act");
  require_device(xhat, __func__, "xhat");
  if (block_token.defined()) require_device(block_token, __func__, "block_token");
  if (has_mean) require_device(mean, __func__, "mean");
  if (has_rms) {
    require_device(rs, __func__, "rs");
    require_device(gamma, __func__, "gamma");
  }
  if (ga.defined()) {
    require_device(ga, __func__, "ga");
    require_device(score, __func__, "score");
  }
  if (P == 0) return;
  const int32_t* bt = block_token.defined() ? block_token.data<int32_t>() : nullptr;
  dispatch_activation(u.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pm = has_mean ? ptr<T>(mean) : nullptr;
    const T* pg = has_rms ? ptr<T>(gamma) : nullptr;
    acc_t<T>* pr = has_rms ? acc_data<T>(rs, "normsilu_forward", "rs") : nullptr;
    T* pga = ga.defined() ? ptr<T>(ga) : nullptr;
    const acc_t<T>* ps = ga.defined() ? acc_data<T>(score, "normsilu_scaled_forward", "score") : nullptr;
    with_values_per_lane(D, [&](auto K_tag) {
      constexpr int K = decltype(K_tag)::value;
      normsilu_forward_kernel<T, K><<<blocks_for(P, kWarps), kThreads, 0, current_stream()>>>(
          ptr<T>(act), ptr<T>(xhat), pr, ptr<T>(u), pm, bt, blocks_per_token, pg, P, D, static_cast<acc_t<T>>(eps),
          has_rms, pga, ps);
    });
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void normsilu_forward(const Tensor& act, const Tensor& xhat, const Tensor& rs, const Tensor& u, const Tensor& mean,
                      const Tensor& block_token, int64_t blocks_per_token, const Tensor& gamma, ops::ExpertAct variant,
                      double eps) {
  launch_normsilu_forward(act, xhat, rs, u, mean, block_token, blocks_per_token, gamma, variant, eps, Tensor(),
                          Tensor());
}

void normsilu_scaled_forward(const Tensor& ga, const Tensor& act, const Tensor& xhat, const Tensor& rs,
                             const Tensor& u, const Tensor& mean, const Tensor& block_token, int64_t blocks_per_token,
                             const Tensor& gamma, const Tensor& score, ops::ExpertAct variant, double eps) {
  launch_normsilu_forward(act, xhat, rs, u, mean, block_token, blocks_per_token, gamma, variant, eps, ga, score);
}

namespace {

// normsilu_backward (q undefined), or normsilu_scaled_backward: dact = q * score, dscore = rowdot(q, act).
void launch_normsilu_backward(const Tensor& dc, const Tensor& dgamma, const Tensor& dact, const Tensor& xhat,
                              const Tensor& rs, const Tensor& gamma, ops::ExpertAct variant, const Tensor& q,
                              const Tensor& act, const Tensor& score, const Tensor& dscore) {
  const bool scaled = q.defined();
  const Tensor& grad = scaled ? q : dact;
  const Matrix m = grad.matrix();  // [P, D]
  const int64_t P = m.rows, D = m.cols;
  const bool has_rms = ops::expert_act_has_rms(variant);
  DECO_ASSERT(dc.numel() == grad.numel() && xhat.numel() == grad.numel(), "normsilu_backward shapes");
  DECO_ASSERT(!scaled || (act.numel() == q.numel() && score.numel() >= P && dscore.numel() >= P),
              "normsilu_scaled_backward shapes");
  require_device(dc, __func__, "dc");
  require_device(xhat, __func__, "xhat");
  if (scaled)
    for (const Tensor* t : {&act, &score, &dscore}) require_device(*t, __func__, "act, score and dscore");
  if (!has_rms) {
    const int64_t n = P * D;
    if (n == 0) return;
    dispatch_activation(grad.dtype(), [&](auto T_tag) {
      using T = decltype(T_tag);
      if (scaled)
        silu_scaled_backward_kernel<T><<<blocks_for(P, kWarps), kThreads, 0, current_stream()>>>(
            ptr<T>(dc), acc_data<T>(dscore, "normsilu_scaled_backward", "dscore"), ptr<T>(q), ptr<T>(act),
            ptr<T>(xhat), acc_data<T>(score, "normsilu_scaled_backward", "score"), P, D);
      else
        silu_backward_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, current_stream()>>>(ptr<T>(dc), ptr<T>(dact), ptr<T>(xhat), n);
    });
    DECO_CUDA_CHECK(cudaGetLastError());
    return;
  }
  DECO_ASSERT(D <= kMaxWidth, "normsilu_backward on the GPU keeps a block row in registers: expert width at most ",
              kMaxWidth, ", got ", D);
  DECO_ASSERT(rs.numel() >= P && gamma.numel() == D && dgamma.numel() == D,
              "normsilu_backward shapes of rs, gamma and dgamma");
  for (const Tensor* t : {&rs, &gamma, &dgamma}) require_device(*t, __func__, "rs, gamma and dgamma");
  if (P == 0 || D == 0) return;
  const Slabs slabs = slabs_for(P, kMinSlabRows);
  Scratch partial(static_cast<size_t>(slabs.count * D) * sizeof(double));
  const size_t shared = static_cast<size_t>(kWarps * D) * sizeof(double);
  dispatch_activation(grad.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const T* pq = scaled ? ptr<T>(q) : nullptr;
    const T* pa = scaled ? ptr<T>(act) : nullptr;
    const acc_t<T>* ps = scaled ? acc_data<T>(score, "normsilu_scaled_backward", "score") : nullptr;
    acc_t<T>* pds = scaled ? acc_data<T>(dscore, "normsilu_scaled_backward", "dscore") : nullptr;
    with_values_per_lane(D, [&](auto K_tag) {
      constexpr int K = decltype(K_tag)::value;
      normsilu_backward_kernel<T, K><<<static_cast<unsigned>(slabs.count), kThreads, shared, current_stream()>>>(
          ptr<T>(dc), partial.as<double>(), scaled ? nullptr : ptr<T>(dact), ptr<T>(xhat),
          acc_data<T>(rs, "normsilu_backward", "rs"), ptr<T>(gamma), P, D, slabs.rows, pq, pa, ps, pds);
    });
    column_sum<acc_t<T>>(acc_data<T>(dgamma, "normsilu_backward", "dgamma"), partial.as<double>(), slabs.count, D,
                         true);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void normsilu_backward(const Tensor& dc, const Tensor& dgamma, const Tensor& dact, const Tensor& xhat,
                       const Tensor& rs, const Tensor& gamma, ops::ExpertAct variant) {
  launch_normsilu_backward(dc, dgamma, dact, xhat, rs, gamma, variant, Tensor(), Tensor(), Tensor(), Tensor());
}

void normsilu_scaled_backward(const Tensor& dc, const Tensor& dscore, const Tensor& dgamma, const Tensor& q,
                              const Tensor& act, const Tensor& xhat, const Tensor& rs, const Tensor& gamma,
                              const Tensor& score, ops::ExpertAct variant) {
  launch_normsilu_backward(dc, dgamma, Tensor(), xhat, rs, gamma, variant, q, act, score, dscore);
}

}  // namespace deco::cuda
