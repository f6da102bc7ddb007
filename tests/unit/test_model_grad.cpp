// The whole model: gradients against finite differences in float64 for
// every parameter tensor, dense vs sparse DECO paths, determinism.
#include <catch2/catch.hpp>

#include <memory>
#include <vector>

#include "core/rng.h"
#include "kernels/ops.h"
#include "model/model.h"
#include "model_fixtures.h"
#include "test_util.h"

using namespace deco;

namespace {

using test::random_tokens;
ModelConfig small_config() { return test::small_model_config(); }

struct Case {
  const char* name;
  ModelConfig config;
  RegType reg;
};

std::vector<Case> gradient_cases() {
  std::vector<Case> cases;
  ModelConfig c = small_config();
  cases.push_back({"deco norm_silu sparse, entropy", c, RegType::Entropy});
  c.expert_compute = ExpertCompute::Dense;
  cases.push_back({"deco norm_silu dense, entropy", c, RegType::Entropy});
  c = small_config();
  c.expert_gated = true;
  cases.push_back({"deco gated", c, RegType::Entropy});
  for (auto act : {ops::ExpertAct::NormSiluNoMean, ops::ExpertAct::NormSiluNorms, ops::ExpertAct::Silu}) {
    c = small_config();
    c.expert_act = act;
    cases.push_back({expert_act_name(act), c, RegType::Entropy});
  }
  c = small_config();
  cases.push_back({"deco l1", c, RegType::L1});
  c.num_query_groups = 2;
  c.moe_shared_expert_intermediate_size = 0;
  cases.push_back({"gqa, no shared expert", c, RegType::Entropy});
  c = small_config();
  c.num_experts = 0;
  cases.push_back({"dense model", c, RegType::None});
  return cases;
}

double total_loss(Model& model, const Tensor& tokens, const StepOptions& opt) {
  StepOptions eval = opt;
  eval.backward = false;
  model.refresh_derived();  // the sparse path's mean row follows the perturbed weights
  const StepResult r = model.step(tokens, eval);
  return r.lm_loss() + r.reg_loss;
}

}  // namespace

TEST_CASE("whole-model gradients match finite differences (float64)", "[model][grad]") {
  for (const Case& tc : gradient_cases()) {
    INFO("case: " << tc.name);
    Model model(tc.config, DType::F64, Device::CPU);
    model.init(42);
    std::vector<int32_t> t = random_tokens(2, 8, tc.config.vocab_size, 7);
    const Tensor tokens(t.data(), DType::I32, Device::CPU, {2, 9});
    StepOptions opt;
    opt.reg = tc.reg;
    opt.reg_coef = 0.05;
    ops::zero(model.grads().flat());
    const StepResult r = model.step(tokens, opt);
    if (tc.config.num_experts > 0) {  // routing is neither empty nor full, so masks matter
      const double ratio = static_cast<double>(r.active_pairs()) / static_cast<double>(r.routed_slots());
      CHECK(ratio > 0.1);
      CHECK(ratio < 0.9);
      CHECK(r.reg_loss > 0.0);
    }
    // For each tensor: the directional derivative along a random direction d
    // by Richardson-extrapolated central differences (error O(h^4), so the
    // O(h^2) term of plain central differences does not hide or fake a
    // mismatch), against <grad, d>.
    const double h = 2e-5;
    for (const ParamSpec& spec : model.layout().specs()) {
      INFO("parameter " << spec.name);
      const Tensor p = model.params().get(spec);
      const Tensor g = model.grads().get(spec);
      Buffer dir = test::random_buffer(spec.shape, stream_key(3, spec.name));
      double analytic = 0.0;
      for (int64_t i = 0; i < p.numel(); ++i) analytic += g.data<double>()[i] * dir.data<double>()[i];
      auto loss_at = [&](double step) {
        ops::axpy(p, dir, step);
        const double l = total_loss(model, tokens, opt);
        ops::axpy(p, dir, -step);
        return l;
      };
      const double d1 = loss_at(h) - loss_at(-h), d2 = loss_at(2 * h) - loss_at(-2 * h);
      const double fd = (8 * d1 - d2) / (12 * h);
      // 1e-9 absolute: float64 rounding of a loss of O(1) divided by h.
      CHECK(std::abs(fd - analytic) <= 1e-6 * std::abs(fd) + 1e-9);
    }
  }
}

