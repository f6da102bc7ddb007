// Every op's backward against central finite differences of its forward, in
// float64. Central differences with h = 1e-6 are accurate to about 1e-9
// relative on these smooth functions, so 1e-6 leaves room for conditioning
// while still catching any wrong term (which shows up as O(1) error).
#include <catch2/catch.hpp>

#include <cstring>

#include "kernels/ops.h"
#include "test_util.h"

using namespace deco;
using test::max_fd_error;
using test::random_buffer;
using test::weighted_sum;

namespace {
constexpr double kTol = 1e-6;
}

TEST_CASE("linear forward/backward match finite differences", "[ops][grad]") {
  Buffer x = random_buffer({5, 7}, 1), w = random_buffer({3, 7}, 2), r = random_buffer({5, 3}, 3);
  Buffer y(DType::F64, Device::CPU, {5, 3}), dx(DType::F64, Device::CPU, {5, 7}),
      dw(DType::F64, Device::CPU, {3, 7});
  auto loss = [&] {
    ops::linear_forward(y, x, w);
    return weighted_sum(y, r);
  };
  ops::linear_backward_input(dx, r, w, false);
  ops::linear_backward_weight(dw, r, x);
  CHECK(max_fd_error(x, dx, loss) < kTol);
  CHECK(max_fd_error(w, dw, loss) < kTol);
}

TEST_CASE("embedding backward accumulates repeated tokens", "[ops][grad]") {
  Buffer table = random_buffer({6, 4}, 1), r = random_buffer({5, 4}, 2);
  std::vector<int32_t> ids{3, 1, 3, 0, 5};
  const Tensor tokens(ids.data(), DType::I32, Device::CPU, {5});
  Buffer out(DType::F64, Device::CPU, {5, 4}), dtable(DType::F64, Device::CPU, {6, 4});
  auto loss = [&] {
    ops::embedding_forward(out, tokens, table);
    return weighted_sum(out, r);
  };
  ops::embedding_backward(dtable, r, tokens);
  CHECK(max_fd_error(table, dtable, loss) < kTol);
}

TEST_CASE("rmsnorm backward matches finite differences", "[ops][grad]") {
  Buffer x = random_buffer({4, 6}, 1), w = random_buffer({6}, 2), r = random_buffer({4, 6}, 3);
  Buffer out(DType::F64, Device::CPU, {4, 6}), rstd(DType::F64, Device::CPU, {4});
  Buffer dx(DType::F64, Device::CPU, {4, 6}), dw(DType::F64, Device::CPU, {6});
  auto loss = [&] {
    ops::rmsnorm_forward(out, rstd, x, w, 1e-5);
    return weighted_sum(out, r);
  };
  loss();
  ops::rmsnorm_backward(dx, dw, r, x, w, rstd);
  CHECK(max_fd_error(x, dx, loss) < kTol);
  CHECK(max_fd_error(w, dw, loss) < kTol);
}

TEST_CASE("residual_rmsnorm_forward is copy + axpy + rmsnorm_forward, bit for bit", "[ops]") {
  for (DType dt : {DType::F32, DType::F64}) {
    INFO(dtype_name(dt));
    const Shape s{7, 37};
    Buffer a(dt, Device::CPU, s), b(dt, Device::CPU, s), w(dt, Device::CPU, {37});
    ops::copy(a, random_buffer(s, 11));
    ops::copy(b, random_buffer(s, 12));
    ops::copy(w, random_buffer({37}, 13));
    Buffer sum(dt, Device::CPU, s), out(dt, Device::CPU, s), rstd(dt, Device::CPU, {7});
    ops::residual_rmsnorm_forward(sum, out, rstd, a, b, w, 1e-5);
    Buffer want_sum(dt, Device::CPU, s), want_out(dt, Device::CPU, s), want_rstd(dt, Device::CPU, {7});
    ops::copy(want_sum, a);
    ops::axpy(want_sum, b);
    ops::rmsnorm_forward(want_out, want_rstd, want_sum, w, 1e-5);
    auto same = [](const Tensor& x, const Tensor& y) { return std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0; };
    CHECK(same(sum, want_sum));
    CHECK(same(out, want_out));
    CHECK(same(rstd, want_rstd));
    ops::residual_rmsnorm_forward(a, out, rstd, a, b, w, 1e-5);  // sum may alias residual
    CHECK(same(a, want_sum));
  }
}

