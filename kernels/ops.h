// Every op the model runs, behind one backend-neutral signature.
//
// Conventions:
//  - Arguments are Tensor/Matrix views; outputs come first, inputs after.
//  - Shapes are in the comments: N tokens (batch x sequence, flattened), H
//    hidden, V vocabulary, E experts, D expert width, P active
//    (token, expert) pairs.
//  - "=" outputs are overwritten, "+=" outputs accumulate. Parameter
//    gradients always accumulate (micro-batches add into one buffer);
//    activation gradients are overwritten unless the name says accumulate.
//  - The device of the tensors picks the implementation: kernels/cpu/ is the
//    readable float32/float64 reference, kernels/cuda/ the fast one.
//  - Reductions a caller needs on the host (losses, norms) return double.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "kernels/math.h"

namespace deco::ops {

// ---------------------------------------------------------------- basics
void zero(const Tensor& x);
// dst = src, converting dtype where they differ (float64 <-> float32 for tests).
void copy(const Tensor& dst, const Tensor& src);
// y += alpha * x
void axpy(const Tensor& y, const Tensor& x, double alpha = 1.0);
// x *= alpha
void scale(const Tensor& x, double alpha);
// sum of x*x in double
double sum_squares(const Tensor& x);
// out[N] = mean over the row of x[N, K]
void row_mean(const Tensor& out, const Tensor& x);
// out[K] = mean over the rows of x[N, K]
void col_mean(const Tensor& out, const Tensor& x);
// out[N] (=) sum_k a[n,k] * b[n,k]
void row_dot(const Tensor& out, const Tensor& a, const Tensor& b);
// out[N, K] = x[N, K] * s[N]   (out may alias x)
void scale_rows(const Tensor& out, const Tensor& x, const Tensor& s);
// m[R, K] += alpha * v[K] on every row
void add_to_rows(const Tensor& m, const Tensor& v, double alpha);
// y[N, K] = x[N, K] - s[N] on every element of row n (out may alias x)
void sub_row_scalar(const Tensor& y, const Tensor& x, const Tensor& s);
// out = a * b elementwise
void mul(const Tensor& out, const Tensor& a, const Tensor& b);

// ---------------------------------------------------------------- GEMM
// C = alpha * op(A) @ op(B) + beta * C, op = transpose when trans_* is set.
void gemm(const Matrix& C, const Matrix& A, bool trans_a, const Matrix& B, bool trans_b,
          double alpha = 1.0, double beta = 0.0);
// On a GPU: allocates the GEMMs' workspace of the current stream (cuBLASLt
// takes one per stream) now rather than at the first GEMM, so a memory
// report at set-up counts it. Nothing on the CPU.
void reserve_gemm_workspace(Device device);

// Linear layers without bias, weight w[out, in] as the parameter names store it.
// y[N, out] (= or +=) x[N, in] @ w^T
void linear_forward(const Tensor& y, const Tensor& x, const Tensor& w, bool accumulate = false);
// dx[N, in] (= or +=) dy[N, out] @ w
void linear_backward_input(const Tensor& dx, const Tensor& dy, const Tensor& w, bool accumulate);
// dw[out, in] += dy^T @ x
void linear_backward_weight(const Tensor& dw, const Tensor& dy, const Tensor& x);

// ---------------------------------------------------------------- grouped GEMM
// One GEMM per expert: the sparse expert path's building block (a grouped
// GEMM over variable-sized groups on the GPU). Each operand is split by
// expert in one of three ways:
enum class GroupSplit {
  Rows,        // rows [offsets[e], offsets[e+1]): the pairs of expert e (P rows in all)
  ExpertRows,  // rows [e*block, (e+1)*block): expert e's rows of a [E*D, H] weight
  ExpertCols,  // columns [e*block, (e+1)*block): expert e's columns of a [H, E*D] weight
};
struct Grouped {
  Matrix m;
  GroupSplit split;
};
// For every expert e: C_e = alpha * op(A_e) @ op(B_e) + beta * C_e, with
// offsets int32[E+1] (host memory) and block = D. Experts with no pairs are
// skipped (so a beta = 1 accumulation leaves their C block unchanged).
void grouped_gemm(const Grouped& C, const Grouped& A, bool trans_a, const Grouped& B, bool trans_b,
                  double alpha, double beta, const Tensor& offsets, int64_t block);

// ---------------------------------------------------------------- sparse expert products
// The sparse expert path's products with the gather of token rows and the
// sum of per-pair rows inside them. Pairs p in [offsets[e], offsets[e+1])
// (offsets int32[E+1] in host memory) belong to expert e and token index[p]
// (int32[P], increasing within an expert, as build_routing orders them). W
// is a routed-expert weight split ExpertRows ([E*D, H]: W_e(d, h) = W[e*D +
// d][h], the up and gate projections) or ExpertCols ([H, E*D]: W_e(d, h) =
// W[h][e*D + d], the down projection); D = block.
//   expert_gather_gemm:  c[p, d]  =  sum_h x[index[p], h] W_e(d, h)         c [P, D], x [N, H]
//   expert_scatter_gemm: y[t, h] +=  sum_{p: index[p] = t} sum_d g[p, d] W_e(d, h)   g [P, D], y [N, H]
//   expert_weight_grad:  W_e(d, h) of dw += sum_p g[p, d] x[index[p], h]   dw shaped like W
// CPU (and the GPU where the tensor-core kernels do not apply): gather_rows,
// grouped_gemm and scatter_add_rows through a [P, H] workspace. GPU, bf16,
// D = 64, H a multiple of 64: kernels/cuda/sparse_experts.cu, which never
// writes that [P, H] matrix and sums each token's rows on chip in expert
// order (deterministic; more exact than the composition, which rounds every
// per-pair row to bf16 before the sum).
void expert_gather_gemm(const Tensor& c, const Tensor& x, const Tensor& index, const Tensor& w, GroupSplit split,
                        const Tensor& offsets, int64_t block);
void expert_scatter_gemm(const Tensor& y, const Tensor& g, const Tensor& index, const Tensor& w, GroupSplit split,
                         const Tensor& offsets, int64_t block);
void expert_weight_grad(const Tensor& dw, GroupSplit split, const Tensor& g, const Tensor& x, const Tensor& index,
                        const Tensor& offsets, int64_t block);
// What the GPU runs for these products where the tensor-core kernels apply:
// a process-wide switch for deco bench-layer and the GPU tests, which time
// and compare the choices side by side (elsewhere the composition runs).
//   Wide (the default): 8 warps a block; a gather GEMM block computes 128
//     pairs, a scatter GEMM block owns 256 tokens, a weight-gradient block
//     128 columns h (H a multiple of 128; else its narrow block). Each weight
//     block, and in the weight gradient each g row, is read half as often.
//   Narrow: 4 warps; 64 pairs, 128 tokens, 64 columns.
//   Composition: gather, cuBLAS grouped GEMM, scatter-add through [P, H].
// Every choice sums each element's terms in the same order, so the scatter
// GEMM and the weight gradient give the same values under Wide and Narrow.
enum class SparseExpertKernels { Wide, Narrow, Composition };
void set_sparse_expert_kernels(SparseExpertKernels choice);
SparseExpertKernels sparse_expert_kernels();
const char* sparse_expert_kernels_name(SparseExpertKernels choice);
// For the start-up report: whether the sparse expert products of `experts`
// experts of width `block` over hidden size `hidden` in `dtype` run on the
// Wide or Narrow kernels chosen, or on the composition (the choice, or the
// kernels not taking the shape). False in a build without CUDA.
bool gpu_sparse_experts_on_own_kernels(DType dtype, int64_t block, int64_t hidden, int64_t experts);

// ---------------------------------------------------------------- gather / scatter
// out[P, K] = x[index[p], :]   (index int32[P])
void gather_rows(const Tensor& out, const Tensor& x, const Tensor& index);
// y[index[p], :] += src[p, :], applied in increasing p so the result is deterministic
void scatter_add_rows(const Tensor& y, const Tensor& src, const Tensor& index);

// ---------------------------------------------------------------- embedding
// out[N, H] = table[tokens[n], :]   (tokens int32[N])
void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& table);
// dtable[V, H] += scatter of dout[N, H] by tokens, in token order (deterministic)
void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& tokens);

