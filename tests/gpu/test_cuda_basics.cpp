// The CUDA elementwise, row/column, reduction, conversion, gather/scatter,
// embedding-gradient, grouped-GEMM, LM-head cross-entropy and AdamW ops
// against the CPU reference (kernels/cpu/basic.cpp, grouped.cpp, loss.cpp,
// adamw.cpp), float32 on random inputs.
//
// Tolerances: ops that do the same float32 arithmetic per element in the
// same order are compared exactly (0); reductions in another order or with
// fused multiply-adds (nvcc contracts a*b+c by default) within 1e-6 to 1e-5
// relative, stated per check.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>
#include <vector>

#include "core/bf16.h"
#include "core/rng.h"
#include "kernels/ops.h"
#include "tests/gpu/gpu_test.h"

using namespace deco;
using namespace deco::gpu_test;

namespace {

Buffer host_i32(const std::vector<int32_t>& v) {
  Buffer b(DType::I32, Device::CPU, Shape{static_cast<int64_t>(v.size())});
  for (size_t i = 0; i < v.size(); ++i) b.data<int32_t>()[i] = v[i];
  return b;
}

Buffer zeros_like_host(const Buffer& b) { return Buffer(DType::F32, Device::CPU, b.shape()); }
Buffer zeros_device(const Shape& s) { return Buffer(DType::F32, Device::CUDA, s); }

}  // namespace

// Elementwise and per-row ops: identical float32 arithmetic per element (exact).
DECO_GPU_TEST(elementwise) {
  const int64_t N = 333, K = 129;
  Buffer x = random_host({N, K}, 101), y = random_host({N, K}, 102), s = random_host({N}, 103),
         v = random_host({K}, 104);
  Buffer xd = to_device(x), yd = to_device(y), sd = to_device(s), vd = to_device(v);
  {
    Buffer a = to_host(xd);
    ops::scale(a, 0.37);
    Buffer ad = to_device(x);
    ops::scale(ad, 0.37);
    expect_close("scale", a, to_host(ad), 0.0);
  }
  {
    Buffer out = zeros_like_host(x), outd = zeros_device(x.shape());
    ops::mul(out, x, y);
    ops::mul(outd, xd, yd);
    expect_close("mul", out, to_host(outd), 0.0);
    ops::scale_rows(out, x, s);
    ops::scale_rows(outd, xd, sd);
    expect_close("scale_rows", out, to_host(outd), 0.0);
    Buffer alias = to_device(x);  // out may alias x
    ops::scale_rows(alias, alias, sd);
    expect_close("scale_rows in place", out, to_host(alias), 0.0);
    ops::sub_row_scalar(out, x, s);
    ops::sub_row_scalar(outd, xd, sd);
    expect_close("sub_row_scalar", out, to_host(outd), 0.0);
  }
  {
    Buffer m = to_host(xd), md = to_device(x);
    ops::add_to_rows(m, v, -0.5);
    ops::add_to_rows(md, vd, -0.5);
    // y + a*v: nvcc fuses it into one FMA, the host compiler only with -march that has FMA.
    expect_close("add_to_rows", m, to_host(md), 1e-6);
  }
  {
    Buffer z = to_device(x);
    ops::zero(z);
    expect_close("zero", zeros_like_host(x), to_host(z), 0.0);
  }
}

// Reductions: double accumulation in another order (means, sum of squares:
// 1e-12 relative is far above double's rounding over a few thousand terms and
// far below float32's); row_dot accumulates in float32 like the CPU, in
// another order (1e-5).
DECO_GPU_TEST(reductions) {
  const int64_t N = 517, K = 2688;  // K = 42 experts x 64, the NormSiLU mean's width in deco-0.1b
  Buffer x = random_host({N, K}, 111), y = random_host({N, K}, 112);
  Buffer xd = to_device(x), yd = to_device(y);
  Buffer rm(DType::F32, Device::CPU, {N}), cm(DType::F32, Device::CPU, {K}), rd(DType::F32, Device::CPU, {N});
  Buffer rmd = zeros_device({N}), cmd = zeros_device({K}), rdd = zeros_device({N});
  ops::row_mean(rm, x);
  ops::row_mean(rmd, xd);
  expect_close("row_mean", rm, to_host(rmd), 1e-7);
  ops::col_mean(cm, x);
  ops::col_mean(cmd, xd);
  expect_close("col_mean", cm, to_host(cmd), 1e-7);
  ops::row_dot(rd, x, y);
  ops::row_dot(rdd, xd, yd);
  expect_close("row_dot", rd, to_host(rdd), 1e-5);
  expect_scalar("sum_squares", ops::sum_squares(x), ops::sum_squares(xd), 1e-12);
  Buffer one = random_host({1}, 113);
  expect_scalar("sum_squares of one element", ops::sum_squares(one), ops::sum_squares(to_device(one)), 0.0);
}