TEST_CASE("count_idle_rows counts the rows with no positive entry", "[ops]") {
  Buffer z(DType::F32, Device::CPU, {4, 3});
  const float v[] = {-1, 0, -2,  0.5f, -1, -1,  0, 0, 0,  1, 2, 3};  // rows 0 and 2 are idle (0 is inactive)
  std::copy(v, v + 12, z.data<float>());
  CHECK(ops::count_idle_rows(z) == 2);
}

TEST_CASE("rope is a rotation and its backward is the inverse rotation", "[ops][grad]") {
  const int64_t S = 5, heads = 2, hd = 6;
  // The table covers seq_length positions; batches may hold shorter sequences.
  Buffer table(DType::F64, Device::CPU, {S + 3, hd / 2, 2});
  ops::rope_table(table, 10000.0);
  // Position 0 is the identity; position p rotates pair i by p * base^(-2i/hd).
  CHECK(table.data<double>()[0] == 1.0);
  CHECK(table.data<double>()[1] == 0.0);
  CHECK(table.data<double>()[(3 * 3 + 1) * 2] == Approx(std::cos(3 * std::pow(10000.0, -2.0 / 6))));

  Buffer x = random_buffer({2 * S, heads, hd}, 1), r = random_buffer({2 * S, heads, hd}, 2);
  Buffer y(DType::F64, Device::CPU, x.shape()), dx(DType::F64, Device::CPU, x.shape());
  auto loss = [&] {
    ops::copy(y, x);
    ops::rope_forward(y, table, S);
    return weighted_sum(y, r);
  };
  ops::copy(dx, r);
  ops::rope_backward(dx, table, S);
  CHECK(max_fd_error(x, dx, loss) < kTol);
  // Token S (second sequence, position 0) is unrotated.
  loss();
  for (int64_t i = 0; i < heads * hd; ++i)
    CHECK(y.data<double>()[S * heads * hd + i] == x.data<double>()[S * heads * hd + i]);
}

TEST_CASE("causal GQA attention backward matches finite differences", "[ops][grad]") {
  const ops::AttentionShape s{2, 5, 4, 2, 3};  // batch, seq, heads, groups, head_dim
  const int64_t N = s.batch * s.seq;
  Buffer q = random_buffer({N, s.heads * s.head_dim}, 1), k = random_buffer({N, s.groups * s.head_dim}, 2),
         v = random_buffer({N, s.groups * s.head_dim}, 3), r = random_buffer({N, s.heads * s.head_dim}, 4);
  Buffer out(DType::F64, Device::CPU, q.shape()), saved(DType::F64, Device::CPU,
                                                        ops::attention_saved_shape(Device::CPU, s));
  Buffer dq(DType::F64, Device::CPU, q.shape()), dk(DType::F64, Device::CPU, k.shape()),
      dv(DType::F64, Device::CPU, v.shape());
  auto loss = [&] {
    ops::attention_forward(out, saved, q, k, v, s);
    return weighted_sum(out, r);
  };
  loss();
  ops::attention_backward(dq, dk, dv, r, out, saved, q, k, v, s);
  CHECK(max_fd_error(q, dq, loss) < kTol);
  CHECK(max_fd_error(k, dk, loss) < kTol);
  CHECK(max_fd_error(v, dv, loss) < kTol);

  // Causality: the first token of each sequence attends only to itself, so
  // its output is its own value vector (for head h, kv group h / 2).
  loss();
  for (int64_t h = 0; h < s.heads; ++h)
    for (int64_t d = 0; d < s.head_dim; ++d)
      CHECK(out.data<double>()[h * s.head_dim + d] ==
            Approx(v.data<double>()[(h / 2) * s.head_dim + d]).epsilon(1e-12));
}

