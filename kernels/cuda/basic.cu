// CUDA: axpy, GEMM (float64 through cuBLAS here; float32 and bfloat16 in gemm_lt.cu), embedding lookup.
#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/dispatch.h"

namespace deco::cuda {
namespace {

cublasHandle_t blas_handle() {
  // One handle per host thread, created on first use and kept for the
  // process lifetime (creating a handle costs milliseconds).
  thread_local cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    DECO_CUBLAS_CHECK(cublasCreate(&h));
    return h;
  }();
  return handle;
}

template <typename T> __global__ void axpy_kernel(T* y, const T* x, T alpha, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] += alpha * x[i];
}

template <typename T>
__global__ void embedding_forward_kernel(T* out, const int32_t* tokens, const T* table, int64_t n,
                                         int64_t hidden) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n * hidden) out[i] = table[tokens[i / hidden] * hidden + i % hidden];
}

unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace

void axpy(const Tensor& y, const Tensor& x, double alpha) {
  const int64_t n = y.numel();
  if (n == 0) return;
  dispatch_float(y.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    axpy_kernel<T><<<blocks_for(n, 256), 256>>>(y.data<T>(), x.data<T>(), static_cast<T>(alpha), n);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

void gemm(const Matrix& C, const Matrix& A, bool trans_a, const Matrix& B, bool trans_b,
          double alpha, double beta) {
  if (C.dtype != DType::F64) {  // float32 and bfloat16: cuBLASLt (gemm_lt.cu)
    gemm_lt(C, A, trans_a, B, trans_b, static_cast<float>(alpha), static_cast<float>(beta));
    return;
  }
  // cuBLAS is column-major: the row-major C = op(A) op(B) is the
  // column-major C^T = op(B)^T op(A)^T, so B and A swap places.
  const int m = static_cast<int>(C.rows), n = static_cast<int>(C.cols);
  const int k = static_cast<int>(trans_a ? A.rows : A.cols);
  if (k == 0) fail("a float64 GEMM with k = 0 on the GPU is not supported; the GPU path runs float32 or bfloat16.");
  const cublasOperation_t ob = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t oa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  DECO_CUBLAS_CHECK(cublasDgemm(blas_handle(), ob, oa, n, m, k, &alpha, B.data<double>(), static_cast<int>(B.ld),
                                A.data<double>(), static_cast<int>(A.ld), &beta, C.data<double>(),
                                static_cast<int>(C.ld)));
}

void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& table) {
  const int64_t n = tokens.numel(), hidden = table.size(1);
  if (n == 0) return;
  dispatch_float(out.dtype(), [&](auto T_tag) {
    using T = decltype(T_tag);
    embedding_forward_kernel<T><<<blocks_for(n * hidden, 256), 256>>>(
        out.data<T>(), tokens.data<int32_t>(), table.data<T>(), n, hidden);
  });
  DECO_CUDA_CHECK(cudaGetLastError());
}

}  // namespace deco::cuda
