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
#include "trainer/grad_reducer.h"
#include "model/model.h"
#include "parallel/layout.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/metrics.h"
#include "trainer/monitor.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"
#include "trainer/sparsity.h"

namespace deco {

struct TrainerOptions {
  std::string run_dir;            // created if missing; holds config.yaml and metrics.jsonl
  std::ostream* console = nullptr;  // where rank 0 prints; nullptr = quiet
  std::string load_weights;       // start from these weights (W.h5 or a checkpoint) with a fresh optimizer
  bool console_is_terminal = false;  // a live progress bar between the log lines
};

class Trainer {
 public:
  Trainer(const Config& config, ProcessGroups& groups, const TrainerOptions& options);
  ~Trainer();

  // Runs the remaining steps up to training.train_iters, saving checkpoints
  // every checkpoint.save_interval steps and at the end when checkpoint.save is set.
  void train();
  // Saves a checkpoint of the current step now (in the background).
  void save_checkpoint();
  // One optimizer step over one global batch; returns its metrics (also logged).
  StepMetrics train_step();
  // Mean lm loss over the next training.eval_iters global batches of the
  // validation split (each evaluation reads fresh batches, as Megatron-LM does).
  double evaluate();

  // Why the last step stopped the run before training.train_iters (a
  // planned stop every rank agreed on: training.exit_interval,
  // exit_duration_in_mins, exit_signal_handler); empty if it did not.
  const std::string& stop_reason() const { return stop_reason_; }

  const Model& model() const { return *model_; }
  int64_t step() const { return step_; }
  double reg_coef() const { return sparsity_.coef(); }

 private:
  void check_memory();
  // training.device as a Device, after checking that this binary and machine can train there.
  Device select_device() const;
  void restore();
  // model.expert_compute auto: the crossover ratio, from the checkpoint or measured now (rank 0's, for every rank).
  void setup_expert_compute();
  void check_resume_config(const std::string& saved_yaml, const std::string& origin) const;
  void print_banner();
  void maybe_inject_fault() const;
  void reduce_gradients();
  double global_grad_norm();
  void gather_params();  // ZeRO-1: every rank's updated shard to every rank

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
  std::unique_ptr<CheckpointWriter> checkpoints_;
  std::string resumed_from_;    // the checkpoint or weights this run started from
  int64_t last_saved_step_ = -1;
  int64_t step_ = 0;
  int64_t consumed_samples_ = 0;
  int64_t evaluations_ = 0;
  double elapsed_s_ = 0.0;
  std::vector<int32_t> batch_;  // host tokens of the current validation micro-batch
  std::string memory_note_;     // the memory estimate, for the banner
  bool step_memory_reported_ = false;  // the GPU memory report after this run's first step
  double expert_crossover_ = -1.0;  // model.expert_compute auto (TrainingState::expert_crossover)
  std::string crossover_note_;      // how it was found, for the banner
  // ZeRO-1 (parallel.use_distributed_optimizer): the flat ranges of the
  // dense and expert regions this rank owns, and scratch for its shard.
  std::unique_ptr<Monitor> monitor_;
  int64_t skipped_steps_ = 0, consecutive_skips_ = 0;
  int64_t steps_this_run_ = 0;      // for the ETA: steps and seconds of this process
  double seconds_this_run_ = 0.0;
  bool bar_shown_ = false;          // a progress bar is on the terminal's last line
  bool zero_ = false;
  Device device_ = Device::CPU;  // where the model, its gradients and the optimizer state live
  // Ranks hold different parts (expert parallel or ZeRO-1): checkpoints are
  // written as pieces by every rank (trainer/checkpoint_shards.h).
  bool sharded_ = false;
  ShardContext shard_context(int64_t rank) const;  // what rank `rank` holds and writes
  FlatRange dense_shard_, expert_shard_;
  Buffer shard_scratch_;
  std::unique_ptr<GradReducer> reducer_;  // parallel.overlap_grad_reduce
  // Planned stops: the signal handler while training runs, and why the
  // last step stopped the run.
  std::unique_ptr<ExitSignalHandler> exit_signal_;
  std::string stop_reason_;
};

}  // namespace deco
