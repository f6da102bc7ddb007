// CUDA kernels of the DECO layer (kernels/cuda/deco_layer.cu) against the CPU
// reference: ReLU routing, the entropy and L1 regularizers, build_routing and
// NormSiLU in all four variants and both block layouts. Registered with the
// harness of tests/gpu/gpu_test.h.
//
// Router logits are shifted so that about 5%, 20%, 50% or all of the (token,
// expert) entries are active; below 100% two experts get no token, every
// 97th token activates no expert, and some entries are exactly +0 or -0
// (inactive: an expert is active iff z > 0). N = 1237 is a multiple of none
// of the kernels' warp, CTA, slab or chunk sizes and needs two steps of
// build_routing's 1024-token walk. The deco_large_* cases have more than
// 1024 * 64 rows, so the two-stage reductions reach their cap of 1024 slabs
// and their trailing slabs are empty.
//
// Tolerances, one reason each:
//  - 0 (bitwise) where both sides round the same single operation the same
//    way: g = z * s (one multiply), the L1 gradient (one add of the same
//    float), outputs a variant must leave untouched, integer results, and a
//    GPU op run twice (the reductions have a fixed order: determinism).
//  - 1e-5 relative (||gpu - cpu|| / ||cpu||) for float32 results: the CPU sums
//    in float32 in its own order, the GPU in double in another, and CUDA's
//    expf/logf differ from glibc's by an ulp or two. The largest term is the
//    CPU's own float32 sum of dgamma over 50k-67k blocks: up to 5e-6 with
//    one OpenMP thread (each thread sums a contiguous share, so more
//    threads make it smaller); everything else stays near 1e-7.
//  - 1e-6 relative for the regularizer sums: both sides add the per-token
//    values in double; the CPU's per-token entropy is a float32 sum over at
//    most 42 experts, whose rounding averages out over 1237 tokens.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tests/gpu/gpu_test.h"

using namespace deco;
using namespace deco::gpu_test;

namespace {

constexpr double kRatios[] = {0.05, 0.2, 0.5, 1.0};
constexpr int64_t kTokens = 1237;

std::string name(const char* op, int64_t E, double ratio, const char* what) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%s E%lld r%.2f %s", op, static_cast<long long>(E), ratio, what);
  return buf;
}

