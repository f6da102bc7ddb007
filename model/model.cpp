#include "model/model.h"

#include "core/profile.h"

#include <algorithm>

#include "core/caching_allocator.h"

namespace deco {

struct Model::Layer {
  Param ln1, ln2;
  Attention attention;
  std::unique_ptr<SwigluFfn> dense_ffn;
  std::unique_ptr<DecoFfn> deco_ffn;
  Buffer residual_in;  // [N, H] the stream entering the layer: kept per layer in every recompute mode
  LayerSaved* saved = nullptr;
  LayerRecomputable* recomputable = nullptr;

  // values: what the layer computes with; master: the float32 weights (the router's, under mixed precision).
  Layer(const ModelConfig& c, const ParamStore& values, const ParamStore& master, const ParamStore& grads, int64_t l,
        Communicator* expert_parallel)
      : ln1(bind_param(values, grads, layer_param(l, "input_layernorm.weight"))),
        ln2(bind_param(values, grads, layer_param(l, "post_attention_layernorm.weight"))),
        attention(c, values, grads, l) {
    if (c.is_deco_layer(l))
      deco_ffn = std::make_unique<DecoFfn>(c, values, grads, l, expert_parallel, &master);
    else
      dense_ffn = std::make_unique<SwigluFfn>(values, grads, layer_param(l, "mlp."));
  }