// ---------------------------------------------------------------- RMSNorm
// out[N, H] = x / sqrt(mean(x^2) + eps) * weight[H];  rstd[N] = 1 / sqrt(mean(x^2) + eps)
void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     double eps);
// The residual add fused with the norm that follows it: sum[N, H] =
// residual + branch; out, rstd = rmsnorm_forward of sum. sum may alias
// residual. Bit-identical to copy + axpy + rmsnorm_forward (the backward is
// rmsnorm_backward's, whose dx accumulates into the stream's gradient).
void residual_rmsnorm_forward(const Tensor& sum, const Tensor& out, const Tensor& rstd, const Tensor& residual,
                              const Tensor& branch, const Tensor& weight, double eps);
// dx[N, H] += d/dx (accumulates: x is a residual stream that already carries gradient);
// dweight[H] += d/dweight
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd);

// ---------------------------------------------------------------- RoPE
// table[S, hd/2, 2] = (cos, sin) of position p times theta_i = base^(-2i/hd), computed in double.
void rope_table(const Tensor& table, double base);
// x[N, heads, hd] rotated in place. N tokens are sequences of `seq` tokens
// back to back, so token n sits at position n % seq (seq <= table rows).
void rope_forward(const Tensor& x, const Tensor& table, int64_t seq);
// The gradient through rope_forward, in place (rotation by the opposite angle).
void rope_backward(const Tensor& dx, const Tensor& table, int64_t seq);

