#include "trainer/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "core/caching_allocator.h"
#include "core/file_io.h"
#include "core/profile.h"
#include "kernels/ops.h"
#include "kernels/runtime.h"
#include "model/layer_bench.h"
#include "model/model_stats.h"
#include "trainer/data_sources.h"
#include "trainer/weights_io.h"

namespace deco {
namespace {

using Clock = std::chrono::steady_clock;

// When this process started, near enough: static initialization, before
// main (training.exit_duration_in_mins counts from here, as Megatron-LM
// counts from the start of its set-up).
const Clock::time_point process_start = Clock::now();

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
  // First, so that a signal during the set-up is not lost: it stops the run after its first step.
  if (config_.training.exit_signal_handler)
    exit_signal_ = std::make_unique<ExitSignalHandler>(config_.training.exit_signal);
  set_cpu_threads(config_.training.threads);
  device_ = select_device();
  use_gpu_kernels(config_.model);  // before expert_compute auto times a layer with them
  // Several GPUs: device tensors (gradients, exchanged tokens) through NCCL, host values through MPI.
  if (device_ == Device::CUDA) enable_device_collectives(groups_);
  check_memory();
  const ParallelLayout& L = groups_.layout;
  zero_ = config_.parallel.use_distributed_optimizer;
  // ZeRO-1 splits each region into equal shards of whole 64-element blocks.
  model_ = std::make_unique<Model>(config_.model, config_.training.activation_dtype(), device_,
                                   groups_.expert_parallel.get(), zero_ ? 64 * L.world_size : 1);
  model_->init(config_.training.seed);
  if (zero_) {
    const std::vector<FlatRange> owned = shard_context(L.rank).owned;
    dense_shard_ = owned[0];
    expert_shard_ = owned[1];
  }
  optimizer_ = std::make_unique<AdamW>(config_.optimizer, model_->layout(), DType::F32, device_,
                                       shard_context(L.rank).owned);
  sharded_ = L.ep_size > 1 || zero_;
  if (config_.parallel.overlap_grad_reduce &&
      (groups_.data_parallel->size() > 1 || groups_.expert_data_parallel->size() > 1)) {
    const int64_t bucket = config_.parallel.ddp_bucket_size > 0 ? config_.parallel.ddp_bucket_size
                                                                : default_bucket_elements(L.dp_size);
    reducer_ = std::make_unique<GradReducer>(model_->layout(), model_->grads().flat(), *groups_.data_parallel,
                                             *groups_.expert_data_parallel, bucket, /*reduce_to_owners=*/zero_);
  }
  restore();
  setup_expert_compute();
  monitor_ = std::make_unique<Monitor>(config_.logging, config_.sparsity.target_ratio, config_.model.num_deco_layers(),
                                       config_.model.num_experts);
  data_ = make_training_data(config_, groups_);
  loader_ = std::make_unique<DataLoader>(*data_.train, plan_, consumed_samples_);
  if (!config_.checkpoint.save.empty()) {
    if (!sharded_) {
      // Every rank holds the whole model: rank 0 writes, every rank reads.
      if (L.rank == 0)
        checkpoints_ = std::make_unique<CheckpointWriter>(config_.checkpoint.save, config_.checkpoint.keep_last);
    } else {
      ShardedSave sharded;
      sharded.context = shard_context(L.rank);
      sharded.layout = &model_->layout();
      std::vector<int64_t> pid{L.rank == 0 ? static_cast<int64_t>(::getpid()) : 0};
      groups_.world->all_reduce_sum(pid);  // rank 0's pid names the job's temporary directories
      sharded.job_id = std::to_string(pid[0]);
      // The ranks with pieces to write: rank r's layout and context decide, as on rank r.
      const int64_t region_multiple = zero_ ? 64 * L.world_size : 1;
      for (int64_t r = 0; r < L.world_size; ++r) {
        const ParamLayout layout_r(config_.model, L.ep_size, r % L.ep_size, region_multiple);
        if (!ShardPieces(layout_r, shard_context(r)).empty()) sharded.writers.push_back(r);
      }
      sharded.timeout_s = config_.parallel.distributed_timeout_minutes * 60.0;
      checkpoints_ = std::make_unique<CheckpointWriter>(config_.checkpoint.save, config_.checkpoint.keep_last,
                                                        std::move(sharded));
    }
  }

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
    if (groups_.layout.ep_size > 1)  // this rank's experts only: its blocks of the file's tensors
      load_pieces({path}, {}, model_->layout(), shard_context(groups_.layout.rank), &model_->params(), nullptr, nullptr,
                  "check the weights file");
    else
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
  LoadedCheckpoint loaded;
  if (sharded_ || is_sharded_checkpoint(dir)) {
    // Pieces: whatever layout wrote it, this rank reads what it holds.
    const Tensor m = optimizer_->exp_avg_flat(), v = optimizer_->exp_avg_sq_flat();
    loaded = load_checkpoint_pieces(dir, model_->layout(), shard_context(groups_.layout.rank), &model_->params(), &m, &v);
  } else {
    loaded = load_checkpoint(dir, {&model_->params(), &optimizer_->exp_avg(), &optimizer_->exp_avg_sq()});
  }
  const TrainingState& s = loaded.state;
  step_ = s.step;
  consumed_samples_ = s.consumed_samples;
  evaluations_ = s.evaluations;
  elapsed_s_ = s.elapsed_s;
  sparsity_.set_coef(s.reg_coef);
  expert_crossover_ = s.expert_crossover;
  optimizer_->restore_steps(s.optimizer_steps >= 0 ? s.optimizer_steps : s.step);
  model_->refresh_derived();
  last_saved_step_ = s.step;
  resumed_from_ = str(dir, " at step ", s.step, " (", s.consumed_samples, " samples consumed)");
}

void Trainer::setup_expert_compute() {
  if (config_.model.expert_compute != ExpertCompute::Auto || config_.model.num_deco_layers() == 0) return;
  if (expert_crossover_ >= 0) {
    crossover_note_ = "kept from the checkpoint";
  } else {
    // Rank 0 measures, every rank takes its value: the ranks' choices must not depend on their timings.
    std::vector<double> measured(4, 0.0);
    if (groups_.layout.rank == 0) {
      const ExpertCrossover x =
          measure_expert_crossover(config_.model, config_.training.micro_batch_size * config_.model.seq_length,
                                   device_, config_.training.activation_dtype());
      measured = {x.ratio, x.dense_s, x.sparse_low_s, x.sparse_high_s};
      if (device_ == Device::CUDA) {
        // The measured layer's blocks go back to the device, and the peaks
        // restart, so the set-up memory report (and peak memory) counts the
        // run, not this one-off layer.
        device_synchronize(device_);
        cuda_caching_allocator()->release_cached();
        cuda_caching_allocator()->reset_peaks();
      }
    }
    groups_.world->all_reduce_sum(measured);
    expert_crossover_ = measured[0];
    crossover_note_ = str("measured now on one layer: dense ", std::round(measured[1] * 1e4) / 10, " ms, sparse ",
                          std::round(measured[2] * 1e4) / 10, " ms at ratio ", ExpertCrossover::kLow, " and ",
                          std::round(measured[3] * 1e4) / 10, " ms at ", ExpertCrossover::kHigh);
  }
  model_->set_expert_crossover(expert_crossover_);
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
    if (key.rfind("checkpoint.", 0) == 0) continue;  // where to save and load differs by design
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
  state.optimizer_steps = optimizer_->steps_taken();
  state.consumed_samples = consumed_samples_;
  state.evaluations = evaluations_;
  state.reg_coef = sparsity_.coef();
  state.elapsed_s = elapsed_s_;
  state.seed = config_.training.seed;
  state.expert_crossover = expert_crossover_;
  if (sharded_) {
    CheckpointTensors t;
    t.params = &model_->params();
    t.exp_avg_flat = optimizer_->exp_avg_flat();
    t.exp_avg_sq_flat = optimizer_->exp_avg_sq_flat();
    checkpoints_->save(t, state, config_to_yaml(config_));
  } else {
    checkpoints_->save({&model_->params(), &optimizer_->exp_avg(), &optimizer_->exp_avg_sq()}, state,
                       config_to_yaml(config_));
  }
  last_saved_step_ = step_;
}

ShardContext Trainer::shard_context(int64_t rank) const {
  // Rank r's place by the rank-ordering rule (parallel/layout.h): its
  // expert-data-parallel rank is r / ep_size, its data-parallel rank r.
  const ParallelLayout& L = groups_.layout;
  const int64_t expert_dp_rank = rank / L.ep_size;
  ShardContext c;
  c.rank = rank;
  c.writes_dense = rank == 0;
  c.writes_experts = expert_dp_rank == 0;
  if (zero_) {  // equal shards of each region (padded to 64 x world by the layout)
    const ParamLayout& layout = model_->layout();
    c.owned = {equal_shard({0, layout.dense_numel()}, L.dp_size, rank),
               equal_shard({layout.dense_numel(), layout.total_numel()}, L.expert_dp_size, expert_dp_rank)};
  }
  return c;
}

Device Trainer::select_device() const {
  if (config_.training.device == "cpu") return Device::CPU;
  const std::string where = config_.source + ": training.device is cuda, but ";
  if (!cuda_built())
    fail(where, "this deco binary was built without CUDA; rebuild with scripts/setup.sh on a machine with nvcc, "
         "or set training.device: cpu.");
  if (cuda_device_count() == 0)
    fail(where, "no GPU is visible to this process; check nvidia-smi and CUDA_VISIBLE_DEVICES, or set "
         "training.device: cpu.");
  return Device::CUDA;
}

void Trainer::check_memory() {
  // GPU memory is checked by the caching allocator, which names what fills it.
  if (device_ == Device::CUDA) {
    memory_note_ = "on the GPU (see the memory report)";
    return;
  }
  // Linux overcommits: a run that cannot fit would be killed mid-step by the
  // OOM killer without a word. Refuse it here instead, with the numbers.
  const ModelConfig& m = config_.model;
  const double gib = 1024.0 * 1024.0 * 1024.0;
  const double state = config_.training.state_bytes_per_parameter() * static_cast<double>(count_params(m).total);
  // The sparse path's pairs at an activation ratio of 0.5, about where training starts.
  const double activations =
      activation_bytes(m, config_.training.micro_batch_size, config_.training.activation_dtype(), Device::CPU, 0.5);
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
  out << "parallel: " << groups_.layout.describe() << "\n" << groups_.describe_groups() << "\n";
  if (!groups_.device_collectives.empty()) out << "device collectives: " << groups_.device_collectives << "\n";
  {
    const double mib = 1024.0 * 1024.0;
    const double params = static_cast<double>(model_->params().flat().nbytes()) / mib;
    out << "memory per rank: parameters " << std::round(params) << " MiB, gradients " << std::round(params)
        << " MiB, AdamW moments " << std::round(static_cast<double>(optimizer_->state_bytes()) / mib) << " MiB"
        << (zero_ ? str(" (distributed optimizer: a 1/", groups_.layout.dp_size, " shard of the dense region, 1/",
                        groups_.layout.expert_dp_size, " of the experts)")
                  : std::string())
        << "\n";
  }
  if (reducer_) {
    int64_t largest = 0;
    for (const GradReducer::BucketInfo& b : reducer_->buckets()) largest = std::max(largest, b.end - b.begin);
    out << "gradient reduction: " << reducer_->buckets().size() << " buckets of up to " << largest
        << " elements, started during the backward pass (parallel.overlap_grad_reduce)\n";
  }
  if (!resumed_from_.empty()) out << "resumed from " << resumed_from_ << "\n";
  out << "cpu: " << cpu_threads() << " threads, " << cpu_blas_name() << "; memory " << memory_note_ << "\n";
  if (device_ == Device::CUDA) {
    size_t free_bytes = 0, total_bytes = 0;
    cuda_memory_info(free_bytes, total_bytes);
    out << "gpu: " << cuda_device_description() << (config_.training.bf16 ? ", bf16 mixed precision" : ", float32")
        << "; device memory after set-up:\n"
        << memory_report(cuda_caching_allocator()->stats(), total_bytes);
    // What runs, which is not always what the config asks for, and why not.
    const bool bf16 = config_.training.bf16;
    const DType compute = bf16 ? DType::BF16 : DType::F32;
    const bool tensor_cores = ops::gpu_attention_on_tensor_cores(compute, m.head_dim());
    out << "gpu kernels: attention " << (tensor_cores ? "tensor_cores" : "cuda_cores");
    if (!tensor_cores && m.attention_backend == AttentionBackend::TensorCores)
      out << " (model.attention_backend tensor_cores needs "
          << (!bf16 ? "training.bf16"
              : m.head_dim() != 64 && m.head_dim() != 128
                  ? str("head_dim 64 or 128, not ", m.head_dim())
                  : std::string("more shared memory at this head_dim than this GPU gives a block"))
          << ")";
    if (m.num_experts > 0 && m.expert_compute != ExpertCompute::Dense) {
      const int64_t local_experts = m.num_experts / groups_.layout.ep_size;
      const bool own = ops::gpu_sparse_experts_on_own_kernels(compute, m.moe_ffn_hidden_size, m.hidden_size,
                                                              local_experts);
      out << ", sparse experts "
          << ops::sparse_expert_kernels_name(own ? m.sparse_expert_kernels : ops::SparseExpertKernels::Composition);
      if (!own && m.sparse_expert_kernels != ops::SparseExpertKernels::Composition)
        out << " (model.sparse_expert_kernels " << ops::sparse_expert_kernels_name(m.sparse_expert_kernels)
            << " needs "
            << (!bf16 ? "training.bf16"
                : m.moe_ffn_hidden_size != 64 || m.hidden_size % 64 != 0
                    ? str("expert width 64 and a hidden size that is a multiple of 64, not ", m.moe_ffn_hidden_size,
                          " and ", m.hidden_size)
                    : str("fewer experts a rank than this one's ", local_experts,
                          " (its parameter table and shared memory)"))
            << ")";
    }
    out << "\n";
  }
  out << "model: " << counts.total << " parameters (" << counts.non_embedding << " non-embedding), "
      << m.num_layers << " layers";
  if (m.num_experts > 0)
    out << " (" << m.num_deco_layers() << " DECO: " << m.num_experts << " experts x " << m.moe_ffn_hidden_size
        << ", " << expert_act_name(m.expert_act) << (m.expert_gated ? ", gated" : "") << ", "
        << expert_compute_name(m.expert_compute) << " expert compute)";
  if (m.expert_compute == ExpertCompute::Auto && m.num_experts > 0)
    out << "\nexpert compute auto: the sparse path at activation ratios up to "
        << std::round(expert_crossover_ * 1000) / 1000 << ", dense above (" << crossover_note_ << ")";
  out << "\nprecision: "
      << (config_.training.bf16 ? "bf16 mixed (bf16 weights copy and activations; float32 master weights, gradients, "
                                  "AdamW state, router and statistics)"
                                : "float32")
      << "\ndata: " << data_.description << "\n";
  out << "---- resolved config (saved to " << options_.run_dir << "/config.yaml) ----\n"
      << config_to_yaml(config_) << "----\n";
  out.flush();
}

void Trainer::train() {
  const int64_t interval = config_.checkpoint.save_interval;
  while (step_ < config_.training.train_iters) {
    train_step();
    if (!stop_reason_.empty()) break;  // a planned stop: the final save below keeps this step
    if (interval > 0 && step_ % interval == 0) save_checkpoint();
  }
  save_checkpoint();  // the final state, unless the interval just saved it
  if (checkpoints_) checkpoints_->wait();
  if (!options_.console || groups_.layout.rank != 0) return;
  std::ostream& out = *options_.console;
  if (bar_shown_) out << "\r\033[K";
  if (step_ < config_.training.train_iters) {
    out << "stopped at step " << step_ << " of " << config_.training.train_iters << ": " << stop_reason_ << "; "
        << (config_.checkpoint.save.empty()
                ? std::string("checkpoint.save is not set, so nothing was saved")
                : str("saved ", config_.checkpoint.save, "/", checkpoint_dir_name(step_),
                      "; continue the run with checkpoint.load: auto"))
        << "\n";
  }
  out << "done: " << step_ << " steps, " << consumed_samples_ << " samples, metrics in "
      << (metrics_ ? metrics_->path() : std::string("(rank 0)")) << "\n";
}

void Trainer::reduce_gradients() {
  // The step's loss is the mean over every rank's micro-batches, so every
  // gradient is a sum over ranks divided by the world size. Dense gradients
  // sum over all ranks; a routed expert's gradient already holds the
  // contributions of every token of its expert-parallel group, and sums
  // over the ranks holding the same experts. One collective per region.
  ParamStore& grads = model_->grads();
  const double inv_world = 1.0 / static_cast<double>(groups_.layout.world_size);
  Communicator& dense = *groups_.data_parallel;
  Communicator& expert = *groups_.expert_data_parallel;
  // ZeRO-1: only this rank's shards hold sums (reduce-scattered, or each bucket reduced to its owner).
  auto scale_shards = [&] {
    ops::scale(grads.flat().slice(dense_shard_.begin, dense_shard_.end), inv_world);
    ops::scale(grads.flat().slice(expert_shard_.begin, expert_shard_.end), inv_world);
  };
  if (reducer_) {  // the buckets started during the last micro-batch's backward pass
    reducer_->finish();
    if (zero_)
      scale_shards();
    else
      ops::scale(grads.flat(), inv_world);
    return;
  }
  if (!zero_) {
    if (dense.size() > 1) dense.all_reduce_sum(grads.dense_region());
    if (expert.size() > 1) expert.all_reduce_sum(grads.expert_region());
    if (groups_.layout.world_size > 1) ops::scale(grads.flat(), inv_world);
    return;
  }
  // ZeRO-1: each rank receives only the summed gradient of its own shards,
  // written back into its ranges of the gradient buffer for the optimizer.
  auto reduce_into_shard = [&](Communicator& group, const Tensor& region, const FlatRange& shard) {
    const Tensor dst = grads.flat().slice(shard.begin, shard.end);
    if (group.size() == 1) return;
    shard_scratch_.ensure(region.dtype(), region.device(), Shape{shard.size()});
    group.reduce_scatter(shard_scratch_, region);
    ops::copy(dst, shard_scratch_);
  };
  reduce_into_shard(dense, grads.dense_region(), dense_shard_);
  reduce_into_shard(expert, grads.expert_region(), expert_shard_);
  scale_shards();
}

double Trainer::global_grad_norm() {
  const ParamStore& grads = model_->grads();
  if (zero_) {
    // Every element is in exactly one rank's shards.
    std::vector<double> sq{ops::sum_squares(grads.flat().slice(dense_shard_.begin, dense_shard_.end)) +
                           ops::sum_squares(grads.flat().slice(expert_shard_.begin, expert_shard_.end))};
    groups_.world->all_reduce_sum(sq);
    return std::sqrt(sq[0]);
  }
  // Dense gradients are identical on every rank after the reduction; each
  // expert-parallel rank holds different experts, so their squares add up.
  std::vector<double> expert_sq{ops::sum_squares(grads.expert_region())};
  groups_.expert_parallel->all_reduce_sum(expert_sq);
  return std::sqrt(ops::sum_squares(grads.dense_region()) + expert_sq[0]);
}

void Trainer::gather_params() {
  const ParamStore& params = model_->params();
  auto gather = [&](Communicator& group, const Tensor& region, const FlatRange& shard) {
    if (group.size() == 1) return;
    shard_scratch_.ensure(region.dtype(), region.device(), Shape{shard.size()});
    ops::copy(shard_scratch_, params.flat().slice(shard.begin, shard.end));
    group.all_gather(region, shard_scratch_);
  };
  gather(*groups_.data_parallel, params.dense_region(), dense_shard_);
  gather(*groups_.expert_data_parallel, params.expert_region(), expert_shard_);
}

// A testing hook for the failure handling of multi-process runs:
// DECO_FAULT_INJECT=R:S makes rank R fail at the start of step S, as a
// crash or a failed check on one rank would (tests/cli/test_parallel.py).
void Trainer::maybe_inject_fault() const {
  static const char* spec = std::getenv("DECO_FAULT_INJECT");
  if (spec == nullptr) return;
  long long rank = -1, step = -1;
  if (std::sscanf(spec, "%lld:%lld", &rank, &step) != 2)
    fail("DECO_FAULT_INJECT='", spec, "' is not RANK:STEP; unset it (it is a testing hook).");
  if (rank == groups_.layout.rank && step == step_ + 1)
    fail("fault injected by DECO_FAULT_INJECT at step ", step, " on rank ", rank);
}

StepMetrics Trainer::train_step() {
  maybe_inject_fault();
  const Clock::time_point start = Clock::now();
  profile::Region step_region("step");
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
  std::vector<int64_t> deco_layers;
  for (int64_t l = 0; l < config_.model.num_layers; ++l)
    if (config_.model.is_deco_layer(l)) deco_layers.push_back(l);
  const size_t n_deco = deco_layers.size(), E = static_cast<size_t>(config_.model.num_experts);
  // Per DECO layer, summed over this rank's micro-batches, then over every
  // rank in one all-reduce: active pairs [n], routed slots [n], active
  // tokens per expert [n * E], rows sent to other expert-parallel ranks [n],
  // tokens with no active expert [n], (token, expert) rows the routed
  // experts computed [n] (all slots on the dense path, the pairs on the sparse one).
  // Then two flags for the planned stops every rank must take at the same
  // step: this rank got the exit signal, this rank's clock has passed
  // training.exit_duration_in_mins.
  std::vector<int64_t> counts(n_deco * (5 + E) + 2, 0);
  int64_t* pairs = counts.data();
  int64_t* slots = pairs + n_deco;
  int64_t* expert_tokens = slots + n_deco;
  int64_t* rows_sent = expert_tokens + n_deco * E;
  int64_t* idle = rows_sent + n_deco;
  int64_t* computed = idle + n_deco;
  int64_t* stops = computed + n_deco;
  sums.resize(3 + n_deco, 0.0);  // then the routing entropy summed over tokens, per DECO layer

  const double wait_before = loader_->wait_seconds();
  std::optional<profile::Region> passes(std::in_place, "forward_backward");
  for (int64_t micro = 0; micro < micro_batches; ++micro) {
    // The gradients are complete in the last micro-batch's backward pass: its units start the reduction.
    if (reducer_ && micro + 1 == micro_batches)
      opt.on_grads_ready = [this](int64_t unit) { reducer_->on_grads_ready(unit); };
    const std::vector<int32_t>& batch = loader_->next();
    const Tensor tokens(const_cast<int32_t*>(batch.data()), DType::I32, Device::CPU,
                        Shape{plan_.micro_batch(), seq + 1});
    const StepResult r = model_->step(tokens, opt);
    sums[0] += r.lm_loss_sum;
    sums[1] += static_cast<double>(r.tokens);
    sums[2] += r.reg_loss;
    for (size_t i = 0; i < n_deco; ++i) {
      const DecoLayerStats& layer = r.deco_layers[i];
      pairs[i] += layer.active_pairs;
      slots[i] += layer.tokens * static_cast<int64_t>(E);
      for (size_t e = 0; e < E; ++e) expert_tokens[i * E + e] += layer.expert_tokens[e];
      for (size_t p = 0; p < layer.sent_per_rank.size(); ++p)
        if (static_cast<int64_t>(p) != groups_.layout.ep_rank) rows_sent[i] += layer.sent_per_rank[p];
      idle[i] += layer.idle_tokens;
      computed[i] += layer.compute == ExpertCompute::Dense ? layer.tokens * static_cast<int64_t>(E) : layer.active_pairs;
      sums[3 + i] += layer.entropy_sum;
    }
  }
  passes.reset();
  {
    profile::Region region("grad_reduce");
    reduce_gradients();
  }
  stops[0] = exit_signal_ && exit_signal_->received() ? 1 : 0;
  stops[1] = t.exit_duration_in_mins > 0 && seconds_since(process_start) >= t.exit_duration_in_mins * 60.0 ? 1 : 0;
  groups_.world->all_reduce_sum(sums);
  groups_.world->all_reduce_sum(counts);

  StepMetrics m;
  m.step = step_ + 1;
  m.train_iters = t.train_iters;
  m.lm_loss = sums[0] / sums[1];
  m.reg_loss = sums[2] / static_cast<double>(micro_batches * groups_.world->size());
  m.reg_coef = opt.reg_coef;
  {
    profile::Region region("grad_norm");
    m.grad_norm = global_grad_norm();
  }
  // Non-finite loss or gradients (identical on every rank: both are global):
  // the step is skipped, as Megatron skips an overflowing one; too many in
  // a row end the run, before anything non-finite reaches a checkpoint.
  const bool finite = std::isfinite(m.lm_loss) && std::isfinite(m.grad_norm) && std::isfinite(m.reg_loss);
  if (!finite) {
    ++skipped_steps_;
    if (++consecutive_skips_ >= t.max_nonfinite_skips)
      fail("step ", m.step, ": the loss or the gradients were not finite for ", consecutive_skips_,
           " steps in a row (lm loss ", m.lm_loss, ", grad norm ", m.grad_norm, "); training stopped",
           checkpoints_ || !config_.checkpoint.save.empty()
               ? str("; the last checkpoint in ", config_.checkpoint.save, " is intact")
               : std::string(),
           ". Lower optimizer.lr or lengthen schedule.lr_warmup_iters and resume from it.");
  } else {
    consecutive_skips_ = 0;
  }
  m.skipped_steps = skipped_steps_;
  if (n_deco > 0) {
    int64_t active = 0, all_slots = 0;
    for (size_t i = 0; i < n_deco; ++i) {
      active += pairs[i];
      all_slots += slots[i];
      m.activation_ratio_per_layer.push_back(static_cast<double>(pairs[i]) / static_cast<double>(slots[i]));
      m.expert_tokens_per_layer.emplace_back(expert_tokens + i * E, expert_tokens + (i + 1) * E);
    }
    m.activation_ratio = static_cast<double>(active) / static_cast<double>(all_slots);
    m.deco_layer_index = deco_layers;
    m.tokens_per_layer = slots[0] / static_cast<int64_t>(E);
    m.idle_tokens_per_layer.assign(idle, idle + n_deco);
    for (size_t i = 0; i < n_deco; ++i)
      m.router_entropy.push_back(sums[3 + i] / static_cast<double>(m.tokens_per_layer));
    if (groups_.layout.ep_size > 1) m.expert_parallel_rows_sent.assign(rows_sent, rows_sent + n_deco);
  }

  // Clip by the global norm (Megatron: scale = clip / (norm + 1e-6) when below 1).
  const double clip = config_.optimizer.clip_grad;
  const double grad_scale = clip > 0 && m.grad_norm > clip ? clip / (m.grad_norm + 1e-6) : 1.0;
  m.lr = schedule_.lr(m.step);
  if (finite) {
    profile::Region region("optimizer");  // AdamW, the ZeRO-1 gather, the bf16 copy and w_bar
    optimizer_->step(model_->params(), model_->grads(), m.lr, grad_scale);
    if (zero_) gather_params();
    model_->refresh_derived();
    if (m.activation_ratio) sparsity_.update(*m.activation_ratio);
  }

  ++step_;
  consumed_samples_ += t.global_batch_size;
  stop_reason_.clear();  // set when a planned stop ends the run before its last step
  if (step_ < t.train_iters) {
    if (stops[0] > 0)
      stop_reason_ = str(exit_signal_name(t.exit_signal), " was received (training.exit_signal_handler)");
    else if (stops[1] > 0)
      stop_reason_ = str("the run has lasted training.exit_duration_in_mins (", t.exit_duration_in_mins, " minutes)");
    else if (t.exit_interval > 0 && step_ % t.exit_interval == 0)
      stop_reason_ = str("the step is a multiple of training.exit_interval (", t.exit_interval, ")");
  }
  m.consumed_samples = consumed_samples_;
  m.consumed_tokens = consumed_samples_ * seq;
  // The optimizer's kernels may still be queued on a GPU: the step's time
  // includes them (not the next step's). Free of cost: the next micro-batch's
  // token upload waits for the device anyway.
  device_synchronize(device_);
  m.step_time_s = seconds_since(start);
  elapsed_s_ += m.step_time_s;
  m.elapsed_s = elapsed_s_;
  ++steps_this_run_;
  seconds_this_run_ += m.step_time_s;
  m.eta_s = seconds_this_run_ / static_cast<double>(steps_this_run_) * static_cast<double>(t.train_iters - step_);
  m.tokens_per_second = static_cast<double>(t.global_batch_size * seq) / m.step_time_s;
  m.data_wait_s = loader_->wait_seconds() - wait_before;
  // Executed FLOPs: the sparse path computes the active experts only.
  double routed = 1.0;
  if (n_deco > 0) {
    int64_t all_computed = 0, all_slots = 0;
    for (size_t i = 0; i < n_deco; ++i) {
      all_computed += computed[i];
      all_slots += slots[i];
    }
    routed = static_cast<double>(all_computed) / static_cast<double>(all_slots);
  }
  m.tflops = training_flops_per_token(config_.model, routed) * static_cast<double>(t.global_batch_size * seq) /
             m.step_time_s / 1e12;
  std::vector<std::string> warnings = monitor_->observe(m);
  if (!finite)
    warnings.push_back(str("warning: step ", m.step, ": non-finite loss or gradients (lm loss ", m.lm_loss,
                           ", grad norm ", m.grad_norm, "); the step was skipped (", consecutive_skips_, " in a row, ",
                           skipped_steps_, " in all)"));
  if (!finite) m.alerts.push_back("nonfinite_step_skipped");

  if (t.eval_interval > 0 && t.eval_iters > 0 &&
      (step_ % t.eval_interval == 0 || step_ == t.train_iters)) {
    const Clock::time_point eval_start = Clock::now();
    m.val_loss = evaluate();
    elapsed_s_ += seconds_since(eval_start);
  }
  // The device's memory: what the GPU gave the caching allocator at most, or the process's peak on the CPU.
  m.peak_memory_bytes = device_ == Device::CUDA
                            ? static_cast<int64_t>(cuda_caching_allocator()->stats().peak_reserved)
                            : peak_resident_bytes();
  const bool log_line = step_ % t.log_interval == 0 || step_ == 1 || step_ == t.train_iters || m.val_loss;
  m.histograms = log_line;
  if (groups_.layout.rank == 0) {
    metrics_->write(m);
    if (options_.console) {
      std::ostream& out = *options_.console;
      // On a terminal the progress bar lives on the last line: cleared
      // before anything else is printed, redrawn after.
      if (bar_shown_ && (log_line || !warnings.empty())) out << "\r\033[K";
      for (const std::string& w : warnings) out << w << "\n";
      if (log_line) out << format_console_line(m, config_.logging.log_per_layer) << "\n";
      if (device_ == Device::CUDA && !step_memory_reported_) {
        // As Megatron-LM reports memory after its first iteration: the
        // set-up report lacks the activations and temporaries a step allocates.
        size_t free_bytes = 0, total_bytes = 0;
        cuda_memory_info(free_bytes, total_bytes);
        out << "device memory after the first step (peaks include it):\n"
            << memory_report(cuda_caching_allocator()->stats(), total_bytes);
        step_memory_reported_ = true;
      }
      bar_shown_ = options_.console_is_terminal && step_ < t.train_iters;
      if (bar_shown_) out << "\r" << format_progress_bar(m);
      out.flush();
    }
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
