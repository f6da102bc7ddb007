// bfloat16 (mixed precision) on the GPU: each CUDA kernel that takes bf16
// activations against the CPU reference run on the same bf16 values
// (kernels/cpu/widen.h: float32 math, outputs rounded once). Inputs are
// drawn in float32 and rounded to bf16 once, so both sides start from the
// same values.
//
// Tolerances: both sides compute in float32 and round each output to bf16,
// so most elements are identical and the rest one bf16 ulp apart (2^-8
// relative); where a float32 sum of many terms precedes the rounding, the
// order differs too. 1e-2 relative (norm of the difference over the norm)
// for bf16 outputs; float32 statistics and gradients (rstd, lse, the
// weight gradients) 1e-4, from bf16 inputs that are equal on both sides.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "kernels/ops.h"
#include "tests/gpu/attention_reference.h"
#include "tests/gpu/gpu_test.h"

using namespace deco;
using namespace deco::gpu_test;

namespace {

constexpr double kBf16 = 1e-2, kF32 = 1e-4;

// A bf16 host tensor and its device copy, from normals of `scale`.
struct Pair {
  Buffer host, device;
};
Pair bf16_pair(const Shape& shape, uint64_t seed, double scale = 1.0) {
  Pair p;
  p.host = to_bf16(random_host(shape, seed, scale));
  p.device = to_device(p.host);
  return p;
}
Pair f32_pair(const Shape& shape, uint64_t seed, double scale = 1.0) {
  Pair p;
  p.host = random_host(shape, seed, scale);
  p.device = to_device(p.host);
  return p;
}
Pair zeros(DType dtype, const Shape& shape) {
  return {Buffer(dtype, Device::CPU, shape), Buffer(dtype, Device::CUDA, shape)};
}

void compare(const std::string& what, const Pair& p, double tol) {
  const Buffer gpu = to_host(p.device);
  if (p.host.tensor().dtype() == DType::BF16)
    expect_close(what, bf16_values(p.host), bf16_values(gpu), tol);
  else
    expect_close(what, p.host, gpu, tol);
}

}  // namespace

DECO_GPU_TEST(bf16_elementwise) {
  const int64_t N = 333, K = 129;
  Pair x = bf16_pair({N, K}, 1), y = bf16_pair({N, K}, 2), s32 = f32_pair({N}, 3), g32 = f32_pair({N, K}, 4);
  Pair out = zeros(DType::BF16, {N, K}), dots = zeros(DType::F32, {N}), means = zeros(DType::BF16, {N});
  ops::scale_rows(out.host, x.host, s32.host);  // bf16 rows scaled by float32 scores
  ops::scale_rows(out.device, x.device, s32.device);
  compare("scale_rows bf16 x f32", out, kBf16);
  ops::row_dot(dots.host, x.host, y.host);  // float32 score gradients from bf16 rows
  ops::row_dot(dots.device, x.device, y.device);
  compare("row_dot bf16 -> f32", dots, kF32);
  ops::row_mean(means.host, x.host);
  ops::row_mean(means.device, x.device);
  compare("row_mean bf16", means, kBf16);
  ops::mul(out.host, x.host, y.host);
  ops::mul(out.device, x.device, y.device);
  compare("mul bf16", out, kBf16);
  ops::axpy(y.host, g32.host);  // a float32 gradient into a bf16 one
  ops::axpy(y.device, g32.device);
  compare("axpy bf16 += f32", y, kBf16);
  ops::scale(x.host, 0.37);
  ops::scale(x.device, 0.37);
  compare("scale bf16", x, kBf16);
}

