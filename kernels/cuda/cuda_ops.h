// CUDA implementations of the ops of kernels/ops.h, with the same
// signatures and semantics (shapes, "=" and "+=", return values on the
// host); kernels/cpu/*.cpp dispatch device tensors here. float32 unless a
// function says more. Files: basic.cu (elementwise, reductions, gather and
// scatter, embedding), gemm_lt.cu (GEMMs), grouped_gemm.cu (the experts'
// grouped GEMM), norm_ffn.cu (RMSNorm, SwiGLU),
// attention.cu (RoPE, attention), deco_layer.cu (routing, regularizers,
// NormSiLU), loss.cu (LM head + cross-entropy), adamw.cu.
#pragma once

#include <initializer_list>
#include <vector>

#include "kernels/ops.h"

// cuda_runtime.h's stream handle, declared as it does, so that the CPU
// dispatchers can include this header in builds without the CUDA toolkit.
typedef struct CUstream_st* cudaStream_t;

namespace deco::cuda {

void axpy(const Tensor& y, const Tensor& x, double alpha);
void gemm(const Matrix& C, const Matrix& A, bool trans_a, const Matrix& B, bool trans_b,
          double alpha, double beta);
// C = alpha op(A) op(B) + beta C through cuBLASLt (gemm_lt.cu): A and B
// float32 or bfloat16, C float32 or bfloat16, float32 accumulation; row-major
// strided matrices as ops::gemm takes them. The heuristic's choice per shape
// (and pointer alignment) is cached. On the current stream, with a
// workspace of that stream's own.
void gemm_lt(const Matrix& C, const Matrix& A, bool trans_a, const Matrix& B, bool trans_b, float alpha,
             float beta);
size_t gemm_lt_cached_plans();  // distinct GEMM shapes seen so far
void reserve_gemm_workspace();  // the current stream's workspace, allocated now
// One expert's GEMM of a grouped GEMM: C = alpha op(A) op(B) + beta C.
struct GroupedProblem {
  Matrix C, A, B;
};
// Every problem in one cuBLAS call (cublasGemmGroupedBatchedEx): float32 or
// bfloat16 operands, float32 accumulation, one shared transposition pair.
void grouped_gemm_batched(const std::vector<GroupedProblem>& problems, bool trans_a, bool trans_b, float alpha,
                          float beta);
// The sparse expert products on the tensor cores (sparse_experts.cu), with
// host offsets int32[experts + 1]; expert_rows: W is ExpertRows, else
// ExpertCols. They apply when sparse_expert_kernels_apply says so (bf16
// device operands, 16-byte aligned rows, D = 64, H a positive multiple of
// 64, at most 479 experts per call: their offsets travel as a kernel
// parameter, and the scatter block's shared memory holds two ints each). wide:
// the 8-warp blocks of ops::SparseExpertKernels::Wide, else the 4-warp ones.
bool sparse_expert_kernels_apply(int64_t block, int64_t hidden, int64_t experts,
                                 std::initializer_list<const Tensor*> bf16_operands);
// The shapes' part of it: D = 64, H a positive multiple of 64, the experts
// within the parameter table and the scatter block's shared memory.
bool sparse_expert_kernels_support(int64_t block, int64_t hidden, int64_t experts);
void expert_gather_gemm(const Tensor& c, const Tensor& x, const Tensor& index, const Tensor& w, bool expert_rows,
                        const int32_t* offsets, int64_t experts, bool wide);
void expert_scatter_gemm(const Tensor& y, const Tensor& g, const Tensor& index, const Tensor& w, bool expert_rows,
                         const int32_t* offsets, int64_t experts, bool wide);
void expert_weight_grad(const Tensor& dw, bool expert_rows, const Tensor& g, const Tensor& x, const Tensor& index,
                        const int32_t* offsets, int64_t experts, bool wide);
void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& table);
void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     double eps);
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd);
void residual_rmsnorm_forward(const Tensor& sum, const Tensor& out, const Tensor& rstd, const Tensor& residual,
                              const Tensor& branch, const Tensor& weight, double eps);
