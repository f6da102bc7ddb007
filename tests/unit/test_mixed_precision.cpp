// Mixed precision (training.bf16, Model with DType::BF16): float32 master
// weights, gradients and optimizer state, a bf16 copy for compute, bf16
// activations, the router and every statistic in float32. On the CPU the
// bf16 ops are the float32 reference run on bf16 values with bf16 outputs
// (kernels/cpu/widen.h), so these tests check the model's precision
// plumbing; the GPU tests check the CUDA kernels against them.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/bf16.h"
#include "kernels/ops.h"
#include "model/deco_ffn.h"
#include "model/layer_bench.h"
#include "model/model.h"
#include "model_fixtures.h"
#include "test_util.h"

using namespace deco;

namespace {

// A tensor of any float dtype and device as float32 on the host.
Buffer to_f32_host(const Tensor& t) {
  Buffer host(t.dtype(), Device::CPU, t.shape());
  ops::copy(host, t);
  Buffer out(DType::F32, Device::CPU, t.shape());
  ops::copy(out, host);
  return out;
}

ModelConfig bf16_config() {
  ModelConfig c = test::small_model_config();
  c.num_layers = 4;
  c.init_method_std = 0.1;
  return c;
}

// Head size 64 (two heads over one kv group): on the GPU the tensor-core
// attention kernels of the paper configs (bf16_config's head size 4 takes
// the CUDA-core ones). Dense layers only: at this width a DECO layer's
// router gradient moves by up to 10% between bf16 and float32 on these 16
// tokens, as pairs whose z lies within bf16 rounding of 0 flip (measured),
// which would hide what this model is for.
ModelConfig wide_bf16_config() {
  ModelConfig c = bf16_config();
  c.hidden_size = 128;
  c.num_attention_heads = 2;
  c.num_query_groups = 1;
  c.ffn_hidden_size = 96;
  c.dense_layers = c.num_layers;
  c.init_method_std = 0.05;
  return c;
}

// One step (reg_coef 0.05) of a fresh model of config c in `dtype` on
// `device`, weights from `seed`, two sequences of tokens from seed 5: the
// result and the float32 gradients on the host.
struct Stepped {
  StepResult result;
  Buffer grads;
};
Stepped step_once(const ModelConfig& c, DType dtype, Device device, uint64_t seed) {
  Model m(c, dtype, device);
  m.init(seed);
  std::vector<int32_t> t = test::random_tokens(2, 8, c.vocab_size, 5);
  StepOptions opt;
  opt.reg_coef = 0.05;
  Stepped out;
  out.result = m.step(Tensor(t.data(), DType::I32, Device::CPU, {2, 9}), opt);
  out.grads = to_f32_host(m.grads().flat());
  return out;
}

// Every parameter's gradient in `got` within `tol` of `want` (norm of the difference over the norm).
void check_grads(const ModelConfig& c, const Buffer& got, const Buffer& want, double tol) {
  const ParamLayout layout(c);
  double worst = 0.0;
  std::string worst_name;
  for (const ParamSpec& spec : layout.specs()) {
    INFO(spec.name);
    const int64_t end = spec.offset + spec.shape.numel();
    const double d = test::rel_diff(got.tensor().slice(spec.offset, end), want.tensor().slice(spec.offset, end));
    CHECK(d < tol);
    if (!(d <= worst)) {  // NaN included
      worst = d;
      worst_name = spec.name;
    }
  }
  // The margin, printed whether or not it holds: the GPU bounds were set before any GPU run.
  std::printf("check_grads: worst relative difference %.3g in %s (bound %.3g)\n", worst, worst_name.c_str(), tol);
}

}  // namespace

