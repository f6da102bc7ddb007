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

void Attention::use_memory(Saved* saved, Scratch* scratch) {
  saved_ = saved;
  scratch_ = scratch;
}

void Attention::forward(const Tensor& y, const Tensor& x, const Tensor& rope, int64_t batch,
                        int64_t seq) {
  DECO_ASSERT(saved_ != nullptr, "Attention::use_memory was not called");
  shape_.batch = batch;
  shape_.seq = seq;
  const int64_t N = batch * seq, hd = shape_.head_dim;
  const DType dt = x.dtype();
  const Device dev = x.device();
  Saved& s = *saved_;
  s.q.ensure(dt, dev, Shape{N, shape_.heads * hd});
  s.k.ensure(dt, dev, Shape{N, shape_.groups * hd});
  s.v.ensure(dt, dev, Shape{N, shape_.groups * hd});
  s.att.ensure(dt, dev, Shape{N, shape_.heads * hd});
  s.lse.ensure(accumulate_dtype(dt), dev, ops::attention_saved_shape(dev, shape_));

  ops::linear_forward(s.q, x, q_proj_.value);
  ops::linear_forward(s.k, x, k_proj_.value);
  ops::linear_forward(s.v, x, v_proj_.value);
  ops::rope_forward(s.q.tensor().view(Shape{N, shape_.heads, hd}), rope, seq);
  ops::rope_forward(s.k.tensor().view(Shape{N, shape_.groups, hd}), rope, seq);
  ops::attention_forward(s.att, s.lse, s.q, s.k, s.v, shape_);
  ops::linear_forward(y, s.att, o_proj_.value);
}

void Attention::backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& rope) {
  const int64_t N = shape_.batch * shape_.seq, hd = shape_.head_dim;
  const DType dt = x.dtype();
  const Device dev = x.device();
  const Saved& s = *saved_;
  Scratch& w = *scratch_;
  w.datt.ensure(dt, dev, s.att.shape());
  w.dq.ensure(dt, dev, s.q.shape());
  w.dk.ensure(dt, dev, s.k.shape());
  w.dv.ensure(dt, dev, s.v.shape());

  ops::linear_backward_weight(o_proj_.grad, dy, s.att);
  ops::linear_backward_input(w.datt, dy, o_proj_.value, false);
  ops::attention_backward(w.dq, w.dk, w.dv, w.datt, s.att, s.lse, s.q, s.k, s.v, shape_);
  // q and k hold the rotated values; the projections' gradients need the
  // gradient before rotation, which is the inverse rotation of dq, dk.
  ops::rope_backward(w.dq.tensor().view(Shape{N, shape_.heads, hd}), rope, shape_.seq);
  ops::rope_backward(w.dk.tensor().view(Shape{N, shape_.groups, hd}), rope, shape_.seq);
  ops::linear_backward_weight(q_proj_.grad, w.dq, x);
  ops::linear_backward_weight(k_proj_.grad, w.dk, x);
  ops::linear_backward_weight(v_proj_.grad, w.dv, x);
  ops::linear_backward_input(dx, w.dq, q_proj_.value, false);
  ops::linear_backward_input(dx, w.dk, k_proj_.value, true);
  ops::linear_backward_input(dx, w.dv, v_proj_.value, true);
}

}  // namespace deco
