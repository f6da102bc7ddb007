// Learning-rate schedules, the sparsity coefficient controller and AdamW
// against values computed by hand (the derivations are in the comments).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/ops.h"
#include "model/params.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"
#include "trainer/sparsity.h"

using namespace deco;

namespace {
LrSchedule make_schedule(LrDecayStyle style, WsdDecayStyle wsd, double lr, double min_lr, int64_t warmup,
                         int64_t train_iters, int64_t wsd_iters) {
  OptimizerConfig opt;
  opt.lr = lr;
  opt.min_lr = min_lr;
  ScheduleConfig s;
  s.lr_decay_style = style;
  s.lr_wsd_decay_style = wsd;
  s.lr_warmup_iters = warmup;
  s.lr_wsd_decay_iters = wsd_iters;
  return LrSchedule(opt, s, train_iters);
}
}  // namespace

TEST_CASE("WSD with the exponential decay shape (the paper's schedule)", "[schedule]") {
  // lr 1e-3 to 0, warmup 100, 2000 steps, decay over the last 1000:
  // q = (s - 1000) / 1000 and lr = 1e-3 * (2 * 0.5^q - 1).
  const LrSchedule s = make_schedule(LrDecayStyle::WSD, WsdDecayStyle::Exponential, 1e-3, 0.0, 100, 2000, 1000);
  CHECK(s.lr(1) == Approx(1e-5).epsilon(1e-12));    // warmup: 1e-3 * 1/100
  CHECK(s.lr(50) == Approx(5e-4).epsilon(1e-12));
  CHECK(s.lr(100) == Approx(1e-3).epsilon(1e-12));
  CHECK(s.lr(1000) == Approx(1e-3).epsilon(1e-12)); // stable phase ends here
  CHECK(s.lr(1001) == Approx(0.000998614185980905).epsilon(1e-12));
  CHECK(s.lr(1250) == Approx(0.0006817928305074291).epsilon(1e-12));  // 2*0.5^0.25 - 1
  CHECK(s.lr(1500) == Approx(0.00041421356237309517).epsilon(1e-12)); // sqrt(2) - 1
  CHECK(s.lr(1999) == Approx(6.933874625807413e-07).epsilon(1e-9));
  CHECK(s.lr(2000) == 0.0);
}

TEST_CASE("WSD linear and cosine shapes, min_lr respected", "[schedule]") {
  const LrSchedule lin = make_schedule(LrDecayStyle::WSD, WsdDecayStyle::Linear, 1.0, 0.1, 10, 110, 40);
  CHECK(lin.lr(70) == Approx(1.0));                 // stable until 110 - 40
  CHECK(lin.lr(90) == Approx(0.1 + 0.9 * 0.5));     // half-way through the decay
  CHECK(lin.lr(110) == Approx(0.1));
  const LrSchedule cos = make_schedule(LrDecayStyle::WSD, WsdDecayStyle::Cosine, 1.0, 0.1, 10, 110, 40);
  CHECK(cos.lr(80) == Approx(0.1 + 0.9 * 0.5 * (std::cos(M_PI * 0.25) + 1)));
}

TEST_CASE("cosine, linear and constant schedules with warmup", "[schedule]") {
  // Decay between step 10 (end of warmup) and 110: q = (s - 10) / 100.
  const LrSchedule cos = make_schedule(LrDecayStyle::Cosine, WsdDecayStyle::Exponential, 1.0, 0.1, 10, 110, 1);
  CHECK(cos.lr(5) == Approx(0.5));
  CHECK(cos.lr(35) == Approx(0.1 + 0.45 * (std::cos(M_PI / 4) + 1)));  // 0.868198
  CHECK(cos.lr(60) == Approx(0.55));
  CHECK(cos.lr(110) == Approx(0.1));
  CHECK(cos.lr(500) == Approx(0.1));
  const LrSchedule lin = make_schedule(LrDecayStyle::Linear, WsdDecayStyle::Exponential, 1.0, 0.1, 10, 110, 1);
  CHECK(lin.lr(35) == Approx(0.775));
  const LrSchedule con = make_schedule(LrDecayStyle::Constant, WsdDecayStyle::Exponential, 1.0, 0.1, 10, 110, 1);
  CHECK(con.lr(5) == Approx(0.5));
  CHECK(con.lr(100) == 1.0);
}

