// What a training step reports, and where it goes: one console line per
// log interval (rank 0), one JSON object per step in <run_dir>/metrics.jsonl.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace deco {

struct StepMetrics {
  int64_t step = 0;
  int64_t train_iters = 0;
  int64_t consumed_samples = 0;
  int64_t consumed_tokens = 0;
  double lm_loss = 0.0;
  double reg_loss = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;
  double reg_coef = 0.0;  // the coefficient this step trained with
  // Routed-expert activation ratio over the global batch; empty for dense models.
  std::optional<double> activation_ratio;
  std::vector<double> activation_ratio_per_layer;  // one per DECO layer
  std::vector<int64_t> deco_layer_index;           // model layer index of each entry
  // Active tokens per expert over the global batch, one vector of E per DECO layer.
  std::vector<std::vector<int64_t>> expert_tokens_per_layer;
  // Expert parallelism: token rows sent to another rank's experts, over all
  // ranks and micro-batches, per DECO layer (empty without expert parallelism).
  std::vector<int64_t> expert_parallel_rows_sent;
  // Per DECO layer, over the global batch: tokens with no active expert,
  // and the routing entropy summed over tokens; tokens per layer.
  std::vector<int64_t> idle_tokens_per_layer;
  std::vector<double> router_entropy;  // mean per token, per DECO layer
  int64_t tokens_per_layer = 0;
  // Derived by the Monitor (trainer/monitor.h).
  std::vector<double> expert_max_violation;  // (max - mean) / mean of the per-expert token counts
  std::vector<int64_t> dead_experts;         // experts without a token for logging.dead_expert_steps
  std::vector<double> idle_token_share;      // idle tokens / tokens
  std::vector<std::string> alerts;           // the alert conditions holding at this step
  int64_t skipped_steps = 0;                 // steps skipped for non-finite values so far
  double tflops = 0.0;                       // executed training TFLOP/s (6N + attention per token)
  double tokens_per_second = 0.0;
  double step_time_s = 0.0;
  double elapsed_s = 0.0;
  double eta_s = 0.0;  // estimated time to train_iters, from this process's mean step time
  double data_wait_s = 0.0;  // time the step waited for its batches (0 when prefetching keeps up)
  std::optional<double> val_loss;
  // Peak memory of the training device so far, in bytes: on the CPU the
  // process's peak resident set, on a GPU the most the caching allocator held.
  int64_t peak_memory_bytes = 0;
  // Write this step's TensorBoard histograms too (the trainer sets it on log
  // steps: histograms are larger than scalars).
  bool histograms = false;
};

class TensorBoardWriter;

class MetricsLog {
 public:
  // Creates <run_dir>/metrics.jsonl and refuses to overwrite an existing
  // one, unless the run resumes at `resume_step` > 0: then the rows up to
  // that step are kept and appended to, and rows after it (steps the
  // resumed run recomputes) move to metrics.jsonl.after-step-<N>.
  // Also creates a new TensorBoard event file in run_dir (a resumed run
  // too: TensorBoard merges the files of a directory; trainer/tensorboard.h).
  explicit MetricsLog(const std::string& run_dir, int64_t resume_step = 0);
  ~MetricsLog();
  // One JSON row, and the step's scalars in the event file (tags in
  // docs/monitoring.md); both flushed.
  void write(const StepMetrics& m);
  const std::string& path() const { return path_; }
  const std::string& tensorboard_path() const;

 private:
  std::string path_;
  std::ofstream out_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

// The TensorBoard scalars of a step, (tag, value) in the order written:
// train/..., val/loss when present, sparsity/... and experts/layer_LL/...
// (LL: the model layer index, two digits).
std::vector<std::pair<std::string, double>> tensorboard_scalars(const StepMetrics& m);

// The TensorBoard histograms of a step, (tag, values): per DECO layer the
// share of the tokens each expert received (experts/layer_LL/token_share,
// one value per expert), and the activation ratio of every DECO layer
// (sparsity/activation_ratio_per_layer). Empty for dense models.
std::vector<std::pair<std::string, std::vector<double>>> tensorboard_histograms(const StepMetrics& m);
// Their bucket limits: shares and ratios lie in [0, 1], buckets 0.01 wide
// (the first, up to 0, counts the experts with no token).
const std::vector<double>& share_histogram_limits();

// The console line, Megatron-like.
std::string format_console_line(const StepMetrics& m, bool per_layer);
// The live line a terminal shows between log lines:
// "[=======>            ]  123/300  41% | ETA 00:00:10 | 29812 tok/s".
std::string format_progress_bar(const StepMetrics& m, int width = 30);

}  // namespace deco
