#include "model/model.h"

#include <algorithm>

#include "core/caching_allocator.h"

namespace deco {

struct Model::Layer {
  Param ln1, ln2;
  Attention attention;
  std::unique_ptr<SwigluFfn> dense_ffn;
  std::unique_ptr<DecoFfn> deco_ffn;
  // Saved for backward, [N, H] unless noted.
  Buffer residual_in;   // the stream entering the layer
  Buffer normed1, rstd1;  // rstd [N]
  Buffer residual_mid;  // after the attention residual add
  Buffer normed2, rstd2;

  Layer(const ModelConfig& c, const ParamStore& values, const ParamStore& grads, int64_t l,
        Communicator* expert_parallel)
      : ln1(bind_param(values, grads, layer_param(l, "input_layernorm.weight"))),
        ln2(bind_param(values, grads, layer_param(l, "post_attention_layernorm.weight"))),
        attention(c, values, grads, l) {
    if (c.is_deco_layer(l))
      deco_ffn = std::make_unique<DecoFfn>(c, values, grads, l, expert_parallel);
    else
      dense_ffn = std::make_unique<SwigluFfn>(values, grads, layer_param(l, "mlp."));
  }
};

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
        return ParamStore(layout_, dtype, device);
      }()),
      grads_([&] {
        MemoryCategoryScope scope(MemoryCategory::Gradients);
        return ParamStore(layout_, dtype, device);
      }()),
      embed_(bind_param(params_, grads_, "model.embed_tokens.weight")),
      final_norm_(bind_param(params_, grads_, "model.norm.weight")),
      lm_head_(bind_param(params_, grads_, "lm_head.weight")) {
  for (int64_t l = 0; l < config_.num_layers; ++l)
    layers_.push_back(std::make_unique<Layer>(config_, params_, grads_, l, expert_parallel));
  rope_.ensure(dtype, device, Shape{config_.seq_length, config_.head_dim() / 2, 2});
  ops::rope_table(rope_, config_.rotary_base);
}

Model::~Model() = default;

void Model::init(uint64_t seed) {
  init_params(params_, config_, seed);
  refresh_derived();
}

void Model::refresh_derived() {
  for (auto& layer : layers_)
    if (layer->deco_ffn) layer->deco_ffn->refresh_derived();
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
  for (auto& layer : layers_) {
    layer->residual_in.ensure(dtype_, device_, hs);
    layer->normed1.ensure(dtype_, device_, hs);
    layer->rstd1.ensure(dtype_, device_, Shape{N});
    layer->residual_mid.ensure(dtype_, device_, hs);
    layer->normed2.ensure(dtype_, device_, hs);
    layer->rstd2.ensure(dtype_, device_, Shape{N});
  }
  residual_final_.ensure(dtype_, device_, hs);
  ops::embedding_forward(layers_.empty() ? residual_final_.tensor() : layers_[0]->residual_in.tensor(),
                         inputs_, embed_.value);
  const double eps = config_.norm_epsilon;
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& L = *layers_[l];
    const Tensor& next = l + 1 < layers_.size() ? layers_[l + 1]->residual_in.tensor()
                                                 : residual_final_.tensor();
    ops::rmsnorm_forward(L.normed1, L.rstd1, L.residual_in, L.ln1.value, eps);
    L.attention.forward(branch_out_, L.normed1, rope_, B, S);
    ops::copy(L.residual_mid, L.residual_in);
    ops::axpy(L.residual_mid, branch_out_);
    ops::rmsnorm_forward(L.normed2, L.rstd2, L.residual_mid, L.ln2.value, eps);
    if (L.deco_ffn) {
      DecoLayerStats stats = L.deco_ffn->forward(branch_out_, L.normed2, opt.reg);
      const double mean_reg = stats.reg_sum / static_cast<double>(N) / static_cast<double>(config_.num_layers);
      result.reg_loss += opt.reg_coef * mean_reg;
      result.deco_layers.push_back(std::move(stats));
    } else {
      L.dense_ffn->forward(branch_out_, L.normed2, false);
    }
    ops::copy(next, L.residual_mid);
    ops::axpy(next, branch_out_);
  }
  normed_final_.ensure(dtype_, device_, hs);
  rstd_final_.ensure(dtype_, device_, Shape{N});
  ops::rmsnorm_forward(normed_final_, rstd_final_, residual_final_, final_norm_.value, eps);

  // The fused head + loss never holds more than `chunk` rows of logits; it
  // also produces the head's gradients (the loss is the graph's end).
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t{1} << 24) / V));
  logits_.ensure(dtype_, device_, Shape{chunk, V});
  Tensor dnormed;
  if (opt.backward) {
    dnormed_.ensure(dtype_, device_, hs);
    dnormed = dnormed_;
  }
  result.lm_loss_sum = ops::lm_head_cross_entropy(dnormed, lm_head_.grad, logits_, normed_final_,
                                                  lm_head_.value, targets_,
                                                  opt.grad_scale / static_cast<double>(N));
  if (!opt.backward) return result;

  // ---- backward: dresidual carries d(loss)/d(stream) down the layers.
  dresidual_.ensure(dtype_, device_, hs);
  ops::zero(dresidual_);
  ops::rmsnorm_backward(dresidual_, final_norm_.grad, dnormed_, residual_final_, final_norm_.value,
                        rstd_final_);
  const double reg_grad_coef = opt.reg_coef * opt.grad_scale /
                               (static_cast<double>(config_.num_layers) * static_cast<double>(N));
  for (size_t i = layers_.size(); i-- > 0;) {
    Layer& L = *layers_[i];
    if (L.deco_ffn)
      L.deco_ffn->backward(dnormed_, dresidual_, L.normed2, opt.reg, reg_grad_coef);
    else
      L.dense_ffn->backward(dnormed_, dresidual_, L.normed2, false);
    ops::rmsnorm_backward(dresidual_, L.ln2.grad, dnormed_, L.residual_mid, L.ln2.value, L.rstd2);
    L.attention.backward(dnormed_, dresidual_, L.normed1, rope_);
    ops::rmsnorm_backward(dresidual_, L.ln1.grad, dnormed_, L.residual_in, L.ln1.value, L.rstd1);
  }
  ops::embedding_backward(embed_.grad, dresidual_, inputs_);
  return result;
}

}  // namespace deco
