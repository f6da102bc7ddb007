// training.recompute (model/memory.h): none, selective and full give
// bit-identical results and hold less activation memory, in that order.
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "core/caching_allocator.h"
#include "kernels/ops.h"
#include "model/model.h"
#include "model/model_stats.h"
#include "model_fixtures.h"

using namespace deco;

namespace {

using test::random_tokens;

// Four layers, so that two DECO layers are rebuilt before their backward.
ModelConfig recompute_config() {
  ModelConfig c = test::small_model_config();
  c.num_layers = 4;
  return c;
}

struct Variant {
  const char* name;
  ModelConfig config;
  RegType reg;
  double crossover = 1.0;  // expert_compute auto
  DType dtype = DType::F32;
};

std::vector<Variant> variants() {
  std::vector<Variant> v;
  ModelConfig c = recompute_config();
  v.push_back({"sparse, entropy", c, RegType::Entropy});
  c.expert_compute = ExpertCompute::Dense;
  v.push_back({"dense experts", c, RegType::Entropy});
  c.expert_compute = ExpertCompute::Auto;  // near the ratios at init: paths differ by layer and shape
  v.push_back({"auto", c, RegType::Entropy, 0.5});
  c = recompute_config();
  v.push_back({"bf16 mixed precision", c, RegType::Entropy, 1.0, DType::BF16});
  c = recompute_config();
  c.expert_gated = true;
  v.push_back({"gated", c, RegType::L1});
  c = recompute_config();
  c.expert_act = ops::ExpertAct::Silu;
  c.moe_shared_expert_intermediate_size = 0;
  v.push_back({"silu, no shared expert", c, RegType::Entropy});
  c = recompute_config();
  c.dense_layers = 2;  // the last layer is DECO, two dense ones before
  c.num_layers = 3;
  v.push_back({"two dense layers", c, RegType::Entropy});
  c = recompute_config();
  c.num_experts = 0;
  v.push_back({"dense model", c, RegType::None});
  return v;
}

struct Outcome {
  std::vector<double> losses;
  std::vector<int64_t> counts;  // every layer's expert token counts and idle tokens, step by step
  std::vector<float> grads;     // the flat gradient after the last step
};

// Three steps of different shapes (buffers shared between layers must be
// re-sized, not reused stale), gradients accumulating across them.
Outcome run(ModelConfig c, Recompute mode, RegType reg, double crossover, DType dtype) {
  c.recompute = mode;
  Model m(c, dtype, Device::CPU);
  m.init(17);
  m.set_expert_crossover(crossover);
  ops::zero(m.grads().flat());
  Outcome out;
  const int64_t shapes[][2] = {{2, 8}, {3, 5}, {1, 8}};
  uint64_t seed = 1;
  for (const auto& bs : shapes) {
    std::vector<int32_t> t = random_tokens(bs[0], bs[1], c.vocab_size, seed++);
    StepOptions opt;
    opt.reg = reg;
    opt.reg_coef = 0.05;
    const StepResult r = m.step(Tensor(t.data(), DType::I32, Device::CPU, {bs[0], bs[1] + 1}), opt);
    out.losses.push_back(r.lm_loss_sum);
    out.losses.push_back(r.reg_loss);
    for (const DecoLayerStats& s : r.deco_layers) {
      out.counts.push_back(static_cast<int64_t>(s.compute));
      out.counts.insert(out.counts.end(), s.expert_tokens.begin(), s.expert_tokens.end());
      out.counts.push_back(s.idle_tokens);
    }
  }
  const Tensor g = m.grads().flat();
  out.grads.assign(g.data<float>(), g.data<float>() + g.numel());
  return out;
}

}  // namespace

TEST_CASE("recompute: none, selective and full give bit-identical losses, statistics and gradients",
          "[model][recompute]") {
  for (const Variant& v : variants()) {
    INFO(v.name);
    const Outcome none = run(v.config, Recompute::None, v.reg, v.crossover, v.dtype);
    for (Recompute mode : {Recompute::Selective, Recompute::Full}) {
      INFO("recompute " << recompute_name(mode));
      const Outcome other = run(v.config, mode, v.reg, v.crossover, v.dtype);
      CHECK(other.losses == none.losses);
      CHECK(other.counts == none.counts);
      REQUIRE(other.grads.size() == none.grads.size());
      CHECK(std::memcmp(other.grads.data(), none.grads.data(), none.grads.size() * sizeof(float)) == 0);
    }
  }
}