// ---------------------------------------------------------------- attention
struct AttentionShape {
  int64_t batch, seq, heads, groups, head_dim;  // groups divides heads (GQA)
};
// What attention_forward saves for the backward pass, per backend: the CPU
// reference keeps the probabilities [B, heads, S, S]; a flash-style kernel
// keeps only the row log-sum-exp [B, heads, S].
Shape attention_saved_shape(Device device, const AttentionShape& shape);
// out[B*S, heads*hd] = causal softmax(q k^T / sqrt(hd)) v, head h reading
// kv group h / (heads / groups). q[B*S, heads*hd], k and v [B*S, groups*hd].
void attention_forward(const Tensor& out, const Tensor& saved, const Tensor& q, const Tensor& k,
                       const Tensor& v, const AttentionShape& shape);
// Whether bf16 attention with head_dim 64 or 128 runs on the GPU's tensor
// cores (kernels/cuda/attention_tc.cu; the default) or on the CUDA-core
// kernels every other case uses: a switch for benchmarks and tests that
// compare the two. Process-wide.
void set_attention_tensor_cores(bool enabled);
bool attention_tensor_cores();
// For the start-up report: whether attention of `head_dim` in `dtype` runs
// on the tensor cores (the switch on, and the kernels taking the shape on
// this GPU; each call also checks its operands' alignment, which deco's
// buffers meet). False in a build without CUDA.
bool gpu_attention_on_tensor_cores(DType dtype, int64_t head_dim);
// dq, dk, dv (=) gradients of out with respect to q, k, v. out is
// attention_forward's output (the tensor-core kernels take FlashAttention's
// D = rowsum(dout o out) from it; the CPU reference recomputes D from the
// probabilities it saved).
void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& out, const Tensor& saved, const Tensor& q, const Tensor& k,
                        const Tensor& v, const AttentionShape& shape);

// ---------------------------------------------------------------- SwiGLU
// out[N, F] = silu(gate) * up
void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up);
// dgate, dup (=)
void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up);

// ---------------------------------------------------------------- ReLU routing
// g[N, E] = relu(z) * scale[E]. counts int64[E] (+=) active (z > 0) tokens per expert.
void relu_route_forward(const Tensor& g, const Tensor& counts, const Tensor& z, const Tensor& scale);
// From dg[N, E] (and dr_extra[N, E], the regularizer's gradient on r = relu(z),
// when defined): dz[N, E] (=), dscale[E] (+=). dz must not alias dg (dscale
// reads dg after dz is written).
void relu_route_backward(const Tensor& dz, const Tensor& dscale, const Tensor& dg,
                         const Tensor& dr_extra, const Tensor& z, const Tensor& scale);

