// The training loop: micro-batches with gradient accumulation, gradient
// reduction over the data-parallel groups, clipping by the global norm,
// AdamW with the learning-rate schedule, the sparsity coefficient's update,
// validation, and metrics.
#pragma once

#include <memory>
#include <ostream>
#include <string>

#include "data/loader.h"
#include "trainer/data_sources.h"
#include "model/model.h"
#include "parallel/layout.h"
#include "trainer/config.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"
#include "trainer/sparsity.h"

namespace deco {

struct TrainerOptions {
  std::string run_dir;            // created if missing; holds config.yaml and metrics.jsonl
  std::ostream* console = nullptr;  // where rank 0 prints; nullptr = quiet
};

class Trainer {
 public:
  Trainer(const Config& config, ProcessGroups& groups, const TrainerOptions& options);
  ~Trainer();

  // Runs the remaining steps up to training.train_iters.
  void train();
  // One optimizer step over one global batch; returns its metrics (also logged).
  StepMetrics train_step();
  // Mean lm loss over the next training.eval_iters global batches of the
  // validation split (each evaluation reads fresh batches, as Megatron-LM does).
  double evaluate();

  const Model& model() const { return *model_; }
  int64_t step() const { return step_; }
  double reg_coef() const { return sparsity_.coef(); }

 private:
  void check_memory();
  void print_banner();
  void reduce_gradients();
  double global_grad_norm();

  Config config_;
  ProcessGroups& groups_;
  TrainerOptions options_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<AdamW> optimizer_;
  LrSchedule schedule_;
  SparsityController sparsity_;
  TrainingData data_;
  BatchPlan plan_;
  std::unique_ptr<DataLoader> loader_;
  std::unique_ptr<MetricsLog> metrics_;
  int64_t step_ = 0;
  int64_t consumed_samples_ = 0;
  int64_t evaluations_ = 0;
  double elapsed_s_ = 0.0;
  std::vector<int32_t> batch_;  // host tokens of the current validation micro-batch
  std::string memory_note_;     // the memory estimate, for the banner
};

}  // namespace deco