namespace {

// Activation bytes (host, MemoryCategory::Activations) a model holds after a step.
struct Measured {
  double bytes;
  double ratio;
};
Measured measure_step(const ModelConfig& c, int64_t batch, DType dtype) {
  Model m(c, dtype, Device::CPU);
  m.init(3);
  std::vector<int32_t> t = random_tokens(batch, c.seq_length, c.vocab_size, 5);
  const size_t a = static_cast<size_t>(MemoryCategory::Activations);
  const size_t before = host_memory_stats().by_category[a];
  StepOptions opt;
  opt.reg_coef = 0.01;
  const StepResult r = m.step(Tensor(t.data(), DType::I32, Device::CPU, {batch, c.seq_length + 1}), opt);
  const double bytes = static_cast<double>(host_memory_stats().by_category[a] - before);
  const double ratio = c.num_experts ? static_cast<double>(r.active_pairs()) / static_cast<double>(r.routed_slots()) : 0;
  return {bytes, ratio};
}

}  // namespace

TEST_CASE("recompute: activation memory per mode, as allocated and as estimated", "[model][recompute][memory]") {
  ModelConfig c = recompute_config();
  c.num_layers = 8;
  c.hidden_size = 64;
  c.ffn_hidden_size = 96;
  c.seq_length = 32;
  // bf16: activations at 2 bytes, statistics and router values at 4 (the
  // estimate behind the deco-1.2b figures below).
  for (DType dtype : {DType::F32, DType::BF16}) {
    for (ExpertCompute compute : {ExpertCompute::Dense, ExpertCompute::Sparse})
      for (bool gated : {false, true}) {
        c.expert_compute = compute;
        c.expert_gated = gated;
        INFO(dtype_name(dtype) << ", " << expert_compute_name(compute) << (gated ? ", gated" : ""));
        double bytes[3];
        for (Recompute mode : {Recompute::None, Recompute::Selective, Recompute::Full}) {
          INFO("recompute " << recompute_name(mode));
          c.recompute = mode;
          const Measured m = measure_step(c, 4, dtype);
          bytes[static_cast<int>(mode)] = m.bytes;
          const double estimate = activation_bytes(c, 4, dtype, Device::CPU, m.ratio);
          // The dense path's buffers have fixed sizes: the estimate is exact.
          // The sparse path sizes them by each layer's pair count (shared
          // buffers by the largest), the estimate by the mean ratio.
          if (compute == ExpertCompute::Dense)
            CHECK(estimate == m.bytes);
          else
            CHECK(estimate == Approx(m.bytes).epsilon(0.05));
        }
        // Selective drops the per-layer elementwise activations; full keeps
        // only each layer's input and one layer's working set. At these shapes
        // (8 layers, hidden 64) the bytes are exact, not noisy: selective holds
        // 0.73-0.87 of none's (the sparse path has the least to drop: it keeps
        // no gathered [P, H] rows), full 0.30-0.36.
        CHECK(bytes[1] < 0.9 * bytes[0]);
        CHECK(bytes[2] < 0.4 * bytes[0]);
      }
  }
}

TEST_CASE("recompute: by the estimate, deco-1.2b at micro-batch 8 x 4096 in bf16 fits 80 GB with recomputation",
          "[model][recompute][memory]") {
  // An estimate (the checks above tie it to real allocations): the paper's
  // largest model, bf16 activations on a GPU, activation ratio 0.2 (its
  // target), next to the fp32 master weights, fp32 gradients and AdamW's two
  // fp32 moments plus a bf16 copy of the weights for compute (18 bytes a parameter).
  ModelConfig c;
  c.num_layers = 32;
  c.hidden_size = 1792;
  c.num_attention_heads = 14;
  c.num_query_groups = 14;
  c.ffn_hidden_size = 4480;
  c.vocab_size = 73448;
  c.seq_length = 4096;
  c.num_experts = 102;
  const double gb = 1e9;
  const double state = 18.0 * static_cast<double>(count_params(c).total);
  for (double ratio : {0.2, 0.5}) {  // the target, and about where training starts
    double total[3];
    for (Recompute mode : {Recompute::None, Recompute::Selective, Recompute::Full}) {
      c.recompute = mode;
      total[static_cast<int>(mode)] = state + activation_bytes(c, 8, DType::BF16, Device::CUDA, ratio);
    }
    INFO("ratio " << ratio << ": state " << state / gb << " GB; with activations: none " << total[0] / gb
                  << ", selective " << total[1] / gb << ", full " << total[2] / gb << " GB");
    // Without recomputation: 72.6 GB at 0.2, too close to 80 GB for the
    // allocator's workspace and fragmentation; 89 GB at 0.5.
    if (ratio == 0.5) CHECK(total[0] > 80 * gb);
    CHECK(total[1] < 80 * gb);
    CHECK(total[2] < 80 * gb);
  }
}