void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up);
void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up);

// ---- basics (basic.cu)
void zero(const Tensor& x);
void scale(const Tensor& x, double alpha);
double sum_squares(const Tensor& x);
void row_mean(const Tensor& out, const Tensor& x);
void col_mean(const Tensor& out, const Tensor& x);
void row_dot(const Tensor& out, const Tensor& a, const Tensor& b);
void scale_rows(const Tensor& out, const Tensor& x, const Tensor& s);
void add_to_rows(const Tensor& m, const Tensor& v, double alpha);
void sub_row_scalar(const Tensor& y, const Tensor& x, const Tensor& s);
void mul(const Tensor& out, const Tensor& a, const Tensor& b);
// dst = src with a dtype conversion (float32 <-> bfloat16 <-> float64), both on the device.
void convert(const Tensor& dst, const Tensor& src);
void gather_rows(const Tensor& out, const Tensor& x, const Tensor& index);
void scatter_add_rows(const Tensor& y, const Tensor& src, const Tensor& index);
void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& tokens);

// ---- RoPE and attention (attention.cu)
void rope_forward(const Tensor& x, const Tensor& table, int64_t seq);
void rope_backward(const Tensor& dx, const Tensor& table, int64_t seq);
// saved: the row log-sum-exp [B, heads, S] (ops::attention_saved_shape(Device::CUDA, ...)).
void attention_forward(const Tensor& out, const Tensor& saved, const Tensor& q, const Tensor& k,
                       const Tensor& v, const ops::AttentionShape& shape);
void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& out, const Tensor& saved, const Tensor& q, const Tensor& k,
                        const Tensor& v, const ops::AttentionShape& shape);

// ---- the DECO layer (deco_layer.cu)
int64_t count_idle_rows(const Tensor& z);
void relu_route_forward(const Tensor& g, const Tensor& counts, const Tensor& z, const Tensor& scale);
void relu_route_backward(const Tensor& dz, const Tensor& dscale, const Tensor& dg, const Tensor& dr_extra,
                         const Tensor& z, const Tensor& scale);
double entropy_reg_forward(const Tensor& z);
void entropy_reg_backward(const Tensor& dr, const Tensor& z, double coef);
double l1_reg_forward(const Tensor& z);
void router_statistics(const Tensor& out, const Tensor& z);
void l1_reg_backward(const Tensor& dr, const Tensor& z, double coef);
int64_t build_routing(const Tensor& expert_offsets, const Tensor& pair_token, const Tensor& pair_flat,
                      const Tensor& z);
void normsilu_forward(const Tensor& act, const Tensor& xhat, const Tensor& rs, const Tensor& u, const Tensor& mean,
                      const Tensor& block_token, int64_t blocks_per_token, const Tensor& gamma,
                      ops::ExpertAct variant, double eps);
void normsilu_scaled_forward(const Tensor& ga, const Tensor& act, const Tensor& xhat, const Tensor& rs,
                             const Tensor& u, const Tensor& mean, const Tensor& block_token, int64_t blocks_per_token,
                             const Tensor& gamma, const Tensor& score, ops::ExpertAct variant, double eps);
void normsilu_scaled_backward(const Tensor& dc, const Tensor& dscore, const Tensor& dgamma, const Tensor& q,
                              const Tensor& act, const Tensor& xhat, const Tensor& rs, const Tensor& gamma,
                              const Tensor& score, ops::ExpertAct variant);
void normsilu_backward(const Tensor& dc, const Tensor& dgamma, const Tensor& dact, const Tensor& xhat,
                       const Tensor& rs, const Tensor& gamma, ops::ExpertAct variant);

// ---- LM head + cross-entropy (loss.cu) and AdamW (adamw.cu)
double lm_head_cross_entropy(const Tensor& dx, const Tensor& dw, const Tensor& logits, const Tensor& x,
                             const Tensor& w, const Tensor& targets, double grad_scale);
void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v, const Tensor& chunks,
                  const ops::AdamWStep& hp);

}  // namespace deco::cuda
