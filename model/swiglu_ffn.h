// SwiGLU feed-forward: down(silu(gate(x)) * up(x)). Used for the dense
// layers' FFN and for the DECO layer's always-on shared expert.
#pragma once

#include <string>

#include "model/params.h"

namespace deco {

class SwigluFfn {
 public:
  // Activation memory, split by lifetime (model/memory.h explains the
  // three kinds and who owns them under each training.recompute mode).
  struct Saved {         // forward -> backward
    Buffer gate_out, up_out;  // [N, F]
  };
  struct Recomputable {  // rebuilt from Saved by recompute()
    Buffer hidden;  // [N, F] silu(gate_out) * up_out
  };
  struct Scratch {       // backward temporaries
    Buffer dhidden, dgate, dup;  // [N, F]
  };

  // prefix: the parameter-name prefix, e.g. "model.layers.0.mlp." or
  // "model.layers.3.mlp.shared_experts."
  SwigluFfn(const ParamStore& values, const ParamStore& grads, const std::string& prefix);
  // Where this FFN keeps its activations (set once, before the first forward).
  void use_memory(Saved* saved, Recomputable* recomputable, Scratch* scratch);

  // y[N, H] (= or += when accumulate) SwiGLU(x[N, H])
  void forward(const Tensor& y, const Tensor& x, bool accumulate);
  // Rebuilds Recomputable from Saved, as forward left it.
  void recompute();
  // dx[N, H] (= or += when accumulate) from dy; accumulates parameter gradients.
  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, bool accumulate);

 private:
  Param gate_, up_, down_;
  Saved* saved_ = nullptr;
  Recomputable* recomp_ = nullptr;
  Scratch* scratch_ = nullptr;
};

}  // namespace deco
