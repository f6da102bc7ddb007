#include "trainer/monitor.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace deco {

Monitor::Monitor(const LoggingConfig& logging, double target_ratio, int64_t deco_layers, int64_t experts)
    : config_(logging),
      target_(target_ratio),
      last_active_(static_cast<size_t>(deco_layers), std::vector<int64_t>(static_cast<size_t>(experts), 0)),
      dead_reported_(static_cast<size_t>(deco_layers), 0),
      idle_steps_(static_cast<size_t>(deco_layers), 0) {}

std::vector<std::string> Monitor::observe(StepMetrics& m) {
  std::vector<std::string> lines;
  const size_t layers = m.expert_tokens_per_layer.size();
  if (layers == 0) return lines;  // a dense model
  DECO_ASSERT(layers == last_active_.size(), "monitor: ", layers, " DECO layers, expected ", last_active_.size());
  m.expert_max_violation.assign(layers, 0.0);
  m.dead_experts.assign(layers, 0);
  m.idle_token_share.assign(layers, 0.0);
  for (size_t l = 0; l < layers; ++l) {
    const std::vector<int64_t>& load = m.expert_tokens_per_layer[l];
    const double mean = std::accumulate(load.begin(), load.end(), 0.0) / static_cast<double>(load.size());
    const double max = static_cast<double>(*std::max_element(load.begin(), load.end()));
    m.expert_max_violation[l] = mean > 0 ? (max - mean) / mean : 0.0;
    for (size_t e = 0; e < load.size(); ++e) {
      if (load[e] > 0) last_active_[l][e] = m.step;
      m.dead_experts[l] += m.step - last_active_[l][e] >= config_.dead_expert_steps;
    }
    const int64_t layer = m.deco_layer_index.empty() ? static_cast<int64_t>(l) : m.deco_layer_index[l];
    if (m.dead_experts[l] > dead_reported_[l])
      lines.push_back(str("warning: step ", m.step, ": layer ", layer, " has ", m.dead_experts[l],
                          " dead expert(s) (no token for ", config_.dead_expert_steps, " steps)"));
    dead_reported_[l] = m.dead_experts[l];
    if (l < m.idle_tokens_per_layer.size() && m.tokens_per_layer > 0) {
      m.idle_token_share[l] = static_cast<double>(m.idle_tokens_per_layer[l]) / static_cast<double>(m.tokens_per_layer);
      // Like the ratio alert, only a condition that lasts alert_steps steps:
      // the share fluctuates from batch to batch.
      int64_t& run = idle_steps_[l];
      run = m.idle_token_share[l] > config_.alert_idle_token_share ? run + 1 : 0;
      if (run >= config_.alert_steps) {
        m.alerts.push_back(str("idle_tokens_layer_", layer));
        if (run % config_.alert_steps == 0)
          lines.push_back(str("warning: step ", m.step, ": layer ", layer, ": more than ",
                              config_.alert_idle_token_share * 100, "% of the tokens have activated no routed expert "
                              "for ", run, " steps (now ", std::round(m.idle_token_share[l] * 1000) / 10, "%)"));
      }
    }
    if (m.dead_experts[l] > 0) m.alerts.push_back(str("dead_experts_layer_", layer));
  }
  if (m.activation_ratio) {
    const bool off = std::fabs(*m.activation_ratio - target_) > config_.alert_ratio_margin;
    off_target_steps_ = off ? off_target_steps_ + 1 : 0;
    if (off_target_steps_ >= config_.alert_steps) {
      m.alerts.push_back("activation_ratio_off_target");
      if (off_target_steps_ % config_.alert_steps == 0)
        lines.push_back(str("warning: step ", m.step, ": the activation ratio ", *m.activation_ratio,
                            " has been more than ", config_.alert_ratio_margin, " from its target ", target_,
                            " for ", off_target_steps_, " steps"));
    }
  }
  return lines;
}

}  // namespace deco
