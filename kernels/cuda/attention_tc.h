// Causal GQA attention on the tensor cores (attention_tc.cu): bfloat16
// operands with head_dim 64 or 128, the shapes of every paper config.
// attention.cu calls these when tc_attention_applies() and keeps its
// CUDA-core kernels for float32 and for other head sizes.
#pragma once

#include <initializer_list>

#include "core/tensor.h"
#include "kernels/ops.h"

namespace deco::cuda {

// Whether the kernels take attention of this dtype and head size on this
// GPU: bfloat16, head_dim 64 or 128, and the shared memory they need.
bool tc_attention_supports(DType dtype, int64_t head_dim);
// Whether a call runs on them: ops::attention_tensor_cores() on, supported,
// and 16-byte aligned rows (the kernels copy 8 elements at a time).
bool tc_attention_applies(DType dtype, const ops::AttentionShape& shape,
                          std::initializer_list<const Tensor*> operands);

// out and lse as attention_forward (lse [B, heads, S] float32, natural log).
void tc_attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                          const Tensor& v, const ops::AttentionShape& shape);
// dq, dk, dv written (not accumulated); out is the forward's output, whose
// row dot product with dout is FlashAttention's D = rowsum(dO o O).
void tc_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                           const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                           const Tensor& v, const ops::AttentionShape& shape);

}  // namespace deco::cuda