TEST_CASE("swiglu backward matches finite differences", "[ops][grad]") {
  Buffer g = random_buffer({3, 5}, 1), u = random_buffer({3, 5}, 2), r = random_buffer({3, 5}, 3);
  Buffer out(DType::F64, Device::CPU, {3, 5}), dg(DType::F64, Device::CPU, {3, 5}),
      du(DType::F64, Device::CPU, {3, 5});
  auto loss = [&] {
    ops::swiglu_forward(out, g, u);
    return weighted_sum(out, r);
  };
  ops::swiglu_backward(dg, du, r, g, u);
  CHECK(max_fd_error(g, dg, loss) < kTol);
  CHECK(max_fd_error(u, du, loss) < kTol);
}

TEST_CASE("relu routing: scores, counts and gradients", "[ops][grad]") {
  Buffer z = random_buffer({6, 4}, 1), s = random_buffer({4}, 2), r = random_buffer({6, 4}, 3),
         extra = random_buffer({6, 4}, 4);
  Buffer g(DType::F64, Device::CPU, {6, 4}), counts(DType::I64, Device::CPU, {4});
  Buffer dz(DType::F64, Device::CPU, {6, 4}), ds(DType::F64, Device::CPU, {4});
  ops::relu_route_forward(g, counts, z, s);
  for (int64_t e = 0; e < 4; ++e) {
    int64_t expected = 0;
    for (int64_t t = 0; t < 6; ++t) {
      const double zt = z.data<double>()[t * 4 + e];
      expected += zt > 0;
      CHECK(g.data<double>()[t * 4 + e] == (zt > 0 ? zt * s.data<double>()[e] : 0.0));
    }
    CHECK(counts.data<int64_t>()[e] == expected);
  }
  // loss = sum(g * r) + sum(relu(z) * extra): extra plays the regularizer's dL/dr.
  auto loss = [&] {
    ops::relu_route_forward(g, Tensor(), z, s);
    double l = weighted_sum(g, r);
    for (int64_t i = 0; i < 24; ++i) l += std::max(z.data<double>()[i], 0.0) * extra.data<double>()[i];
    return l;
  };
  ops::relu_route_backward(dz, ds, r, extra, z, s);
  CHECK(max_fd_error(z, dz, loss) < kTol);
  CHECK(max_fd_error(s, ds, loss) < kTol);
}

TEST_CASE("entropy and L1 regularizers match the formula and their gradients", "[ops][grad]") {
  Buffer z = random_buffer({5, 6}, 7);
  // Keep active entries away from p ~ 0, where log(p + 1e-5) curves so
  // sharply that central differences (not the gradient) lose accuracy.
  for (int64_t i = 0; i < 30; ++i) {
    double& v = z.data<double>()[i];
    v = v > 0 ? v + 0.05 : v;
  }
  // Entropy by the spec's formula for token 0.
  const double* z0 = z.data<double>();
  double sum = 0.0;
  for (int e = 0; e < 6; ++e) sum += std::max(z0[e], 0.0);
  double h0 = 0.0;
  for (int e = 0; e < 6; ++e) {
    const double p = std::max(z0[e], 0.0) / (sum + 1e-5);
    h0 -= p * std::log(p + 1e-5);
  }
  Buffer one_token(DType::F64, Device::CPU, {1, 6});
  ops::copy(one_token, z.tensor().slice(0, 1));
  CHECK(ops::entropy_reg_forward(one_token) == Approx(h0).epsilon(1e-14));

  // Gradients with respect to r = relu(z): check through z on the active entries
  // (inactive entries' gradient is masked by relu_route_backward, tested above).
  Buffer dr(DType::F64, Device::CPU, {5, 6}), dz(DType::F64, Device::CPU, {5, 6});
  auto check = [&](auto forward, auto backward) {
    ops::zero(dr);
    backward(dr, z, 0.7);
    for (int64_t i = 0; i < 30; ++i) dz.data<double>()[i] = z.data<double>()[i] > 0 ? dr.data<double>()[i] : 0.0;
    return max_fd_error(z, dz, [&] { return 0.7 * forward(z); });
  };
  CHECK(check(ops::entropy_reg_forward, ops::entropy_reg_backward) < kTol);
  CHECK(check(ops::l1_reg_forward, ops::l1_reg_backward) < kTol);
  double l1 = 0.0;
  for (int64_t i = 0; i < 30; ++i) l1 += std::max(z.data<double>()[i], 0.0);
  CHECK(ops::l1_reg_forward(z) == Approx(l1).epsilon(1e-14));
}

