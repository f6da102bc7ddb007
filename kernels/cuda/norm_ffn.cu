// CUDA: RMSNorm and SwiGLU. One block per row for the norm (row statistics
// reduced in shared memory); the weight gradient is reduced in two passes
// with a partition that depends on the row count only: each thread sums one
// column over a slab of rows, then one thread per column adds the slabs in
// order. Deterministic (no atomics), and the first pass has enough blocks
// to fill the GPU (a thread per column walking all rows had only
// hidden / 256 of them).
// Activations are float32, float64 or bfloat16 (storage.cuh); rstd and the
// weight gradient are in their accumulate dtype (float32 under bfloat16).
#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/storage.cuh"
#include "kernels/math.h"

namespace deco::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void rmsnorm_forward_kernel(T* out, acc_t<T>* rstd, const T* x, const T* w, int64_t cols, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A scratch[kThreads];
  const T* row = x + blockIdx.x * cols;
  A ss = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) ss += ld(row[c]) * ld(row[c]);
  const A rs = A(1) / sqrt(block_sum(ss, scratch) / static_cast<A>(cols) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[blockIdx.x * cols + c] = st<T>(ld(row[c]) * rs * ld(w[c]));
}

// rmsnorm_forward_kernel over the sums it writes: the same reduction, the
// same thread per column, and (under bfloat16) over the rounded sums the
// stream holds, so the fused op equals add-then-normalize bit for bit.
template <typename T>
__global__ void residual_rmsnorm_forward_kernel(T* sum, T* out, acc_t<T>* rstd, const T* residual, const T* branch,
                                                const T* w, int64_t cols, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A scratch[kThreads];
  const int64_t base = blockIdx.x * cols;
  A ss = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const T s = st<T>(ld(residual[base + c]) + ld(branch[base + c]));
    sum[base + c] = s;
    ss += ld(s) * ld(s);
  }
  const A rs = A(1) / sqrt(block_sum(ss, scratch) / static_cast<A>(cols) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[base + c] = st<T>(ld(sum[base + c]) * rs * ld(w[c]));
}

template <typename T>
__global__ void rmsnorm_backward_dx_kernel(T* dx, const T* dout, const T* x, const T* w, const acc_t<T>* rstd,
                                           int64_t cols) {
  using A = acc_t<T>;
  __shared__ A scratch[kThreads];
  const int64_t base = blockIdx.x * cols;
  const A rs = rstd[blockIdx.x];
  A dot = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dot += ld(w[c]) * ld(dout[base + c]) * ld(x[base + c]) * rs;
  const A mean_dot = block_sum(dot, scratch) / static_cast<A>(cols);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    dx[base + c] = st<T>(ld(dx[base + c]) + rs * (ld(w[c]) * ld(dout[base + c]) - ld(x[base + c]) * rs * mean_dot));
}

constexpr int64_t kDwSlabRows = 128;  // rows per slab, at least
constexpr int64_t kDwMaxSlabs = 256;

// partial[slab, c] = sum over the slab's rows of dout * x * rstd.
template <typename T>
__global__ void rmsnorm_dw_partial_kernel(acc_t<T>* partial, const T* dout, const T* x, const acc_t<T>* rstd,
                                          int64_t rows, int64_t cols, int64_t slab_rows) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  const int64_t begin = blockIdx.y * slab_rows, end = begin + slab_rows < rows ? begin + slab_rows : rows;
  acc_t<T> acc = 0;
  for (int64_t r = begin; r < end; ++r) acc += ld(dout[r * cols + c]) * ld(x[r * cols + c]) * rstd[r];
  partial[blockIdx.y * cols + c] = acc;
}

// dw[c] += the slabs' partials, in slab order.
template <typename A>
__global__ void rmsnorm_dw_sum_kernel(A* dw, const A* partial, int64_t slabs, int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  A acc = 0;
  for (int64_t s = 0; s < slabs; ++s) acc += partial[s * cols + c];
  dw[c] += acc;
}

template <typename T> __global__ void swiglu_forward_kernel(T* out, const T* gate, const T* up, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = st<T>(math::silu(ld(gate[i])) * ld(up[i]));
}

template <typename T>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const acc_t<T> g = ld(gate[i]), d = ld(dout[i]);
  dgate[i] = st<T>(d * ld(up[i]) * math::silu_grad(g));
  dup[i] = st<T>(d * math::silu(g));
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     double eps) {
  const Matrix m = x.matrix();
  if (m.rows == 0) return;
  dispatch_activation(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    rmsnorm_forward_kernel<T><<<static_cast<unsigned>(m.rows), kThreads, 0, current_stream()>>>(
        ptr<T>(out), acc_data<T>(rstd, __func__, "rstd"), ptr<T>(x), ptr<T>(weight), m.cols,
        static_cast<acc_t<T>>(eps));
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void residual_rmsnorm_forward(const Tensor& sum, const Tensor& out, const Tensor& rstd, const Tensor& residual,
                              const Tensor& branch, const Tensor& weight, double eps) {
  const Matrix m = sum.matrix();
  if (m.rows == 0) return;
  dispatch_activation(sum.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    residual_rmsnorm_forward_kernel<T><<<static_cast<unsigned>(m.rows), kThreads, 0, current_stream()>>>(
        ptr<T>(sum), ptr<T>(out), acc_data<T>(rstd, __func__, "rstd"), ptr<T>(residual), ptr<T>(branch),
        ptr<T>(weight), m.cols, static_cast<acc_t<T>>(eps));
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd) {
  const Matrix m = x.matrix();
  if (m.rows == 0) return;
  dispatch_activation(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    const acc_t<T>* rs = acc_data<T>(rstd, __func__, "rstd");
    rmsnorm_backward_dx_kernel<T><<<static_cast<unsigned>(m.rows), kThreads, 0, current_stream()>>>(
        ptr<T>(dx), ptr<T>(dout), ptr<T>(x), ptr<T>(weight), rs, m.cols);
    const int64_t slabs = std::min<int64_t>(kDwMaxSlabs, (m.rows + kDwSlabRows - 1) / kDwSlabRows);
    const int64_t slab_rows = (m.rows + slabs - 1) / slabs;
    Buffer partial(dtype_of<acc_t<T>>::value, Device::CUDA, Shape{slabs, m.cols});  // from the caching allocator
    rmsnorm_dw_partial_kernel<T><<<dim3(blocks_for(m.cols), static_cast<unsigned>(slabs)), kThreads, 0, current_stream()>>>(
        partial.data<acc_t<T>>(), ptr<T>(dout), ptr<T>(x), rs, m.rows, m.cols, slab_rows);
    rmsnorm_dw_sum_kernel<acc_t<T>><<<blocks_for(m.cols), kThreads, 0, current_stream()>>>(acc_data<T>(dweight, __func__, "dweight"),
                                                                       partial.data<acc_t<T>>(), slabs, m.cols);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up) {
  const int64_t n = out.numel();
  if (n == 0) return;
  dispatch_activation(out.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    swiglu_forward_kernel<T><<<blocks_for(n), kThreads, 0, current_stream()>>>(ptr<T>(out), ptr<T>(gate), ptr<T>(up), n);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up) {
  const int64_t n = dout.numel();
  if (n == 0) return;
  dispatch_activation(dout.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    swiglu_backward_kernel<T><<<blocks_for(n), kThreads, 0, current_stream()>>>(ptr<T>(dgate), ptr<T>(dup), ptr<T>(dout), ptr<T>(gate),
                                                           ptr<T>(up), n);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace deco::cuda