  void use_memory(LayerSaved* s, LayerRecomputable* r, LayerScratch* w) {
    saved = s;
    recomputable = r;
    attention.use_memory(&s->attention, &w->attention);
    if (deco_ffn) deco_ffn->use_memory(&s->deco, &r->deco, &w->deco);
    if (dense_ffn) dense_ffn->use_memory(&s->dense_ffn, &r->dense_ffn, &w->dense_ffn);
  }
};

int64_t grad_unit_of(const std::string& name) {
  if (name == "lm_head.weight" || name == "model.norm.weight") return kHeadGradUnit;
  if (name == "model.embed_tokens.weight") return kEmbeddingGradUnit;
  const std::string prefix = "model.layers.";
  DECO_ASSERT(name.compare(0, prefix.size(), prefix) == 0, "no gradient unit for parameter ", name);
  return std::stoll(name.substr(prefix.size()));
}

int64_t StepResult::active_pairs() const {
  int64_t n = 0;
  for (const DecoLayerStats& s : deco_layers) n += s.active_pairs;
  return n;
}

int64_t StepResult::routed_slots() const {
  int64_t n = 0;
  for (const DecoLayerStats& s : deco_layers) n += s.tokens * static_cast<int64_t>(s.expert_tokens.size());
  return n;
}

Model::Model(const ModelConfig& config, DType dtype, Device device, Communicator* expert_parallel,
             int64_t region_multiple)
    : config_(config),
      dtype_(dtype),
      device_(device),
      layout_(config, expert_parallel ? expert_parallel->size() : 1, expert_parallel ? expert_parallel->rank() : 0,
              region_multiple),
      // Built inside scopes, so the device-memory report tells them apart (C++17 elides the move).
      params_([&] {
        MemoryCategoryScope scope(MemoryCategory::Parameters);
        return ParamStore(layout_, accumulate_dtype(dtype), device);
      }()),
      grads_([&] {
        MemoryCategoryScope scope(MemoryCategory::Gradients);
        return ParamStore(layout_, accumulate_dtype(dtype), device);
      }()),
      compute_([&]() -> std::unique_ptr<ParamStore> {
        if (accumulate_dtype(dtype) == dtype) return nullptr;
        MemoryCategoryScope scope(MemoryCategory::Parameters);
        return std::make_unique<ParamStore>(layout_, dtype, device);
      }()),
      embed_(bind_param(compute_ ? *compute_ : params_, grads_, "model.embed_tokens.weight")),
      final_norm_(bind_param(compute_ ? *compute_ : params_, grads_, "model.norm.weight")),
      lm_head_(bind_param(compute_ ? *compute_ : params_, grads_, "lm_head.weight")) {
  DECO_ASSERT(dtype == DType::F32 || dtype == DType::F64 || dtype == DType::BF16, "model dtype ", dtype_name(dtype));
  ops::reserve_gemm_workspace(device);  // counted in the set-up memory report, not first seen at step 1
  const ParamStore& values = compute_ ? *compute_ : params_;
  for (int64_t l = 0; l < config_.num_layers; ++l)
    layers_.push_back(std::make_unique<Layer>(config_, values, params_, grads_, l, expert_parallel));
  // Who owns the activations (model/memory.h): per layer, or one set shared by all layers.
  const size_t layers = layers_.size();
  const size_t saved_sets = config_.recompute == Recompute::Full ? 1 : layers;
  const size_t recomputable_sets = config_.recompute == Recompute::None ? layers : 1;
  for (size_t i = 0; i < std::min(saved_sets, layers); ++i) saved_.push_back(std::make_unique<LayerSaved>());
  for (size_t i = 0; i < std::min(recomputable_sets, layers); ++i)
    recomputable_.push_back(std::make_unique<LayerRecomputable>());
  for (size_t l = 0; l < layers; ++l)
    layers_[l]->use_memory(saved_[saved_sets == 1 ? 0 : l].get(),
                           recomputable_[recomputable_sets == 1 ? 0 : l].get(), &scratch_);
  rope_.ensure(accumulate_dtype(dtype), device, Shape{config_.seq_length, config_.head_dim() / 2, 2});
  ops::rope_table(rope_, config_.rotary_base);
}

Model::~Model() = default;

void Model::init(uint64_t seed) {
  init_params(params_, config_, seed);
  refresh_derived();
}

void Model::set_expert_crossover(double ratio) {
  for (auto& layer : layers_)
    if (layer->deco_ffn) layer->deco_ffn->set_expert_crossover(ratio);
}

void Model::refresh_derived() {
  if (compute_) ops::copy(compute_->flat(), params_.flat());  // the bf16 weights, rounded from the master ones
  for (auto& layer : layers_)
    if (layer->deco_ffn) layer->deco_ffn->refresh_derived();
}

void Model::forward_layer(size_t l, int64_t batch, int64_t seq, RegType reg, StepResult* result) {
  Layer& L = *layers_[l];
  LayerSaved& s = *L.saved;
  LayerRecomputable& r = *L.recomputable;
  const int64_t N = batch * seq;
  const Shape hs{N, config_.hidden_size};
  const double eps = config_.norm_epsilon;
  const DType stat = accumulate_dtype(dtype_);
  r.normed1.ensure(dtype_, device_, hs);
  r.normed2.ensure(dtype_, device_, hs);
  s.rstd1.ensure(stat, device_, Shape{N});
  s.rstd2.ensure(stat, device_, Shape{N});
  s.residual_mid.ensure(dtype_, device_, hs);

  const bool recomputing = result == nullptr;
  if (l == 0 || recomputing) ops::rmsnorm_forward(r.normed1, s.rstd1, L.residual_in, L.ln1.value, eps);
  {
    profile::Region region("attention.forward");
    L.attention.forward(branch_out_, r.normed1, rope_, batch, seq);
  }
  ops::residual_rmsnorm_forward(s.residual_mid, r.normed2, s.rstd2, L.residual_in, branch_out_, L.ln2.value, eps);
  if (L.deco_ffn) {
    profile::Region region("deco_ffn.forward");
    DecoLayerStats stats = L.deco_ffn->forward(branch_out_, r.normed2, reg, !recomputing);
    if (!recomputing) result->deco_layers.push_back(std::move(stats));
  } else {
    profile::Region region("dense_ffn.forward");
    L.dense_ffn->forward(branch_out_, r.normed2, false);
  }
  if (recomputing) return;
  // The next layer's input and its norm. With shared Recomputable or Saved
  // storage (model/memory.h) this overwrites this layer's normed1 / rstd1,
  // which its forward no longer needs and its backward rebuilds.
  if (l + 1 < layers_.size()) {
    Layer& next = *layers_[l + 1];
    ops::residual_rmsnorm_forward(next.residual_in, next.recomputable->normed1, next.saved->rstd1, s.residual_mid,
                                  branch_out_, next.ln1.value, eps);
  } else {
    ops::residual_rmsnorm_forward(residual_final_, normed_final_, rstd_final_, s.residual_mid, branch_out_,
                                  final_norm_.value, eps);
  }
}

void Model::recompute_layer(size_t l) {
  Layer& L = *layers_[l];
  LayerSaved& s = *L.saved;
  LayerRecomputable& r = *L.recomputable;
  const Shape hs = L.residual_in.shape();
  const double eps = config_.norm_epsilon;
  r.normed1.ensure(dtype_, device_, hs);
  r.normed2.ensure(dtype_, device_, hs);
  // The norms rewrite their saved rstd with the values it already holds (same op, same input).
  ops::rmsnorm_forward(r.normed1, s.rstd1, L.residual_in, L.ln1.value, eps);
  ops::rmsnorm_forward(r.normed2, s.rstd2, s.residual_mid, L.ln2.value, eps);
  if (L.deco_ffn)
    L.deco_ffn->recompute(r.normed2);
  else
    L.dense_ffn->recompute();
}

void Model::backward_layer(size_t l, RegType reg, double reg_grad_coef) {
  Layer& L = *layers_[l];
  const LayerSaved& s = *L.saved;
  const LayerRecomputable& r = *L.recomputable;
  if (L.deco_ffn) {
    profile::Region region("deco_ffn.backward");
    L.deco_ffn->backward(dnormed_, dresidual_, r.normed2, reg, reg_grad_coef);
  } else {
    profile::Region region("dense_ffn.backward");
    L.dense_ffn->backward(dnormed_, dresidual_, r.normed2, false);
  }
  ops::rmsnorm_backward(dresidual_, L.ln2.grad, dnormed_, s.residual_mid, L.ln2.value, s.rstd2);
  {
    profile::Region region("attention.backward");
    L.attention.backward(dnormed_, dresidual_, r.normed1, rope_);
  }
  ops::rmsnorm_backward(dresidual_, L.ln1.grad, dnormed_, L.residual_in, L.ln1.value, s.rstd1);
}

StepResult Model::step(const Tensor& tokens, const StepOptions& opt) {
  MemoryCategoryScope scope(MemoryCategory::Activations);  // what the layers allocate on their first step
  DECO_ASSERT(tokens.ndim() == 2 && tokens.dtype() == DType::I32, "tokens must be int32 [B, S+1]");
  const int64_t B = tokens.size(0), S = tokens.size(1) - 1, H = config_.hidden_size;
  const int64_t N = B * S, V = config_.vocab_size;
  DECO_ASSERT(S >= 1 && S <= config_.seq_length, "sequence length ", S, " vs seq_length ", config_.seq_length);
  const Shape hs{N, H};

  // Split [B, S+1] into inputs and targets (host), then move them to the device.
  {
    std::vector<int32_t> in(static_cast<size_t>(N)), tgt(static_cast<size_t>(N));
    const int32_t* t = tokens.data<int32_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s) {
        in[static_cast<size_t>(b * S + s)] = t[b * (S + 1) + s];
        tgt[static_cast<size_t>(b * S + s)] = t[b * (S + 1) + s + 1];
      }
    inputs_.ensure(DType::I32, device_, Shape{N});
    targets_.ensure(DType::I32, device_, Shape{N});
    device_copy(device_, inputs_.tensor().raw(), Device::CPU, in.data(), in.size() * sizeof(int32_t));
    device_copy(device_, targets_.tensor().raw(), Device::CPU, tgt.data(), tgt.size() * sizeof(int32_t));
  }