TEST_CASE("routing groups active pairs by expert in token order", "[ops]") {
  std::vector<double> zv{0.5, -1, 0.2,   // token 0: experts 0, 2
                         -1, -1, -1,     // token 1: none
                         0.1, 0.3, 0.4}; // token 2: all
  const Tensor z(zv.data(), DType::F64, Device::CPU, {3, 3});
  Buffer off(DType::I32, Device::CPU, {4}), tok(DType::I32, Device::CPU, {9}), flat(DType::I32, Device::CPU, {9});
  REQUIRE(ops::build_routing(off, tok, flat, z) == 5);
  const std::vector<int32_t> offsets(off.data<int32_t>(), off.data<int32_t>() + 4);
  CHECK(offsets == std::vector<int32_t>{0, 2, 3, 5});
  CHECK(std::vector<int32_t>(tok.data<int32_t>(), tok.data<int32_t>() + 5) == std::vector<int32_t>{0, 2, 2, 0, 2});
  CHECK(std::vector<int32_t>(flat.data<int32_t>(), flat.data<int32_t>() + 5) == std::vector<int32_t>{0, 6, 7, 2, 8});
}

TEST_CASE("normsilu backward matches finite differences for every variant", "[ops][grad]") {
  const int64_t N = 3, E = 4, D = 5;
  for (auto variant : {ops::ExpertAct::NormSilu, ops::ExpertAct::NormSiluNoMean,
                       ops::ExpertAct::NormSiluNorms, ops::ExpertAct::Silu}) {
    INFO("variant " << static_cast<int>(variant));
    Buffer u = random_buffer({N * E, D}, 1), mean = random_buffer({N}, 2, 0.3),
           gamma = random_buffer({D}, 3, 0.5), r = random_buffer({N * E, D}, 4);
    for (int64_t d = 0; d < D; ++d) gamma.data<double>()[d] += 1.0;
    Buffer act(DType::F64, Device::CPU, {N * E, D}), xhat(DType::F64, Device::CPU, {N * E, D}),
        rs(DType::F64, Device::CPU, {N * E}), dc(DType::F64, Device::CPU, {N * E, D}),
        dgamma(DType::F64, Device::CPU, {D});
    auto loss = [&] {
      ops::normsilu_forward(act, xhat, rs, u, mean, Tensor(), E, gamma, variant, 1e-5);
      return weighted_sum(act, r);
    };
    loss();
    ops::normsilu_backward(dc, dgamma, r, xhat, rs, gamma, variant);
    // c = u - mean with mean held fixed: dL/du = dc.
    CHECK(max_fd_error(u, dc, loss) < kTol);
    if (ops::expert_act_has_rms(variant)) CHECK(max_fd_error(gamma, dgamma, loss) < kTol);
    if (ops::expert_act_has_mean(variant)) {  // dL/dmean_t = -sum of dc over the token's blocks
      Buffer dmean(DType::F64, Device::CPU, {N});
      for (int64_t i = 0; i < N * E * D; ++i) dmean.data<double>()[i / (E * D)] -= dc.data<double>()[i];
      CHECK(max_fd_error(mean, dmean, loss) < kTol);
    }
  }
}