DECO_GPU_TEST(bf16_gather_scatter) {
  const int64_t V = 50, N = 300, H = 96;
  Buffer tokens(DType::I32, Device::CPU, {N});
  for (int64_t i = 0; i < N; ++i) tokens.data<int32_t>()[i] = static_cast<int32_t>((i * 7919) % V);
  const Buffer tokens_d = to_device(tokens);
  Pair table = bf16_pair({V, H}, 5), out = zeros(DType::BF16, {N, H});
  ops::embedding_forward(out.host, tokens, table.host);
  ops::embedding_forward(out.device, tokens_d, table.device);
  compare("embedding_forward bf16 (exact)", out, 0.0);
  Pair dtable = f32_pair({V, H}, 6), dout = bf16_pair({N, H}, 7);  // float32 gradient from bf16 rows
  ops::embedding_backward(dtable.host, dout.host, tokens);
  ops::embedding_backward(dtable.device, dout.device, tokens_d);
  compare("embedding_backward f32 += bf16", dtable, 1e-6);
  Pair y = bf16_pair({V, H}, 8);  // bf16 rows summed in float32, rounded once
  ops::scatter_add_rows(y.host, dout.host, tokens);
  ops::scatter_add_rows(y.device, dout.device, tokens_d);
  compare("scatter_add_rows bf16", y, kBf16);
}

DECO_GPU_TEST(bf16_gemm) {
  const int64_t M = 96, K = 256, N = 160;
  Pair a = bf16_pair({M, K}, 9), b = bf16_pair({N, K}, 10), c = zeros(DType::BF16, {M, N});
  Pair dw = f32_pair({N, K}, 11), dy = bf16_pair({M, N}, 12);
  ops::linear_forward(c.host, a.host, b.host);
  ops::linear_forward(c.device, a.device, b.device);
  compare("linear_forward bf16", c, kBf16);
  ops::linear_backward_weight(dw.host, dy.host, a.host);  // float32 weight gradient += bf16 x bf16
  ops::linear_backward_weight(dw.device, dy.device, a.device);
  compare("linear_backward_weight f32 += bf16", dw, kF32);
}

DECO_GPU_TEST(bf16_rmsnorm_swiglu) {
  const int64_t N = 96, H = 333;
  Pair x = bf16_pair({N, H}, 13), w = bf16_pair({H}, 14), g = bf16_pair({N, H}, 15), r = bf16_pair({N, H}, 16);
  Pair out = zeros(DType::BF16, {N, H}), rstd = zeros(DType::F32, {N}), sum = zeros(DType::BF16, {N, H});
  Pair dx = bf16_pair({N, H}, 17), dw = f32_pair({H}, 18);
  ops::rmsnorm_forward(out.host, rstd.host, x.host, w.host, 1e-5);
  ops::rmsnorm_forward(out.device, rstd.device, x.device, w.device, 1e-5);
  compare("rmsnorm_forward bf16", out, kBf16);
  compare("rmsnorm_forward rstd f32", rstd, kF32);
  ops::rmsnorm_backward(dx.host, dw.host, g.host, x.host, w.host, rstd.host);
  ops::rmsnorm_backward(dx.device, dw.device, g.device, x.device, w.device, rstd.device);
  compare("rmsnorm_backward dx bf16", dx, kBf16);
  compare("rmsnorm_backward dweight f32", dw, kF32);
  ops::residual_rmsnorm_forward(sum.host, out.host, rstd.host, x.host, r.host, w.host, 1e-5);
  ops::residual_rmsnorm_forward(sum.device, out.device, rstd.device, x.device, r.device, w.device, 1e-5);
  compare("residual_rmsnorm_forward sum (exact)", sum, 0.0);
  compare("residual_rmsnorm_forward out", out, kBf16);
  Pair gate = bf16_pair({N, H}, 19), up = bf16_pair({N, H}, 20), dgate = zeros(DType::BF16, {N, H}),
       dup = zeros(DType::BF16, {N, H});
  ops::swiglu_forward(out.host, gate.host, up.host);
  ops::swiglu_forward(out.device, gate.device, up.device);
  compare("swiglu_forward bf16", out, kBf16);
  ops::swiglu_backward(dgate.host, dup.host, g.host, gate.host, up.host);
  ops::swiglu_backward(dgate.device, dup.device, g.device, gate.device, up.device);
  compare("swiglu_backward dgate bf16", dgate, kBf16);
  compare("swiglu_backward dup bf16", dup, kBf16);
}

