// Expert parallelism in one DECO layer, on every rank of the world as one
// expert-parallel group (1, 2 or 4 ranks, 8 experts): each rank's output,
// input gradient and router-score gradients must equal those of the same
// layer holding all experts on this rank alone, the parameter gradients
// (summed over the ranks' tokens) must equal the full layer's, and exactly
// the tokens with an active expert on a rank may travel to it. float64, so
// "equal" is to 1e-10.
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "core/rng.h"
#include "kernels/ops.h"
#include "model/deco_ffn.h"
#include "model/model.h"
#include "parallel/launch.h"
#include "parallel/layout.h"

namespace {

using namespace deco;

constexpr int64_t kExperts = 8, kHidden = 16, kTokens = 12;

ModelConfig layer_config(ops::ExpertAct act, bool gated, ExpertCompute compute) {
  ModelConfig c;
  c.num_layers = 2;  // layer 0 dense, layer 1 DECO
  c.hidden_size = kHidden;
  c.num_attention_heads = 2;
  c.num_query_groups = 2;
  c.ffn_hidden_size = 24;
  c.vocab_size = 32;
  c.seq_length = 8;
  c.num_experts = kExperts;
  c.moe_ffn_hidden_size = 4;
  c.moe_shared_expert_intermediate_size = 8;
  c.dense_layers = 1;
  c.expert_act = act;
  c.expert_gated = gated;
  c.expert_compute = compute;
  c.init_method_std = 0.3;  // large enough that about half the pairs are active
  return c;
}

// Router row 2 is negative and inputs are positive: expert 2 gets no token.
void shape_router(const ParamStore& values) {
  const Tensor router = values.get(layer_param(1, "mlp.moe_router.weight"));
  double* w = router.data<double>();
  for (int64_t h = 0; h < kHidden; ++h) w[2 * kHidden + h] = -0.5;
}

// Positive inputs; tokens 0 and 5 are zero, so they activate no expert.
Buffer inputs(uint64_t seed) {
  Buffer x(DType::F64, Device::CPU, Shape{kTokens, kHidden});
  Rng rng(stream_key(seed, "ep-inputs"));
  double* p = x.data<double>();
  for (int64_t t = 0; t < kTokens; ++t)
    for (int64_t h = 0; h < kHidden; ++h) p[t * kHidden + h] = (t == 0 || t == 5) ? 0.0 : rng.uniform();
  return x;
}

Buffer randn(const Shape& shape, uint64_t key) {
  Buffer b(DType::F64, Device::CPU, shape);
  Rng rng(key);
  for (int64_t i = 0; i < b.numel(); ++i) b.data<double>()[i] = rng.normal();
  return b;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.numel() == b.numel());
  double m = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::abs(a.data<double>()[i] - b.data<double>()[i]));
  return m;
}

// The slice of a full tensor that a sharded spec holds.
Buffer shard_of(const Tensor& full, const ParamSpec& spec) {
  Buffer out(DType::F64, Device::CPU, spec.shape);
  const int64_t cols = spec.full_shape[1];
  const int64_t row0 = spec.shard_dim == 0 ? spec.shard_begin : 0, col0 = spec.shard_dim == 1 ? spec.shard_begin : 0;
  for (int64_t r = 0; r < spec.shape[0]; ++r)
    for (int64_t k = 0; k < spec.shape[1]; ++k)
      out.data<double>()[r * spec.shape[1] + k] = full.data<double>()[(row0 + r) * cols + col0 + k];
  return out;
}

}  // namespace

