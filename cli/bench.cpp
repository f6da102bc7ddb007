// deco bench: N training steps of a config after W warm-up steps, timed, on
// the config's training.device, with the device's peak measured in the same
// run (a large GEMM in the training dtype: bfloat16 under training.bf16), so
// MFU needs no table of devices.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "cli/commands.h"
#include "cli/device_peaks.h"
#include "core/profile.h"
#include "kernels/ops.h"
#include "kernels/runtime.h"
#include "model/model_stats.h"
#include "parallel/launch.h"
#include "trainer/config.h"
#include "trainer/trainer.h"

namespace deco::cli {
namespace {

// The profiled steps' regions: time per step, share of the step, calls per step.
void print_profile(const std::vector<profile::Entry>& regions, int64_t steps, Device device) {
  double step = 0;
  for (const profile::Entry& e : regions)
    if (e.name == "step") step = e.seconds;
  std::printf("\nwhere a step's time goes (%lld profiled steps after the timed ones; %s; a region includes the "
              "regions named inside it, so shares do not add up to 100%%):\n",
              static_cast<long long>(steps),
              device == Device::CUDA ? "GPU time between CUDA events on the stream the work ran on"
                                     : "wall-clock time");
  std::printf("  %-40s %12s %8s %12s\n", "region", "ms / step", "share", "calls / step");
  const double n = static_cast<double>(steps);
  double top = 0;  // the regions directly inside the step
  for (const profile::Entry& e : regions) {
    std::printf("  %-40s %12.3f %7.1f%% %12.1f\n", (std::string(2 * static_cast<size_t>(e.depth), ' ') + e.name).c_str(),
                e.seconds / n * 1e3,
                step > 0 ? 100.0 * e.seconds / step : 0.0, static_cast<double>(e.calls) / n);
    if (e.depth == 1) top += e.seconds;
  }
  if (step > 0)
    std::printf("  %-40s %12.3f %7.1f%%\n", "  (the step outside those regions)", (step - top) / n * 1e3,
                100.0 * (step - top) / step);
}

}  // namespace

int bench(const BenchArgs& args) {
  std::vector<std::string> sets = args.cfg.sets;
  // Timing only: no evaluation, no checkpoints; the run directory is temporary.
  sets.insert(sets.end(), {"training.eval_interval=0", "checkpoint.save=", "checkpoint.load="});
  const LaunchInfo launch = detect_launch();
  if (launch.world_size > 1)
    fail("deco bench runs one process; launch it without mpirun (scripts/bench_comm.sh measures collectives).");
  const Config config = load_config(args.cfg.config, sets, 1);
  const int64_t total_steps = args.warmup + args.steps + args.profile;
  if (config.training.train_iters < total_steps)
    fail(config.source, ": training.train_iters (", config.training.train_iters, ") is below --warmup + --steps",
         args.profile > 0 ? " + --profile" : "", " (", total_steps,
         "); raise it with --set training.train_iters=N.");
  select_local_device(launch);
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("deco-bench-" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(dir);
  std::vector<StepMetrics> steps;
  std::vector<profile::Entry> regions;
  const Device device = config.training.device == "cuda" ? Device::CUDA : Device::CPU;
  {
    ProcessGroups groups = make_process_groups(launch, 1, config.model.num_experts);
    TrainerOptions options;
    options.run_dir = dir;
    Trainer trainer(config, groups, options);
    for (int64_t i = 0; i < args.warmup + args.steps; ++i) {
      StepMetrics m = trainer.train_step();
      if (i >= args.warmup) steps.push_back(m);
    }
    // The profiled steps come after the timed ones, so the events they record cost the timing nothing.
    if (args.profile > 0) {
      profile::enable(true, device);
      for (int64_t i = 0; i < args.profile; ++i) trainer.train_step();
      regions = profile::collect();
      profile::enable(false);
    }
  }
  std::filesystem::remove_all(dir);

  // MFU against the training dtype's GEMM: bfloat16 under training.bf16, float32 otherwise.
  const DType gemm_dtype = config.training.activation_dtype();
  const double peak = measured_peak_flops(device, device == Device::CUDA ? 8192 : 2048, gemm_dtype);
  std::vector<double> time, tps, tflops, ratio, flops;
  int64_t memory = 0;
  for (const StepMetrics& m : steps) {
    time.push_back(m.step_time_s);
    tps.push_back(m.tokens_per_second);
    tflops.push_back(m.tflops);
    flops.push_back(m.tflops * 1e12 * m.step_time_s);
    if (m.activation_ratio) ratio.push_back(*m.activation_ratio);
    memory = std::max(memory, m.peak_memory_bytes);
  }
  const ModelConfig& mc = config.model;
  std::printf("deco bench: %s on %s | %lld steps timed after %lld warm-up | %lld x %lld tokens per step\n",
              config.source.c_str(),
              bench_device_label(device).c_str(),
              static_cast<long long>(args.steps), static_cast<long long>(args.warmup),
              static_cast<long long>(config.training.global_batch_size), static_cast<long long>(mc.seq_length));
  std::printf("  %-22s %12.0f\n", "tokens/s (median)", median(tps));
  std::printf("  %-22s %12.4f s   (min %.4f, max %.4f)\n", "step time (median)", median(time),
              *std::min_element(time.begin(), time.end()), *std::max_element(time.begin(), time.end()));
  // The causal kernels skip the masked half of the scores that the model
  // FLOPs' attention term (PaLM's and Megatron's MFU convention) counts:
  // what ran is that much less.
  const double tokens_per_step = static_cast<double>(config.training.global_batch_size * mc.seq_length);
  const double masked_half = tokens_per_step * attention_flops_per_token(mc) / 2.0;
  std::vector<double> executed;
  for (size_t i = 0; i < steps.size(); ++i) executed.push_back((flops[i] - masked_half) / time[i] / 1e12);
  std::printf("  %-22s %12.3f     (model FLOPs: 6 x matrix parameters per token + 12 x layers x hidden x seq, the "
              "routed experts' share as computed: all on the dense path, the active pairs on the sparse one; %.4g "
              "per step, median)\n",
              "model TFLOP/s", median(tflops), median(flops));
  std::printf("  %-22s %12.3f     (the same less the causal mask's skipped half of the attention scores)\n",
              "executed TFLOP/s", median(executed));
  std::printf("  %-22s %12.3f     (%s GEMM, measured now)\n", "device peak TFLOP/s", peak / 1e12,
              dtype_name(gemm_dtype));
  std::printf("  %-22s %11.1f%%    (model TFLOP/s over the peak measured now)\n", "MFU",
              peak > 0 ? 100.0 * median(tflops) * 1e12 / peak : 0.0);
  if (!ratio.empty()) std::printf("  %-22s %12.4f\n", "activation ratio", median(ratio));
  std::printf("  %-22s %12.3f GiB (%s)\n", "peak memory", static_cast<double>(memory) / (1024.0 * 1024.0 * 1024.0),
              device == Device::CUDA ? "the most the GPU gave the caching allocator" : "peak resident set");
  if (!regions.empty()) print_profile(regions, args.profile, device);
  return 0;
}

}  // namespace deco::cli