DECO_GPU_TEST(bf16_normsilu) {
  const int64_t N = 200, E = 16, D = 64;
  for (ops::ExpertAct act : {ops::ExpertAct::NormSilu, ops::ExpertAct::Silu}) {
    const char* name = act == ops::ExpertAct::NormSilu ? "norm_silu" : "silu";
    Pair u = bf16_pair({N * E, D}, 21), mean = bf16_pair({N}, 22, 0.1), gamma = bf16_pair({D}, 23);
    Pair out = zeros(DType::BF16, {N * E, D}), xhat = zeros(DType::BF16, {N * E, D}), rs = zeros(DType::F32, {N * E});
    ops::normsilu_forward(out.host, xhat.host, rs.host, u.host, mean.host, Tensor(), E, gamma.host, act, 1e-5);
    ops::normsilu_forward(out.device, xhat.device, rs.device, u.device, mean.device, Tensor(), E, gamma.device, act,
                          1e-5);
    compare(std::string("normsilu_forward act bf16 ") + name, out, kBf16);
    compare(std::string("normsilu_forward xhat bf16 ") + name, xhat, kBf16);
    Pair dact = bf16_pair({N * E, D}, 24), dc = zeros(DType::BF16, {N * E, D}), dgamma = f32_pair({D}, 25);
    // Both sides read the xhat and rs the CPU stored, so only the backward's own rounding differs.
    const Buffer xhat_d = to_device(xhat.host), rs_d = to_device(rs.host);
    ops::normsilu_backward(dc.host, dgamma.host, dact.host, xhat.host, rs.host, gamma.host, act);
    ops::normsilu_backward(dc.device, dgamma.device, dact.device, xhat_d, rs_d, gamma.device, act);
    compare(std::string("normsilu_backward dc bf16 ") + name, dc, kBf16);
    if (act == ops::ExpertAct::NormSilu) compare("normsilu_backward dgamma f32", dgamma, kF32);
  }
}

DECO_GPU_TEST(bf16_rope_attention) {
  const ops::AttentionShape s{2, 70, 4, 2, 32};
  const int64_t N = s.batch * s.seq;
  Pair table = zeros(DType::F32, {s.seq, s.head_dim / 2, 2});
  ops::rope_table(table.host, 10000.0);
  ops::copy(table.device, table.host);
  Pair q = bf16_pair({N, s.heads * s.head_dim}, 26), k = bf16_pair({N, s.groups * s.head_dim}, 27),
       v = bf16_pair({N, s.groups * s.head_dim}, 28), dout = bf16_pair({N, s.heads * s.head_dim}, 29);
  ops::rope_forward(q.host.tensor().view({N, s.heads, s.head_dim}), table.host, s.seq);
  ops::rope_forward(q.device.tensor().view({N, s.heads, s.head_dim}), table.device, s.seq);
  compare("rope_forward bf16", q, kBf16);
  ops::copy(q.device, q.host);  // the same rotated q on both sides
  Pair out = zeros(DType::BF16, q.host.shape());
  Buffer probs(DType::F32, Device::CPU, ops::attention_saved_shape(Device::CPU, s));
  Buffer lse(DType::F32, Device::CUDA, ops::attention_saved_shape(Device::CUDA, s));
  ops::attention_forward(out.host, probs, q.host, k.host, v.host, s);
  ops::attention_forward(out.device, lse, q.device, k.device, v.device, s);
  compare("attention_forward bf16", out, kBf16);
  Pair dq = zeros(DType::BF16, q.host.shape()), dk = zeros(DType::BF16, k.host.shape()),
       dv = zeros(DType::BF16, v.host.shape());
  ops::attention_backward(dq.host, dk.host, dv.host, dout.host, out.host, probs, q.host, k.host, v.host, s);
  ops::attention_backward(dq.device, dk.device, dv.device, dout.device, out.device, lse, q.device, k.device, v.device, s);
  compare("attention_backward dq bf16", dq, kBf16);
  compare("attention_backward dk bf16", dk, kBf16);
  compare("attention_backward dv bf16", dv, kBf16);
}