TEST_CASE("dense and sparse DECO paths agree on loss, statistics and every gradient", "[model][deco]") {
  for (auto act : {ops::ExpertAct::NormSilu, ops::ExpertAct::NormSiluNoMean, ops::ExpertAct::NormSiluNorms,
                   ops::ExpertAct::Silu})
    for (bool gated : {false, true})
      for (DType dtype : {DType::F64, DType::F32}) {
        INFO(expert_act_name(act) << (gated ? " gated " : " ") << dtype_name(dtype));
        ModelConfig c = small_config();
        c.expert_act = act;
        c.expert_gated = gated;
        c.expert_compute = ExpertCompute::Dense;
        Model dense(c, dtype, Device::CPU);
        c.expert_compute = ExpertCompute::Sparse;
        Model sparse(c, dtype, Device::CPU);
        dense.init(5);
        sparse.init(5);
        std::vector<int32_t> t = random_tokens(2, 8, c.vocab_size, 9);
        const Tensor tokens(t.data(), DType::I32, Device::CPU, {2, 9});
        StepOptions opt;
        opt.reg_coef = 0.05;
        const StepResult a = dense.step(tokens, opt);
        const StepResult b = sparse.step(tokens, opt);
        // float64 agrees to rounding of a few ulps; float32 to its rounding (1e-5 relative).
        const double tol = dtype == DType::F64 ? 1e-12 : 1e-5;
        CHECK(b.lm_loss() == Approx(a.lm_loss()).epsilon(tol));
        CHECK(b.reg_loss == Approx(a.reg_loss).epsilon(tol));
        CHECK(b.active_pairs() == a.active_pairs());
        for (size_t l = 0; l < a.deco_layers.size(); ++l)
          CHECK(b.deco_layers[l].expert_tokens == a.deco_layers[l].expert_tokens);
        for (const ParamSpec& spec : dense.layout().specs()) {
          INFO(spec.name);
          CHECK(test::rel_diff(sparse.grads().get(spec), dense.grads().get(spec)) < (dtype == DType::F64 ? 1e-11 : 1e-4));
        }
      }
}

TEST_CASE("sparse path handles experts with no tokens and tokens with no expert", "[model][deco]") {
  ModelConfig c = small_config();
  c.expert_compute = ExpertCompute::Sparse;
  Model sparse(c, DType::F64, Device::CPU);
  c.expert_compute = ExpertCompute::Dense;
  Model dense(c, DType::F64, Device::CPU);
  sparse.init(11);
  dense.init(11);
  // Router of every DECO layer: rows 0 and 1 zero (z = 0 is inactive, so those
  // experts never get a token), rows e >= 2 positive multiples of one vector v,
  // so a token activates all of experts 2..E-1 when v.h > 0 and none otherwise.
  for (Model* m : {&sparse, &dense})
    for (int64_t l = 1; l < c.num_layers; ++l) {
      double* w = m->params().get(layer_param(l, "mlp.moe_router.weight")).data<double>();
      const int64_t H = c.hidden_size;
      for (int64_t e = 0; e < c.num_experts; ++e)
        for (int64_t j = 0; j < H; ++j) w[e * H + j] = e < 2 ? 0.0 : static_cast<double>(e - 1) * w[2 * H + j];
    }
  std::vector<int32_t> t = random_tokens(2, 8, c.vocab_size, 13);
  const Tensor tokens(t.data(), DType::I32, Device::CPU, {2, 9});
  StepOptions opt;
  opt.reg_coef = 0.05;
  const StepResult a = dense.step(tokens, opt);
  const StepResult b = sparse.step(tokens, opt);
  for (const DecoLayerStats& layer : b.deco_layers) {
    REQUIRE(layer.expert_tokens[0] == 0);
    REQUIRE(layer.expert_tokens[1] == 0);
    const int64_t with_experts = layer.expert_tokens[2];
    for (int64_t e = 2; e < c.num_experts; ++e) REQUIRE(layer.expert_tokens[static_cast<size_t>(e)] == with_experts);
    REQUIRE(with_experts > 0);              // some tokens use experts 2..E-1 ...
    REQUIRE(with_experts < layer.tokens);   // ... and the others use none at all
  }
  CHECK(b.lm_loss() == Approx(a.lm_loss()).epsilon(1e-12));
  for (const ParamSpec& spec : dense.layout().specs()) {
    INFO(spec.name);
    CHECK(test::rel_diff(sparse.grads().get(spec), dense.grads().get(spec)) < 1e-11);
  }
  // An expert with no tokens still gets the NormSiLU mean's rank-one gradient
  // in its up-projection rows (deco-model.md section 2), and nothing in its down-projection.
  const Tensor gup = sparse.grads().get(layer_param(1, "mlp.expert_up_proj.weight"));
  double up_norm = 0.0;
  for (int64_t i = 0; i < c.moe_ffn_hidden_size * c.hidden_size; ++i) up_norm += std::abs(gup.data<double>()[i]);
  CHECK(up_norm > 0.0);
}