TEST_CASE("bf16 mixed precision: float32 master weights and gradients, a bf16 copy rounded from them",
          "[model][bf16]") {
  Model m(bf16_config(), DType::BF16, Device::CPU);
  m.init(3);
  CHECK(m.mixed_precision());
  CHECK(m.params().flat().dtype() == DType::F32);
  CHECK(m.grads().flat().dtype() == DType::F32);
  const Tensor master = m.params().flat(), copy = m.compute_params().flat();
  REQUIRE(copy.dtype() == DType::BF16);
  REQUIRE(copy.numel() == master.numel());
  int64_t wrong = 0;
  for (int64_t i = 0; i < master.numel(); ++i)
    wrong += static_cast<const uint16_t*>(copy.raw())[i] != float_to_bf16_bits(master.data<float>()[i]);
  CHECK(wrong == 0);
  // After a weight change, refresh_derived rounds the copy again.
  ops::scale(m.params().flat(), 1.5);
  m.refresh_derived();
  wrong = 0;
  for (int64_t i = 0; i < master.numel(); ++i)
    wrong += static_cast<const uint16_t*>(copy.raw())[i] != float_to_bf16_bits(master.data<float>()[i]);
  CHECK(wrong == 0);
  Model f32(bf16_config(), DType::F32, Device::CPU);
  CHECK_FALSE(f32.mixed_precision());
  CHECK(f32.compute_params().flat().raw() == f32.params().flat().raw());
}

TEST_CASE("bf16 model: loss and every gradient within bf16 rounding of the float32 model", "[model][bf16]") {
  // bf16 keeps 8 bits of mantissa: each stored activation is off by up to
  // 2^-9 = 0.2% relative, and a gradient passes some ten such roundings per
  // layer. Measured on these shapes: loss within 2e-4, gradients within
  // 0.4%-2.1% (norm of the difference over the norm); the bounds leave 2x.
  for (ExpertCompute compute : {ExpertCompute::Sparse, ExpertCompute::Dense})
    for (bool gated : {false, true}) {
      INFO(expert_compute_name(compute) << (gated ? ", gated" : ""));
      ModelConfig c = bf16_config();
      c.expert_compute = compute;
      c.expert_gated = gated;
      const Stepped f32 = step_once(c, DType::F32, Device::CPU, 3), bf16 = step_once(c, DType::BF16, Device::CPU, 3);
      CHECK(bf16.result.lm_loss() == Approx(f32.result.lm_loss()).epsilon(5e-4));
      CHECK(bf16.result.reg_loss == Approx(f32.result.reg_loss).epsilon(5e-3));
      check_grads(c, bf16.grads, f32.grads, 5e-2);
    }
  const ModelConfig wide = wide_bf16_config();
  const Stepped f32 = step_once(wide, DType::F32, Device::CPU, 3), bf16 = step_once(wide, DType::BF16, Device::CPU, 3);
  CHECK(bf16.result.lm_loss() == Approx(f32.result.lm_loss()).epsilon(5e-4));
  check_grads(wide, bf16.grads, f32.grads, 5e-2);
}

TEST_CASE("bf16 model: the sparse and dense expert paths agree to bf16 rounding", "[model][bf16][deco]") {
  // The bounds of the test above: the two paths round at different points.
  ModelConfig c = bf16_config();
  c.expert_compute = ExpertCompute::Dense;
  const Stepped dense = step_once(c, DType::BF16, Device::CPU, 7);
  c.expert_compute = ExpertCompute::Sparse;
  const Stepped sparse = step_once(c, DType::BF16, Device::CPU, 7);
  CHECK(sparse.result.lm_loss() == Approx(dense.result.lm_loss()).epsilon(5e-4));
  check_grads(c, sparse.grads, dense.grads, 5e-2);
}

TEST_CASE("bf16 model on the GPU: loss and every gradient within bf16 rounding of the CPU float32 model",
          "[model][bf16][gpu]") {
  if (cuda_device_count() == 0) {  // runs in the GPU suite (scripts/gpu_suite.sh)
    WARN("skipped: no CUDA device");
    return;
  }
  // The bounds of the CPU bf16 test above, with room for the GPU's own
  // rounding points (logits rounded to bf16 before the softmax, sums in
  // other orders): loss 2e-3, gradients 5% (norm of the difference). The
  // router is float32 on both, but its input is the bf16-rounded stream, so
  // pairs whose z lies within that rounding of 0 may flip: 2% of the pairs.
  for (ExpertCompute compute : {ExpertCompute::Sparse, ExpertCompute::Dense}) {
    INFO(expert_compute_name(compute));
    ModelConfig c = bf16_config();
    c.expert_compute = compute;
    const Stepped f32 = step_once(c, DType::F32, Device::CPU, 3), gpu = step_once(c, DType::BF16, Device::CUDA, 3);
    CHECK(gpu.result.lm_loss() == Approx(f32.result.lm_loss()).epsilon(2e-3));
    CHECK(gpu.result.active_pairs() == Approx(static_cast<double>(f32.result.active_pairs())).epsilon(0.02));
    check_grads(c, gpu.grads, f32.grads, 5e-2);
  }
  // The tensor-core attention path (head size 64) in a whole model.
  const ModelConfig wide = wide_bf16_config();
  const Stepped f32 = step_once(wide, DType::F32, Device::CPU, 3), gpu = step_once(wide, DType::BF16, Device::CUDA, 3);
  CHECK(gpu.result.lm_loss() == Approx(f32.result.lm_loss()).epsilon(2e-3));
  check_grads(wide, gpu.grads, f32.grads, 5e-2);
}