// The tensor-core attention kernels (kernels/cuda/attention_tc.cu: bf16,
// head_dim 64 and 128) against the CPU reference on the same bf16 values.
// Besides the output's rounding, the GPU rounds P and dS to bf16 before
// the products that read them (2^-9 relative per term, averaging out over
// the keys of a row), so outputs and gradients stay within kBf16; the lse
// is a float32 statistic of products that are exact in float32 (kF32).
// Lengths: 1, partial tiles (37, 130, 257: a last tile of one row), whole
// tiles (128) and 1024 keys per late query; MHA and GQA with 2 and 3 heads
// per group. The backward runs twice and must agree bit for bit (no atomics).
DECO_GPU_TEST(bf16_attention_tensor_cores) {
  const ops::AttentionShape shapes[] = {{1, 1, 2, 1, 64},    {2, 37, 4, 2, 64},   {2, 130, 4, 1, 128},
                                        {2, 128, 4, 4, 64},  {1, 257, 6, 2, 128}, {1, 1024, 2, 1, 128},
                                        {1, 1024, 4, 4, 64}};
  uint64_t seed = 300;
  for (const auto& s : shapes) {
    char tag[64];
    std::snprintf(tag, sizeof(tag), " S%lld h%lld g%lld hd%lld", static_cast<long long>(s.seq),
                  static_cast<long long>(s.heads), static_cast<long long>(s.groups),
                  static_cast<long long>(s.head_dim));
    const int64_t N = s.batch * s.seq;
    const Shape qs{N, s.heads * s.head_dim}, ks{N, s.groups * s.head_dim};
    Pair q = bf16_pair(qs, seed += 10), k = bf16_pair(ks, seed + 1), v = bf16_pair(ks, seed + 2),
         dout = bf16_pair(qs, seed + 3);
    // Device outputs start from random values: an element a kernel skips shows up.
    Pair out{Buffer(DType::BF16, Device::CPU, qs), to_device(to_bf16(random_host(qs, seed + 4)))};
    Buffer probs(DType::F32, Device::CPU, ops::attention_saved_shape(Device::CPU, s));
    Buffer lse = to_device(random_host(ops::attention_saved_shape(Device::CUDA, s), seed + 5));
    ops::attention_forward(out.host, probs, q.host, k.host, v.host, s);
    ops::attention_forward(out.device, lse, q.device, k.device, v.device, s);
    compare(std::string("tc attention_forward bf16") + tag, out, kBf16);
    expect_close(std::string("tc attention lse f32") + tag,
                 attention_lse_reference(bf16_values(q.host), bf16_values(k.host), s), to_host(lse), kF32);
    Pair dq{Buffer(DType::BF16, Device::CPU, qs), to_device(to_bf16(random_host(qs, seed + 6)))};
    Pair dk{Buffer(DType::BF16, Device::CPU, ks), to_device(to_bf16(random_host(ks, seed + 7)))};
    Pair dv{Buffer(DType::BF16, Device::CPU, ks), to_device(to_bf16(random_host(ks, seed + 8)))};
    ops::attention_backward(dq.host, dk.host, dv.host, dout.host, out.host, probs, q.host, k.host, v.host, s);
    ops::attention_backward(dq.device, dk.device, dv.device, dout.device, out.device, lse, q.device, k.device,
                            v.device, s);
    compare(std::string("tc attention_backward dq bf16") + tag, dq, kBf16);
    compare(std::string("tc attention_backward dk bf16") + tag, dk, kBf16);
    compare(std::string("tc attention_backward dv bf16") + tag, dv, kBf16);
    Buffer dq2(DType::BF16, Device::CUDA, qs), dk2(DType::BF16, Device::CUDA, ks), dv2(DType::BF16, Device::CUDA, ks);
    ops::attention_backward(dq2, dk2, dv2, dout.device, out.device, lse, q.device, k.device, v.device, s);
    expect_close(std::string("tc attention dq rerun") + tag, bf16_values(to_host(dq.device)), bf16_values(to_host(dq2)),
                 0.0);
    expect_close(std::string("tc attention dk rerun") + tag, bf16_values(to_host(dk.device)), bf16_values(to_host(dk2)),
                 0.0);
    expect_close(std::string("tc attention dv rerun") + tag, bf16_values(to_host(dv.device)), bf16_values(to_host(dv2)),
                 0.0);
    // The CUDA-core kernels on the same device tensors (ops::set_attention_tensor_cores(false)): a
    // second reference, independent of the CPU, that differs by where P and dS are rounded.
    ops::set_attention_tensor_cores(false);
    Buffer out_c(DType::BF16, Device::CUDA, qs), lse_c(DType::F32, Device::CUDA, lse.shape());
    ops::attention_forward(out_c, lse_c, q.device, k.device, v.device, s);
    ops::attention_backward(dq2, dk2, dv2, dout.device, out_c, lse_c, q.device, k.device, v.device, s);
    ops::set_attention_tensor_cores(true);
    expect_close(std::string("tc vs CUDA-core attention out") + tag, bf16_values(to_host(out_c)),
                 bf16_values(to_host(out.device)), kBf16);
    expect_close(std::string("tc vs CUDA-core attention lse") + tag, to_host(lse_c), to_host(lse), kF32);
    // With one key P = 1 and dS = dP - D, so the true dq and dk are 0 and
    // both kernels return rounding noise (dP and D are the same products
    // summed in other orders): relative to each other that is O(1). The CPU
    // comparisons above hold them to kBf16 in absolute terms instead.
    if (s.seq > 1) {
      expect_close(std::string("tc vs CUDA-core attention dq") + tag, bf16_values(to_host(dq2)),
                   bf16_values(to_host(dq.device)), kBf16);
      expect_close(std::string("tc vs CUDA-core attention dk") + tag, bf16_values(to_host(dk2)),
                   bf16_values(to_host(dk.device)), kBf16);
    }
    expect_close(std::string("tc vs CUDA-core attention dv") + tag, bf16_values(to_host(dv2)),
                 bf16_values(to_host(dv.device)), kBf16);
  }
}