// Rows of z[N, E] with no positive entry: tokens no routed expert sees. On
// a GPU only the count comes back to the host.
int64_t count_idle_rows(const Tensor& z);

// Sparsity regularizers on r = relu(z[N, E]); forward returns the sum over
// tokens, backward adds coef * d(sum)/dr into dr[N, E].
// Entropy: p = r / (sum r + 1e-5), H = -sum p log(p + 1e-5).
double entropy_reg_forward(const Tensor& z);
void entropy_reg_backward(const Tensor& dr, const Tensor& z, double coef);
// L1: sum_e r_e.
double l1_reg_forward(const Tensor& z);
void l1_reg_backward(const Tensor& dr, const Tensor& z, double coef);
// The router's statistics in one float64 tensor on z's device, computed
// where z is and left there (nothing comes back to the host, so a GPU
// does not stop for them): out[3] = {entropy_reg_forward(z),
// l1_reg_forward(z), count_idle_rows(z)}, the same values bit for bit.
void router_statistics(const Tensor& out, const Tensor& z);

// Pairs of the sparse expert path, grouped by expert then ordered by token.
// From z[N, E]: expert_offsets int32[E+1] (pairs of expert e are
// [offsets[e], offsets[e+1])), pair_token int32[N*E] and pair_flat int32[N*E]
// (= token*E + expert) filled in their first P entries. Returns P. On a GPU
// the count comes back to the host (one sync per layer).
// With z on a GPU, pair_token and pair_flat are device tensors and
// expert_offsets may live on either side. In host memory (what grouped_gemm
// takes, and what DecoFfn passes) the offsets are computed on the device and
// come back whole in the same synchronizing copy that brings P, which the
// host needs anyway to size and split the expert GEMMs; in device memory
// they are written in place and only P is copied back.
int64_t build_routing(const Tensor& expert_offsets, const Tensor& pair_token,
                      const Tensor& pair_flat, const Tensor& z);

// ---------------------------------------------------------------- NormSiLU
enum class ExpertAct { NormSilu, NormSiluNoMean, NormSiluNorms, Silu };
bool expert_act_has_mean(ExpertAct act);   // subtracts the mean over all E*D entries
bool expert_act_has_rms(ExpertAct act);    // per-expert RMS step with the shared gamma

// Activation of expert blocks. u[P, D] holds P blocks (one per token-expert
// pair); block b belongs to token block_token[b] (int32[P]), or, when
// block_token is undefined, to token b / blocks_per_token (the dense layout
// [N, E*D] viewed as [N*E, D]). mean[N] is each token's mean over all E*D
// up-projection entries (ignored by variants without the mean step).
//   c = u - mean;  xhat = c * rs, rs = 1/sqrt(mean_d(c^2) + eps);  act = silu(xhat * gamma)
// Saves xhat[P, D] (c when there is no RMS step) and rs[P] for the backward.
void normsilu_forward(const Tensor& act, const Tensor& xhat, const Tensor& rs, const Tensor& u,
                      const Tensor& mean, const Tensor& block_token, int64_t blocks_per_token,
                      const Tensor& gamma, ExpertAct variant, double eps);
// dc[P, D] (=) gradient with respect to c = u - mean (the mean's backward
// couples blocks and is the caller's); dgamma[D] (+=).
void normsilu_backward(const Tensor& dc, const Tensor& dgamma, const Tensor& dact,
                       const Tensor& xhat, const Tensor& rs, const Tensor& gamma,
                       ExpertAct variant);

// NormSiLU with the expert scores applied, for the non-gated experts:
// normsilu_forward into act, then ga[P, D] = act * score[P] (score in the
// accumulate dtype; the score of block b's expert for its token). One
// kernel on the GPU (the dense path's "NormSiLU and scaling fused between
// the two GEMMs"); the CPU reference is the two ops.
void normsilu_scaled_forward(const Tensor& ga, const Tensor& act, const Tensor& xhat, const Tensor& rs,
                             const Tensor& u, const Tensor& mean, const Tensor& block_token, int64_t blocks_per_token,
                             const Tensor& gamma, const Tensor& score, ExpertAct variant, double eps);
