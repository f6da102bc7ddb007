#include "trainer/schedule.h"

#include <cmath>

namespace deco {

LrSchedule::LrSchedule(const OptimizerConfig& opt, const ScheduleConfig& sched, int64_t train_iters)
    : max_lr_(opt.lr),
      min_lr_(opt.min_lr),
      style_(sched.lr_decay_style),
      wsd_style_(sched.lr_wsd_decay_style),
      warmup_(sched.lr_warmup_iters),
      decay_end_(sched.lr_decay_iters > 0 ? sched.lr_decay_iters : train_iters),
      wsd_decay_(sched.lr_wsd_decay_iters) {}

double LrSchedule::lr(int64_t step) const {
  if (warmup_ > 0 && step <= warmup_)
    return max_lr_ * static_cast<double>(step) / static_cast<double>(warmup_);
  if (style_ == LrDecayStyle::Constant) return max_lr_;
  if (step >= decay_end_) return min_lr_;
  const double delta = max_lr_ - min_lr_;
  if (style_ == LrDecayStyle::WSD) {
    const int64_t anneal_start = decay_end_ - wsd_decay_;
    if (step <= anneal_start) return max_lr_;
    const double q = static_cast<double>(step - anneal_start) / static_cast<double>(wsd_decay_);
    switch (wsd_style_) {
      case WsdDecayStyle::Exponential: return min_lr_ + delta * (2.0 * std::pow(0.5, q) - 1.0);
      case WsdDecayStyle::Linear: return min_lr_ + delta * (1.0 - q);
      case WsdDecayStyle::Cosine: return min_lr_ + delta * 0.5 * (std::cos(M_PI * q) + 1.0);
    }
  }
  const double q = static_cast<double>(step - warmup_) / static_cast<double>(decay_end_ - warmup_);
  if (style_ == LrDecayStyle::Linear) return min_lr_ + delta * (1.0 - q);
  return min_lr_ + delta * 0.5 * (std::cos(M_PI * q) + 1.0);  // cosine
}

}  // namespace deco