DECO_GPU_TEST(bf16_lm_head) {
  const int64_t N = 150, H = 64, V = 1000, chunk = 64;
  Pair x = bf16_pair({N, H}, 30), w = bf16_pair({V, H}, 31, 0.1), dx = zeros(DType::BF16, {N, H});
  // dw starts small beside the gradient added to it (norm ~0.25 against
  // ~0.65): a GPU that skipped the gradient, or set dw instead of adding to
  // it, misses by far more than the tolerance (at N(0, 1) the start was 400x
  // the gradient, and either bug passed).
  Pair dw = f32_pair({V, H}, 32, 1e-3), logits = zeros(DType::BF16, {chunk, V});
  Buffer targets(DType::I32, Device::CPU, {N});
  for (int64_t i = 0; i < N; ++i) targets.data<int32_t>()[i] = static_cast<int32_t>((i * 31) % V);
  const double cpu = ops::lm_head_cross_entropy(dx.host, dw.host, logits.host, x.host, w.host, targets, 1.0 / N);
  const double gpu = ops::lm_head_cross_entropy(dx.device, dw.device, logits.device, x.device, w.device,
                                                to_device(targets), 1.0 / N);
  // The GPU rounds the logits to bf16 before the softmax; the CPU keeps them in float32.
  expect_scalar("lm_head_cross_entropy loss bf16", cpu, gpu, 1e-3);
  compare("lm_head_cross_entropy dx bf16", dx, 2e-2);
  compare("lm_head_cross_entropy dw f32", dw, 2e-2);
}

