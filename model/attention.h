// Causal grouped-query self-attention with rotary embeddings, no biases.
#pragma once

#include "model/params.h"

namespace deco {

class Attention {
 public:
  // Activation memory (model/memory.h). Nothing here is cheap enough to
  // rebuild selectively: what backward needs is the projections and the
  // attention output itself.
  struct Saved {
    Buffer q, k, v;  // after RoPE: [N, heads*hd], [N, groups*hd], [N, groups*hd]
    Buffer lse;      // ops::attention_saved_shape (row log-sum-exp on the GPU, probabilities on the CPU)
    Buffer att;      // attention output before o_proj [N, heads*hd]
  };
  struct Scratch {   // backward temporaries
    Buffer datt, dq, dk, dv;
  };

  Attention(const ModelConfig& config, const ParamStore& values, const ParamStore& grads, int64_t layer);
  void use_memory(Saved* saved, Scratch* scratch);

  // y[N, H] (=) attention of x[N, H] (the normalized residual stream), N = batch * seq.
  void forward(const Tensor& y, const Tensor& x, const Tensor& rope, int64_t batch, int64_t seq);
  // dx[N, H] (=) from dy[N, H]; accumulates parameter gradients. x is the forward input.
  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& rope);

 private:
  ops::AttentionShape shape_{};
  Param q_proj_, k_proj_, v_proj_, o_proj_;
  Saved* saved_ = nullptr;
  Scratch* scratch_ = nullptr;
};

}  // namespace deco