TEST_CASE("sequences shorter than seq_length: each row is its own sequence", "[model]") {
  // Regression: RoPE positions once ran on across the rows of a batch when
  // rows were shorter than seq_length. Two identical rows must give exactly
  // the loss of one.
  ModelConfig c = small_config();  // seq_length 8
  std::vector<int32_t> one = random_tokens(1, 5, c.vocab_size, 4);
  std::vector<int32_t> two = one;
  two.insert(two.end(), one.begin(), one.end());
  Model m(c, DType::F64, Device::CPU);
  m.init(2);
  StepOptions opt;
  opt.backward = false;
  const double single = m.step(Tensor(one.data(), DType::I32, Device::CPU, {1, 6}), opt).lm_loss();
  const double pair = m.step(Tensor(two.data(), DType::I32, Device::CPU, {2, 6}), opt).lm_loss();
  CHECK(pair == Approx(single).epsilon(1e-13));
}

TEST_CASE("the CPU backend is bit-for-bit deterministic", "[model]") {
  ModelConfig c = small_config();
  std::vector<int32_t> t = random_tokens(2, 8, c.vocab_size, 3);
  const Tensor tokens(t.data(), DType::I32, Device::CPU, {2, 9});
  StepOptions opt;
  opt.reg_coef = 0.01;
  std::vector<std::vector<float>> grads;
  std::vector<double> losses;
  for (int run = 0; run < 2; ++run) {
    Model m(c, DType::F32, Device::CPU);
    m.init(1);
    losses.push_back(m.step(tokens, opt).lm_loss());
    const Tensor g = m.grads().flat();
    grads.emplace_back(g.data<float>(), g.data<float>() + g.numel());
  }
  CHECK(losses[0] == losses[1]);
  CHECK(grads[0] == grads[1]);
}