TEST_CASE("sparsity coefficient: multiply above target, divide down to the floor", "[sparsity]") {
  SparsityConfig c;
  c.target_ratio = 0.2;
  c.reg_coef_min = 1e-8;
  c.reg_coef_multiplier = 1.002;
  SparsityController ctl(c);
  CHECK(ctl.coef() == 1e-8);  // starts at lambda_0
  ctl.update(0.5);
  CHECK(ctl.coef() == Approx(1.002e-8).epsilon(1e-15));
  ctl.update(0.3);
  CHECK(ctl.coef() == Approx(1e-8 * 1.002 * 1.002).epsilon(1e-15));
  ctl.update(0.2);  // not above target: divide
  CHECK(ctl.coef() == Approx(1.002e-8).epsilon(1e-15));
  ctl.update(0.1);
  ctl.update(0.1);  // would go below lambda_0: clamped
  CHECK(ctl.coef() == 1e-8);
  // 1000 steps above target multiply by 1.002^1000.
  for (int i = 0; i < 1000; ++i) ctl.update(0.9);
  CHECK(ctl.coef() == Approx(1e-8 * std::pow(1.002, 1000)).epsilon(1e-10));
  c.reg_coef_init = 0.5;
  CHECK(SparsityController(c).coef() == 0.5);
}

namespace {
// A float64 CPU tensor over one value, and the one-chunk table that updates it.
Tensor scalar(double* x) { return Tensor(x, DType::F64, Device::CPU, {1}); }
Buffer chunk_table(const std::vector<ops::AdamWChunk>& chunks) {
  Buffer t(DType::I64, Device::CPU, Shape{static_cast<int64_t>(chunks.size()), 4});
  std::copy(chunks.begin(), chunks.end(), static_cast<ops::AdamWChunk*>(t.tensor().raw()));
  return t;
}
}  // namespace

TEST_CASE("AdamW matches the PyTorch update computed by hand", "[optim]") {
  // p = 1, lr 0.1, betas (0.9, 0.95), eps 1e-8, weight decay 0.1; gradients 0.5, -0.25, 0.125.
  // Step 1: p = 1 * (1 - 0.01) = 0.99; m = 0.05, v = 0.0125; mhat = 0.5, sqrt(vhat) = 0.5;
  //         p = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.890000002.
  // Steps 2 and 3 the same way (bias corrections 1 - 0.9^t and 1 - 0.95^t).
  const double expected[] = {0.890000002, 0.8542630578558273, 0.8110522654784148};
  const double grads[] = {0.5, -0.25, 0.125};
  double p = 1.0, m = 0.0, v = 0.0, g = 0.0;
  const Buffer decayed = chunk_table({{0, 0, 1, 1}}), not_decayed = chunk_table({{0, 0, 1, 0}});
  for (int t = 0; t < 3; ++t) {
    g = grads[t];
    ops::adamw_update(scalar(&p), scalar(&g), scalar(&m), scalar(&v), decayed,
                      ops::AdamWStep{0.1, 0.9, 0.95, 1e-8, 0.1, t + 1, 1.0});
    CHECK(p == Approx(expected[t]).epsilon(1e-14));
  }
  // No decay for excluded tensors; grad_scale (clipping) multiplies the gradient first.
  double q = 1.0, qm = 0.0, qv = 0.0, qg = 4.0;
  ops::adamw_update(scalar(&q), scalar(&qg), scalar(&qm), scalar(&qv), not_decayed,
                    ops::AdamWStep{0.1, 0.9, 0.95, 1e-8, 0.1, 1, 0.25});
  CHECK(qm == Approx(0.1));  // (1 - 0.9) * 4 * 0.25
  CHECK(q == Approx(1.0 - 0.1 * 1.0 / (1.0 + 1e-8)).epsilon(1e-14));
}