  StepResult result;
  result.tokens = N;
  branch_out_.ensure(dtype_, device_, hs);

  // ---- forward
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& L = *layers_[l];
    L.residual_in.ensure(dtype_, device_, hs);
    L.recomputable->normed1.ensure(dtype_, device_, hs);  // written by the layer before (forward_layer)
    L.saved->rstd1.ensure(accumulate_dtype(dtype_), device_, Shape{N});
  }
  residual_final_.ensure(dtype_, device_, hs);
  normed_final_.ensure(dtype_, device_, hs);
  rstd_final_.ensure(accumulate_dtype(dtype_), device_, Shape{N});
  if (layers_.empty()) {
    ops::embedding_forward(residual_final_, inputs_, embed_.value);
    ops::rmsnorm_forward(normed_final_, rstd_final_, residual_final_, final_norm_.value, config_.norm_epsilon);
  } else {
    ops::embedding_forward(layers_[0]->residual_in, inputs_, embed_.value);
  }
  for (size_t l = 0; l < layers_.size(); ++l) forward_layer(l, B, S, opt.reg, &result);
  for (const DecoLayerStats& stats : result.deco_layers)
    result.reg_loss += opt.reg_coef * (stats.reg_sum / static_cast<double>(N) /
                                       static_cast<double>(config_.num_layers));

  // The fused head + loss never holds more than `chunk` rows of logits; it
  // also produces the head's gradients (the loss is the graph's end).
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t{1} << 24) / V));
  logits_.ensure(dtype_, device_, Shape{chunk, V});
  Tensor dnormed;
  if (opt.backward) {
    dnormed_.ensure(dtype_, device_, hs);
    dnormed = dnormed_;
  }
  {
    profile::Region region("lm_head_loss");  // forward and backward
    result.lm_loss_sum = ops::lm_head_cross_entropy(dnormed, lm_head_.grad, logits_, normed_final_,
                                                    lm_head_.value, targets_,
                                                    opt.grad_scale / static_cast<double>(N));
  }
  if (!opt.backward) return result;

  // ---- backward: dresidual carries d(loss)/d(stream) down the layers.
  dresidual_.ensure(dtype_, device_, hs);
  ops::zero(dresidual_);
  ops::rmsnorm_backward(dresidual_, final_norm_.grad, dnormed_, residual_final_, final_norm_.value,
                        rstd_final_);
  auto ready = [&](int64_t unit) {
    if (opt.on_grads_ready) opt.on_grads_ready(unit);
  };
  ready(kHeadGradUnit);
  const double reg_grad_coef = opt.reg_coef * opt.grad_scale /
                               (static_cast<double>(config_.num_layers) * static_cast<double>(N));
  for (size_t i = layers_.size(); i-- > 0;) {
    // The last layer's shared state is what its forward just left (model/memory.h).
    if (i + 1 < layers_.size() && config_.recompute != Recompute::None) {
      profile::Region region("recompute");
      if (config_.recompute == Recompute::Full) forward_layer(i, B, S, opt.reg, nullptr);
      if (config_.recompute == Recompute::Selective) recompute_layer(i);
    }
    backward_layer(i, opt.reg, reg_grad_coef);
    ready(static_cast<int64_t>(i));
  }
  ops::embedding_backward(embed_.grad, dresidual_, inputs_);
  ready(kEmbeddingGradUnit);
  return result;
}

}  // namespace deco