TEST_CASE("normsilu with an explicit block-to-token map equals the dense layout", "[ops]") {
  const int64_t N = 3, E = 2, D = 4;
  Buffer u = random_buffer({N * E, D}, 1), mean = random_buffer({N}, 2), gamma = random_buffer({D}, 3);
  std::vector<int32_t> map{0, 0, 1, 1, 2, 2};
  const Tensor block_token(map.data(), DType::I32, Device::CPU, {N * E});
  Buffer a1(DType::F64, Device::CPU, {N * E, D}), a2(DType::F64, Device::CPU, {N * E, D}),
      x1(DType::F64, Device::CPU, {N * E, D}), x2(DType::F64, Device::CPU, {N * E, D}),
      r1(DType::F64, Device::CPU, {N * E}), r2(DType::F64, Device::CPU, {N * E});
  ops::normsilu_forward(a1, x1, r1, u, mean, Tensor(), E, gamma, ops::ExpertAct::NormSilu, 1e-5);
  ops::normsilu_forward(a2, x2, r2, u, mean, block_token, 0, gamma, ops::ExpertAct::NormSilu, 1e-5);
  for (int64_t i = 0; i < N * E * D; ++i) CHECK(a1.data<double>()[i] == a2.data<double>()[i]);
}

TEST_CASE("fused LM head cross-entropy: loss, gradients, and chunking", "[ops][grad]") {
  const int64_t N = 7, H = 5, V = 11;
  Buffer x = random_buffer({N, H}, 1), w = random_buffer({V, H}, 2);
  std::vector<int32_t> t{0, 3, 10, 4, 4, 9, 1};
  const Tensor targets(t.data(), DType::I32, Device::CPU, {N});
  Buffer logits_full(DType::F64, Device::CPU, {N, V}), logits_chunk(DType::F64, Device::CPU, {3, V});
  Buffer dx(DType::F64, Device::CPU, {N, H}), dw(DType::F64, Device::CPU, {V, H});
  auto loss = [&] { return ops::lm_head_cross_entropy(Tensor(), Tensor(), logits_full, x, w, targets, 1.0); };
  // The loss by its definition, for the first token.
  ops::linear_forward(logits_full, x, w);
  double z = 0.0;
  for (int64_t j = 0; j < V; ++j) z += std::exp(logits_full.data<double>()[j]);
  const double first = std::log(z) - logits_full.data<double>()[t[0]];
  CHECK(ops::lm_head_cross_entropy(Tensor(), Tensor(), logits_full, x.tensor().slice(0, 1), w,
                                   targets.slice(0, 1), 1.0) == Approx(first).epsilon(1e-13));
  // Chunks of 3 rows give the same loss and gradients as one chunk of 7.
  const double chunked = ops::lm_head_cross_entropy(dx, dw, logits_chunk, x, w, targets, 1.0);
  CHECK(chunked == Approx(loss()).epsilon(1e-13));
  CHECK(max_fd_error(x, dx, loss) < kTol);
  CHECK(max_fd_error(w, dw, loss) < kTol);
}

