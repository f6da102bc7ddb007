// CUDA implementations of ops from kernels/ops.h. Only the ops listed here
// have one so far; the dispatcher refuses device tensors for the others
// with a clear message (see DECO_REQUIRE_CPU). The GPU backend issues grow
// this list to the whole model in bf16.
#pragma once

#include <cuda_runtime.h>

#include "kernels/ops.h"

namespace deco::cuda {

void axpy(const Tensor& y, const Tensor& x, double alpha);
void gemm(const Matrix& C, const Matrix& A, bool trans_a, const Matrix& B, bool trans_b,
          double alpha, double beta);
// C = alpha op(A) op(B) + beta C through cuBLASLt (gemm_lt.cu): A and B
// float32 or bfloat16, C float32 or bfloat16, float32 accumulation; row-major
// strided matrices as ops::gemm takes them. The heuristic's choice per shape
// (and pointer alignment) is cached.
void gemm_lt(const Matrix& C, const Matrix& A, bool trans_a, const Matrix& B, bool trans_b, float alpha,
             float beta, cudaStream_t stream = nullptr);
size_t gemm_lt_cached_plans();  // distinct GEMM shapes seen so far
void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& table);
void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     double eps);
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd);
void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up);
void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up);

}  // namespace deco::cuda
