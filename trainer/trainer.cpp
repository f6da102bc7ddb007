#include "trainer/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "core/file_io.h"
#include "kernels/ops.h"
#include "kernels/runtime.h"
#include "model/model_stats.h"
#include "trainer/data_sources.h"
#include "trainer/weights_io.h"

namespace deco {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

Trainer::Trainer(const Config& config, ProcessGroups& groups, const TrainerOptions& options)
    : config_(config),
      groups_(groups),
      options_(options),
      schedule_(config.optimizer, config.schedule, config.training.train_iters),
      sparsity_(config.sparsity),
      plan_(config.training.micro_batch_size, config.training.global_batch_size,
            groups.layout.dp_size, groups.layout.dp_rank) {
  set_cpu_threads(config_.training.threads);
  check_memory();
  model_ = std::make_unique<Model>(config_.model, DType::F32, Device::CPU);
  model_->init(config_.training.seed);
  optimizer_ = std::make_unique<AdamW>(config_.optimizer, model_->layout(), DType::F32, Device::CPU);
  restore();
  data_ = make_training_data(config_, groups_);
  loader_ = std::make_unique<DataLoader>(*data_.train, plan_, consumed_samples_);
  if (!config_.checkpoint.save.empty())
    checkpoints_ = std::make_unique<CheckpointWriter>(config_.checkpoint.save, config_.checkpoint.keep_last);

  if (groups_.layout.rank == 0) {
    std::filesystem::create_directories(options_.run_dir);
    metrics_ = std::make_unique<MetricsLog>(options_.run_dir, step_);
    write_file_atomic(options_.run_dir + "/config.yaml", config_to_yaml(config_));
    print_banner();
  }
}

Trainer::~Trainer() = default;

void Trainer::restore() {
  if (!options_.load_weights.empty()) {
    // Fine-tuning: weights only, a fresh optimizer and schedule from step 0.
    if (!config_.checkpoint.load.empty())
      fail("both --load (", options_.load_weights, ") and checkpoint.load (", config_.checkpoint.load,
           ") are set; use --load for weights only or checkpoint.load to resume a run, not both.");
    const std::string path = std::filesystem::is_directory(options_.load_weights)
                                 ? options_.load_weights + "/model.h5"
                                 : options_.load_weights;
    load_weights_h5(path, model_->params());
    model_->refresh_derived();
    resumed_from_ = str("weights of ", path, " (fresh optimizer)");
    return;
  }
  const std::string dir = resolve_checkpoint(config_.checkpoint.load, config_.checkpoint.save);
  if (dir.empty()) return;
  // The config first (no tensors): a changed architecture is named by its
  // key rather than by the first tensor whose shape it changes.
  check_resume_config(load_checkpoint(dir, {}).config_yaml, dir + "/state.h5");
  const LoadedCheckpoint loaded =
      load_checkpoint(dir, {&model_->params(), &optimizer_->exp_avg(), &optimizer_->exp_avg_sq()});
  const TrainingState& s = loaded.state;
  step_ = s.step;
  consumed_samples_ = s.consumed_samples;
  evaluations_ = s.evaluations;
  elapsed_s_ = s.elapsed_s;
  sparsity_.set_coef(s.reg_coef);
  optimizer_->restore_steps(s.step);
  model_->refresh_derived();
  last_saved_step_ = s.step;
  resumed_from_ = str(dir, " at step ", s.step, " (", s.consumed_samples, " samples consumed)");
}

void Trainer::check_resume_config(const std::string& saved_yaml, const std::string& origin) const {
  // Keys that change the parameters' shapes or what the model computes must
  // match; anything else may change on resume (learning rate, intervals,
  // iterations, the expert compute path...) and is reported.
  static const std::set<std::string> architecture = {
      "model.num_layers", "model.hidden_size", "model.num_attention_heads", "model.num_query_groups",
      "model.ffn_hidden_size", "model.vocab_size", "model.norm_epsilon", "model.rotary_base",
      "model.num_experts", "model.moe_ffn_hidden_size", "model.moe_shared_expert_intermediate_size",
      "model.dense_layers", "model.expert_act", "model.expert_gated"};
  auto flatten = [](const std::string& yaml) {  // "section.key" -> value text, from config_to_yaml
    std::map<std::string, std::string> out;
    std::istringstream in(yaml);
    std::string section;
    for (std::string line; std::getline(in, line);) {
      if (line.empty() || line[0] == '#') continue;
      const size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      if (line[0] != ' ') section = line.substr(0, colon);
      else out[section + "." + line.substr(2, colon - 2)] = line.substr(std::min(colon + 2, line.size()));
    }
    return out;
  };
  const auto saved = flatten(config_to_yaml(parse_config(saved_yaml, origin)));
  const auto current = flatten(config_to_yaml(config_));
  for (const auto& [key, value] : current) {
    const auto it = saved.find(key);
    if (it == saved.end() || it->second == value) continue;
    if (architecture.count(key))
      fail(config_.source, ": ", key, " is ", value, " but the checkpoint (", origin, ") was trained with ",
           it->second, "; resume with the checkpoint's value, or start a new run from its weights with --load.");
    if (options_.console && groups_.layout.rank == 0)
      *options_.console << "warning: resuming with " << key << " = " << value << " (the checkpoint has "
                        << it->second << ")\n";
  }
}

void Trainer::save_checkpoint() {
  if (!checkpoints_ || last_saved_step_ == step_) return;
  TrainingState state;
  state.step = step_;
  state.consumed_samples = consumed_samples_;
  state.evaluations = evaluations_;
  state.reg_coef = sparsity_.coef();
  state.elapsed_s = elapsed_s_;
  state.seed = config_.training.seed;
  checkpoints_->save({&model_->params(), &optimizer_->exp_avg(), &optimizer_->exp_avg_sq()}, state,
                     config_to_yaml(config_));
  last_saved_step_ = step_;
}

void Trainer::check_memory() {
  // Linux overcommits: a run that cannot fit would be killed mid-step by the
  // OOM killer without a word. Refuse it here instead, with the numbers.
  const ModelConfig& m = config_.model;
  const double gib = 1024.0 * 1024.0 * 1024.0;
  const double state = 16.0 * static_cast<double>(count_params(m).total);  // fp32 weights, grads, AdamW m and v
  const double activations = cpu_activation_bytes(m, config_.training.micro_batch_size, sizeof(float));
  memory_note_ = str("about ", std::round((state + activations) / gib * 10) / 10, " GiB (",
                     std::round(state / gib * 10) / 10, " GiB weights, gradients and AdamW state; ",
                     std::round(activations / gib * 10) / 10, " GiB activations)");
  const double available = host_memory_available_bytes();
  if (available > 0 && state + activations > available)
    fail(config_.source, ": training on the CPU needs ", memory_note_, " for training.micro_batch_size ",
         config_.training.micro_batch_size, " x model.seq_length ", m.seq_length, ", but only ",
         std::round(available / gib * 10) / 10,
         " GiB of memory is available; lower training.micro_batch_size or model.seq_length, or use a "
         "smaller model.");
}

void Trainer::print_banner() {
  if (!options_.console) return;
  std::ostream& out = *options_.console;
  const ModelConfig& m = config_.model;
  const ParamCounts counts = count_params(m);
  out << "deco " << DECO_VERSION << " | config " << config_.source << " | run dir " << options_.run_dir
      << "\n";
  out << "parallel: " << groups_.layout.describe() << "\n";
  if (!resumed_from_.empty()) out << "resumed from " << resumed_from_ << "\n";
  out << "cpu: " << cpu_threads() << " threads, " << cpu_blas_name() << "; memory " << memory_note_ << "\n";
  out << "model: " << counts.total << " parameters (" << counts.non_embedding << " non-embedding), "
      << m.num_layers << " layers";
  if (m.num_experts > 0)
    out << " (" << m.num_deco_layers() << " DECO: " << m.num_experts << " experts x " << m.moe_ffn_hidden_size
        << ", " << expert_act_name(m.expert_act) << (m.expert_gated ? ", gated" : "") << ", "
        << expert_compute_name(m.expert_compute) << " expert compute)";
  out << "\ndata: " << data_.description << "\n";
  out << "---- resolved config (saved to " << options_.run_dir << "/config.yaml) ----\n"
      << config_to_yaml(config_) << "----\n";
  out.flush();
}

void Trainer::train() {
  const int64_t interval = config_.checkpoint.save_interval;
  while (step_ < config_.training.train_iters) {
    train_step();
    if (interval > 0 && step_ % interval == 0) save_checkpoint();
  }
  save_checkpoint();  // the final state, unless the interval just saved it
  if (checkpoints_) checkpoints_->wait();
  if (options_.console && groups_.layout.rank == 0)
    *options_.console << "done: " << step_ << " steps, " << consumed_samples_ << " samples, metrics in "
                      << (metrics_ ? metrics_->path() : std::string("(rank 0)")) << "\n";
}

void Trainer::reduce_gradients() {
  // Dense gradients average over every rank, routed-expert gradients over
  // the ranks holding the same experts: one collective per contiguous region.
  ParamStore& grads = model_->grads();
  if (groups_.data_parallel->size() > 1) {
    groups_.data_parallel->all_reduce_sum(grads.dense_region());
    ops::scale(grads.dense_region(), 1.0 / static_cast<double>(groups_.data_parallel->size()));
  }
  if (groups_.expert_data_parallel->size() > 1) {
    groups_.expert_data_parallel->all_reduce_sum(grads.expert_region());
    ops::scale(grads.expert_region(), 1.0 / static_cast<double>(groups_.expert_data_parallel->size()));
  }
}

double Trainer::global_grad_norm() {
  // Dense gradients are identical on every rank after the reduction; each
  // expert-parallel rank holds different experts, so their squares add up.
  const ParamStore& grads = model_->grads();
  std::vector<double> expert_sq{ops::sum_squares(grads.expert_region())};
  groups_.expert_parallel->all_reduce_sum(expert_sq);
  return std::sqrt(ops::sum_squares(grads.dense_region()) + expert_sq[0]);
}

StepMetrics Trainer::train_step() {
  const Clock::time_point start = Clock::now();
  const TrainingConfig& t = config_.training;
  const int64_t micro_batches = plan_.micro_batches_per_step();
  const int64_t seq = config_.model.seq_length;

  StepOptions opt;
  opt.reg = config_.model.num_experts > 0 ? config_.sparsity.reg_type : RegType::None;
  opt.reg_coef = sparsity_.coef();
  opt.grad_scale = 1.0 / static_cast<double>(micro_batches);
  opt.backward = true;

  ops::zero(model_->grads().flat());
  // Sums over this rank's micro-batches: lm loss and tokens, then reg loss.
  std::vector<double> sums(3, 0.0);
  std::vector<int64_t> pairs;  // active pairs per DECO layer, then routed slots per DECO layer
  std::vector<int64_t> deco_layers;
  for (int64_t l = 0; l < config_.model.num_layers; ++l)
    if (config_.model.is_deco_layer(l)) deco_layers.push_back(l);
  const size_t n_deco = deco_layers.size();
  pairs.assign(2 * n_deco, 0);

  const double wait_before = loader_->wait_seconds();
  for (int64_t micro = 0; micro < micro_batches; ++micro) {
    const std::vector<int32_t>& batch = loader_->next();
    const Tensor tokens(const_cast<int32_t*>(batch.data()), DType::I32, Device::CPU,
                        Shape{plan_.micro_batch(), seq + 1});
    const StepResult r = model_->step(tokens, opt);
    sums[0] += r.lm_loss_sum;
    sums[1] += static_cast<double>(r.tokens);
    sums[2] += r.reg_loss;
    for (size_t i = 0; i < n_deco; ++i) {
      pairs[i] += r.deco_layers[i].active_pairs;
      pairs[n_deco + i] += r.deco_layers[i].tokens * config_.model.num_experts;
    }
  }
  reduce_gradients();
  groups_.world->all_reduce_sum(sums);
  groups_.world->all_reduce_sum(pairs);

  StepMetrics m;
  m.step = step_ + 1;
  m.train_iters = t.train_iters;
  m.lm_loss = sums[0] / sums[1];
  m.reg_loss = sums[2] / static_cast<double>(micro_batches * groups_.world->size());
  m.reg_coef = opt.reg_coef;
  m.grad_norm = global_grad_norm();
  if (!std::isfinite(m.lm_loss) || !std::isfinite(m.grad_norm))
    fail("step ", m.step, ": the ", std::isfinite(m.lm_loss) ? "gradient norm" : "loss",
         " became non-finite (lm loss ", m.lm_loss, ", grad norm ", m.grad_norm,
         "); lower optimizer.lr or lengthen schedule.lr_warmup_iters and start again.");
  if (n_deco > 0) {
    int64_t active = 0, slots = 0;
    for (size_t i = 0; i < n_deco; ++i) {
      active += pairs[i];
      slots += pairs[n_deco + i];
      m.activation_ratio_per_layer.push_back(static_cast<double>(pairs[i]) /
                                             static_cast<double>(pairs[n_deco + i]));
    }
    m.activation_ratio = static_cast<double>(active) / static_cast<double>(slots);
    m.deco_layer_index = deco_layers;
  }

  // Clip by the global norm (Megatron: scale = clip / (norm + 1e-6) when below 1).
  const double clip = config_.optimizer.clip_grad;
  const double grad_scale = clip > 0 && m.grad_norm > clip ? clip / (m.grad_norm + 1e-6) : 1.0;
  m.lr = schedule_.lr(m.step);
  optimizer_->step(model_->params(), model_->grads(), m.lr, grad_scale);
  model_->refresh_derived();
  if (m.activation_ratio) sparsity_.update(*m.activation_ratio);

  ++step_;
  consumed_samples_ += t.global_batch_size;
  m.consumed_samples = consumed_samples_;
  m.consumed_tokens = consumed_samples_ * seq;
  m.step_time_s = seconds_since(start);
  elapsed_s_ += m.step_time_s;
  m.elapsed_s = elapsed_s_;
  m.tokens_per_second = static_cast<double>(t.global_batch_size * seq) / m.step_time_s;
  m.data_wait_s = loader_->wait_seconds() - wait_before;

  if (t.eval_interval > 0 && t.eval_iters > 0 &&
      (step_ % t.eval_interval == 0 || step_ == t.train_iters)) {
    const Clock::time_point eval_start = Clock::now();
    m.val_loss = evaluate();
    elapsed_s_ += seconds_since(eval_start);
  }
  if (groups_.layout.rank == 0) {
    metrics_->write(m);
    if (options_.console && (step_ % t.log_interval == 0 || step_ == 1 || step_ == t.train_iters || m.val_loss))
      *options_.console << format_console_line(m, config_.logging.log_per_layer) << std::endl;
  }
  return m;
}

double Trainer::evaluate() {
  // Evaluation j reads validation batches [j * eval_iters, (j + 1) * eval_iters),
  // Megatron-LM's order, which its requested validation size accounts for.
  const int64_t first = evaluations_++ * config_.training.eval_iters * plan_.global_batch();
  StepOptions opt;
  opt.reg = RegType::None;
  opt.backward = false;
  const int64_t seq = config_.model.seq_length;
  std::vector<double> sums(2, 0.0);
  for (int64_t it = 0; it < config_.training.eval_iters; ++it)
    for (int64_t micro = 0; micro < plan_.micro_batches_per_step(); ++micro) {
      plan_.load(*data_.valid, first + it * plan_.global_batch(), micro, batch_);
      const Tensor tokens(batch_.data(), DType::I32, Device::CPU, Shape{plan_.micro_batch(), seq + 1});
      const StepResult r = model_->step(tokens, opt);
      sums[0] += r.lm_loss_sum;
      sums[1] += static_cast<double>(r.tokens);
    }
  groups_.world->all_reduce_sum(sums);
  return sums[0] / sums[1];
}

}  // namespace deco
