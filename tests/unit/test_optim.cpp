// Learning-rate schedules, the sparsity coefficient controller and AdamW
// against values computed by hand (the derivations are in the comments).
#include <catch2/catch.hpp>

#include <cmath>

#include "kernels/ops.h"
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

TEST_CASE("AdamW matches the PyTorch update computed by hand", "[optim]") {
  // p = 1, lr 0.1, betas (0.9, 0.95), eps 1e-8, weight decay 0.1; gradients 0.5, -0.25, 0.125.
  // Step 1: p = 1 * (1 - 0.01) = 0.99; m = 0.05, v = 0.0125; mhat = 0.5, sqrt(vhat) = 0.5;
  //         p = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.890000002.
  // Steps 2 and 3 the same way (bias corrections 1 - 0.9^t and 1 - 0.95^t).
  const double expected[] = {0.890000002, 0.8542630578558273, 0.8110522654784148};
  const double grads[] = {0.5, -0.25, 0.125};
  double p = 1.0, m = 0.0, v = 0.0, g = 0.0;
  const Tensor tp(&p, DType::F64, Device::CPU, {1}), tm(&m, DType::F64, Device::CPU, {1}),
      tv(&v, DType::F64, Device::CPU, {1}), tg(&g, DType::F64, Device::CPU, {1});
  for (int t = 0; t < 3; ++t) {
    g = grads[t];
    ops::adamw_update(tp, tg, tm, tv, ops::AdamWStep{0.1, 0.9, 0.95, 1e-8, 0.1, t + 1, 1.0}, true);
    CHECK(p == Approx(expected[t]).epsilon(1e-14));
  }
  // No decay for excluded tensors; grad_scale (clipping) multiplies the gradient first.
  double q = 1.0, qm = 0.0, qv = 0.0, qg = 4.0;
  ops::adamw_update(Tensor(&q, DType::F64, Device::CPU, {1}), Tensor(&qg, DType::F64, Device::CPU, {1}),
                    Tensor(&qm, DType::F64, Device::CPU, {1}), Tensor(&qv, DType::F64, Device::CPU, {1}),
                    ops::AdamWStep{0.1, 0.9, 0.95, 1e-8, 0.1, 1, 0.25}, false);
  CHECK(qm == Approx(0.1));  // (1 - 0.9) * 4 * 0.25
  CHECK(q == Approx(1.0 - 0.1 * 1.0 / (1.0 + 1e-8)).epsilon(1e-14));
}
