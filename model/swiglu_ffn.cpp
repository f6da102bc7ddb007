#include "model/swiglu_ffn.h"

namespace deco {

SwigluFfn::SwigluFfn(const ParamStore& values, const ParamStore& grads, const std::string& prefix)
    : gate_(bind_param(values, grads, prefix + "gate_proj.weight")),
      up_(bind_param(values, grads, prefix + "up_proj.weight")),
      down_(bind_param(values, grads, prefix + "down_proj.weight")) {}

void SwigluFfn::use_memory(Saved* saved, Recomputable* recomputable, Scratch* scratch) {
  saved_ = saved;
  recomp_ = recomputable;
  scratch_ = scratch;
}

void SwigluFfn::forward(const Tensor& y, const Tensor& x, bool accumulate) {
  DECO_ASSERT(saved_ != nullptr, "SwigluFfn::use_memory was not called");
  const Shape hshape{x.size(0), gate_.value.size(0)};
  saved_->gate_out.ensure(x.dtype(), x.device(), hshape);
  saved_->up_out.ensure(x.dtype(), x.device(), hshape);
  ops::linear_forward(saved_->gate_out, x, gate_.value);
  ops::linear_forward(saved_->up_out, x, up_.value);
  recompute();
  ops::linear_forward(y, recomp_->hidden, down_.value, accumulate);
}

void SwigluFfn::recompute() {
  const Tensor& gate = saved_->gate_out;
  recomp_->hidden.ensure(gate.dtype(), gate.device(), gate.shape());
  ops::swiglu_forward(recomp_->hidden, gate, saved_->up_out);
}

void SwigluFfn::backward(const Tensor& dx, const Tensor& dy, const Tensor& x, bool accumulate) {
  const Tensor& hidden = recomp_->hidden;
  Scratch& s = *scratch_;
  s.dhidden.ensure(x.dtype(), x.device(), hidden.shape());
  s.dgate.ensure(x.dtype(), x.device(), hidden.shape());
  s.dup.ensure(x.dtype(), x.device(), hidden.shape());
  ops::linear_backward_weight(down_.grad, dy, hidden);
  ops::linear_backward_input(s.dhidden, dy, down_.value, false);
  ops::swiglu_backward(s.dgate, s.dup, s.dhidden, saved_->gate_out, saved_->up_out);
  ops::linear_backward_weight(gate_.grad, s.dgate, x);
  ops::linear_backward_weight(up_.grad, s.dup, x);
  ops::linear_backward_input(dx, s.dgate, gate_.value, accumulate);
  ops::linear_backward_input(dx, s.dup, up_.value, true);
}

}  // namespace deco