TEST_CASE("small elementwise ops and their adjoints", "[ops][grad]") {
  Buffer x = random_buffer({4, 3}, 1), s = random_buffer({4}, 2), r = random_buffer({4, 3}, 3);
  Buffer out(DType::F64, Device::CPU, {4, 3}), ds(DType::F64, Device::CPU, {4}),
      dx(DType::F64, Device::CPU, {4, 3});
  // scale_rows: out = x * s[row]; its adjoint is scale_rows (dx) and row_dot (ds).
  auto loss = [&] {
    ops::scale_rows(out, x, s);
    return weighted_sum(out, r);
  };
  ops::scale_rows(dx, r, s);
  ops::row_dot(ds, r, x);
  CHECK(max_fd_error(x, dx, loss) < kTol);
  CHECK(max_fd_error(s, ds, loss) < kTol);
  // row_mean, col_mean, sub_row_scalar, add_to_rows against plain loops.
  Buffer rm(DType::F64, Device::CPU, {4}), cm(DType::F64, Device::CPU, {3});
  ops::row_mean(rm, x);
  ops::col_mean(cm, x);
  const double* px = x.data<double>();
  CHECK(rm.data<double>()[2] == Approx((px[6] + px[7] + px[8]) / 3).epsilon(1e-14));
  CHECK(cm.data<double>()[1] == Approx((px[1] + px[4] + px[7] + px[10]) / 4).epsilon(1e-14));
  ops::sub_row_scalar(out, x, s);
  CHECK(out.data<double>()[5] == px[5] - s.data<double>()[1]);
  ops::copy(out, x);
  ops::add_to_rows(out, cm, -2.0);
  CHECK(out.data<double>()[7] == Approx(px[7] - 2.0 * cm.data<double>()[1]).epsilon(1e-14));
  // scatter_add_rows applies rows in order, including repeated indices.
  std::vector<int32_t> idx{2, 0, 2};
  const Tensor index(idx.data(), DType::I32, Device::CPU, {3});
  Buffer acc(DType::F64, Device::CPU, {3, 3});
  ops::scatter_add_rows(acc, x.tensor().slice(0, 3), index);
  CHECK(acc.data<double>()[2 * 3 + 1] == px[0 * 3 + 1] + px[2 * 3 + 1]);
  CHECK(acc.data<double>()[1 * 3 + 1] == 0.0);
}

TEST_CASE("grouped GEMM equals one GEMM per expert, empty experts untouched", "[ops]") {
  // 3 experts of width D = 2 over H = 5; expert 1 has no pairs.
  const int64_t E = 3, D = 2, H = 5;
  std::vector<int32_t> off{0, 3, 3, 7};
  const Tensor offsets(off.data(), DType::I32, Device::CPU, {E + 1});
  Buffer x = random_buffer({7, H}, 1), w_up = random_buffer({E * D, H}, 2), w_down = random_buffer({H, E * D}, 3);
  Buffer up(DType::F64, Device::CPU, {7, D}), down(DType::F64, Device::CPU, {7, H});
  using ops::GroupSplit;
  // up: pairs of expert e times rows [e*D, (e+1)*D) of w_up, transposed
  ops::grouped_gemm({up.tensor().matrix(), GroupSplit::Rows}, {x.tensor().matrix(), GroupSplit::Rows}, false,
                    {w_up.tensor().matrix(), GroupSplit::ExpertRows}, true, 1.0, 0.0, offsets, D);
  // down: those outputs times columns [e*D, (e+1)*D) of w_down, transposed
  ops::grouped_gemm({down.tensor().matrix(), GroupSplit::Rows}, {up.tensor().matrix(), GroupSplit::Rows}, false,
                    {w_down.tensor().matrix(), GroupSplit::ExpertCols}, true, 1.0, 0.0, offsets, D);
  auto expert_of = [&](int64_t p) { return p < 3 ? 0 : 2; };
  for (int64_t p = 0; p < 7; ++p)
    for (int64_t d = 0; d < D; ++d) {
      double s = 0.0;
      for (int64_t h = 0; h < H; ++h) s += x.data<double>()[p * H + h] * w_up.data<double>()[(expert_of(p) * D + d) * H + h];
      CHECK(up.data<double>()[p * D + d] == Approx(s).epsilon(1e-13));
    }
  for (int64_t p = 0; p < 7; ++p)
    for (int64_t h = 0; h < H; ++h) {
      double s = 0.0;
      for (int64_t d = 0; d < D; ++d) s += up.data<double>()[p * D + d] * w_down.data<double>()[h * E * D + expert_of(p) * D + d];
      CHECK(down.data<double>()[p * H + h] == Approx(s).epsilon(1e-13));
    }
  // Weight-gradient form, accumulating (beta = 1): expert 1's block keeps its value.
  Buffer dw(DType::F64, Device::CPU, {E * D, H});
  for (int64_t i = 0; i < E * D * H; ++i) dw.data<double>()[i] = 7.0;
  ops::grouped_gemm({dw.tensor().matrix(), GroupSplit::ExpertRows}, {up.tensor().matrix(), GroupSplit::Rows}, true,
                    {x.tensor().matrix(), GroupSplit::Rows}, false, 1.0, 1.0, offsets, D);
  for (int64_t i = D * H; i < 2 * D * H; ++i) CHECK(dw.data<double>()[i] == 7.0);
  double s = 7.0;  // dw[row 0 of expert 2, col 1] = 7 + sum over expert 2's pairs of up[p, 0] * x[p, 1]
  for (int64_t p = 3; p < 7; ++p) s += up.data<double>()[p * D] * x.data<double>()[p * H + 1];
  CHECK(dw.data<double>()[(2 * D) * H + 1] == Approx(s).epsilon(1e-13));
}

