// CUDA RoPE and causal GQA attention (kernels/cuda/attention.cu) against the
// CPU reference (kernels/cpu/attention.cpp) on random inputs. Registered with
// the harness of tests/gpu/gpu_test.h.
//
// Tolerances: the RoPE table is computed on the host and copied, so it must
// match exactly; a rotation is two products and a sum per element (1e-6).
// Attention in float32 differs from the CPU only in summation order and in
// where the softmax is normalized (1e-5, also at 1024 tokens: see below).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tests/gpu/attention_reference.h"
#include "tests/gpu/gpu_test.h"

using namespace deco;
using namespace deco::gpu_test;

namespace {

std::string label(const char* what, const ops::AttentionShape& s) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%s B%lld S%lld h%lld g%lld hd%lld", what, static_cast<long long>(s.batch),
                static_cast<long long>(s.seq), static_cast<long long>(s.heads), static_cast<long long>(s.groups),
                static_cast<long long>(s.head_dim));
  return buf;
}

// Forward (out, lse) and backward (dq, dk, dv) of one shape against the CPU.
// The device outputs start out holding random values, so an element a
// kernel forgets to write, or accumulates into, shows up. The backward runs
// twice: it has no atomics, so the second run must agree bit for bit.
void check_attention(const ops::AttentionShape& s, uint64_t seed, double tol) {
  const int64_t N = s.batch * s.seq, hd = s.head_dim;
  const Shape qs{N, s.heads * hd}, ks{N, s.groups * hd};
  const Shape cpu_saved = ops::attention_saved_shape(Device::CPU, s);
  const Shape gpu_saved = ops::attention_saved_shape(Device::CUDA, s);
  Buffer q = random_host(qs, seed), k = random_host(ks, seed + 1), v = random_host(ks, seed + 2),
         dout = random_host(qs, seed + 3);

  Buffer out(DType::F32, Device::CPU, qs), probs(DType::F32, Device::CPU, cpu_saved);
  Buffer dq(DType::F32, Device::CPU, qs), dk(DType::F32, Device::CPU, ks), dv(DType::F32, Device::CPU, ks);
  ops::attention_forward(out, probs, q, k, v, s);
  ops::attention_backward(dq, dk, dv, dout, out, probs, q, k, v, s);

  Buffer q_d = to_device(q), k_d = to_device(k), v_d = to_device(v), dout_d = to_device(dout);
  Buffer out_d = to_device(random_host(qs, seed + 10)), lse_d = to_device(random_host(gpu_saved, seed + 11));
  Buffer dq_d = to_device(random_host(qs, seed + 12)), dk_d = to_device(random_host(ks, seed + 13)),
         dv_d = to_device(random_host(ks, seed + 14));
  ops::attention_forward(out_d, lse_d, q_d, k_d, v_d, s);
  ops::attention_backward(dq_d, dk_d, dv_d, dout_d, out_d, lse_d, q_d, k_d, v_d, s);
  expect_close(label("attention out", s), out, to_host(out_d), tol);
  expect_close(label("attention lse", s), attention_lse_reference(q, k, s), to_host(lse_d), tol);
  expect_close(label("attention dq", s), dq, to_host(dq_d), tol);
  expect_close(label("attention dk", s), dk, to_host(dk_d), tol);
  expect_close(label("attention dv", s), dv, to_host(dv_d), tol);

  Buffer dq2 = to_device(random_host(qs, seed + 15)), dk2 = to_device(random_host(ks, seed + 16)),
         dv2 = to_device(random_host(ks, seed + 17));
  ops::attention_backward(dq2, dk2, dv2, dout_d, out_d, lse_d, q_d, k_d, v_d, s);
  expect_close(label("attention dq rerun", s), to_host(dq_d), to_host(dq2), 0.0);
  expect_close(label("attention dk rerun", s), to_host(dk_d), to_host(dk2), 0.0);
  expect_close(label("attention dv rerun", s), to_host(dv_d), to_host(dv2), 0.0);
}

}  // namespace

// The table built for a device tensor, and rotations of q-like (4 heads) and
// k-like (2 groups) activations, forward and backward, with a table longer
// than the sequence and two sequences back to back.
DECO_GPU_TEST(rope) {
  const int64_t B = 2, S = 37, rows = S + 11;
  for (int64_t hd : {64, 128}) {
    const Shape ts{rows, hd / 2, 2};
    Buffer table(DType::F32, Device::CPU, ts), table_d(DType::F32, Device::CUDA, ts);
    ops::rope_table(table, 10000.0);
    ops::rope_table(table_d, 10000.0);
    const std::string tag = " hd" + std::to_string(hd);
    expect_close("rope_table" + tag, table, to_host(table_d), 0.0);
    for (int64_t heads : {4, 2}) {
      const std::string tag2 = tag + " heads" + std::to_string(heads);
      Buffer x = random_host({B * S, heads, hd}, 51), x_d = to_device(x);
      ops::rope_forward(x, table, S);
      ops::rope_forward(x_d, table_d, S);
      expect_close("rope_forward" + tag2, x, to_host(x_d), 1e-6);
      Buffer g = random_host({B * S, heads, hd}, 52), g_d = to_device(g);
      ops::rope_backward(g, table, S);
      ops::rope_backward(g_d, table_d, S);
      expect_close("rope_backward" + tag2, g, to_host(g_d), 1e-6);
    }
  }
}

// Kernel tiles are 64 rows: lengths 1, 37, 130 and 257 end in partial tiles
// (257: a last tile of one row), 128 fills its tiles exactly. Heads 4 over
// 4 (MHA), 2 and 1 kv groups; head_dim 64 and 128, and 80 and 32, which the
// kernels pad to 128 and 64 columns.
DECO_GPU_TEST(attention) {
  const ops::AttentionShape shapes[] = {
      {2, 1, 4, 4, 64},   {2, 37, 4, 2, 64},  {2, 37, 4, 1, 128}, {2, 130, 4, 1, 128}, {2, 130, 4, 4, 64},
      {2, 257, 4, 2, 128}, {2, 257, 4, 4, 64}, {2, 128, 4, 2, 64}, {2, 100, 6, 2, 80},  {1, 70, 2, 1, 32},
  };
  uint64_t seed = 100;
  for (const auto& s : shapes) check_attention(s, seed += 20, 1e-5);
}

// Long rows: 1024 keys per late query, 2048 (query, head) terms in each dK
// and dV sum of a two-head group, which one thread adds in order. Rounding
// grows roughly like eps * sqrt(terms) ~ 6e-8 * 45 ~ 3e-6; a host emulation
// of these kernels measured about 1e-6 against the CPU here, so the float32
// tolerance of 1e-5 stands.
DECO_GPU_TEST(attention_long) { check_attention({2, 1024, 4, 2, 64}, 900, 1e-5); }
