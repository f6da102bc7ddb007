// Mixed precision (training.bf16, Model with DType::BF16): float32 master
// weights, gradients and optimizer state, a bf16 copy for compute, bf16
// activations, the router and every statistic in float32. On the CPU the
// bf16 ops are the float32 reference run on bf16 values with bf16 outputs
// (kernels/cpu/widen.h), so these tests check the model's precision
// plumbing; the GPU tests check the CUDA kernels against them.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/bf16.h"
#include "kernels/ops.h"
#include "model/model.h"
#include "model_fixtures.h"
#include "test_util.h"

using namespace deco;

namespace {

ModelConfig bf16_config() {
  ModelConfig c = test::small_model_config();
  c.num_layers = 4;
  c.init_method_std = 0.1;
  return c;
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
      Model f32(c, DType::F32, Device::CPU), bf16(c, DType::BF16, Device::CPU);
      f32.init(3);
      bf16.init(3);
      std::vector<int32_t> t = test::random_tokens(2, 8, c.vocab_size, 5);
      const Tensor tokens(t.data(), DType::I32, Device::CPU, {2, 9});
      StepOptions opt;
      opt.reg_coef = 0.05;
      const StepResult a = f32.step(tokens, opt), b = bf16.step(tokens, opt);
      CHECK(b.lm_loss() == Approx(a.lm_loss()).epsilon(5e-4));
      CHECK(b.reg_loss == Approx(a.reg_loss).epsilon(5e-3));
      for (const ParamSpec& spec : f32.layout().specs()) {
        INFO(spec.name);
        CHECK(test::rel_diff(bf16.grads().get(spec), f32.grads().get(spec)) < 5e-2);
      }
    }
}

TEST_CASE("bf16 model: the sparse and dense expert paths agree to bf16 rounding", "[model][bf16][deco]") {
  ModelConfig c = bf16_config();
  c.expert_compute = ExpertCompute::Dense;
  Model dense(c, DType::BF16, Device::CPU);
  c.expert_compute = ExpertCompute::Sparse;
  Model sparse(c, DType::BF16, Device::CPU);
  dense.init(7);
  sparse.init(7);
  std::vector<int32_t> t = test::random_tokens(2, 8, c.vocab_size, 9);
  const Tensor tokens(t.data(), DType::I32, Device::CPU, {2, 9});
  StepOptions opt;
  opt.reg_coef = 0.05;
  const StepResult a = dense.step(tokens, opt), b = sparse.step(tokens, opt);
  CHECK(b.lm_loss() == Approx(a.lm_loss()).epsilon(5e-4));
  for (const ParamSpec& spec : dense.layout().specs()) {
    INFO(spec.name);
    CHECK(test::rel_diff(sparse.grads().get(spec), dense.grads().get(spec)) < 5e-2);
  }
}

TEST_CASE("bf16 model on the GPU: loss and every gradient within bf16 rounding of the CPU float32 model",
          "[model][bf16][gpu]") {
  if (cuda_device_count() == 0) {  // runs in the GPU suite (scripts/gpu_suite.sh)
    WARN("skipped: no CUDA device");
    return;
  }
  // The bounds of the CPU bf16 test above, with room for the GPU's own
  // rounding points (logits rounded to bf16 before the softmax, sums in
  // other orders): loss 2e-3, gradients 5% (norm of the difference).
  for (ExpertCompute compute : {ExpertCompute::Sparse, ExpertCompute::Dense}) {
    INFO(expert_compute_name(compute));
    ModelConfig c = bf16_config();
    c.expert_compute = compute;
    Model f32(c, DType::F32, Device::CPU), gpu(c, DType::BF16, Device::CUDA);
    f32.init(3);
    gpu.init(3);
    std::vector<int32_t> t = test::random_tokens(2, 8, c.vocab_size, 5);
    const Tensor tokens(t.data(), DType::I32, Device::CPU, {2, 9});
    StepOptions opt;
    opt.reg_coef = 0.05;
    ops::zero(gpu.grads().flat());
    const StepResult a = f32.step(tokens, opt), b = gpu.step(tokens, opt);
    CHECK(b.lm_loss() == Approx(a.lm_loss()).epsilon(2e-3));
    CHECK(b.active_pairs() == Approx(static_cast<double>(a.active_pairs())).epsilon(0.02));
    Buffer host(DType::F32, Device::CPU, gpu.grads().flat().shape());
    ops::copy(host, gpu.grads().flat());
    const ParamStore& layout_store = f32.grads();
    for (const ParamSpec& spec : f32.layout().specs()) {
      INFO(spec.name);
      const Tensor got = host.tensor().slice(spec.offset, spec.offset + spec.shape.numel());
      const Tensor want = layout_store.get(spec);
      CHECK(test::rel_diff(got.view(want.shape()), want) < 5e-2);
    }
  }
}
