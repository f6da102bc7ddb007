// The adaptive sparsity coefficient (deco-model.md section 3): once per
// optimizer step, from that step's activation ratio over the global batch,
//   ratio > target:  lambda = lambda * m
//   otherwise:       lambda = max(lambda / m, lambda_0)
// lambda is training state (it is saved and restored with the run).
#pragma once

#include <algorithm>

#include "trainer/config.h"

namespace deco {

class SparsityController {
 public:
  explicit SparsityController(const SparsityConfig& config)
      : target_(config.target_ratio),
        floor_(config.reg_coef_min),
        multiplier_(config.reg_coef_multiplier),
        coef_(config.initial_coef()) {}

  double coef() const { return coef_; }
  void set_coef(double coef) { coef_ = coef; }  // restoring a saved run
  void update(double activation_ratio) {
    coef_ = activation_ratio > target_ ? coef_ * multiplier_ : std::max(coef_ / multiplier_, floor_);
  }

 private:
  double target_, floor_, multiplier_, coef_;
};

}  // namespace deco
