// One DECO layer, forward and backward, timed at a config's shapes with its
// router forced to an activation ratio: what `deco bench-layer` prints and
// what model.expert_compute: auto decides by.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "model/model_config.h"

namespace deco {

// FLOPs one DECO layer executes forward and backward over `tokens` tokens
// when its routed experts compute `rows` (token, expert) rows: tokens x E on
// the dense path, the active pairs on the sparse one. 2 FLOPs a
// multiply-add, the backward twice the forward: the router (fp32), the
// shared expert, the routed projections and, on the sparse path, the mean row.
double deco_layer_flops(const ModelConfig& config, double tokens, double rows, ExpertCompute compute);

// The bytes the layer moves at least, as this implementation structures it:
// inputs, outputs and their gradients once; every weight read forward and
// backward; weight gradients read and written (they accumulate); and the
// activations it keeps from forward to backward (router pre-activations and
// the [rows, D] projections), written once and read once. Elements of
// `dtype_bytes` each, except the weight gradients and the router's
// pre-activations (float32 under mixed precision too).
double deco_layer_bytes(const ModelConfig& config, double tokens, double rows, size_t dtype_bytes);

// What the sparse path's composition (gather + grouped GEMM + scatter, the
// CPU's and the GPU's fallback; ops.h "sparse expert products") moves beyond
// that floor: H-wide rows per active pair. Each product that reads rows by
// pair gathers them into a workspace first (3 rows: read, write, read by
// the GEMM): the up-projection, dy through the down-projection, and the two
// weight gradients; each product that sums rows into tokens writes them and
// the scatter-add reads them (2): the down-projection and the input
// gradient. 16 rows per pair; gated experts' second projection adds a
// gather GEMM, a weight gradient and an input gradient: 24. The GPU's
// tensor-core kernels read the rows by index (from L2 when the tokens'
// rows fit) and write none. Elements of `dtype_bytes`.
double sparse_pair_row_bytes(const ModelConfig& config, double pairs, size_t dtype_bytes);

// Makes about `ratio` of the layer's (token, expert) pairs active, for
// inputs x [N, H] and router weight [E, H] on any device: feature 0 of every
// input is 1 and the router's column 0 a bias placing that quantile of the
// other features' N(0, 1) pre-activations above zero; the other features
// are N(0, 1), the other router columns N(0, 1 / (H - 1)). ratio in (0, 1].
void force_router_ratio(const Tensor& router_weight, const Tensor& x, double ratio, uint64_t seed);

// The token rows a series of layer benchmarks shares, drawn once per shape
// (at deco-1.2b's 32768 x 1792 tokens each is about 59 M normals, seconds on
// one core, and deco bench-layer times a dozen variants and ratios over the
// same rows): x as force_router_ratio draws it (feature 0 is 1), and dy, a
// mean loss's gradient (N(0, 1) / N). Held only as long as the object.
class LayerBenchRows {
 public:
  const std::vector<double>& x(int64_t N, int64_t H);
  const std::vector<double>& dy(int64_t N, int64_t H);

 private:
  struct Rows {
    int64_t n = -1, h = -1;
    std::vector<double> values;
  };
  Rows x_, dy_;
};

struct LayerBench {
  ExpertCompute compute;
  double asked_ratio = 0, ratio = 0;  // the forced ratio and the one measured
  double seconds = 0;                 // median forward + backward, device synchronized
  double min_seconds = 0, max_seconds = 0;
  double flops = 0, bytes = 0;        // deco_layer_flops / deco_layer_bytes at the measured ratio
  double pair_row_bytes = 0;          // sparse: sparse_pair_row_bytes at the measured pairs (0 dense)
};

// Times `iters` forward + backward passes (after `warmup` untimed ones) of
// one DECO layer with config's layer shapes (hidden size, experts, widths,
// activation, gating; the other layers do not matter) over `tokens` tokens
// on `device`, on the given expert path, with the entropy regularizer's
// gradient included, as in training. dtype: F32, or BF16 for mixed
// precision as the model runs it (bf16 weights copy and activations,
// float32 master weights for the router, float32 gradients).
// `shared` (optional) lends the token rows drawn for an earlier call of the same shape.
LayerBench bench_deco_layer(const ModelConfig& config, int64_t tokens, ExpertCompute compute, double ratio,
                            Device device, int warmup, int iters, DType dtype = DType::F32,
                            LayerBenchRows* shared = nullptr);

// model.expert_compute auto's crossover for this config's DECO layer on
// `device` at `tokens` tokens per micro-batch: the activation ratio below
// which the sparse path is faster. The dense path's time does not depend on
// the ratio, the sparse path's grows with it; this times the dense path and
// the sparse one at ratios 0.1 and 0.6 and intersects the line through the
// sparse times with the dense time, clamped to [0, 1] (0: dense always, 1:
// sparse always).
struct ExpertCrossover {
  double ratio = 0;
  double dense_s = 0, sparse_low_s = 0, sparse_high_s = 0;  // the three medians
  static constexpr double kLow = 0.1, kHigh = 0.6;
};
ExpertCrossover measure_expert_crossover(const ModelConfig& config, int64_t tokens, Device device,
                                         DType dtype = DType::F32);

}  // namespace deco