TEST_CASE("adamw_chunks cuts segments in order into chunks of at most kAdamWChunkElements", "[optim]") {
  const int64_t C = ops::kAdamWChunkElements;
  const std::vector<ops::AdamWChunk> chunks =
      ops::adamw_chunks({{0, 100, 2 * C + 5, 1}, {2 * C + 20, 0, 3, 0}, {9, 9, 0, 1}});
  REQUIRE(chunks.size() == 4);  // the empty segment gives none
  const ops::AdamWChunk want[] = {{0, 100, C, 1}, {C, 100 + C, C, 1}, {2 * C, 100 + 2 * C, 5, 1}, {2 * C + 20, 0, 3, 0}};
  for (size_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    CHECK(chunks[i].offset == want[i].offset);
    CHECK(chunks[i].moment_offset == want[i].moment_offset);
    CHECK(chunks[i].size == want[i].size);
    CHECK(chunks[i].decay == want[i].decay);
  }
}

TEST_CASE("the fused AdamW update: each chunk with its decay rule and its moments, nothing else touched",
          "[optim]") {
  // Two segments of one flat buffer, the first longer than a chunk and
  // decayed, its moments 200 elements in; the second not decayed, its
  // moments at the start of the moment buffers (a ZeRO-1 shard's kind of
  // placement). Each element is checked against PyTorch's update written out
  // here, over two steps with clipping.
  const int64_t C = ops::kAdamWChunkElements, n = C + 300;
  const int64_t a_size = C + 50, b_offset = C + 100, b_size = 150;
  std::vector<double> p(n), g(n), m(n, 0.0), v(n, 0.0);
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = std::sin(0.37 * double(i)) + 0.5;
  const std::vector<double> p0 = p;
  const Buffer table = chunk_table(ops::adamw_chunks({{0, 200, a_size, 1}, {b_offset, 0, b_size, 0}}));
  const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, clip = 0.5;
  // The expected values, element by element.
  std::vector<double> want_p = p0, want_m(n, 0.0), want_v(n, 0.0);
  for (int64_t t = 1; t <= 2; ++t) {
    for (int64_t i = 0; i < n; ++i) g[size_t(i)] = std::cos(0.11 * double(i * t)) * double(t);
    auto expect_update = [&](int64_t i, int64_t mi, bool decay) {
      const double gi = g[size_t(i)] * clip;
      want_m[size_t(mi)] = b1 * want_m[size_t(mi)] + (1 - b1) * gi;
      want_v[size_t(mi)] = b2 * want_v[size_t(mi)] + (1 - b2) * gi * gi;
      const double mhat = want_m[size_t(mi)] / (1 - std::pow(b1, double(t)));
      const double vhat = want_v[size_t(mi)] / (1 - std::pow(b2, double(t)));
      want_p[size_t(i)] = want_p[size_t(i)] * (decay ? 1 - lr * wd : 1.0) - lr * mhat / (std::sqrt(vhat) + eps);
    };
    for (int64_t i = 0; i < a_size; ++i) expect_update(i, 200 + i, true);
    for (int64_t i = 0; i < b_size; ++i) expect_update(b_offset + i, i, false);
    auto view = [&](std::vector<double>& x) { return Tensor(x.data(), DType::F64, Device::CPU, {n}); };
    ops::adamw_update(view(p), view(g), view(m), view(v), table, ops::AdamWStep{lr, b1, b2, eps, wd, t, clip});
  }
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    worst = std::max({worst, std::abs(p[size_t(i)] - want_p[size_t(i)]), std::abs(m[size_t(i)] - want_m[size_t(i)]),
                      std::abs(v[size_t(i)] - want_v[size_t(i)])});
  }
  // float64 on both sides, values of order 1: the op multiplies by the bias
  // corrections' inverses where the expected values divide, which moves
  // each result by a few ulps (~1e-16); 1e-12 leaves room for that and
  // catches any wrong term (a missed decay alone moves p by 1e-3 x p).
  CHECK(worst < 1e-12);
  // Parameters outside both segments are untouched, bit for bit.
  for (int64_t i = a_size; i < b_offset; ++i) CHECK(p[size_t(i)] == p0[size_t(i)]);
  for (int64_t i = b_offset + b_size; i < n; ++i) CHECK(p[size_t(i)] == p0[size_t(i)]);
  // A chunk table that runs past the buffers is refused.
  const Buffer bad = chunk_table({{n - 10, 0, 20, 1}});
  auto view = [&](std::vector<double>& x) { return Tensor(x.data(), DType::F64, Device::CPU, {n}); };
  CHECK_THROWS(ops::adamw_update(view(p), view(g), view(m), view(v), bad, ops::AdamWStep{lr, b1, b2, eps, wd, 3, 1}));
}

