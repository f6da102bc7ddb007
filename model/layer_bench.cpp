#include "model/layer_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/ops.h"
#include "model/deco_ffn.h"
#include "model/params.h"

namespace deco {
namespace {

// x with Phi(x) = p, Phi the standard normal distribution function (bisection on erfc).
double normal_quantile(double p) {
  double lo = -12.0, hi = 12.0;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

// Fills t (any device, float32 or float64) from host values.
void fill(const Tensor& t, const std::vector<double>& values) {
  Buffer host(DType::F64, Device::CPU, t.shape());
  std::copy(values.begin(), values.end(), host.data<double>());
  Buffer staged(t.dtype(), Device::CPU, t.shape());
  ops::copy(staged, host);  // the dtype, on the host
  ops::copy(t, staged);     // then to t's device
}

ModelConfig one_deco_layer(const ModelConfig& c, ExpertCompute compute) {
  DECO_ASSERT(c.num_experts > 0, "bench_deco_layer needs a config with routed experts");
  ModelConfig one = c;
  one.num_layers = 1;
  one.dense_layers = 0;  // layer 0 is the DECO layer
  one.vocab_size = 8;    // the embedding and head are not used
  one.recompute = Recompute::None;
  one.expert_compute = compute;
  return one;
}

// rows <- N x H values from the named stream: N(0, 1) x scale, column 0 set to 1 with bias_feature.
void draw_rows(std::vector<double>& rows, const std::string& name, int64_t N, int64_t H, double scale,
               bool bias_feature) {
  rows.assign(static_cast<size_t>(N * H), 0.0);
  Rng rng(stream_key(3, name));
  for (int64_t t = 0; t < N; ++t)
    for (int64_t h = 0; h < H; ++h)
      rows[static_cast<size_t>(t * H + h)] = bias_feature && h == 0 ? 1.0 : scale * rng.normal();
}

// The router weights of force_router_ratio (x aside).
void force_router_weights(const Tensor& router_weight, double ratio, uint64_t seed) {
  DECO_ASSERT(ratio > 0 && ratio <= 1, "ratio ", ratio, " outside (0, 1]");
  const int64_t E = router_weight.size(0), H = router_weight.size(1);
  DECO_ASSERT(H >= 2, "router [", E, ", ", H, "]: the bias feature needs H >= 2");
  // z = bias + g with g ~ N(0, 1): P(z > 0) = Phi(bias). Ratio 1: far enough that no pair is off.
  const double bias = ratio >= 1.0 ? 12.0 : normal_quantile(ratio);
  Rng rng(stream_key(seed, "bench-layer"));
  std::vector<double> w(static_cast<size_t>(E * H));
  const double wstd = 1.0 / std::sqrt(static_cast<double>(H - 1));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t h = 0; h < H; ++h) w[static_cast<size_t>(e * H + h)] = h == 0 ? bias : wstd * rng.normal();
  fill(router_weight, w);
}

}  // namespace

double deco_layer_flops(const ModelConfig& c, double tokens, double rows, ExpertCompute compute) {
  const double H = static_cast<double>(c.hidden_size), E = static_cast<double>(c.num_experts);
  const double D = static_cast<double>(c.moe_ffn_hidden_size);
  const double S = static_cast<double>(c.moe_shared_expert_intermediate_size);
  const double projections = c.expert_gated ? 3.0 : 2.0;
  double forward = 2 * tokens * H * E                 // router
                   + 2 * tokens * 3 * H * S           // shared SwiGLU expert
                   + 2 * rows * projections * H * D;  // routed experts
  if (compute == ExpertCompute::Sparse && ops::expert_act_has_mean(c.expert_act))
    forward += 2 * tokens * H;  // mean(u) = h . w_bar (its backward: two more such products)
  return 3 * forward;
}

double deco_layer_bytes(const ModelConfig& c, double tokens, double rows, size_t dtype_bytes) {
  // Both paths keep [rows, D] projections; rows says how many.
  const double H = static_cast<double>(c.hidden_size), E = static_cast<double>(c.num_experts);
  const double D = static_cast<double>(c.moe_ffn_hidden_size);
  const double S = static_cast<double>(c.moe_shared_expert_intermediate_size);
  const double projections = c.expert_gated ? 3.0 : 2.0;
  const double weights = E * H + 3 * H * S + projections * E * D * H;
  const double streams = 4 * tokens * H;                                  // x, y, dy, dx
  const double z = 2 * tokens * E;                                       // router pre-activations: written, read
  const double kept = 2 * (projections - 1) * rows * D;                  // pre (and lin): written, read
  // Weight gradients and z are float32 whatever the activations' dtype.
  return (streams + 2 * weights + kept) * static_cast<double>(dtype_bytes) + (2 * weights + z) * 4.0;
}

double sparse_pair_row_bytes(const ModelConfig& c, double pairs, size_t dtype_bytes) {
  const double rows_per_pair = c.expert_gated ? 24.0 : 16.0;
  return rows_per_pair * pairs * static_cast<double>(c.hidden_size) * static_cast<double>(dtype_bytes);
}

void force_router_ratio(const Tensor& router_weight, const Tensor& x, double ratio, uint64_t seed) {
  DECO_ASSERT(x.size(1) == router_weight.size(1), "router [", router_weight.size(0), ", ", router_weight.size(1),
              "] for inputs of ", x.size(1));
  force_router_weights(router_weight, ratio, seed);
  LayerBenchRows rows;
  fill(x, rows.x(x.size(0), x.size(1)));
}

const std::vector<double>& LayerBenchRows::x(int64_t N, int64_t H) {
  if (x_.n != N || x_.h != H) draw_rows(x_.values, "bench-layer-x", N, H, 1.0, true);
  x_.n = N;
  x_.h = H;
  return x_.values;
}

const std::vector<double>& LayerBenchRows::dy(int64_t N, int64_t H) {
  if (dy_.n != N || dy_.h != H) draw_rows(dy_.values, "bench-layer-dy", N, H, 1.0 / static_cast<double>(N), false);
  dy_.n = N;
  dy_.h = H;
  return dy_.values;
}

LayerBench bench_deco_layer(const ModelConfig& config, int64_t tokens, ExpertCompute compute, double ratio,
                            Device device, int warmup, int iters, DType dtype, LayerBenchRows* shared) {
  LayerBenchRows own;
  LayerBenchRows& token_rows = shared ? *shared : own;
  const ModelConfig c = one_deco_layer(config, compute);
  const int64_t H = c.hidden_size;
  const ParamLayout layout(c);
  const DType master_dtype = accumulate_dtype(dtype);
  ParamStore master(layout, master_dtype, device), grads(layout, master_dtype, device);
  init_params(master, c, 1);
  Buffer x(dtype, device, Shape{tokens, H}), y(dtype, device, Shape{tokens, H});
  Buffer dx(dtype, device, Shape{tokens, H}), dy(dtype, device, Shape{tokens, H});
  force_router_weights(master.get(layer_param(0, "mlp.moe_router.weight")), ratio, 2);
  fill(x, token_rows.x(tokens, H));
  // Mixed precision: the layer computes with a bf16 copy, the router with the master weights.
  std::unique_ptr<ParamStore> copy;
  if (dtype != master_dtype) {
    copy = std::make_unique<ParamStore>(layout, dtype, device);
    ops::copy(copy->flat(), master.flat());
  }
  DecoFfn layer(c, copy ? *copy : master, grads, 0, nullptr, copy ? &master : nullptr);
  fill(dy, token_rows.dy(tokens, H));
  layer.refresh_derived();

  std::vector<double> times;
  int64_t active = 0, slots = 0;
  for (int i = 0; i < warmup + iters; ++i) {
    device_synchronize(device);
    const auto t0 = std::chrono::steady_clock::now();
    const DecoLayerStats stats = layer.forward(y, x, RegType::Entropy);
    layer.backward(dx, dy, x, RegType::Entropy, 1e-3 / static_cast<double>(tokens));
    device_synchronize(device);
    if (i < warmup) continue;
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    active += stats.active_pairs;
    slots += stats.tokens * c.num_experts;
  }
  LayerBench r;
  r.compute = compute;
  r.asked_ratio = ratio;
  r.ratio = slots ? static_cast<double>(active) / static_cast<double>(slots) : 0.0;
  std::sort(times.begin(), times.end());
  r.seconds = times.empty() ? 0.0 : times[times.size() / 2];
  r.min_seconds = times.empty() ? 0.0 : times.front();
  r.max_seconds = times.empty() ? 0.0 : times.back();
  const double N = static_cast<double>(tokens), E = static_cast<double>(c.num_experts);
  const double rows = compute == ExpertCompute::Dense ? N * E : r.ratio * N * E;
  r.flops = deco_layer_flops(c, N, rows, compute);
  r.bytes = deco_layer_bytes(c, N, rows, dtype_size(dtype));
  r.pair_row_bytes = compute == ExpertCompute::Sparse ? sparse_pair_row_bytes(c, rows, dtype_size(dtype)) : 0.0;
  return r;
}

ExpertCrossover measure_expert_crossover(const ModelConfig& config, int64_t tokens, Device device, DType dtype) {
  ExpertCrossover x;
  const int warmup = 1, iters = 3;
  LayerBenchRows rows;  // the three runs' token rows, drawn once
  x.dense_s =
      bench_deco_layer(config, tokens, ExpertCompute::Dense, 0.5, device, warmup, iters, dtype, &rows).seconds;
  const LayerBench low =
      bench_deco_layer(config, tokens, ExpertCompute::Sparse, x.kLow, device, warmup, iters, dtype, &rows);
  const LayerBench high =
      bench_deco_layer(config, tokens, ExpertCompute::Sparse, x.kHigh, device, warmup, iters, dtype, &rows);
  x.sparse_low_s = low.seconds;
  x.sparse_high_s = high.seconds;
  const double slope = (high.seconds - low.seconds) / (high.ratio - low.ratio);
  if (!(slope > 0))  // timing noise on a tiny layer: whichever is faster at the low ratio
    x.ratio = low.seconds < x.dense_s ? 1.0 : 0.0;
  else
    x.ratio = std::clamp(low.ratio + (x.dense_s - low.seconds) / slope, 0.0, 1.0);
  return x;
}

}  // namespace deco
