// The run configuration: one YAML file with sections model, training,
// optimizer, schedule, sparsity, data, parallel, checkpoint and logging.
// Model and training keys use Megatron-LM's argument names in snake_case.
// Validation is strict: unknown keys (with the nearest valid key
// suggested), wrong types, missing required keys and impossible values are
// each one deco::Error naming the file, the key and the constraint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model_config.h"
#include "trainer/exit_signal.h"

namespace deco {

struct TrainingConfig {
  int64_t micro_batch_size = 0;   // required
  int64_t global_batch_size = 0;  // required; divisible by micro_batch_size x data-parallel size
  int64_t train_iters = 0;        // required; optimizer steps
  uint64_t seed = 1234;           // Megatron's default; also the data sampling seed
  int64_t log_interval = 10;      // console line every N steps (metrics.jsonl gets every step)
  int64_t eval_interval = 0;      // validation every N steps; 0 = never
  int64_t eval_iters = 10;        // global batches per validation
  int64_t threads = 0;            // CPU threads for OpenMP and BLAS; 0 = OMP_NUM_THREADS if set, else all cores
  // Where the model trains: "cpu", or "cuda" (the process's GPU, float32 on
  // the CUDA kernels; one process for now).
  std::string device = "cpu";
  // Megatron's --bf16: mixed precision (model/model.h): bf16 weights copy
  // and activations for compute, float32 master weights, gradients,
  // optimizer state and router. On the CPU a reference path (bf16 values,
  // float32 math), slower than float32; on the GPU the fast one.
  bool bf16 = false;
  // What bf16 decides: the model's activation dtype, and the bytes each
  // parameter costs in weights, gradients and AdamW state (fp32 master
  // weights, gradients and two moments; the bf16 copy under mixed precision).
  DType activation_dtype() const { return bf16 ? DType::BF16 : DType::F32; }
  double state_bytes_per_parameter() const { return bf16 ? 18.0 : 16.0; }
  // Activation recomputation (model/memory.h): none, selective (rebuild the
  // cheap elementwise activations before each layer's backward) or full
  // (keep only each layer's input and run its forward again). Same results,
  // less memory; copied into ModelConfig::recompute when the config is read.
  Recompute recompute = Recompute::None;
  // A step whose loss or gradients are not finite is skipped (no update);
  // this many skips in a row stop the run.
  int64_t max_nonfinite_skips = 10;
  // Planned stops (Megatron-LM's --exit-interval, --exit-duration-in-mins,
  // --exit-signal-handler): the run saves a checkpoint (when checkpoint.save
  // is set) and ends, to be continued with checkpoint.load: auto.
  int64_t exit_interval = 0;          // after a step that is a multiple of this; 0: never
  double exit_duration_in_mins = 0;   // once the run has lasted this long (since deco started); 0: never
  bool exit_signal_handler = false;   // on exit_signal, after the step it arrives in (trainer/exit_signal.h)
  ExitSignal exit_signal = ExitSignal::Term;
};

struct OptimizerConfig {
  double lr = 0.0;  // required, the peak learning rate
  double min_lr = 0.0;
  double weight_decay = 0.1;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.95;
  double adam_eps = 1e-8;
  double clip_grad = 1.0;  // global-norm clipping; 0 disables
};

enum class LrDecayStyle { Constant, Linear, Cosine, WSD };
enum class WsdDecayStyle { Exponential, Linear, Cosine };

struct ScheduleConfig {
  LrDecayStyle lr_decay_style = LrDecayStyle::WSD;
  int64_t lr_warmup_iters = 100;
  int64_t lr_decay_iters = 0;  // the step the decay ends at; 0 = train_iters
  WsdDecayStyle lr_wsd_decay_style = WsdDecayStyle::Exponential;
  int64_t lr_wsd_decay_iters = 1000;  // WSD: length of the final decay phase
};

struct SparsityConfig {
  double target_ratio = 0.2;          // rho
  RegType reg_type = RegType::Entropy;
  double reg_coef_min = 1e-8;         // lambda_0, the floor
  double reg_coef_init = -1.0;        // starting lambda; < 0 means reg_coef_min
  double reg_coef_multiplier = 1.002; // m
  double initial_coef() const { return reg_coef_init < 0 ? reg_coef_min : reg_coef_init; }
};

// One corpus of a blend: a Megatron indexed dataset (<prefix>.bin/.idx) and its weight.
struct DataPathEntry {
  double weight = 1.0;
  std::string prefix;
  bool operator==(const DataPathEntry& o) const { return weight == o.weight && prefix == o.prefix; }
};

// Training data, with Megatron-LM's names (docs/data.md). With no
// data_path, training reads the built-in synthetic corpus
// (data/synthetic_corpus.h), whose knobs are the synthetic_* keys.
struct DataConfig {
  std::vector<DataPathEntry> data_path;  // YAML: a list of [weight, prefix] pairs (or bare prefixes, weight 1)
  std::string split = "969,30,1";        // train, valid, test shares of each corpus's documents
  std::string data_cache_path;           // where sample indices are cached; empty: next to the first corpus
  std::string tokenizer_type;            // sentencepiece | byte (for inspecting data; training reads ids)
  std::string tokenizer_model;           // the SentencePiece .model file
  int64_t synthetic_successors = 4;      // likely next tokens per token in the Markov part
  double synthetic_repeat_prob = 0.3;    // chance a segment repeats an earlier one (learnable by attention)
};

struct ParallelConfig {
  int64_t expert_model_parallel_size = 1;
  bool use_distributed_optimizer = false;
  // Megatron-LM's names: reduce the gradients in buckets of ddp_bucket_size
  // elements (0: max(40M, 1M x data-parallel size)) that start during the
  // backward pass (trainer/grad_reducer.h). Plain data parallelism only:
  // the distributed optimizer reduce-scatters after the backward pass.
  bool overlap_grad_reduce = false;
  int64_t ddp_bucket_size = 0;
  // How long one collective may wait for the other ranks before the job is
  // ended with a message (Megatron's --distributed-timeout-minutes); 0: forever.
  double distributed_timeout_minutes = 10;
};

struct CheckpointConfig {
  std::string save;           // directory; empty = no checkpoints
  int64_t save_interval = 0;
  int64_t keep_last = 0;      // 0 = keep all
  std::string load;           // "auto" or a path; empty = start fresh
};

struct LoggingConfig {
  std::string run_dir;        // empty = runs/<config file stem>
  bool log_per_layer = false; // print per-layer activation ratios on the console line
  // Alerts (docs/monitoring.md): the activation ratio more than
  // alert_ratio_margin from sparsity.target_ratio for alert_steps steps in a
  // row; an expert with no token for dead_expert_steps steps; a layer where
  // more than alert_idle_token_share of the tokens activate no expert for
  // alert_steps steps in a row.
  double alert_ratio_margin = 0.05;
  int64_t alert_steps = 100;
  int64_t dead_expert_steps = 100;
  double alert_idle_token_share = 0.1;
};

struct Config {
  ModelConfig model;
  TrainingConfig training;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  SparsityConfig sparsity;
  DataConfig data;
  ParallelConfig parallel;
  CheckpointConfig checkpoint;
  LoggingConfig logging;
  std::string source;  // the file it was read from (for messages)

  int64_t lr_decay_end() const {
    return schedule.lr_decay_iters > 0 ? schedule.lr_decay_iters : training.train_iters;
  }
};

// Reads `path`, applies `overrides` ("section.key=value", YAML scalar
// syntax, applied in order), and validates everything for a run of
// `world_size` processes. Throws deco::Error on the first problem.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {},
                   int64_t world_size = 1);

// A configuration held in memory (the one a checkpoint was saved with);
// `origin` names it in messages. Checks that depend on the number of
// processes are skipped: the run that saved it may have had any size.
Config parse_config(const std::string& yaml, const std::string& origin);

// The fully resolved configuration (every key, defaults included) as YAML;
// load_config of this text gives back the same Config.
std::string config_to_yaml(const Config& config);

}  // namespace deco