namespace {

// One DECO layer (deco-0.1b's widths at a smaller hidden size) in bf16
// mixed precision on `device`, the router forced to `ratio`, expert 3 given
// no token and every 11th token no expert; returns y, dx and the float32
// parameter gradients on the host.
struct LayerRun {
  Buffer y, dx, grads;
  int64_t idle = 0, expert3 = -1;
};
LayerRun run_layer(ExpertCompute compute, double ratio, Device device, bool overlap = true, int64_t N = 300,
                   int64_t H = 96, int64_t shared = 32) {
  ModelConfig c;
  c.num_layers = 1;
  c.dense_layers = 0;
  c.hidden_size = H;
  c.num_attention_heads = 4;
  c.num_query_groups = 4;
  c.vocab_size = 8;
  c.seq_length = 8;
  c.num_experts = 12;
  c.moe_ffn_hidden_size = 64;
  c.moe_shared_expert_intermediate_size = shared;
  c.expert_compute = compute;
  c.moe_shared_expert_overlap = overlap;
  const ParamLayout layout(c);
  ParamStore master(layout, DType::F32, device), grads(layout, DType::F32, device), copy(layout, DType::BF16, device);
  init_params(master, c, 11);
  Buffer x(DType::BF16, device, {N, H}), y(DType::BF16, device, {N, H}), dx(DType::BF16, device, {N, H});
  const Tensor router = master.get(layer_param(0, "mlp.moe_router.weight"));
  force_router_ratio(router, x, ratio, 5);
  // Expert 3 gets no token: its router row is only a negative bias (z = -50
  // or, for the zero rows below, 0, and z > 0 is what activates). Every 11th
  // token gets no expert: its input row is zero, so all its z are 0.
  Buffer rh(DType::F32, Device::CPU, router.shape());
  ops::copy(rh, router);
  for (int64_t h = 0; h < H; ++h) rh.data<float>()[3 * H + h] = h == 0 ? -50.0f : 0.0f;
  ops::copy(router, rh);
  Buffer xh = to_f32_host(x);
  for (int64_t t = 0; t < N; t += 11)
    for (int64_t h = 0; h < H; ++h) xh.data<float>()[t * H + h] = 0.0f;
  Buffer xb(DType::BF16, Device::CPU, {N, H});
  ops::copy(xb, xh);
  ops::copy(x, xb);
  ops::copy(copy.flat(), master.flat());
  DecoFfn layer(c, copy, grads, 0, nullptr, &master);
  layer.refresh_derived();
  const DecoLayerStats stats = layer.forward(y, x, RegType::Entropy);
  Buffer dyh = test::random_buffer({N, H}, 17);  // float64 normals
  Buffer dyb(DType::BF16, Device::CPU, {N, H}), dy(DType::BF16, device, {N, H});
  ops::copy(dyb, dyh);
  ops::copy(dy, dyb);
  layer.backward(dx, dy, x, RegType::Entropy, 1e-3);
  LayerRun r;
  r.y = to_f32_host(y);
  r.dx = to_f32_host(dx);
  r.grads = Buffer(DType::F32, Device::CPU, grads.flat().shape());
  ops::copy(r.grads, grads.flat());
  r.idle = stats.idle_tokens;
  r.expert3 = stats.expert_tokens[3];
  return r;
}

}  // namespace