// x with Phi(x) = p (standard normal), by bisection on erfc.
double normal_quantile(double p) {
  double lo = -10.0, hi = 10.0;
  for (int i = 0; i < 100; ++i) {
    const double mid = 0.5 * (lo + hi);
    (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

// Router logits z[N, E] with about `ratio` of the entries positive (see the
// top of the file for the idle experts, idle tokens and exact zeros).
Buffer router_logits(int64_t N, int64_t E, double ratio, uint64_t seed) {
  Buffer z = random_host({N, E}, seed);
  float* p = z.data<float>();
  if (ratio >= 1.0) {  // no finite shift makes every entry positive
    for (int64_t i = 0; i < N * E; ++i) p[i] = std::fabs(p[i]) + 1e-3f;
    return z;
  }
  const float shift = static_cast<float>(normal_quantile(ratio));
  for (int64_t i = 0; i < N * E; ++i) p[i] += shift;
  for (int64_t t = 0; t < N; ++t)
    for (int64_t e = 0; e < E; ++e) {
      float& v = p[t * E + e];
      if (e == 1 || e == E - 2 || t % 97 == 3) v = -std::fabs(v) - 0.1f;
      if (e == 0 && t % 13 == 0) v = 0.0f;
      if (e == 2 && t % 17 == 0) v = -0.0f;
    }
  return z;
}

// A copy of t[N, E] (host) with the rows of tokens that activate no expert zeroed.
Buffer active_token_rows(const Tensor& t, const Tensor& z) {
  const int64_t N = z.size(0), E = z.size(1);
  Buffer out(DType::F32, Device::CPU, {N, E});
  for (int64_t r = 0; r < N; ++r) {
    bool any = false;
    for (int64_t e = 0; e < E; ++e) any = any || z.data<float>()[r * E + e] > 0.0f;
    if (any)
      for (int64_t e = 0; e < E; ++e) out.data<float>()[r * E + e] = t.data<float>()[r * E + e];
  }
  return out;
}

Buffer device(DType dtype, const Shape& shape) { return Buffer(dtype, Device::CUDA, shape); }
Buffer host(DType dtype, const Shape& shape) { return Buffer(dtype, Device::CPU, shape); }

// relu_route_forward and _backward on one z, CPU against GPU.
void check_relu_route(int64_t N, int64_t E, double ratio, uint64_t seed, bool check_determinism) {
  Buffer z = router_logits(N, E, ratio, seed), s = random_host({E}, seed + 1, 0.1),
         dg = random_host({N, E}, seed + 2), extra = random_host({N, E}, seed + 3, 0.01);
  Buffer counts = host(DType::I64, {E});
  for (int64_t e = 0; e < E; ++e) counts.data<int64_t>()[e] = 7 * e;  // counts accumulate (+=)
  Buffer z_d = to_device(z), s_d = to_device(s), dg_d = to_device(dg), extra_d = to_device(extra),
         counts_d = to_device(counts);
  Buffer g = host(DType::F32, {N, E}), g_d = device(DType::F32, {N, E});
  ops::relu_route_forward(g, counts, z, s);
  ops::relu_route_forward(g_d, counts_d, z_d, s_d);
  expect_close(name("relu_route", E, ratio, "g"), g, to_host(g_d), 0.0);  // one multiply: bitwise
  expect_equal(name("relu_route", E, ratio, "counts"), counts, to_host(counts_d));

  for (bool with_extra : {true, false}) {
    Buffer ds = random_host({E}, seed + 4), ds_d = to_device(ds);  // dscale accumulates (+=)
    Buffer ds_again = to_device(ds);
    Buffer dz = host(DType::F32, {N, E}), dz_d = device(DType::F32, {N, E});
    ops::relu_route_backward(dz, ds, dg, with_extra ? extra.tensor() : Tensor(), z, s);
    ops::relu_route_backward(dz_d, ds_d, dg_d, with_extra ? extra_d.tensor() : Tensor(), z_d, s_d);
    const char* tag = with_extra ? "+extra" : "";
    // float32, the GPU may fuse dg * s + extra into one FMA: 1e-5
    expect_close(name("relu_route", E, ratio, (std::string("dz") + tag).c_str()), dz, to_host(dz_d));
    // float32 sums over tokens, CPU in float32 per thread, GPU in double: 1e-5
    expect_close(name("relu_route", E, ratio, (std::string("dscale") + tag).c_str()), ds, to_host(ds_d));
    if (check_determinism) {
      Buffer dz_again = device(DType::F32, {N, E});
      ops::relu_route_backward(dz_again, ds_again, dg_d, with_extra ? extra_d.tensor() : Tensor(), z_d, s_d);
      expect_close(name("relu_route", E, ratio, "dscale rerun, bitwise"), to_host(ds_d), to_host(ds_again), 0.0);
    }
  }
}

// The regularizers' sums and gradients on one z, CPU against GPU.
void check_regularizers(int64_t N, int64_t E, double ratio, uint64_t seed) {
  Buffer z = router_logits(N, E, ratio, seed), z_d = to_device(z);
  const double h = ops::entropy_reg_forward(z), h_d = ops::entropy_reg_forward(z_d);
  expect_scalar(name("entropy", E, ratio, "sum"), h, h_d, 1e-6);  // double sums of per-token values
  expect_scalar(name("entropy", E, ratio, "sum rerun, bitwise"), h_d, ops::entropy_reg_forward(z_d), 0.0);
  const double l1 = ops::l1_reg_forward(z), l1_d = ops::l1_reg_forward(z_d);
  expect_scalar(name("l1", E, ratio, "sum"), l1, l1_d, 1e-6);  // double sums of the same floats
  expect_scalar(name("l1", E, ratio, "sum rerun, bitwise"), l1_d, ops::l1_reg_forward(z_d), 0.0);

  const double coef = 0.37;
  Buffer dr = random_host({N, E}, seed + 1, 0.1), dr_d = to_device(dr);  // dr accumulates (+=)
  ops::entropy_reg_backward(dr, z, coef);
  ops::entropy_reg_backward(dr_d, z_d, coef);
  Buffer got = to_host(dr_d);
  // float32 (sums over E rounded in another order, logf): 1e-5. Idle tokens'
  // entries are ~1e6 (denominator 1e-5) and dominate the norm, so the tokens
  // with an active expert are compared on their own too.
  expect_close(name("entropy", E, ratio, "dr"), dr, got);
  expect_close(name("entropy", E, ratio, "dr, active tokens"), active_token_rows(dr, z), active_token_rows(got, z));

  Buffer dl = random_host({N, E}, seed + 2, 0.1), dl_d = to_device(dl);
  ops::l1_reg_backward(dl, z, coef);
  ops::l1_reg_backward(dl_d, z_d, coef);
  expect_close(name("l1", E, ratio, "dr"), dl, to_host(dl_d), 0.0);  // one add of the same float: bitwise
}

const char* variant_name(ops::ExpertAct v) {
  switch (v) {
    case ops::ExpertAct::NormSilu: return "norm_silu";
    case ops::ExpertAct::NormSiluNoMean: return "norm_silu_nomean";
    case ops::ExpertAct::NormSiluNorms: return "norm_silu_norms";
    case ops::ExpertAct::Silu: return "silu";
  }
  return "?";
}

// NormSiLU forward and backward on `rows` blocks of width D: the sparse
// layout when block_token (host int32[rows]) is given, else the dense one
// (E blocks per token). Inputs the variant does not use are left undefined,
// as DecoFfn leaves them (no gamma without the RMS step, no mean without the mean step).
void check_normsilu(const std::string& label, int64_t N, int64_t E, int64_t D, int64_t rows,
                    const Buffer* block_token, ops::ExpertAct variant, uint64_t seed) {
  const bool has_mean = ops::expert_act_has_mean(variant), has_rms = ops::expert_act_has_rms(variant);
  Buffer u = random_host({rows, D}, seed), dact = random_host({rows, D}, seed + 1);
  Buffer mean, gamma, dgamma, mean_d, gamma_d, dgamma_d, dgamma_again, bt_d;
  if (has_mean) {
    mean = random_host({N}, seed + 2, 0.3);
    mean_d = to_device(mean);
  }
  if (has_rms) {
    gamma = random_host({D}, seed + 3, 0.5);
    for (int64_t d = 0; d < D; ++d) gamma.data<float>()[d] += 1.0f;
    gamma_d = to_device(gamma);
    dgamma = random_host({D}, seed + 4);  // dgamma accumulates (+=)
    dgamma_d = to_device(dgamma);
    dgamma_again = to_device(dgamma);
  }
  if (block_token) bt_d = to_device(*block_token);
  const Tensor bt = block_token ? block_token->tensor() : Tensor();
  const int64_t per_token = block_token ? 0 : E;
  // rs starts random on both sides: variants without the RMS step must not write it.
  Buffer rs = random_host({rows}, seed + 5), rs_d = to_device(rs);
  Buffer act = host(DType::F32, {rows, D}), xhat = host(DType::F32, {rows, D});
  Buffer act_d = device(DType::F32, {rows, D}), xhat_d = device(DType::F32, {rows, D});
  Buffer u_d = to_device(u), dact_d = to_device(dact);
  ops::normsilu_forward(act, xhat, rs, u, mean, bt, per_token, gamma, variant, 1e-5);
  ops::normsilu_forward(act_d, xhat_d, rs_d, u_d, mean_d, bt_d, per_token, gamma_d, variant, 1e-5);
  // float32: the block's sum of squares in another order, CUDA's expf in silu: 1e-5
  expect_close(label + " act", act, to_host(act_d));
  expect_close(label + " xhat", xhat, to_host(xhat_d));
  expect_close(label + (has_rms ? " rs" : " rs untouched"), rs, to_host(rs_d), has_rms ? 1e-5 : 0.0);

  Buffer dc = host(DType::F32, {rows, D}), dc_d = device(DType::F32, {rows, D});
  ops::normsilu_backward(dc, dgamma, dact, xhat, rs, gamma, variant);
  ops::normsilu_backward(dc_d, dgamma_d, dact_d, xhat_d, rs_d, gamma_d, variant);
  // float32, and each side's own xhat and rs from the forward: 1e-5
  expect_close(label + " dc", dc, to_host(dc_d));
  if (has_rms) {
    // float32 sums over blocks, CPU in float32 per thread, GPU in double: 1e-5
    expect_close(label + " dgamma", dgamma, to_host(dgamma_d));
    Buffer dc_again = device(DType::F32, {rows, D});
    ops::normsilu_backward(dc_again, dgamma_again, dact_d, xhat_d, rs_d, gamma_d, variant);
    expect_close(label + " dgamma rerun, bitwise", to_host(dgamma_d), to_host(dgamma_again), 0.0);
  }
}

constexpr ops::ExpertAct kVariants[] = {ops::ExpertAct::NormSilu, ops::ExpertAct::NormSiluNoMean,
                                        ops::ExpertAct::NormSiluNorms, ops::ExpertAct::Silu};

}  // namespace

// relu_route_forward/backward: g, counts, dz and dscale, with and without the regularizer's dr.
DECO_GPU_TEST(deco_relu_route) {
  for (int64_t E : {42, 16})
    for (double ratio : kRatios) check_relu_route(kTokens, E, ratio, 100 + static_cast<uint64_t>(E), ratio == 0.2);
}

// Tokens with no active expert: the count of a warp per row against the CPU's, exactly,
// with rows of all-negative entries mixed in and widths around the warp size.
DECO_GPU_TEST(deco_idle_rows) {
  for (int64_t E : {42, 16, 32, 102})
    for (double ratio : kRatios) {
      Buffer z = router_logits(kTokens, E, ratio, 150 + static_cast<uint64_t>(E));
      for (int64_t t = 0; t < kTokens; t += 7)
        for (int64_t e = 0; e < E; ++e) z.data<float>()[t * E + e] = -std::fabs(z.data<float>()[t * E + e]);
      char label[64];
      std::snprintf(label, sizeof(label), "count_idle_rows E%lld r%.2f", static_cast<long long>(E), ratio);
      expect_scalar(label, static_cast<double>(ops::count_idle_rows(z)),
                    static_cast<double>(ops::count_idle_rows(to_device(z))), 0.0);
    }
}

// Entropy and L1 regularizers: the sums (returned on the host) and dr (+=).
DECO_GPU_TEST(deco_regularizers) {
  for (int64_t E : {42, 16})
    for (double ratio : kRatios) check_regularizers(kTokens, E, ratio, 200 + static_cast<uint64_t>(E));
}

// build_routing: P, offsets (in host memory as DecoFfn passes them, and in
// device memory) and the first P entries of pair_token and pair_flat, all exact.
DECO_GPU_TEST(deco_build_routing) {
  struct Case {
    int64_t N, E;
    double ratio;  // 0: no entry active, P = 0
  };
  std::vector<Case> cases;
  for (int64_t E : {42, 16}) {
    for (double ratio : kRatios) cases.push_back({kTokens, E, ratio});
    cases.push_back({kTokens, E, 0.0});
  }
  cases.push_back({3001, 16, 0.2});  // three steps of the 1024-token walk
  cases.push_back({5, 3, 0.5});      // fewer tokens than a warp
  for (const Case& c : cases)
    for (bool host_offsets : {true, false}) {
      const int64_t N = c.N, E = c.E;
      Buffer z = c.ratio > 0 ? router_logits(N, E, c.ratio, 300 + static_cast<uint64_t>(E)) : random_host({N, E}, 301);
      if (c.ratio == 0)
        for (int64_t i = 0; i < N * E; ++i) z.data<float>()[i] = -std::fabs(z.data<float>()[i]) - 0.1f;
      Buffer z_d = to_device(z);
      Buffer off = host(DType::I32, {E + 1}), tok = host(DType::I32, {N * E}), flat = host(DType::I32, {N * E});
      Buffer off_d(DType::I32, host_offsets ? Device::CPU : Device::CUDA, {E + 1});
      Buffer tok_d = device(DType::I32, {N * E}), flat_d = device(DType::I32, {N * E});
      const int64_t P = ops::build_routing(off, tok, flat, z);
      const int64_t P_d = ops::build_routing(off_d, tok_d, flat_d, z_d);
      char label[96];
      std::snprintf(label, sizeof(label), "routing N%lld E%lld r%.2f %s", static_cast<long long>(N),
                    static_cast<long long>(E), c.ratio, host_offsets ? "host off" : "dev off");
      expect_scalar(std::string(label) + " P", static_cast<double>(P), static_cast<double>(P_d), 0.0);
      Buffer off_back = host_offsets ? Buffer() : to_host(off_d);
      expect_equal(std::string(label) + " offsets", off, host_offsets ? off_d.tensor() : off_back.tensor());
      if (P > 0 && P == P_d) {
        expect_equal(std::string(label) + " pair_token", tok.tensor().slice(0, P), to_host(tok_d.tensor().slice(0, P)));
        expect_equal(std::string(label) + " pair_flat", flat.tensor().slice(0, P), to_host(flat_d.tensor().slice(0, P)));
      }
    }
}

// NormSiLU, every variant, sparse layout (block_token from the CPU routing
// at each activation ratio) and dense layout, for three (E, D).
DECO_GPU_TEST(deco_normsilu) {
  struct Width {
    int64_t E, D;
  };
  // D = 100: a width no power of two, a warp's last 28 lanes idle in its last column group.
  for (const Width w : {Width{42, 64}, Width{16, 32}, Width{16, 100}})
    for (ops::ExpertAct variant : kVariants) {
      const int64_t N = kTokens, E = w.E, D = w.D;
      for (double ratio : kRatios) {
        Buffer z = router_logits(N, E, ratio, 400 + static_cast<uint64_t>(E));
        Buffer off = host(DType::I32, {E + 1}), tok = host(DType::I32, {N * E}), flat = host(DType::I32, {N * E});
        const int64_t P = ops::build_routing(off, tok, flat, z);
        Buffer block_token = host(DType::I32, {P});
        for (int64_t p = 0; p < P; ++p) block_token.data<int32_t>()[p] = tok.data<int32_t>()[p];
        char label[96];
        std::snprintf(label, sizeof(label), "%s E%lld D%lld sparse r%.2f", variant_name(variant),
                      static_cast<long long>(E), static_cast<long long>(D), ratio);
        check_normsilu(label, N, E, D, P, &block_token, variant, 500 + static_cast<uint64_t>(D));
      }
      char label[96];
      std::snprintf(label, sizeof(label), "%s E%lld D%lld dense", variant_name(variant), static_cast<long long>(E),
                    static_cast<long long>(D));
      check_normsilu(label, N, E, D, N * E, nullptr, variant, 600 + static_cast<uint64_t>(D));
    }
}

// More rows than 1024 slabs of 64: the reductions' capped partition, with
// empty trailing slabs (70001 tokens: 1015 slabs of 69 rows hold them all).
DECO_GPU_TEST(deco_large_router) {
  check_relu_route(70001, 16, 0.2, 700, true);
  check_regularizers(70001, 16, 0.2, 710);
}

// The same for NormSiLU's dgamma: 1601 tokens x 42 experts = 67242 blocks in the dense layout.
DECO_GPU_TEST(deco_large_normsilu) {
  for (ops::ExpertAct variant : {ops::ExpertAct::NormSilu, ops::ExpertAct::NormSiluNoMean}) {
    const std::string label = std::string(variant_name(variant)) + " E42 D64 dense N1601";
    check_normsilu(label, 1601, 42, 64, 1601 * 42, nullptr, variant, 800);
  }
}

// NormSiLU fused with the expert scores (one kernel each way) against the
// CPU's two ops: ga and act, then dc, the score gradients and dgamma. Scores
// include zeros (inactive experts on the dense path). float32: 1e-5.
DECO_GPU_TEST(deco_normsilu_scaled) {
  const int64_t N = 300, E = 16, D = 64, rows = N * E;
  for (ops::ExpertAct variant : kVariants) {
    const bool has_mean = ops::expert_act_has_mean(variant), has_rms = ops::expert_act_has_rms(variant);
    const std::string label = std::string("normsilu_scaled ") + variant_name(variant);
    Buffer u = random_host({rows, D}, 701), q = random_host({rows, D}, 702), score = random_host({rows}, 703, 0.1);
    for (int64_t b = 0; b < rows; b += 3) score.data<float>()[b] = 0.0f;
    Buffer mean, gamma, dgamma, mean_d, gamma_d, dgamma_d;
    if (has_mean) {
      mean = random_host({N}, 704, 0.3);
      mean_d = to_device(mean);
    }
    if (has_rms) {
      gamma = random_host({D}, 705, 0.5);
      gamma_d = to_device(gamma);
      dgamma = random_host({D}, 706);
      dgamma_d = to_device(dgamma);
    }
    Buffer rs = host(DType::F32, {rows}), ga = host(DType::F32, {rows, D}), act = host(DType::F32, {rows, D}),
           xhat = host(DType::F32, {rows, D});
    Buffer rs_d = device(DType::F32, {rows}), ga_d = device(DType::F32, {rows, D}),
           act_d = device(DType::F32, {rows, D}), xhat_d = device(DType::F32, {rows, D});
    const Buffer u_d = to_device(u), q_d = to_device(q), score_d = to_device(score);
    ops::normsilu_scaled_forward(ga, act, xhat, rs, u, mean, Tensor(), E, gamma, score, variant, 1e-5);
    ops::normsilu_scaled_forward(ga_d, act_d, xhat_d, rs_d, u_d, mean_d, Tensor(), E, gamma_d, score_d, variant, 1e-5);
    expect_close(label + " ga", ga, to_host(ga_d));
    expect_close(label + " act", act, to_host(act_d));
    Buffer dc = host(DType::F32, {rows, D}), dscore = host(DType::F32, {rows});
    Buffer dc_d = device(DType::F32, {rows, D}), dscore_d = device(DType::F32, {rows});
    ops::normsilu_scaled_backward(dc, dscore, dgamma, q, act, xhat, rs, gamma, score, variant);
    ops::normsilu_scaled_backward(dc_d, dscore_d, dgamma_d, q_d, act_d, xhat_d, rs_d, gamma_d, score_d, variant);
    expect_close(label + " dc", dc, to_host(dc_d));
    expect_close(label + " dscore", dscore, to_host(dscore_d));
    if (has_rms) expect_close(label + " dgamma", dgamma, to_host(dgamma_d));
  }
}