// dtype conversions on the device: float32 -> bfloat16 rounds to nearest
// even exactly as core/bf16.h does (exact), and back is exact.
DECO_GPU_TEST(convert) {
  Buffer x = random_host({1000}, 121, 3.0);
  x.data<float>()[0] = 1.0f + 1.0f / 256.0f;  // a tie: rounds to even (1.0)
  x.data<float>()[1] = 1e-40f;                // a subnormal
  Buffer xd = to_device(x), bd(DType::BF16, Device::CUDA, x.shape()), back(DType::F32, Device::CUDA, x.shape());
  ops::copy(bd, xd);
  expect_equal("convert f32->bf16 bits", to_bf16(x), to_host(bd));
  ops::copy(back, bd);
  expect_close("convert bf16->f32", bf16_values(to_bf16(x)), to_host(back), 0.0);
  Buffer dd(DType::F64, Device::CUDA, x.shape()), dh(DType::F64, Device::CPU, x.shape());
  ops::copy(dd, xd);
  ops::copy(dh, x);
  expect_close("convert f32->f64", dh, to_host(dd), 0.0);
}

// Gather, and scatter-add with repeated destinations: the GPU adds each
// destination's rows in increasing source order, the CPU's order, so the
// result is the CPU's bit for bit (exact). Also the embedding gradient.
DECO_GPU_TEST(gather_scatter) {
  const int64_t rows = 300, P = 2000, K = 96;
  Rng rng(131);
  std::vector<int32_t> idx(P);
  for (auto& i : idx) i = static_cast<int32_t>(rng.uniform() * 0.5 * rows);  // half the rows never hit
  idx[5] = rows - 1;
  Buffer index = host_i32(idx), indexd = to_device(index);
  Buffer x = random_host({rows, K}, 132), src = random_host({P, K}, 133), y = random_host({rows, K}, 134);
  Buffer g(DType::F32, Device::CPU, {P, K}), gd = zeros_device({P, K});
  ops::gather_rows(g, x, index);
  ops::gather_rows(gd, to_device(x), indexd);
  expect_close("gather_rows", g, to_host(gd), 0.0);
  Buffer yd = to_device(y);
  ops::scatter_add_rows(y, src, index);
  ops::scatter_add_rows(yd, to_device(src), indexd);
  expect_close("scatter_add_rows (bitwise)", y, to_host(yd), 0.0);

  const int64_t V = 512, H = 64, N = 777;
  std::vector<int32_t> tok(N);
  for (auto& t : tok) t = static_cast<int32_t>(rng.uniform() * 20);  // a few frequent tokens
  Buffer tokens = host_i32(tok), dout = random_host({N, H}, 135), table_grad = random_host({V, H}, 136);
  Buffer table_grad_d = to_device(table_grad);
  ops::embedding_backward(table_grad, dout, tokens);
  ops::embedding_backward(table_grad_d, to_device(dout), to_device(tokens));
  expect_close("embedding_backward (bitwise)", table_grad, to_host(table_grad_d), 0.0);
}