TEST_CASE("bf16 DECO layer: sparse against dense at forced ratios, idle experts and tokens with no expert",
          "[model][bf16][deco][gpu]") {
  // On the CPU always (the bf16 reference), and on the GPU when there is one
  // (issue 7's check: both paths on the device to bf16 rounding). The two
  // paths round at different points (per pair against per token x expert
  // block, the NormSiLU mean from w_bar against the row mean). Measured on
  // the CPU: 0.13%-0.32% (norm of the difference over the norm); the bound,
  // 3%, leaves room for the GPU's own rounding points.
  std::vector<Device> devices{Device::CPU};
  if (cuda_device_count() > 0) devices.push_back(Device::CUDA);
  for (Device device : devices)
    for (double ratio : {0.05, 0.2, 0.5, 1.0}) {
      INFO(device_name(device) << ", ratio " << ratio);
      const LayerRun dense = run_layer(ExpertCompute::Dense, ratio, device);
      const LayerRun sparse = run_layer(ExpertCompute::Sparse, ratio, device);
      CHECK(dense.expert3 == 0);
      CHECK(dense.idle >= (300 + 10) / 11);
      CHECK(test::rel_diff(sparse.y, dense.y) < 3e-2);
      CHECK(test::rel_diff(sparse.dx, dense.dx) < 3e-2);
      CHECK(test::rel_diff(sparse.grads, dense.grads) < 3e-2);
    }
}

namespace {

bool same_bytes(const Buffer& a, const Buffer& b) {
  return a.tensor().nbytes() == b.tensor().nbytes() &&
         std::memcmp(a.tensor().raw(), b.tensor().raw(), a.tensor().nbytes()) == 0;
}

}  // namespace

TEST_CASE("DECO shared expert on a second GPU stream: bit-identical to running it in line",
          "[model][bf16][deco][gpu]") {
  if (cuda_device_count() == 0) {  // runs in the GPU suite (scripts/gpu_suite.sh)
    WARN("skipped: no CUDA device");
    return;
  }
  // model.moe_shared_expert_overlap queues the shared expert on a side
  // stream; the routed part adds into its output after a join, so every sum
  // is formed in the same order and the results must agree bit for bit. A
  // layer big enough for the two streams' kernels to run at the same time
  // (a missing wait or a block handed to both streams shows as a difference
  // or as a run that differs from itself), with a shared expert much
  // narrower than the routed part (the main stream finishes last: a missing
  // fork wait shows) and one much wider (the side stream finishes last: a
  // missing join shows).
  for (int64_t shared : {32, 8192})
    for (ExpertCompute compute : {ExpertCompute::Sparse, ExpertCompute::Dense})
    for (double ratio : {0.2, 1.0}) {
      INFO(expert_compute_name(compute) << ", ratio " << ratio << ", shared expert width " << shared);
      const LayerRun inline_run = run_layer(compute, ratio, Device::CUDA, false, 4096, 768, shared);
      const LayerRun overlapped = run_layer(compute, ratio, Device::CUDA, true, 4096, 768, shared);
      const LayerRun again = run_layer(compute, ratio, Device::CUDA, true, 4096, 768, shared);
      CHECK(same_bytes(overlapped.y, inline_run.y));
      CHECK(same_bytes(overlapped.dx, inline_run.dx));
      CHECK(same_bytes(overlapped.grads, inline_run.grads));
      CHECK(same_bytes(again.grads, overlapped.grads));
    }
  // A whole model: the side stream shared by every DECO layer, the shared
  // expert's scratch shared by all of them, and recomputation running the
  // forward again.
  for (Recompute recompute : {Recompute::None, Recompute::Selective, Recompute::Full}) {
    INFO(recompute_name(recompute));
    ModelConfig c = bf16_config();
    c.recompute = recompute;
    c.moe_shared_expert_overlap = false;
    const Stepped inline_run = step_once(c, DType::BF16, Device::CUDA, 3);
    c.moe_shared_expert_overlap = true;
    const Stepped overlapped = step_once(c, DType::BF16, Device::CUDA, 3);
    CHECK(overlapped.result.lm_loss() == inline_run.result.lm_loss());
    CHECK(overlapped.result.active_pairs() == inline_run.result.active_pairs());
    CHECK(same_bytes(overlapped.grads, inline_run.grads));
  }
}