TEST_CASE("sparse expert products: gather, scatter and weight-gradient forms match their formulas", "[ops]") {
  // Tokens 0..3, 3 experts of width D = 2 over H = 5: expert 0 takes tokens
  // 0, 2, 3; expert 1 none; expert 2 tokens 1, 3 (token 3 has two experts).
  const int64_t N = 4, E = 3, D = 2, H = 5, P = 5;
  std::vector<int32_t> off{0, 3, 3, 5}, tok{0, 2, 3, 1, 3};
  const Tensor offsets(off.data(), DType::I32, Device::CPU, {E + 1});
  const Tensor index(tok.data(), DType::I32, Device::CPU, {P});
  auto expert_of = [&](int64_t p) { return p < 3 ? 0 : 2; };
  using ops::GroupSplit;
  Buffer x = random_buffer({N, H}, 11), g = random_buffer({P, D}, 12);
  for (GroupSplit split : {GroupSplit::ExpertRows, GroupSplit::ExpertCols}) {
    const bool rows = split == GroupSplit::ExpertRows;
    INFO((rows ? "ExpertRows" : "ExpertCols"));
    Buffer w = random_buffer(rows ? Shape{E * D, H} : Shape{H, E * D}, 13);
    auto W = [&](int64_t e, int64_t d, int64_t h) {
      return rows ? w.data<double>()[(e * D + d) * H + h] : w.data<double>()[h * E * D + e * D + d];
    };
    Buffer c(DType::F64, Device::CPU, {P, D});
    ops::expert_gather_gemm(c, x, index, w, split, offsets, D);
    for (int64_t p = 0; p < P; ++p)
      for (int64_t d = 0; d < D; ++d) {
        double s = 0.0;
        for (int64_t h = 0; h < H; ++h) s += x.data<double>()[tok[p] * H + h] * W(expert_of(p), d, h);
        CHECK(c.data<double>()[p * D + d] == Approx(s).epsilon(1e-13));
      }
    Buffer y = random_buffer({N, H}, 14), y0 = random_buffer({N, H}, 14);
    ops::expert_scatter_gemm(y, g, index, w, split, offsets, D);
    for (int64_t t = 0; t < N; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double s = y0.data<double>()[t * H + h];
        for (int64_t p = 0; p < P; ++p)
          if (tok[p] == t)
            for (int64_t d = 0; d < D; ++d) s += g.data<double>()[p * D + d] * W(expert_of(p), d, h);
        CHECK(y.data<double>()[t * H + h] == Approx(s).epsilon(1e-13));
      }
    Buffer dw = random_buffer(w.tensor().shape(), 15), dw0 = random_buffer(w.tensor().shape(), 15);
    ops::expert_weight_grad(dw, split, g, x, index, offsets, D);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t h = 0; h < H; ++h) {
          const int64_t at = rows ? (e * D + d) * H + h : h * E * D + e * D + d;
          double s = dw0.data<double>()[at];  // expert 1 has no pairs: its block keeps its values
          for (int64_t p = off[e]; p < off[e + 1]; ++p) s += g.data<double>()[p * D + d] * x.data<double>()[tok[p] * H + h];
          CHECK(dw.data<double>()[at] == Approx(s).epsilon(1e-13));
        }
    // No pairs at all (a router that activated nothing): nothing written, nothing added.
    std::vector<int32_t> none{0, 0, 0, 0};
    const Tensor no_offsets(none.data(), DType::I32, Device::CPU, {E + 1});
    const Tensor no_index = index.slice(0, 0);
    Buffer c0(DType::F64, Device::CPU, {0, D}), g0(DType::F64, Device::CPU, {0, D});
    ops::expert_gather_gemm(c0, x, no_index.slice(0, 0), w, split, no_offsets, D);
    ops::expert_scatter_gemm(y, g0, no_index, w, split, no_offsets, D);
    ops::expert_weight_grad(dw, split, g0, x, no_index, no_offsets, D);
  }
}

