#include "trainer/metrics.h"

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include <fstream>

#include "core/error.h"
#include "core/file_io.h"

namespace deco {

MetricsLog::MetricsLog(const std::string& run_dir, int64_t resume_step)
    : path_(run_dir + "/metrics.jsonl") {
  const bool exists = std::filesystem::exists(path_);
  if (exists && resume_step == 0)
    fail(path_, " already exists; pass --run-dir with a new directory (or remove the old run) so "
         "an earlier run's metrics are not overwritten.");
  if (exists) {
    std::ifstream in(path_);
    std::string kept, later;
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      const auto row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      const bool before = row.is_object() && row.contains("step") && row["step"].get<int64_t>() <= resume_step;
      (before ? kept : later) += line + "\n";
    }
    if (!later.empty()) write_file_atomic(str(path_, ".after-step-", resume_step), later);
    write_file_atomic(path_, kept);
  }
  out_.open(path_, std::ios::out | std::ios::app);
  if (!out_) fail("cannot create ", path_, "; check that the run directory is writable.");
}

void MetricsLog::write(const StepMetrics& m) {
  nlohmann::json j;
  j["step"] = m.step;
  j["consumed_samples"] = m.consumed_samples;
  j["consumed_tokens"] = m.consumed_tokens;
  j["lm_loss"] = m.lm_loss;
  j["reg_loss"] = m.reg_loss;
  j["lr"] = m.lr;
  j["grad_norm"] = m.grad_norm;
  j["reg_coef"] = m.reg_coef;
  j["activation_ratio"] = m.activation_ratio ? nlohmann::json(*m.activation_ratio) : nlohmann::json();
  j["activation_ratio_per_layer"] = m.activation_ratio_per_layer;
  j["deco_layers"] = m.deco_layer_index;
  if (!m.expert_tokens_per_layer.empty()) j["expert_tokens_per_layer"] = m.expert_tokens_per_layer;
  if (!m.expert_parallel_rows_sent.empty()) j["expert_parallel_rows_sent"] = m.expert_parallel_rows_sent;
  if (!m.expert_tokens_per_layer.empty()) {
    j["expert_max_violation"] = m.expert_max_violation;
    j["dead_experts"] = m.dead_experts;
    j["idle_token_share"] = m.idle_token_share;
    j["router_entropy"] = m.router_entropy;
  }
  j["alerts"] = m.alerts;
  j["skipped_steps"] = m.skipped_steps;
  j["tflops"] = m.tflops;
  j["tokens_per_second"] = m.tokens_per_second;
  j["step_time_s"] = m.step_time_s;
  j["elapsed_s"] = m.elapsed_s;
  j["data_wait_s"] = m.data_wait_s;
  if (m.val_loss) j["val_loss"] = *m.val_loss;
  out_ << j.dump() << '\n';
  out_.flush();  // a crashed run keeps every finished step
  if (!out_) fail("writing ", path_, " failed; is the disk full?");
}

std::string format_console_line(const StepMetrics& m, bool per_layer) {
  char buf[512];
  const int64_t secs = static_cast<int64_t>(m.elapsed_s);
  std::snprintf(buf, sizeof(buf),
                " step %6lld/%lld | lm loss %.4f | reg loss %.3e | lr %.3e | grad norm %.3f | ",
                static_cast<long long>(m.step), static_cast<long long>(m.train_iters), m.lm_loss,
                m.reg_loss, m.lr, m.grad_norm);
  std::string line = buf;
  if (m.activation_ratio) {
    std::snprintf(buf, sizeof(buf), "act ratio %.4f | reg coef %.3e | ", *m.activation_ratio, m.reg_coef);
    line += buf;
  }
  std::snprintf(buf, sizeof(buf), "%.0f tok/s | elapsed %02lld:%02lld:%02lld",
                m.tokens_per_second, static_cast<long long>(secs / 3600),
                static_cast<long long>(secs / 60 % 60), static_cast<long long>(secs % 60));
  line += buf;
  if (m.val_loss) {
    std::snprintf(buf, sizeof(buf), " | val loss %.4f", *m.val_loss);
    line += buf;
  }
  if (per_layer && !m.activation_ratio_per_layer.empty()) {
    line += "\n   layer ratios:";
    for (size_t i = 0; i < m.activation_ratio_per_layer.size(); ++i) {
      std::snprintf(buf, sizeof(buf), " %lld:%.3f", static_cast<long long>(m.deco_layer_index[i]),
                    m.activation_ratio_per_layer[i]);
      line += buf;
    }
  }
  return line;
}

}  // namespace deco
