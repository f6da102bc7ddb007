// CUDA: RMSNorm and SwiGLU. One block per row for the norm (row statistics
// reduced in shared memory); the weight gradient is reduced by one thread per
// column walking the rows in order, which keeps it deterministic (no atomics).
#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/dispatch.h"
#include "kernels/math.h"

namespace deco::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void rmsnorm_forward_kernel(T* out, T* rstd, const T* x, const T* w, int64_t cols, T eps) {
  __shared__ T scratch[kThreads];
  const T* row = x + blockIdx.x * cols;
  T ss = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) ss += row[c] * row[c];
  const T rs = T(1) / sqrt(block_sum(ss, scratch) / static_cast<T>(cols) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[blockIdx.x * cols + c] = row[c] * rs * w[c];
}

// rmsnorm_forward_kernel over the sums it writes: the same reduction, the same thread per column.
template <typename T>
__global__ void residual_rmsnorm_forward_kernel(T* sum, T* out, T* rstd, const T* residual, const T* branch,
                                                const T* w, int64_t cols, T eps) {
  __shared__ T scratch[kThreads];
  const int64_t base = blockIdx.x * cols;
  T ss = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const T s = residual[base + c] + branch[base + c];
    sum[base + c] = s;
    ss += s * s;
  }
  const T rs = T(1) / sqrt(block_sum(ss, scratch) / static_cast<T>(cols) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[base + c] = sum[base + c] * rs * w[c];
}

template <typename T>
__global__ void rmsnorm_backward_dx_kernel(T* dx, const T* dout, const T* x, const T* w,
                                           const T* rstd, int64_t cols) {
  __shared__ T scratch[kThreads];
  const int64_t base = blockIdx.x * cols;
  const T rs = rstd[blockIdx.x];
  T dot = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dot += w[c] * dout[base + c] * x[base + c] * rs;
  const T mean_dot = block_sum(dot, scratch) / static_cast<T>(cols);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    dx[base + c] += rs * (w[c] * dout[base + c] - x[base + c] * rs * mean_dot);
}

template <typename T>
__global__ void rmsnorm_backward_dw_kernel(T* dw, const T* dout, const T* x, const T* rstd,
                                           int64_t rows, int64_t cols) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  T acc = 0;
  for (int64_t r = 0; r < rows; ++r) acc += dout[r * cols + c] * x[r * cols + c] * rstd[r];
  dw[c] += acc;
}

template <typename T> __global__ void swiglu_forward_kernel(T* out, const T* gate, const T* up, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = math::silu(gate[i]) * up[i];
}

template <typename T>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up,
                                       int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  dgate[i] = dout[i] * up[i] * math::silu_grad(gate[i]);
  dup[i] = dout[i] * math::silu(gate[i]);
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     double eps) {
  const Matrix m = x.matrix();
  if (m.rows == 0) return;
  dispatch_float(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    rmsnorm_forward_kernel<T><<<static_cast<unsigned>(m.rows), kThreads>>>(
        out.data<T>(), rstd.data<T>(), x.data<T>(), weight.data<T>(), m.cols, static_cast<T>(eps));
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void residual_rmsnorm_forward(const Tensor& sum, const Tensor& out, const Tensor& rstd, const Tensor& residual,
                              const Tensor& branch, const Tensor& weight, double eps) {
  const Matrix m = sum.matrix();
  if (m.rows == 0) return;
  dispatch_float(sum.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    residual_rmsnorm_forward_kernel<T><<<static_cast<unsigned>(m.rows), kThreads>>>(
        sum.data<T>(), out.data<T>(), rstd.data<T>(), residual.data<T>(), branch.data<T>(), weight.data<T>(), m.cols,
        static_cast<T>(eps));
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd) {
  const Matrix m = x.matrix();
  if (m.rows == 0) return;
  dispatch_float(x.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    rmsnorm_backward_dx_kernel<T><<<static_cast<unsigned>(m.rows), kThreads>>>(
        dx.data<T>(), dout.data<T>(), x.data<T>(), weight.data<T>(), rstd.data<T>(), m.cols);
    rmsnorm_backward_dw_kernel<T><<<blocks_for(m.cols), kThreads>>>(
        dweight.data<T>(), dout.data<T>(), x.data<T>(), rstd.data<T>(), m.rows, m.cols);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up) {
  const int64_t n = out.numel();
  if (n == 0) return;
  dispatch_float(out.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    swiglu_forward_kernel<T><<<blocks_for(n), kThreads>>>(out.data<T>(), gate.data<T>(), up.data<T>(), n);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up) {
  const int64_t n = dout.numel();
  if (n == 0) return;
  dispatch_float(dout.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    swiglu_backward_kernel<T><<<blocks_for(n), kThreads>>>(dgate.data<T>(), dup.data<T>(),
                                                           dout.data<T>(), gate.data<T>(),
                                                           up.data<T>(), n);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace deco::cuda
