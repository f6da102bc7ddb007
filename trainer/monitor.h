// What the people training DECO watch (docs/monitoring.md): per-expert load
// and its imbalance, dead experts, tokens no expert sees, and the alerts
// when the activation ratio stays off target or experts die. The Monitor
// turns each step's global counts into derived metrics and alert lines; it
// keeps the little history the alerts need (last active step per expert,
// steps off target in a row).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config.h"
#include "trainer/metrics.h"

namespace deco {

class Monitor {
 public:
  Monitor(const LoggingConfig& logging, double target_ratio, int64_t deco_layers, int64_t experts);

  // From m's global counts (expert_tokens_per_layer, idle_tokens_per_layer,
  // activation_ratio) fills its derived metrics (expert_max_violation,
  // dead_experts, idle_token_share) and its alert flags; returns the
  // warning lines to print (empty when nothing new is wrong).
  std::vector<std::string> observe(StepMetrics& m);

 private:
  LoggingConfig config_;
  double target_;
  std::vector<std::vector<int64_t>> last_active_;  // [layer][expert]: last step with a token
  std::vector<int64_t> dead_reported_;             // dead experts last reported per layer
  std::vector<int64_t> idle_steps_;                // steps in a row above the idle-token share, per layer
  int64_t off_target_steps_ = 0;
};

}  // namespace deco