// Its backward from q[P, D] = d(ga): dscore[P] (=) rowdot(q, act), and dc
// (=), dgamma (+=) as normsilu_backward of dact = q * score.
void normsilu_scaled_backward(const Tensor& dc, const Tensor& dscore, const Tensor& dgamma, const Tensor& q,
                              const Tensor& act, const Tensor& xhat, const Tensor& rs, const Tensor& gamma,
                              const Tensor& score, ExpertAct variant);

// ---------------------------------------------------------------- LM head + loss
// Cross-entropy of logits = x[N, H] @ w[V, H]^T against targets int32[N],
// computed `logits.size(0)` tokens at a time in the workspace logits[C, V]
// so the full [N, V] matrix never exists. Returns the summed loss. When dx
// is defined: dx[N, H] (=) grad_scale * dloss/dx and dw[V, H] (+=)
// grad_scale * dloss/dw.
double lm_head_cross_entropy(const Tensor& dx, const Tensor& dw, const Tensor& logits,
                             const Tensor& x, const Tensor& w, const Tensor& targets,
                             double grad_scale);

// ---------------------------------------------------------------- optimizer
struct AdamWStep {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;        // 1-based, for bias correction
  double grad_scale;   // multiplies the gradient first (clipping)
};

// The step's constants in dtype T, computed in double as PyTorch does.
template <typename T> math::AdamWConstants<T> adamw_constants(const AdamWStep& hp) {
  const double bc1 = 1.0 - std::pow(hp.beta1, static_cast<double>(hp.step));
  const double bc2 = 1.0 - std::pow(hp.beta2, static_cast<double>(hp.step));
  return {static_cast<T>(hp.beta1),         static_cast<T>(hp.beta2),
          static_cast<T>(hp.grad_scale),    static_cast<T>(hp.lr),
          static_cast<T>(hp.eps),           static_cast<T>(1.0 - hp.lr * hp.weight_decay),
          static_cast<T>(1.0 / bc1),        static_cast<T>(1.0 / std::sqrt(bc2))};
}

// One stretch of a fused AdamW update: `size` elements from `offset` of the
// flat parameter and gradient buffers, whose moments start at
// `moment_offset` of the moment buffers (the same offset, or a ZeRO-1
// shard's), with weight decay or not (decay: 0 or 1). Four int64s, so a table
// of chunks is an I64 tensor [chunks, 4] that can live on the GPU.
struct AdamWChunk {
  int64_t offset = 0, moment_offset = 0, size = 0, decay = 0;
};
static_assert(sizeof(AdamWChunk) == 4 * sizeof(int64_t), "an AdamW chunk table is an I64 [n, 4] tensor");
// The most elements one chunk covers: one GPU thread block's share, so
// every block does a similar amount of work.
constexpr int64_t kAdamWChunkElements = int64_t{1} << 16;
// `segments` (any sizes) cut, in order, into chunks of at most
// kAdamWChunkElements elements; empty segments are dropped.
std::vector<AdamWChunk> adamw_chunks(const std::vector<AdamWChunk>& segments);

// Fused multi-tensor AdamW, PyTorch's and Megatron's: decoupled weight decay
// (p *= 1 - lr wd, for the chunks that decay), then the Adam update with
// bias correction, of the gradient scaled by hp.grad_scale (clipping).
// params, grads: the flat parameter and gradient buffers; m, v: the flat
// moment buffers (the moments of element offset + i are at moment_offset + i).
// chunks: an I64 [n, 4] table of AdamWChunk on the parameters' device,
// from adamw_chunks; every parameter tensor of a model in one pass (one
// kernel launch on the GPU), elements outside the chunks untouched.
void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v, const Tensor& chunks,
                  const AdamWStep& hp);

}  // namespace deco::ops
