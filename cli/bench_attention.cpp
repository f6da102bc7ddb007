// deco bench-attention: causal attention forward and backward alone at a
// config's shapes (micro_batch_size sequences of seq_length, its heads, kv
// groups and head size), in the config's precision on its device: the
// kernels a training step runs, without the projections around them.
// tests/reference/bench_attention.py times PyTorch's
// scaled_dot_product_attention on the same shapes for the side-by-side.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "cli/device_peaks.h"
#include "core/rng.h"
#include "kernels/ops.h"
#include "kernels/runtime.h"
#include "parallel/launch.h"
#include "trainer/config.h"

namespace deco::cli {
int bench_attention(const BenchAttentionArgs& args) {
  const LaunchInfo launch = detect_launch();
  if (launch.world_size > 1) fail("deco bench-attention runs one process; launch it without mpirun.");
  const Config config = load_config(args.cfg.config, args.cfg.sets, 1);
  const ModelConfig& m = config.model;
  const Device device = bench_device(config, launch);
  const DType dtype = config.training.activation_dtype();
  const int64_t batch = args.batch > 0 ? args.batch : config.training.micro_batch_size;
  const int64_t seq = args.seq > 0 ? args.seq : m.seq_length;
  const int64_t hd = m.hidden_size / m.num_attention_heads;
  const ops::AttentionShape s{batch, seq, m.num_attention_heads, m.num_query_groups, hd};
  const int64_t N = batch * seq;
  const Shape qs{N, s.heads * hd}, ks{N, s.groups * hd};

  Buffer q(dtype, device, qs), k(dtype, device, ks), v(dtype, device, ks), dout(dtype, device, qs);
  Buffer out(dtype, device, qs), dq(dtype, device, qs), dk(dtype, device, ks), dv(dtype, device, ks);
  // float32: the GPU's log-sum-exp, or the CPU reference's probabilities (B h S^2 values: pass --seq).
  Buffer saved(DType::F32, device, ops::attention_saved_shape(device, s));
  fill_normal(q, stream_key(1, "bench-attention"));
  fill_normal(k, stream_key(2, "bench-attention"));
  fill_normal(v, stream_key(3, "bench-attention"));
  fill_normal(dout, stream_key(4, "bench-attention"));

  // Median forward and backward seconds of the kernels ops:: picks now.
  auto time_passes = [&]() {
    std::vector<double> fwd, bwd;
    for (int64_t i = 0; i < args.warmup + args.iters; ++i) {
      device_synchronize(device);
      const auto t0 = std::chrono::steady_clock::now();
      ops::attention_forward(out, saved, q, k, v, s);
      device_synchronize(device);
      const auto t1 = std::chrono::steady_clock::now();
      ops::attention_backward(dq, dk, dv, dout, out, saved, q, k, v, s);
      device_synchronize(device);
      const auto t2 = std::chrono::steady_clock::now();
      if (i < args.warmup) continue;
      fwd.push_back(std::chrono::duration<double>(t1 - t0).count());
      bwd.push_back(std::chrono::duration<double>(t2 - t1).count());
    }
    return std::pair{median(fwd), median(bwd)};
  };
  // On a GPU in bf16 at head_dim 64 or 128 the tensor-core kernels run; the
  // CUDA-core ones are timed after them, side by side.
  const bool both = device == Device::CUDA && dtype == DType::BF16 && (hd == 64 || hd == 128);
  const auto [tf, tb] = time_passes();
  double cf = 0, cb = 0;
  if (both) {
    ops::set_attention_tensor_cores(false);
    std::tie(cf, cb) = time_passes();
    ops::set_attention_tensor_cores(true);
  }
  // The customary causal count (FlashAttention's): the forward's two
  // products over the S^2 / 2 visible (query, key) pairs, 2 FLOPs a
  // multiply-add; the backward 2.5 times that (five products). The
  // implementations may execute more (deco's deterministic dQ recomputes
  // two products), which is theirs to pay.
  const double fwd_flops = 4.0 * static_cast<double>(batch) * static_cast<double>(s.heads) *
                           static_cast<double>(seq) * static_cast<double>(seq) * static_cast<double>(hd) / 2.0;
  const double bwd_flops = 2.5 * fwd_flops;
  std::printf("deco bench-attention: %s | causal attention, batch %lld x seq %lld, %lld heads over %lld kv groups, "
              "head_dim %lld | %s on %s | median of %lld after %lld warm-up\n",
              config.source.c_str(), static_cast<long long>(batch), static_cast<long long>(seq),
              static_cast<long long>(s.heads), static_cast<long long>(s.groups), static_cast<long long>(hd),
              dtype_name(dtype),
              bench_device_label(device).c_str(),
              static_cast<long long>(args.iters), static_cast<long long>(args.warmup));
  auto table = [&](const char* title, double f, double b) {
    std::printf("%s\n%-18s %10s %10s\n", title, "pass", "time ms", "TFLOP/s");
    std::printf("%-18s %10.3f %10.2f\n", "forward", f * 1e3, fwd_flops / f / 1e12);
    std::printf("%-18s %10.3f %10.2f\n", "backward", b * 1e3, bwd_flops / b / 1e12);
    std::printf("%-18s %10.3f %10.2f\n", "forward+backward", (f + b) * 1e3, (fwd_flops + bwd_flops) / (f + b) / 1e12);
  };
  table(both ? "tensor-core kernels (kernels/cuda/attention_tc.cu):" : "the kernels this precision and head size use:",
        tf, tb);
  if (both) {
    table("CUDA-core kernels (kernels/cuda/attention.cu), same run:", cf, cb);
    std::printf("tensor cores / CUDA cores: %.2fx faster forward+backward\n", (cf + cb) / (tf + tb));
  }
  std::printf("TFLOP/s count the causal half of S^2 (forward 4 B h S^2 d / 2, backward 2.5x).\n");
  char cuda_core[96] = "";
  if (both)
    std::snprintf(cuda_core, sizeof(cuda_core), ", \"cuda_core_forward_ms\": %.4f, \"cuda_core_backward_ms\": %.4f",
                  cf * 1e3, cb * 1e3);
  std::printf("{\"forward_ms\": %.4f, \"backward_ms\": %.4f, \"batch\": %lld, \"seq\": %lld, \"heads\": %lld, "
              "\"groups\": %lld, \"head_dim\": %lld, \"dtype\": \"%s\"%s}\n",
              tf * 1e3, tb * 1e3, static_cast<long long>(batch), static_cast<long long>(seq),
              static_cast<long long>(s.heads), static_cast<long long>(s.groups), static_cast<long long>(hd),
              dtype_name(dtype), cuda_core);
  return 0;
}

}  // namespace deco::cli