TEST_CASE("initialization follows deco-model.md section 4", "[model][init]") {
  ModelConfig c = small_config();
  c.init_method_std = 0.01;
  c.num_layers = 3;
  Model m(c, DType::F64, Device::CPU);
  m.init(1234);
  auto stddev = [&](const std::string& name) {
    const Tensor t = m.params().get(name);
    double s = 0.0;
    for (int64_t i = 0; i < t.numel(); ++i) s += t.data<double>()[i] * t.data<double>()[i];
    return std::sqrt(s / static_cast<double>(t.numel()));
  };
  auto all_equal = [&](const std::string& name, double v) {
    const Tensor t = m.params().get(name);
    for (int64_t i = 0; i < t.numel(); ++i)
      if (t.data<double>()[i] != v) return false;
    return true;
  };
  const double scaled = 0.01 / std::sqrt(2.0 * 3);
  // Sample standard deviations of a few hundred draws: within 15% of the target.
  CHECK(stddev("model.embed_tokens.weight") == Approx(0.01).epsilon(0.15));
  CHECK(stddev("model.layers.1.self_attn.q_proj.weight") == Approx(0.01).epsilon(0.15));
  CHECK(stddev("model.layers.1.self_attn.o_proj.weight") == Approx(scaled).epsilon(0.15));
  CHECK(stddev("model.layers.0.mlp.down_proj.weight") == Approx(scaled).epsilon(0.15));
  CHECK(stddev("model.layers.1.mlp.shared_experts.down_proj.weight") == Approx(scaled).epsilon(0.15));
  CHECK(stddev("model.layers.1.mlp.expert_down_proj.weight") == Approx(0.01).epsilon(0.15));
  CHECK(stddev("model.layers.1.mlp.moe_router.weight") == Approx(0.01).epsilon(0.15));
  CHECK(all_equal("model.layers.1.mlp.router_norm.weight", 0.1));
  CHECK(all_equal("model.layers.1.mlp.expert_act.rms_norm.weight", 1.0));
  CHECK(all_equal("model.layers.2.input_layernorm.weight", 1.0));
  CHECK(all_equal("model.norm.weight", 1.0));
  // Decay exclusions: every 1-D tensor, nothing else.
  for (const ParamSpec& s : m.layout().specs()) CHECK(s.weight_decay == (s.shape.ndim == 2));
  // Expert projections live in the expert region, after every dense parameter.
  for (const ParamSpec& s : m.layout().specs())
    CHECK(s.expert == (s.name.find("expert_up_proj") != std::string::npos ||
                       s.name.find("expert_down_proj") != std::string::npos));
}

TEST_CASE("expert_compute auto: the sparse path up to the crossover ratio, the dense one above, per layer",
          "[model][deco]") {
  ModelConfig c = small_config();
  std::vector<int32_t> t = random_tokens(2, 8, c.vocab_size, 9);
  const Tensor tokens(t.data(), DType::I32, Device::CPU, {2, 9});
  StepOptions opt;
  opt.reg_coef = 0.05;
  auto run = [&](ExpertCompute compute, double crossover) {
    c.expert_compute = compute;
    auto m = std::make_unique<Model>(c, DType::F32, Device::CPU);
    m->init(5);
    m->set_expert_crossover(crossover);
    const StepResult r = m->step(tokens, opt);
    const Tensor g = m->grads().flat();
    return std::make_pair(r, std::vector<float>(g.data<float>(), g.data<float>() + g.numel()));
  };
  const auto [dense, dense_g] = run(ExpertCompute::Dense, 0);
  const auto [sparse, sparse_g] = run(ExpertCompute::Sparse, 0);
  // Crossover 1: every layer sparse; 0: every layer with an active pair dense. Bit for bit.
  const auto [all_sparse, all_sparse_g] = run(ExpertCompute::Auto, 1.0);
  const auto [all_dense, all_dense_g] = run(ExpertCompute::Auto, 0.0);
  CHECK(all_sparse.lm_loss_sum == sparse.lm_loss_sum);
  CHECK(all_sparse_g == sparse_g);
  CHECK(all_dense.lm_loss_sum == dense.lm_loss_sum);
  CHECK(all_dense_g == dense_g);
  // A crossover between the two DECO layers' ratios: each layer by its own.
  REQUIRE(dense.deco_layers.size() == 2);
  auto ratio = [](const DecoLayerStats& s) {
    return static_cast<double>(s.active_pairs) / static_cast<double>(s.tokens * static_cast<int64_t>(s.expert_tokens.size()));
  };
  const double r1 = ratio(dense.deco_layers[0]), r2 = ratio(dense.deco_layers[1]);
  REQUIRE(r1 != r2);
  const auto [mixed, mixed_g] = run(ExpertCompute::Auto, 0.5 * (r1 + r2));
  CHECK(mixed.deco_layers[0].compute == (r1 < r2 ? ExpertCompute::Sparse : ExpertCompute::Dense));
  CHECK(mixed.deco_layers[1].compute == (r1 < r2 ? ExpertCompute::Dense : ExpertCompute::Sparse));
  // float32 sparse and dense layers agree to 1e-5 (the dense-vs-sparse test's bound), so a mix does too.
  CHECK(mixed.lm_loss() == Approx(dense.lm_loss()).epsilon(1e-5));
}