TEST_CASE("expert parallel: a DECO layer split over the ranks equals the whole layer", "[expert-parallel]") {
  const LaunchInfo launch = detect_launch();
  const int64_t M = launch.world_size;
  if (kExperts % M != 0) return;  // 8 experts split over 1, 2 or 4 ranks
  ProcessGroups groups = make_process_groups(launch, M, kExperts);
  Communicator& ep = *groups.expert_parallel;
  REQUIRE(ep.size() == M);

  struct Variant {
    ops::ExpertAct act;
    bool gated;
    ExpertCompute compute;
  };
  const Variant variants[] = {
      {ops::ExpertAct::NormSilu, false, ExpertCompute::Sparse},
      {ops::ExpertAct::NormSilu, false, ExpertCompute::Dense},
      {ops::ExpertAct::NormSilu, true, ExpertCompute::Sparse},
      {ops::ExpertAct::NormSiluNorms, false, ExpertCompute::Dense},
      {ops::ExpertAct::NormSiluNoMean, true, ExpertCompute::Dense},
      {ops::ExpertAct::Silu, false, ExpertCompute::Sparse},
  };
  for (const Variant& v : variants) {
    const ModelConfig c = layer_config(v.act, v.gated, v.compute);
    INFO("expert_act " << expert_act_name(v.act) << (v.gated ? " gated" : "") << ", "
                       << expert_compute_name(v.compute) << ", " << M << " ranks");
    const ParamLayout full_layout(c), shard_layout(c, M, ep.rank());
    ParamStore full_v(full_layout, DType::F64, Device::CPU), full_g(full_layout, DType::F64, Device::CPU);
    ParamStore shard_v(shard_layout, DType::F64, Device::CPU), shard_g(shard_layout, DType::F64, Device::CPU);
    init_params(full_v, c, 7);
    init_params(shard_v, c, 7);
    shape_router(full_v);
    shape_router(shard_v);
    DecoFfn whole(c, full_v, full_g, 1, nullptr);
    DecoFfn split(c, shard_v, shard_g, 1, &ep);
    whole.refresh_derived();
    split.refresh_derived();

    // Every rank its own tokens.
    const Buffer x = inputs(100 + static_cast<uint64_t>(ep.rank()));
    Buffer y_whole(DType::F64, Device::CPU, Shape{kTokens, kHidden}), y_split(DType::F64, Device::CPU, Shape{kTokens, kHidden});
    const DecoLayerStats s_whole = whole.forward(y_whole, x, RegType::Entropy);
    const DecoLayerStats s_split = split.forward(y_split, x, RegType::Entropy);
    CHECK(max_abs_diff(y_whole, y_split) < 1e-10);
    CHECK(s_whole.expert_tokens == s_split.expert_tokens);
    CHECK(s_whole.expert_tokens[2] == 0);

    // Rows sent to rank p: the tokens with z > 0 for one of p's experts,
    // from the router computed here independently.
    const Tensor router = full_v.get(layer_param(1, "mlp.moe_router.weight"));
    std::vector<int64_t> expected(static_cast<size_t>(M), 0);
    int64_t idle_tokens = 0;
    for (int64_t t = 0; t < kTokens; ++t) {
      bool any = false;
      for (int64_t p = 0; p < M; ++p) {
        bool active = false;
        for (int64_t e = p * kExperts / M; e < (p + 1) * kExperts / M; ++e) {
          double z = 0.0;
          for (int64_t h = 0; h < kHidden; ++h)
            z += x.data<double>()[t * kHidden + h] * router.data<double>()[e * kHidden + h];
          active = active || z > 0;
        }
        expected[static_cast<size_t>(p)] += active;
        any = any || active;
      }
      idle_tokens += !any;
    }
    CHECK(idle_tokens >= 2);  // tokens 0 and 5 go nowhere
    if (M > 1) CHECK(s_split.sent_per_rank == expected);

    // Backward with the entropy regularizer.
    const Buffer dy = randn(Shape{kTokens, kHidden}, stream_key(200 + static_cast<uint64_t>(ep.rank()), "dy"));
    Buffer dx_whole(DType::F64, Device::CPU, Shape{kTokens, kHidden}), dx_split(DType::F64, Device::CPU, Shape{kTokens, kHidden});
    ops::zero(full_g.flat());
    ops::zero(shard_g.flat());
    whole.backward(dx_whole, dy, x, RegType::Entropy, 0.01);
    split.backward(dx_split, dy, x, RegType::Entropy, 0.01);
    CHECK(max_abs_diff(dx_whole, dx_split) < 1e-10);

    // Parameter gradients: the whole layer's summed over the ranks' tokens.
    // Replicated parameters hold this rank's tokens' share (data parallel
    // sums them later); a shard holds every rank's tokens for its experts.
    ep.all_reduce_sum(full_g.flat());
    ep.all_reduce_sum(shard_g.dense_region());
    for (const ParamSpec& spec : shard_layout.specs()) {
      if (spec.name.find("layers.1.mlp.") == std::string::npos) continue;  // this layer's parameters
      INFO(spec.name);
      const Tensor got = shard_g.get(spec);
      const Tensor want_full = full_g.get(spec.name);
      if (spec.sharded()) {
        const Buffer want = shard_of(want_full, spec);
        CHECK(max_abs_diff(got, want) < 1e-10);
      } else {
        CHECK(max_abs_diff(got, want_full) < 1e-10);
      }
    }
  }
}

TEST_CASE("expert parallel: recomputation gives exactly the gradients of keeping every activation",
          "[expert-parallel][recompute]") {
  // Recomputing a DECO layer's forward repeats its token exchange; every
  // rank recomputes the same layers in the same order, so the collectives
  // pair up and the results are those of training.recompute: none, bit for bit.
  const LaunchInfo launch = detect_launch();
  const int64_t M = launch.world_size;
  if (kExperts % M != 0) return;
  ProcessGroups groups = make_process_groups(launch, M, kExperts);
  Communicator& ep = *groups.expert_parallel;
  // bf16: mixed precision, whose exchanged rows travel through MPI as their 16 bits.
  for (DType dtype : {DType::F64, DType::BF16}) {
    for (ExpertCompute compute : {ExpertCompute::Sparse, ExpertCompute::Dense}) {
      ModelConfig c = layer_config(ops::ExpertAct::NormSilu, false, compute);
      c.num_layers = 3;  // two DECO layers: the first is recomputed
      std::vector<double> want_grads;
      double want_loss = 0.0;
      for (Recompute mode : {Recompute::None, Recompute::Selective, Recompute::Full}) {
        INFO(dtype_name(dtype) << ", " << expert_compute_name(compute) << ", recompute " << recompute_name(mode) << ", "
                               << M << " ranks");
        c.recompute = mode;
        Model model(c, dtype, Device::CPU, &ep);
        model.init(9);
        Rng rng(stream_key(40 + static_cast<uint64_t>(ep.rank()), "tokens"));
        std::vector<int32_t> t(2 * 9);
        for (int32_t& v : t) v = static_cast<int32_t>(rng.below(32));
        StepOptions opt;
        opt.reg_coef = 0.05;
        ops::zero(model.grads().flat());
        const StepResult r = model.step(Tensor(t.data(), DType::I32, Device::CPU, {2, 9}), opt);
        const Tensor g = model.grads().flat();  // float64, or float32 under mixed precision
        std::vector<double> grads(static_cast<size_t>(g.numel()));
        for (int64_t i = 0; i < g.numel(); ++i)
          grads[static_cast<size_t>(i)] = g.dtype() == DType::F64 ? g.data<double>()[i] : g.data<float>()[i];
        if (mode == Recompute::None) {
          want_grads = grads;
          want_loss = r.lm_loss_sum + r.reg_loss;
          continue;
        }
        CHECK(r.lm_loss_sum + r.reg_loss == want_loss);
        CHECK(grads == want_grads);
      }
    }
  }
}
