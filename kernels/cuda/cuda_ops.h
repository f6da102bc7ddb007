// CUDA implementations of ops from kernels/ops.h. Only the ops listed here
// have one so far; the dispatcher refuses device tensors for the others
// with a clear message (see DECO_REQUIRE_CPU). The GPU backend issues grow
// this list to the whole model in bf16.
#pragma once

#include "kernels/ops.h"

namespace deco::cuda {

void axpy(const Tensor& y, const Tensor& x, double alpha);
void gemm(const Matrix& C, const Matrix& A, bool trans_a, const Matrix& B, bool trans_b,
          double alpha, double beta);
void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& table);
void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     double eps);
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd);
void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up);
void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up);

}  // namespace deco::cuda