TEST_CASE("causal attention over several query blocks matches the naive formula", "[ops][grad]") {
  // S = 150 spans three of the reference's 64-row query blocks (the last one partial).
  const ops::AttentionShape s{1, 150, 2, 1, 4};
  const int64_t S = s.seq, hd = s.head_dim, N = S;
  Buffer q = random_buffer({N, 2 * hd}, 1), k = random_buffer({N, hd}, 2), v = random_buffer({N, hd}, 3),
         r = random_buffer({N, 2 * hd}, 4);
  Buffer out(DType::F64, Device::CPU, q.shape()), saved(DType::F64, Device::CPU, ops::attention_saved_shape(Device::CPU, s));
  ops::attention_forward(out, saved, q, k, v, s);
  const double* pq = q.data<double>();
  const double* pk = k.data<double>();
  const double* pv = v.data<double>();
  double worst = 0.0;
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < S; i += 7) {
      std::vector<double> w(static_cast<size_t>(i + 1));
      double mx = -1e300, z = 0.0;
      for (int64_t j = 0; j <= i; ++j) {
        double dot = 0.0;
        for (int64_t d = 0; d < hd; ++d) dot += pq[i * 2 * hd + h * hd + d] * pk[j * hd + d];
        w[static_cast<size_t>(j)] = dot / 2.0;  // 1 / sqrt(4)
        mx = std::max(mx, w[static_cast<size_t>(j)]);
      }
      for (double& x : w) z += (x = std::exp(x - mx));
      for (int64_t d = 0; d < hd; ++d) {
        double o = 0.0;
        for (int64_t j = 0; j <= i; ++j) o += w[static_cast<size_t>(j)] / z * pv[j * hd + d];
        worst = std::max(worst, std::abs(o - out.data<double>()[i * 2 * hd + h * hd + d]));
      }
    }
  CHECK(worst < 1e-12);
  // Backward: directional derivatives along random directions of q, k and v.
  Buffer dq(DType::F64, Device::CPU, q.shape()), dk(DType::F64, Device::CPU, k.shape()), dv(DType::F64, Device::CPU, v.shape());
  ops::attention_backward(dq, dk, dv, r, out, saved, q, k, v, s);
  auto loss = [&] {
    ops::attention_forward(out, saved, q, k, v, s);
    return weighted_sum(out, r);
  };
  for (auto [x, g] : {std::pair<Buffer*, Buffer*>{&q, &dq}, {&k, &dk}, {&v, &dv}}) {
    Buffer dir = random_buffer(x->shape(), 9);
    const double analytic = weighted_sum(*g, dir), h = 1e-6;
    ops::axpy(*x, dir, h);
    const double up = loss();
    ops::axpy(*x, dir, -2 * h);
    const double down = loss();
    ops::axpy(*x, dir, h);
    CHECK((up - down) / (2 * h) == Approx(analytic).epsilon(1e-7));
  }
}