// Grouped GEMM with an expert that has no pairs (its block of an accumulated
// output stays as it was): cuBLASLt per expert against the CPU's GEMMs (1e-5).
DECO_GPU_TEST(grouped_gemm) {
  using ops::GroupSplit;
  const int64_t E = 5, D = 64, H = 192;
  std::vector<int32_t> off{0, 37, 37, 100, 101, 160};
  const int64_t P = off.back();
  Buffer offsets = host_i32(off);  // host memory, as the op requires
  Buffer x = random_host({P, H}, 141), w_up = random_host({E * D, H}, 142), w_down = random_host({H, E * D}, 143);
  Buffer xd = to_device(x), w_upd = to_device(w_up), w_downd = to_device(w_down);
  Buffer up(DType::F32, Device::CPU, {P, D}), upd = zeros_device({P, D});
  Buffer down(DType::F32, Device::CPU, {P, H}), downd = zeros_device({P, H});
  ops::grouped_gemm({up.tensor().matrix(), GroupSplit::Rows}, {x.tensor().matrix(), GroupSplit::Rows}, false,
                    {w_up.tensor().matrix(), GroupSplit::ExpertRows}, true, 1.0, 0.0, offsets, D);
  ops::grouped_gemm({upd.tensor().matrix(), GroupSplit::Rows}, {xd.tensor().matrix(), GroupSplit::Rows}, false,
                    {w_upd.tensor().matrix(), GroupSplit::ExpertRows}, true, 1.0, 0.0, offsets, D);
  expect_close("grouped_gemm up", up, to_host(upd), 1e-5);
  ops::grouped_gemm({down.tensor().matrix(), GroupSplit::Rows}, {up.tensor().matrix(), GroupSplit::Rows}, false,
                    {w_down.tensor().matrix(), GroupSplit::ExpertCols}, true, 1.0, 0.0, offsets, D);
  ops::grouped_gemm({downd.tensor().matrix(), GroupSplit::Rows}, {upd.tensor().matrix(), GroupSplit::Rows}, false,
                    {w_downd.tensor().matrix(), GroupSplit::ExpertCols}, true, 1.0, 0.0, offsets, D);
  expect_close("grouped_gemm down (column blocks)", down, to_host(downd), 1e-5);
  Buffer dw = random_host({E * D, H}, 144), dwd = to_device(dw);
  ops::grouped_gemm({dw.tensor().matrix(), GroupSplit::ExpertRows}, {up.tensor().matrix(), GroupSplit::Rows}, true,
                    {x.tensor().matrix(), GroupSplit::Rows}, false, 1.0, 1.0, offsets, D);
  ops::grouped_gemm({dwd.tensor().matrix(), GroupSplit::ExpertRows}, {upd.tensor().matrix(), GroupSplit::Rows}, true,
                    {xd.tensor().matrix(), GroupSplit::Rows}, false, 1.0, 1.0, offsets, D);
  expect_close("grouped_gemm weight gradient (+=)", dw, to_host(dwd), 1e-5);
  Buffer dw_host = to_host(dwd);
  Buffer empty_cpu(DType::F32, Device::CPU, {D, H}), empty_gpu(DType::F32, Device::CPU, {D, H});
  ops::copy(empty_cpu, dw.tensor().slice(D, 2 * D));
  ops::copy(empty_gpu, dw_host.tensor().slice(D, 2 * D));
  expect_close("grouped_gemm: the empty expert's block untouched", empty_cpu, empty_gpu, 0.0);
}

// The LM head with cross-entropy, chunked (chunk 48 over 130 tokens, the last
// chunk partial): the loss (double sums of float32 exponentials, 1e-6) and
// both gradients (1e-5).
DECO_GPU_TEST(lm_head_cross_entropy) {
  const int64_t N = 130, H = 96, V = 1000, C = 48;
  Rng rng(151);
  std::vector<int32_t> t(N);
  for (auto& v : t) v = static_cast<int32_t>(rng.uniform() * V);
  t[0] = 0;
  t[1] = V - 1;
  Buffer targets = host_i32(t), x = random_host({N, H}, 152), w = random_host({V, H}, 153, 0.1);
  Buffer logits(DType::F32, Device::CPU, {C, V}), dx(DType::F32, Device::CPU, {N, H}), dw = random_host({V, H}, 154);
  Buffer logitsd = zeros_device({C, V}), dxd = zeros_device({N, H}), dwd = to_device(dw);
  Buffer xd = to_device(x), wd = to_device(w), targetsd = to_device(targets);
  const double cpu = ops::lm_head_cross_entropy(dx, dw, logits, x, w, targets, 0.25);
  const double gpu = ops::lm_head_cross_entropy(dxd, dwd, logitsd, xd, wd, targetsd, 0.25);
  expect_scalar("lm_head_cross_entropy loss", cpu, gpu, 1e-6);
  expect_close("lm_head_cross_entropy dx", dx, to_host(dxd), 1e-5);
  expect_close("lm_head_cross_entropy dw (+=)", dw, to_host(dwd), 1e-5);
  const double cpu_fwd = ops::lm_head_cross_entropy(Tensor(), Tensor(), logits, x, w, targets, 1.0);
  const double gpu_fwd = ops::lm_head_cross_entropy(Tensor(), Tensor(), logitsd, xd, wd, targetsd, 1.0);
  expect_scalar("lm_head_cross_entropy forward only", cpu_fwd, gpu_fwd, 1e-6);
}