// The experts' grouped GEMM (one cublasGemmGroupedBatchedEx call) in bf16:
// the up-projection into bf16, and the weight gradient accumulated into
// float32 (beta 1), with an expert holding no pair between others.
DECO_GPU_TEST(bf16_grouped_gemm) {
  using ops::GroupSplit;
  const int64_t E = 5, D = 64, H = 192;
  Buffer offsets(DType::I32, Device::CPU, {E + 1});
  const int32_t off[] = {0, 37, 37, 100, 101, 160};
  std::copy(off, off + E + 1, offsets.data<int32_t>());
  const int64_t P = off[E];
  Pair x = bf16_pair({P, H}, 33), w = bf16_pair({E * D, H}, 34), up = zeros(DType::BF16, {P, D});
  ops::grouped_gemm({up.host.tensor().matrix(), GroupSplit::Rows}, {x.host.tensor().matrix(), GroupSplit::Rows}, false,
                    {w.host.tensor().matrix(), GroupSplit::ExpertRows}, true, 1.0, 0.0, offsets, D);
  ops::grouped_gemm({up.device.tensor().matrix(), GroupSplit::Rows}, {x.device.tensor().matrix(), GroupSplit::Rows},
                    false, {w.device.tensor().matrix(), GroupSplit::ExpertRows}, true, 1.0, 0.0, offsets, D);
  compare("grouped_gemm up bf16", up, kBf16);
  Pair dc = bf16_pair({P, D}, 35), dw = f32_pair({E * D, H}, 36);
  ops::grouped_gemm({dw.host.tensor().matrix(), GroupSplit::ExpertRows}, {dc.host.tensor().matrix(), GroupSplit::Rows},
                    true, {x.host.tensor().matrix(), GroupSplit::Rows}, false, 1.0, 1.0, offsets, D);
  ops::grouped_gemm({dw.device.tensor().matrix(), GroupSplit::ExpertRows},
                    {dc.device.tensor().matrix(), GroupSplit::Rows}, true,
                    {x.device.tensor().matrix(), GroupSplit::Rows}, false, 1.0, 1.0, offsets, D);
  compare("grouped_gemm weight gradient f32 += bf16", dw, kF32);
}

