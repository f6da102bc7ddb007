// SwiGLU feed-forward: down(silu(gate(x)) * up(x)). Used for the dense
// layers' FFN and for the DECO layer's always-on shared expert.
#pragma once

#include <string>

#include "model/params.h"

namespace deco {

class SwigluFfn {
 public:
  // prefix: the parameter-name prefix, e.g. "model.layers.0.mlp." or
  // "model.layers.3.mlp.shared_experts."
  SwigluFfn(const ParamStore& values, const ParamStore& grads, const std::string& prefix);

  // y[N, H] (= or += when accumulate) SwiGLU(x[N, H])
  void forward(const Tensor& y, const Tensor& x, bool accumulate);
  // dx[N, H] (= or += when accumulate) from dy; accumulates parameter gradients.
  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, bool accumulate);

 private:
  Param gate_, up_, down_;
  Buffer gate_out_, up_out_, hidden_;  // saved, [N, F] each
  Buffer dhidden_, dgate_, dup_;       // backward temporaries
};

}  // namespace deco
