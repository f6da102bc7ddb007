#include "model/attention.h"

namespace deco {

Attention::Attention(const ModelConfig& c, const ParamStore& values, const ParamStore& grads,
                     int64_t layer)
    : q_proj_(bind_param(values, grads, layer_param(layer, "self_attn.q_proj.weight"))),
      k_proj_(bind_param(values, grads, layer_param(layer, "self_attn.k_proj.weight"))),
      v_proj_(bind_param(values, grads, layer_param(layer, "self_attn.v_proj.weight"))),
      o_proj_(bind_param(values, grads, layer_param(layer, "self_attn.o_proj.weight"))) {
  shape_.heads = c.num_attention_heads;
  shape_.groups = c.num_query_groups;
  shape_.head_dim = c.head_dim();
}

void Attention::forward(const Tensor& y, const Tensor& x, const Tensor& rope, int64_t batch,
                        int64_t seq) {
  shape_.batch = batch;
  shape_.seq = seq;
  const int64_t N = batch * seq, hd = shape_.head_dim;
  const DType dt = x.dtype();
  const Device dev = x.device();
  q_.ensure(dt, dev, Shape{N, shape_.heads * hd});
  k_.ensure(dt, dev, Shape{N, shape_.groups * hd});
  v_.ensure(dt, dev, Shape{N, shape_.groups * hd});
  att_.ensure(dt, dev, Shape{N, shape_.heads * hd});
  saved_.ensure(dt, dev, ops::attention_saved_shape(dev, shape_));

  ops::linear_forward(q_, x, q_proj_.value);
  ops::linear_forward(k_, x, k_proj_.value);
  ops::linear_forward(v_, x, v_proj_.value);
  ops::rope_forward(q_.tensor().view(Shape{N, shape_.heads, hd}), rope, seq);
  ops::rope_forward(k_.tensor().view(Shape{N, shape_.groups, hd}), rope, seq);
  ops::attention_forward(att_, saved_, q_, k_, v_, shape_);
  ops::linear_forward(y, att_, o_proj_.value);
}

void Attention::backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& rope) {
  const int64_t N = shape_.batch * shape_.seq, hd = shape_.head_dim;
  const DType dt = x.dtype();
  const Device dev = x.device();
  datt_.ensure(dt, dev, att_.shape());
  dq_.ensure(dt, dev, q_.shape());
  dk_.ensure(dt, dev, k_.shape());
  dv_.ensure(dt, dev, v_.shape());

  ops::linear_backward_weight(o_proj_.grad, dy, att_);
  ops::linear_backward_input(datt_, dy, o_proj_.value, false);
  ops::attention_backward(dq_, dk_, dv_, datt_, saved_, q_, k_, v_, shape_);
  // q_ and k_ hold the rotated values; the projections' gradients need the
  // gradient before rotation, which is the inverse rotation of dq, dk.
  ops::rope_backward(dq_.tensor().view(Shape{N, shape_.heads, hd}), rope, shape_.seq);
  ops::rope_backward(dk_.tensor().view(Shape{N, shape_.groups, hd}), rope, shape_.seq);
  ops::linear_backward_weight(q_proj_.grad, dq_, x);
  ops::linear_backward_weight(k_proj_.grad, dk_, x);
  ops::linear_backward_weight(v_proj_.grad, dv_, x);
  ops::linear_backward_input(dx, dq_, q_proj_.value, false);
  ops::linear_backward_input(dx, dk_, k_proj_.value, true);
  ops::linear_backward_input(dx, dv_, v_proj_.value, true);
}

}  // namespace deco
