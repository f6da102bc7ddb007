#include <algorithm>
#include "trainer/metrics.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <thread>
#include <nlohmann/json.hpp>

#include <fstream>

#include "core/error.h"
#include "core/file_io.h"
#include "trainer/tensorboard.h"

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
  // A resumed run gets its own event file too, starting with a restart
  // marker at resume_step + 1, so TensorBoard drops what the failed run
  // logged after the checkpoint (docs/monitoring.md, "TensorBoard"). Event files
  // are named by the second: a run resumed within the second its previous
  // file was created in waits for the next one (the new file must also sort
  // after the old one, the order TensorBoard reads them in).
  int64_t seconds = std::time(nullptr);
  for (int tries = 0; resume_step > 0 && tries < 30 &&
                      std::filesystem::exists(TensorBoardWriter::path_for(run_dir, seconds));
       ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    seconds = std::time(nullptr);
  }
  tensorboard_ = std::make_unique<TensorBoardWriter>(run_dir, seconds);
  if (resume_step > 0) {
    tensorboard_->add_session_start(resume_step + 1, static_cast<double>(std::time(nullptr)),
                                    str("resumed from the checkpoint of step ", resume_step));
    tensorboard_->flush();
  }
}

MetricsLog::~MetricsLog() = default;

const std::string& MetricsLog::tensorboard_path() const { return tensorboard_->path(); }

namespace {

std::string layer_tag(const StepMetrics& m, size_t i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "layer_%02lld",
                static_cast<long long>(i < m.deco_layer_index.size() ? m.deco_layer_index[i] : i));
  return buf;
}

}  // namespace

std::vector<std::pair<std::string, std::vector<double>>> tensorboard_histograms(const StepMetrics& m) {
  std::vector<std::pair<std::string, std::vector<double>>> h;
  if (!m.activation_ratio_per_layer.empty())
    h.emplace_back("sparsity/activation_ratio_per_layer", m.activation_ratio_per_layer);
  for (size_t i = 0; i < m.expert_tokens_per_layer.size() && m.tokens_per_layer > 0; ++i) {
    std::vector<double> share;
    for (int64_t count : m.expert_tokens_per_layer[i])
      share.push_back(static_cast<double>(count) / static_cast<double>(m.tokens_per_layer));
    h.emplace_back("experts/" + layer_tag(m, i) + "/token_share", std::move(share));
  }
  return h;
}

const std::vector<double>& share_histogram_limits() {
  static const std::vector<double> limits = [] {
    std::vector<double> l;
    for (int i = 0; i <= 100; ++i) l.push_back(i / 100.0);
    return l;
  }();
  return limits;
}

std::vector<std::pair<std::string, double>> tensorboard_scalars(const StepMetrics& m) {
  std::vector<std::pair<std::string, double>> s = {
      {"train/lm_loss", m.lm_loss},
      {"train/reg_loss", m.reg_loss},
      {"train/lr", m.lr},
      {"train/grad_norm", m.grad_norm},
      {"train/reg_coef", m.reg_coef},
      {"train/tokens_per_second", m.tokens_per_second},
      {"train/tflops", m.tflops},
      {"train/data_wait_s", m.data_wait_s},
      {"train/skipped_steps", static_cast<double>(m.skipped_steps)},
      {"train/peak_memory_gib", static_cast<double>(m.peak_memory_bytes) / (1024.0 * 1024.0 * 1024.0)},
  };
  if (m.val_loss) s.emplace_back("val/loss", *m.val_loss);
  if (m.activation_ratio) s.emplace_back("sparsity/activation_ratio", *m.activation_ratio);
  auto layer = [&](size_t i) { return layer_tag(m, i); };
  for (size_t i = 0; i < m.activation_ratio_per_layer.size(); ++i)
    s.emplace_back("sparsity/" + layer(i) + "/activation_ratio", m.activation_ratio_per_layer[i]);
  if (!m.expert_tokens_per_layer.empty()) {
    for (size_t i = 0; i < m.expert_tokens_per_layer.size(); ++i) {
      const std::string p = "experts/" + layer(i) + "/";
      if (i < m.expert_max_violation.size()) s.emplace_back(p + "max_violation", m.expert_max_violation[i]);
      if (i < m.dead_experts.size()) s.emplace_back(p + "dead_experts", static_cast<double>(m.dead_experts[i]));
      if (i < m.idle_token_share.size()) s.emplace_back(p + "idle_token_share", m.idle_token_share[i]);
      if (i < m.router_entropy.size()) s.emplace_back(p + "router_entropy", m.router_entropy[i]);
    }
  }
  return s;
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
  j["peak_memory_bytes"] = m.peak_memory_bytes;
  if (m.val_loss) j["val_loss"] = *m.val_loss;
  out_ << j.dump() << '\n';
  out_.flush();  // a crashed run keeps every finished step
  if (!out_) fail("writing ", path_, " failed; is the disk full?");

  const double now = unix_time_now();
  for (const auto& [tag, value] : tensorboard_scalars(m)) tensorboard_->add_scalar(tag, m.step, value, now);
  if (m.histograms)
    for (const auto& [tag, values] : tensorboard_histograms(m))
      tensorboard_->add_histogram(tag, m.step, values, share_histogram_limits(), now);
  tensorboard_->flush();
}

namespace {

std::string hms(double seconds) {
  const int64_t s = static_cast<int64_t>(std::max(0.0, seconds));
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%02lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  return buf;
}

}  // namespace

std::string format_progress_bar(const StepMetrics& m, int width) {
  const double done = m.train_iters > 0 ? static_cast<double>(m.step) / static_cast<double>(m.train_iters) : 1.0;
  const int filled = static_cast<int>(done * width);
  std::string bar = "[" + std::string(static_cast<size_t>(filled), '=');
  if (filled < width) bar += ">" + std::string(static_cast<size_t>(width - filled - 1), ' ');
  char buf[160];
  std::snprintf(buf, sizeof(buf), "] %6lld/%lld %3.0f%% | ETA %s | %.0f tok/s", static_cast<long long>(m.step),
                static_cast<long long>(m.train_iters), 100.0 * done, hms(m.eta_s).c_str(), m.tokens_per_second);
  return bar + buf;
}

std::string format_console_line(const StepMetrics& m, bool per_layer) {
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                " step %6lld/%lld | lm loss %.4f | reg loss %.3e | lr %.3e | grad norm %.3f | ",
                static_cast<long long>(m.step), static_cast<long long>(m.train_iters), m.lm_loss,
                m.reg_loss, m.lr, m.grad_norm);
  std::string line = buf;
  if (m.activation_ratio) {
    std::snprintf(buf, sizeof(buf), "act ratio %.4f | reg coef %.3e | ", *m.activation_ratio, m.reg_coef);
    line += buf;
  }
  std::snprintf(buf, sizeof(buf), "%.0f tok/s | elapsed %s", m.tokens_per_second, hms(m.elapsed_s).c_str());
  line += buf;
  if (m.step < m.train_iters) line += " | ETA " + hms(m.eta_s);
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