TEST_CASE("AdamW's segments merge neighbours with one decay rule, and ZeRO-1 shards update the same values",
          "[optim]") {
  auto spec = [](const char* name, int64_t size, bool decay) {
    ParamSpec s;
    s.name = name;
    s.shape = Shape{size};
    s.weight_decay = decay;
    return s;
  };
  // Offsets are aligned to 64 elements: a 0, b 128, c 192, d 256. Padding
  // separates neighbours otherwise, and is never updated.
  const ParamLayout layout({spec("a", 128, true), spec("b", 64, true), spec("c", 64, false), spec("d", 70, true)});
  OptimizerConfig config;
  config.lr = 1e-2;
  config.weight_decay = 0.1;
  auto same = [](const std::vector<ops::AdamWChunk>& got, const std::vector<ops::AdamWChunk>& want) {
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      CAPTURE(i);
      CHECK(got[i].offset == want[i].offset);
      CHECK(got[i].moment_offset == want[i].moment_offset);
      CHECK(got[i].size == want[i].size);
      CHECK(got[i].decay == want[i].decay);
    }
  };
  AdamW whole(config, layout, DType::F32, Device::CPU);
  same(whole.segments(), {{0, 0, 192, 1}, {192, 192, 64, 0}, {256, 256, 70, 1}});
  // Two owned ranges that cover everything, cut inside b: the same segments.
  AdamW split(config, layout, DType::F32, Device::CPU, {{0, 150}, {150, 384}});
  same(split.segments(), {{0, 0, 192, 1}, {192, 192, 64, 0}, {256, 256, 70, 1}});
  // One shard in the middle: its moments are the shard buffer's, from 0.
  const AdamW shard(config, layout, DType::F32, Device::CPU, {{100, 300}});
  same(shard.segments(), {{100, 0, 92, 1}, {192, 92, 64, 0}, {256, 156, 44, 1}});

  // The unsharded and the split optimizer give bit-identical parameters.
  ParamStore p1(layout, DType::F32, Device::CPU), p2(layout, DType::F32, Device::CPU),
      grads(layout, DType::F32, Device::CPU);
  for (int64_t i = 0; i < layout.total_numel(); ++i) {
    p1.flat().data<float>()[i] = p2.flat().data<float>()[i] = float(0.1 * double(i) - 1.0);
    grads.flat().data<float>()[i] = float(std::sin(double(i)));
  }
  for (int step = 0; step < 3; ++step) {
    whole.step(p1, grads, 1e-2, 0.7);
    split.step(p2, grads, 1e-2, 0.7);
  }
  for (int64_t i = 0; i < layout.total_numel(); ++i) CHECK(p1.flat().data<float>()[i] == p2.flat().data<float>()[i]);
}