// The fused AdamW: the same float32 arithmetic per element (kernels/math.h),
// up to fused multiply-adds (1e-6), over one chunk table with the cases a
// model's has: a segment longer than one chunk (several blocks), decayed and
// undecayed segments, moments at other offsets (a ZeRO-1 shard's), a
// one-element segment, and parameters outside every segment, which must keep
// their values exactly. A few steps, so the moments matter.
DECO_GPU_TEST(adamw) {
  const int64_t C = ops::kAdamWChunkElements, n = 2 * C + 10007, moments = n;
  const std::vector<ops::AdamWChunk> chunks = ops::adamw_chunks(
      {{0, 5000, C + 777, 1}, {C + 1000, 0, 4000, 0}, {C + 6000, C + 5777, C + 2500, 1}, {n - 1, 4000, 1, 0}});
  Buffer table(DType::I64, Device::CPU, Shape{static_cast<int64_t>(chunks.size()), 4});
  std::copy(chunks.begin(), chunks.end(), static_cast<ops::AdamWChunk*>(table.tensor().raw()));
  Buffer p = random_host({n}, 161), m(DType::F32, Device::CPU, {moments}), v(DType::F32, Device::CPU, {moments});
  const Buffer p0 = to_host(to_device(p));
  Buffer pd = to_device(p), md = zeros_device({moments}), vd = zeros_device({moments}), tabled = to_device(table);
  for (int64_t step = 1; step <= 3; ++step) {
    Buffer g = random_host({n}, 170 + static_cast<uint64_t>(step));
    const ops::AdamWStep hp{3e-4, 0.9, 0.95, 1e-8, 0.1, step, 0.8};
    ops::adamw_update(p, g, m, v, table, hp);
    ops::adamw_update(pd, to_device(g), md, vd, tabled, hp);
  }
  const Buffer got = to_host(pd);
  expect_close("adamw param", p, got, 1e-6);
  expect_close("adamw m", m, to_host(md), 1e-6);
  expect_close("adamw v", v, to_host(vd), 1e-6);
  // Outside every segment: untouched, on both sides.
  for (const auto& [lo, hi] : {std::pair<int64_t, int64_t>{C + 777, C + 1000}, {C + 5000, C + 6000},
                               {2 * C + 8500, n - 1}}) {
    expect_equal("adamw outside the chunks (cpu)", p0.tensor().slice(lo, hi), p.tensor().slice(lo, hi));
    expect_equal("adamw outside the chunks (gpu)", p0.tensor().slice(lo, hi), got.tensor().slice(lo, hi));
  }
}

// core/tensor.h's HostStaging on device tensors: asynchronous copies into
// pinned memory behind queued work; after wait() the host sees the values
// the device held when fetch() was queued, not later writes.
DECO_GPU_TEST(host_staging) {
  Buffer a = to_device(random_host({1000}, 61)), b = to_device(random_host({7}, 62));
  const Buffer a_host = to_host(a), b_host = to_host(b);
  HostStaging staging;
  staging.fetch({&a.tensor(), &b.tensor()});
  ops::zero(a);  // queued after the copy
  staging.wait();
  Buffer got_a(DType::F32, Device::CPU, a_host.shape()), got_b(DType::F32, Device::CPU, b_host.shape());
  std::copy(staging.data<float>(0), staging.data<float>(0) + 1000, got_a.data<float>());
  std::copy(staging.data<float>(1), staging.data<float>(1) + 7, got_b.data<float>());
  expect_close("host_staging first tensor", a_host, got_a, 0.0);
  expect_close("host_staging second tensor", b_host, got_b, 0.0);
}
