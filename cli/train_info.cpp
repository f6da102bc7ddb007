// deco train, deco info.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <optional>

#include "cli/commands.h"
#include "kernels/runtime.h"
#include "model/model_stats.h"
#include "parallel/launch.h"
#include "parallel/layout.h"
#include "parallel/mpi_runtime.h"
#include "trainer/config.h"
#include "trainer/trainer.h"

namespace deco::cli {
namespace {

// runs/<config stem>-<local time>, made unique if that exists already, so a
// default run never writes into an earlier one.
std::string default_run_dir(const std::string& config_path) {
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::localtime(&now));
  const std::string base = "runs/" + std::filesystem::path(config_path).stem().string() + "-" + stamp;
  std::string dir = base;
  for (int i = 2; std::filesystem::exists(dir); ++i) dir = base + "-" + std::to_string(i);
  return dir;
}

std::string with_commas(int64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

}  // namespace

int train(const TrainArgs& args) {
  const LaunchInfo launch = detect_launch();
  const Config config = load_config(args.cfg.config, args.cfg.sets, launch.world_size);
  // GPU local_rank % GPUs, for the device work to come (-1 without one);
  // before MPI starts, so that a CUDA-aware MPI opens its context there.
  select_local_device(launch);
  ProcessGroups groups = make_process_groups(launch, config.parallel.expert_model_parallel_size,
                                             config.model.num_experts);
  set_collective_timeout(config.parallel.distributed_timeout_minutes * 60.0);
  TrainerOptions options;
  options.run_dir = !args.run_dir.empty()              ? args.run_dir
                    : !config.logging.run_dir.empty() ? config.logging.run_dir
                                                      : default_run_dir(args.cfg.config);
  options.console = groups.layout.rank == 0 ? &std::cout : nullptr;
  // Not under an MPI launcher: Open MPI gives each rank's stdout a pseudo-terminal
  // even when mpirun's own output goes to a file, so the bar would fill the log.
  options.console_is_terminal = ::isatty(STDOUT_FILENO) == 1 && !launch.under_mpi();
  options.load_weights = args.load_weights;
  // With several processes an error ends the job here, while the trainer
  // and the communicators are alive: unwinding first would run NCCL's
  // destructors, which wait for work and for peers that are themselves
  // waiting for this rank, before anything was printed.
  std::optional<Trainer> trainer;
  try {
    trainer.emplace(config, groups, options);
    trainer->train();
  } catch (const Error& e) {
    if (mpi_active()) abort_job(e.what(), 1);
    throw;
  } catch (const std::exception& e) {
    if (mpi_active()) abort_job(e.what(), 2);
    throw;
  }
  return 0;
}

int info(const ConfigArgs& args) {
  const Config config = load_config(args.config, args.sets);
  const ModelConfig& m = config.model;
  const ParamCounts c = count_params(m);
  std::printf("config: %s\n", config.source.c_str());
  std::printf("model: %lld layers, hidden %lld, %lld heads (%lld query groups), vocab %lld, seq %lld\n",
              static_cast<long long>(m.num_layers), static_cast<long long>(m.hidden_size),
              static_cast<long long>(m.num_attention_heads), static_cast<long long>(m.num_query_groups),
              static_cast<long long>(m.vocab_size), static_cast<long long>(m.seq_length));
  if (m.num_experts > 0)
    std::printf("DECO layers: %lld of %lld (%lld experts of width %lld, shared expert %lld, %s%s)\n",
                static_cast<long long>(m.num_deco_layers()), static_cast<long long>(m.num_layers),
                static_cast<long long>(m.num_experts), static_cast<long long>(m.moe_ffn_hidden_size),
                static_cast<long long>(m.moe_shared_expert_intermediate_size), expert_act_name(m.expert_act),
                m.expert_gated ? ", gated" : "");
  else
    std::printf("dense model: every layer has a SwiGLU FFN of width %lld\n",
                static_cast<long long>(m.ffn_hidden_size));
  std::printf("\nparameters\n");
  const std::pair<const char*, int64_t> rows[] = {
      {"total", c.total},           {"embedding", c.embedding},    {"lm head", c.lm_head},
      {"non-embedding", c.non_embedding}, {"  attention", c.attention}, {"  dense FFN", c.dense_ffn},
      {"  routed experts", c.routed_experts}, {"  shared experts", c.shared_experts},
      {"  router", c.router},       {"  NormSiLU gamma", c.expert_act}, {"  norms", c.norms}};
  for (const auto& [name, n] : rows)
    std::printf("  %-18s %15s  (%.3f B)\n", name, with_commas(n).c_str(), static_cast<double>(n) / 1e9);
  std::printf("\ntraining FLOPs per token (6 x matmul parameters + 12 x layers x hidden x seq)\n");
  const double all = training_flops_per_token(m, 1.0);
  std::printf("  %-34s %.4g\n", "all experts computed (dense path)", all);
  if (m.num_experts > 0) {
    const double rho = config.sparsity.target_ratio;
    const double sparse = training_flops_per_token(m, rho);
    std::printf("  %-34s %.4g  (%.2fx fewer)\n", ("active experts only at ratio " + std::to_string(rho).substr(0, 4)).c_str(),
                sparse, all / sparse);
  }
  const double tokens = static_cast<double>(config.training.global_batch_size * m.seq_length) *
                        static_cast<double>(config.training.train_iters);
  std::printf("\nrun: %lld steps x %lld sequences x %lld tokens = %.4g tokens, %.4g training FLOPs (dense path)\n",
              static_cast<long long>(config.training.train_iters),
              static_cast<long long>(config.training.global_batch_size), static_cast<long long>(m.seq_length),
              tokens, tokens * all);

  // Memory of one rank (no expert or optimizer sharding).
  const Device device = config.training.device == "cuda" ? Device::CUDA : Device::CPU;
  const bool bf16 = config.training.bf16;
  const DType dtype = config.training.activation_dtype();
  const int64_t micro = config.training.micro_batch_size;
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::printf("\nmemory of one rank at micro-batch %lld x %lld on the %s (%s; model/memory.h)\n",
              static_cast<long long>(micro), static_cast<long long>(m.seq_length),
              device == Device::CUDA ? "GPU" : "CPU", bf16 ? "bf16 mixed precision" : "float32");
  std::printf("  %-40s %8.2f GiB\n", bf16 ? "weights (fp32 + bf16), gradients, AdamW" : "weights, gradients, AdamW moments",
              config.training.state_bytes_per_parameter() * static_cast<double>(c.total) / gib);
  const bool sparse = m.num_experts > 0 && m.expert_compute != ExpertCompute::Dense;
  if (sparse) std::printf("  activations (%s path: pairs at activation ratio 0.5, where training starts / %.2f, the target)\n",
                          expert_compute_name(m.expert_compute), config.sparsity.target_ratio);
  for (Recompute mode : {Recompute::None, Recompute::Selective, Recompute::Full}) {
    ModelConfig mc = m;
    mc.recompute = mode;
    const std::string label = str("activations, training.recompute ", recompute_name(mode));
    const double start = activation_bytes(mc, micro, dtype, device, 0.5) / gib;
    if (sparse)
      std::printf("  %-40s %8.2f / %.2f GiB%s\n", label.c_str(), start,
                  activation_bytes(mc, micro, dtype, device, config.sparsity.target_ratio) / gib,
                  mode == m.recompute ? "   <- this config" : "");
    else
      std::printf("  %-40s %8.2f GiB%s\n", label.c_str(), start, mode == m.recompute ? "   <- this config" : "");
  }
  return 0;
}

}  // namespace deco::cli