// The sparse expert products (kernels/cuda/sparse_experts.cu: gather GEMM,
// scatter GEMM, weight gradient on the tensor cores), in both block shapes
// (ops::SparseExpertKernels::Wide and Narrow), against the CPU's
// composition (gather, grouped GEMM, scatter-add), and against the GPU's
// own composition on the same device tensors, at activation ratios 0.05, 0.3
// and 1.0, with an expert that gets no token, tokens that get no expert, and
// 300 tokens (two full 128-token chunks of the narrow scatter kernel and a
// partial one; one full 256-token chunk of the wide one and a partial one),
// both weight layouts, H = 192 (the wide weight gradient falls back to its
// narrow block) and 256, 6 experts and once 102. The kernels sum each token's rows in float32 before
// one rounding, where the composition rounds every per-pair row and every
// add: within kBf16. A rerun must be bit-identical (no atomics), and so must
// the two block shapes: each output element gets the same mma.sync terms in
// the same order in both.
DECO_GPU_TEST(bf16_sparse_expert_kernels) {
  using ops::GroupSplit;
  using ops::SparseExpertKernels;
  const int64_t N = 300, D = 64;
  // Also once with deco-1.2b's 102 experts: the scatter block's shared
  // memory grows with them (164 KB in the wide shape, past the default 48 KB).
  for (int64_t E : {6, 102})
  for (int64_t H : {192, 256})
    for (double ratio : {0.05, 0.3, 1.0}) {
      if (E == 102 && (H != 256 || ratio != 0.3)) continue;
      const std::string tag = " E " + std::to_string(E) + " H " + std::to_string(H) + " ratio " +
                              std::to_string(ratio).substr(0, 4);
      // Router pre-activations: positive with probability `ratio`, except
      // expert 2 (never) and every 7th token (no expert at all).
      Buffer z = random_host({N, E}, 50);
      for (int64_t t = 0; t < N; ++t)
        for (int64_t e = 0; e < E; ++e) {
          float& v = z.data<float>()[t * E + e];
          const double u = 0.5 * (1.0 + std::erf(v / std::sqrt(2.0)));  // uniform in (0, 1)
          v = (u < ratio && e != 2 && t % 7 != 0) ? 1.0f : -1.0f;
        }
      Buffer offsets(DType::I32, Device::CPU, {E + 1}), token(DType::I32, Device::CPU, {N * E}),
          flat(DType::I32, Device::CPU, {N * E});
      const int64_t P = ops::build_routing(offsets, token, flat, z);
      if (P == 0) continue;
      const Tensor tokens_host = token.tensor().slice(0, P);
      Buffer tokens_dev = to_device(token);
      const Tensor tokens = tokens_dev.tensor().slice(0, P);
      Pair x = bf16_pair({N, H}, 51), g = bf16_pair({P, D}, 52), w_rows = bf16_pair({E * D, H}, 53, 0.1),
           w_cols = bf16_pair({H, E * D}, 54, 0.1);
      for (GroupSplit split : {GroupSplit::ExpertRows, GroupSplit::ExpertCols}) {
        const bool rows = split == GroupSplit::ExpertRows;
        const Pair& w = rows ? w_rows : w_cols;
        // The CPU composition once; each GPU choice from the same inputs.
        Pair c = bf16_pair({P, D}, 55), y = bf16_pair({N, H}, 56);
        Pair dw = f32_pair(rows ? Shape{E * D, H} : Shape{H, E * D}, 57);
        const Buffer y0 = to_host(y.device), dw0 = to_host(dw.device), c0 = to_host(c.device);
        ops::expert_gather_gemm(c.host, x.host, tokens_host, w.host, split, offsets, D);
        ops::expert_scatter_gemm(y.host, g.host, tokens_host, w.host, split, offsets, D);
        ops::expert_weight_grad(dw.host, split, g.host, x.host, tokens_host, offsets, D);
        std::vector<Buffer> first;  // the wide kernels' c, y, dw
        for (SparseExpertKernels choice :
             {SparseExpertKernels::Wide, SparseExpertKernels::Narrow, SparseExpertKernels::Composition}) {
          const std::string label = std::string(rows ? " ExpertRows " : " ExpertCols ") +
                                    ops::sparse_expert_kernels_name(choice) + tag;
          ops::set_sparse_expert_kernels(choice);
          // Gather GEMM over NaN-free garbage (every row must be written);
          // scatter GEMM and weight gradient into existing values.
          c.device = to_device(c0);
          y.device = to_device(y0);
          dw.device = to_device(dw0);
          ops::expert_gather_gemm(c.device, x.device, tokens, w.device, split, offsets, D);
          ops::expert_scatter_gemm(y.device, g.device, tokens, w.device, split, offsets, D);
          ops::expert_weight_grad(dw.device, split, g.device, x.device, tokens, offsets, D);
          compare("expert_gather_gemm" + label, c, kBf16);
          compare("expert_scatter_gemm" + label, y, kBf16);
          // The composition's float32 weight gradient is a cuBLAS product:
          // float32 rounding of a different summation order.
          compare("expert_weight_grad" + label, dw, kF32);
          if (choice == SparseExpertKernels::Composition) continue;
          Buffer y_again = to_device(y0);
          ops::expert_scatter_gemm(y_again, g.device, tokens, w.device, split, offsets, D);
          expect_equal("expert_scatter_gemm rerun" + label, to_host(y.device), to_host(y_again));
          if (choice == SparseExpertKernels::Wide) {
            first.push_back(to_host(c.device));
            first.push_back(to_host(y.device));
            first.push_back(to_host(dw.device));
          } else {
            expect_equal("expert_gather_gemm wide = narrow" + label, first[0], to_host(c.device));
            expect_equal("expert_scatter_gemm wide = narrow" + label, first[1], to_host(y.device));
            expect_equal("expert_weight_grad wide = narrow" + label, first[2], to_host(dw.device));
          }
        }
        ops::set_sparse_expert_kernels(SparseExpertKernels::Wide);
      }
    }
}
