// Learning-rate schedules, Megatron-LM's formulas with linear warmup.
//
// Step s (1-based optimizer step) uses:
//   s <= warmup:           lr * s / warmup
//   constant:              lr
//   linear / cosine:       decay from lr to min_lr between warmup and decay_end
//   wsd:                   lr until decay_end - wsd_decay_iters, then the
//                          decay shape to min_lr at decay_end:
//                          exponential  min + (lr-min) * (2 * 0.5^q - 1)
//                          linear       min + (lr-min) * (1 - q)
//                          cosine       min + (lr-min) * (1 + cos(pi q)) / 2
//                          with q the fraction of the decay phase done
//   s >= decay_end:        min_lr (all decaying styles)
// (Megatron starts counting at 0 and so spends its first step at lr 0;
// deco's first step already uses lr / warmup.)
#pragma once

#include <cstdint>

#include "trainer/config.h"

namespace deco {

class LrSchedule {
 public:
  LrSchedule(const OptimizerConfig& opt, const ScheduleConfig& sched, int64_t train_iters);
  double lr(int64_t step) const;

 private:
  double max_lr_, min_lr_;
  LrDecayStyle style_;
  WsdDecayStyle wsd_style_;
  int64_t warmup_, decay_end_, wsd_decay_;
};

}  // namespace deco
