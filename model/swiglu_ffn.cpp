#include "model/swiglu_ffn.h"

namespace deco {

SwigluFfn::SwigluFfn(const ParamStore& values, const ParamStore& grads, const std::string& prefix)
    : gate_(bind_param(values, grads, prefix + "gate_proj.weight")),
      up_(bind_param(values, grads, prefix + "up_proj.weight")),
      down_(bind_param(values, grads, prefix + "down_proj.weight")) {}

void SwigluFfn::forward(const Tensor& y, const Tensor& x, bool accumulate) {
  const Shape hshape{x.size(0), gate_.value.size(0)};
  gate_out_.ensure(x.dtype(), x.device(), hshape);
  up_out_.ensure(x.dtype(), x.device(), hshape);
  hidden_.ensure(x.dtype(), x.device(), hshape);
  ops::linear_forward(gate_out_, x, gate_.value);
  ops::linear_forward(up_out_, x, up_.value);
  ops::swiglu_forward(hidden_, gate_out_, up_out_);
  ops::linear_forward(y, hidden_, down_.value, accumulate);
}

void SwigluFfn::backward(const Tensor& dx, const Tensor& dy, const Tensor& x, bool accumulate) {
  dhidden_.ensure(x.dtype(), x.device(), hidden_.shape());
  dgate_.ensure(x.dtype(), x.device(), hidden_.shape());
  dup_.ensure(x.dtype(), x.device(), hidden_.shape());
  ops::linear_backward_weight(down_.grad, dy, hidden_);
  ops::linear_backward_input(dhidden_, dy, down_.value, false);
  ops::swiglu_backward(dgate_, dup_, dhidden_, gate_out_, up_out_);
  ops::linear_backward_weight(gate_.grad, dgate_, x);
  ops::linear_backward_weight(up_.grad, dup_, x);
  ops::linear_backward_input(dx, dgate_, gate_.value, accumulate);
  ops::linear_backward_input(dx, dup_, up_.value, true);
}

}  // namespace deco
