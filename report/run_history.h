// A finished (or running) training run as `deco report` sees it: the run
// directory's config.yaml and metrics.jsonl (docs/monitoring.md), read into
// per-step series.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace deco::report {

struct RunHistory {
  std::string dir;     // as given
  std::string name;    // the directory's last component
  Config config;       // <dir>/config.yaml, the resolved config the run trained with
  int64_t non_embedding_params = 0;
  bool deco = false;   // has DECO layers (routed experts)

  // One entry per metrics.jsonl row, in step order.
  std::vector<double> step, tokens, lm_loss, reg_loss, lr, grad_norm, reg_coef, activation_ratio,
      tokens_per_second, tflops, step_time_s;
  std::vector<int64_t> alert_rows;   // steps whose row carried alerts
  int64_t skipped_steps = 0;         // the last row's count
  double elapsed_s = 0.0;            // the last row's
  // Evaluations: (step, tokens, loss).
  std::vector<double> val_step, val_tokens, val_loss;
  // DECO runs: model layer index of each DECO layer, the activation ratio
  // per [deco layer][row], and the active tokens per [deco layer][expert]
  // summed over the last `load_window_rows` rows (expert load).
  std::vector<int64_t> deco_layers;
  std::vector<std::vector<double>> layer_ratio;
  std::vector<std::vector<double>> expert_tokens;
  int64_t load_window_rows = 0;
  int64_t tokens_per_layer_in_window = 0;  // tokens each layer routed in that window

  // Summary values (NaN when absent).
  double final_lm_loss() const;          // mean over the last 10% of rows (1 to 100 rows)
  double final_val_loss() const;         // the last evaluation
  double final_activation_ratio() const; // mean over the same rows as final_lm_loss
  double mean_tokens_per_second() const; // median over rows after the first (compile/warm-up) one
  size_t final_rows() const;             // how many rows the final_* means cover
};

// Reads <dir>/config.yaml and <dir>/metrics.jsonl. Throws deco::Error naming
// the file and what to pass instead when either is missing or malformed.
// `load_window` is how many of the last rows the expert-load heatmap sums.
RunHistory load_run(const std::string& dir, int64_t load_window = 100);

}  // namespace deco::report
