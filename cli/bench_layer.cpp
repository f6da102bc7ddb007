// deco bench-layer: one DECO layer forward + backward at a config's shapes,
// with the router forced to activation ratios, on both expert paths, against
// the device's floors (FLOPs / peak, bytes / bandwidth) measured in the same run.
#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "cli/device_peaks.h"
#include "kernels/ops.h"
#include "kernels/runtime.h"
#include "model/layer_bench.h"
#include "parallel/launch.h"
#include "trainer/config.h"

namespace deco::cli {

int bench_layer(const BenchLayerArgs& args) {
  const LaunchInfo launch = detect_launch();
  if (launch.world_size > 1) fail("deco bench-layer runs one process; launch it without mpirun.");
  const Config config = load_config(args.cfg.config, args.cfg.sets, 1);
  const ModelConfig& m = config.model;
  if (m.num_experts == 0)
    fail(config.source, ": model.num_experts is 0, so there is no DECO layer to time; use a DECO config "
         "(deco bench times whole training steps of dense ones).");
  for (double r : args.ratios)
    if (!(r > 0 && r <= 1))
      fail("--ratio ", r, " is not an activation ratio; give values in (0, 1], such as --ratio 0.2.");
  std::vector<ExpertCompute> paths;
  for (const std::string& p : args.paths) {
    if (p == "dense") paths.push_back(ExpertCompute::Dense);
    else if (p == "sparse") paths.push_back(ExpertCompute::Sparse);
    else fail("--path ", p, " is not an expert path; use dense or sparse, or both: --path dense,sparse.");
  }
  const int64_t tokens = args.tokens > 0 ? args.tokens : config.training.micro_batch_size * m.seq_length;
  const Device device = bench_device(config, launch);

  const DType dtype = config.training.activation_dtype();
  const double peak = measured_peak_flops(device, device == Device::CUDA ? 8192 : 2048, dtype);
  const double bandwidth = measured_bandwidth(device, int64_t{1} << (device == Device::CUDA ? 30 : 28));
  std::printf("deco bench-layer: %s | one DECO layer: hidden %lld, %lld experts x %lld%s, shared expert %lld, %s | "
              "%lld tokens | %s on %s\n",
              config.source.c_str(), static_cast<long long>(m.hidden_size), static_cast<long long>(m.num_experts),
              static_cast<long long>(m.moe_ffn_hidden_size), m.expert_gated ? " gated" : "",
              static_cast<long long>(m.moe_shared_expert_intermediate_size), expert_act_name(m.expert_act),
              static_cast<long long>(tokens), config.training.bf16 ? "bf16 mixed precision" : "float32",
              bench_device_label(device).c_str());
  std::printf("floors from peaks measured now: %.3f TFLOP/s (%s GEMM), %.1f GB/s (device copy)\n", peak / 1e12,
              dtype_name(dtype), bandwidth / 1e9);
  std::printf("forward + backward, median of %lld after %lld warm-up; executed FLOPs (2 a multiply-add); bytes the "
              "layer must move at least (model/layer_bench.h)\n\n",
              static_cast<long long>(args.iters), static_cast<long long>(args.warmup));
  std::printf("%-9s %6s %7s %10s %10s %9s %9s %9s %9s %8s %9s %9s\n", "path", "asked", "ratio", "time ms", "GFLOP",
              "TFLOP/s", "GB/s", "flop fl.", "byte fl.", "of floor", "vs dense", "rows ms");
  // On a GPU in bf16 at expert width 64 (the sparse expert kernels' domain,
  // kernels/cuda/sparse_experts.cu) the sparse path is timed three times,
  // side by side: with the tensor-core kernels in their wide blocks
  // ("sparse", the default) and their narrow ones ("sp-narrow"), and with
  // the composition they replace, gather + cuBLAS grouped GEMM + scatter
  // ("sp-cublas"). The CPU always runs the composition.
  const bool both_sparse = device == Device::CUDA && dtype == DType::BF16 && m.moe_ffn_hidden_size == 64 &&
                           m.hidden_size % 64 == 0;
  using ops::SparseExpertKernels;
  // On a GPU, with model.moe_shared_expert_overlap (the shared expert on a
  // second stream, beside the router and routed experts), each path is also
  // timed with the shared expert in line ("dn-serial", "sp-serial").
  const bool serial_too = device == Device::CUDA && m.moe_shared_expert_overlap &&
                          m.moe_shared_expert_intermediate_size > 0;
  struct Variant {
    const char* label;
    ExpertCompute path;
    SparseExpertKernels kernels;
    bool overlap;
  };
  // "sparse" runs the config's model.sparse_expert_kernels; the other two choices follow it.
  use_gpu_kernels(m);
  const SparseExpertKernels chosen = m.sparse_expert_kernels;
  std::vector<Variant> variants;
  for (ExpertCompute path : paths) {
    const bool sparse = path == ExpertCompute::Sparse;
    variants.push_back({expert_compute_name(path), path, chosen, m.moe_shared_expert_overlap});
    if (serial_too) variants.push_back({sparse ? "sp-serial" : "dn-serial", path, chosen, false});
    if (sparse && both_sparse) {
      const std::pair<SparseExpertKernels, const char*> others[] = {{SparseExpertKernels::Wide, "sp-wide"},
                                                                   {SparseExpertKernels::Narrow, "sp-narrow"},
                                                                   {SparseExpertKernels::Composition, "sp-cublas"}};
      for (const auto& [kernels, label] : others)
        if (kernels != chosen) variants.push_back({label, path, kernels, m.moe_shared_expert_overlap});
    }
  }
  LayerBenchRows rows;  // every variant and ratio times the layer over the same token rows
  for (double ratio : args.ratios) {
    double dense_seconds = 0.0;
    for (const Variant& v : variants) {
      ops::set_sparse_expert_kernels(v.kernels);
      ModelConfig variant = m;
      variant.moe_shared_expert_overlap = v.overlap;
      const LayerBench r = bench_deco_layer(variant, tokens, v.path, ratio, device, static_cast<int>(args.warmup),
                                            static_cast<int>(args.iters), dtype, &rows);
      ops::set_sparse_expert_kernels(chosen);
      const double flop_floor = r.flops / peak, byte_floor = r.bytes / bandwidth;
      if (v.path == ExpertCompute::Dense && v.overlap == m.moe_shared_expert_overlap) dense_seconds = r.seconds;
      char versus[32] = "";
      if (v.path == ExpertCompute::Sparse && dense_seconds > 0)
        std::snprintf(versus, sizeof(versus), "%.2fx", dense_seconds / r.seconds);
      char rows[32] = "";
      const bool composition = !(both_sparse && v.kernels != SparseExpertKernels::Composition);
      if (composition && r.pair_row_bytes > 0)
        std::snprintf(rows, sizeof(rows), "%.3f", r.pair_row_bytes / bandwidth * 1e3);
      std::printf("%-9s %6.2f %7.4f %10.3f %10.3f %9.3f %9.1f %8.3fms %8.3fms %7.1f%% %9s %9s\n", v.label, ratio,
                  r.ratio, r.seconds * 1e3, r.flops / 1e9, r.flops / r.seconds / 1e12, r.bytes / r.seconds / 1e9,
                  flop_floor * 1e3, byte_floor * 1e3, 100.0 * std::max(flop_floor, byte_floor) / r.seconds, versus,
                  rows);
    }
  }
  std::printf("\nflop fl. = FLOPs / peak, byte fl. = bytes / bandwidth; 'of floor' = the larger floor / time; "
              "'vs dense' = dense time / sparse time at the same ratio; sparse: model.sparse_expert_kernels (%s), "
              "sp-wide and sp-narrow: the tensor-core kernels in 8- and 4-warp blocks, sp-cublas: gather + cuBLAS "
              "grouped GEMM + scatter (on a GPU in bf16 at D = 64; elsewhere sparse is the composition); dn-serial and sp-serial: the shared "
              "expert in line instead of on a second stream beside the routed experts (model.moe_shared_expert_overlap); "
              "rows ms = the H-wide rows per pair that the "
              "gather + grouped GEMM + scatter composition moves (model/layer_bench.h: sparse_pair_row_bytes) / "
              "bandwidth; the tensor-core kernels read them by index instead.\n",
              ops::sparse_expert_kernels_name(chosen));
  return 0;
}

}  // namespace deco::cli
