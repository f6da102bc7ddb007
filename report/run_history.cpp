#include "report/run_history.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "model/model_stats.h"

namespace deco::report {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A number, or NaN for null/missing (nlohmann writes NaN and Inf as null).
double number(const nlohmann::json& row, const char* key) {
  const auto it = row.find(key);
  return it != row.end() && it->is_number() ? it->get<double>() : kNaN;
}

double mean_of_last(const std::vector<double>& v, size_t n) {
  double sum = 0;
  size_t count = 0;
  for (size_t i = v.size() - std::min(n, v.size()); i < v.size(); ++i)
    if (std::isfinite(v[i])) { sum += v[i]; ++count; }
  return count ? sum / static_cast<double>(count) : kNaN;
}

}  // namespace

size_t RunHistory::final_rows() const {
  return std::clamp<size_t>(step.size() / 10, 1, 100);
}

double RunHistory::final_lm_loss() const { return mean_of_last(lm_loss, final_rows()); }

double RunHistory::final_val_loss() const { return val_loss.empty() ? kNaN : val_loss.back(); }

double RunHistory::final_activation_ratio() const {
  return deco ? mean_of_last(activation_ratio, final_rows()) : kNaN;
}

double RunHistory::mean_tokens_per_second() const {
  std::vector<double> v;
  for (size_t i = 1; i < tokens_per_second.size(); ++i)
    if (std::isfinite(tokens_per_second[i])) v.push_back(tokens_per_second[i]);
  if (v.empty() && !tokens_per_second.empty()) v.push_back(tokens_per_second[0]);
  if (v.empty()) return kNaN;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

RunHistory load_run(const std::string& dir, int64_t load_window) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir))
    fail(dir, " is not a directory; pass the run directory of a deco train run (its --run-dir or logging.run_dir).");
  RunHistory run;
  run.dir = dir;
  run.name = fs::path(dir).lexically_normal().filename().string();
  if (run.name.empty() || run.name == ".") run.name = fs::absolute(dir).lexically_normal().parent_path().filename().string();

  const std::string config_path = dir + "/config.yaml";
  if (!fs::exists(config_path))
    fail(config_path, " does not exist; pass the run directory of a deco train run, which holds config.yaml "
         "and metrics.jsonl.");
  {
    std::ifstream in(config_path);
    std::stringstream text;
    text << in.rdbuf();
    run.config = parse_config(text.str(), config_path);
  }
  run.non_embedding_params = count_params(run.config.model).non_embedding;
  run.deco = run.config.model.num_experts > 0 && run.config.model.dense_layers < run.config.model.num_layers;
  const int64_t tokens_per_step = run.config.training.global_batch_size * run.config.model.seq_length;

  const std::string metrics_path = dir + "/metrics.jsonl";
  std::ifstream in(metrics_path);
  if (!in)
    fail(metrics_path, " does not exist; pass the run directory of a deco train run that has logged at least "
         "one step.");
  std::vector<std::vector<std::vector<double>>> expert_rows;  // per row: [layer][expert]
  int64_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.empty()) continue;
    const auto row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!row.is_object() || !row.contains("step")) {
      // A run killed mid-write can leave a partial last line: skip it, refuse anything else.
      if (in.peek() == std::char_traits<char>::eof()) break;
      fail(metrics_path, " line ", line_no, " is not a metrics row (a JSON object with \"step\"); "
           "pass a metrics.jsonl written by deco train.");
    }
    run.step.push_back(number(row, "step"));
    run.tokens.push_back(number(row, "consumed_tokens"));
    run.lm_loss.push_back(number(row, "lm_loss"));
    run.reg_loss.push_back(number(row, "reg_loss"));
    run.lr.push_back(number(row, "lr"));
    run.grad_norm.push_back(number(row, "grad_norm"));
    run.reg_coef.push_back(number(row, "reg_coef"));
    run.activation_ratio.push_back(number(row, "activation_ratio"));
    run.tokens_per_second.push_back(number(row, "tokens_per_second"));
    run.tflops.push_back(number(row, "tflops"));
    run.step_time_s.push_back(number(row, "step_time_s"));
    if (row.contains("skipped_steps") && row["skipped_steps"].is_number())
      run.skipped_steps = row["skipped_steps"].get<int64_t>();
    if (std::isfinite(number(row, "elapsed_s"))) run.elapsed_s = number(row, "elapsed_s");
    if (row.contains("alerts") && row["alerts"].is_array() && !row["alerts"].empty())
      run.alert_rows.push_back(static_cast<int64_t>(run.step.back()));
    if (std::isfinite(number(row, "val_loss"))) {
      run.val_step.push_back(run.step.back());
      run.val_tokens.push_back(run.tokens.back());
      run.val_loss.push_back(number(row, "val_loss"));
    }
    if (row.contains("deco_layers") && row["deco_layers"].is_array() && run.deco_layers.empty())
      run.deco_layers = row["deco_layers"].get<std::vector<int64_t>>();
    const size_t r = run.step.size() - 1;
    if (row.contains("activation_ratio_per_layer") && row["activation_ratio_per_layer"].is_array()) {
      const auto& per = row["activation_ratio_per_layer"];
      if (run.layer_ratio.size() < per.size()) run.layer_ratio.resize(per.size());
      for (size_t l = 0; l < per.size(); ++l) {
        run.layer_ratio[l].resize(r, kNaN);
        run.layer_ratio[l].push_back(per[l].is_number() ? per[l].get<double>() : kNaN);
      }
    }
    std::vector<std::vector<double>> experts;
    if (row.contains("expert_tokens_per_layer") && row["expert_tokens_per_layer"].is_array())
      experts = row["expert_tokens_per_layer"].get<std::vector<std::vector<double>>>();
    expert_rows.push_back(std::move(experts));
  }
  if (run.step.empty())
    fail(metrics_path, " has no rows yet; wait for the run's first logged step, or pass another run directory.");
  for (auto& per_layer : run.layer_ratio) per_layer.resize(run.step.size(), kNaN);

  // Expert load over the last rows that report it.
  const size_t window = static_cast<size_t>(std::max<int64_t>(1, load_window));
  for (size_t i = expert_rows.size(); i-- > 0 && run.load_window_rows < static_cast<int64_t>(window);) {
    const auto& layers = expert_rows[i];
    if (layers.empty()) continue;
    if (run.expert_tokens.size() < layers.size()) run.expert_tokens.resize(layers.size());
    for (size_t l = 0; l < layers.size(); ++l) {
      if (run.expert_tokens[l].size() < layers[l].size()) run.expert_tokens[l].resize(layers[l].size(), 0.0);
      for (size_t e = 0; e < layers[l].size(); ++e) run.expert_tokens[l][e] += layers[l][e];
    }
    ++run.load_window_rows;
  }
  run.tokens_per_layer_in_window = run.load_window_rows * tokens_per_step;
  return run;
}

}  // namespace deco::report
