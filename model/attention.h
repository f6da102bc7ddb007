// Causal grouped-query self-attention with rotary embeddings, no biases.
#pragma once

#include "model/params.h"

namespace deco {

class Attention {
 public:
  Attention(const ModelConfig& config, const ParamStore& values, const ParamStore& grads, int64_t layer);

  // y[N, H] (=) attention of x[N, H] (the normalized residual stream), N = batch * seq.
  void forward(const Tensor& y, const Tensor& x, const Tensor& rope, int64_t batch, int64_t seq);
  // dx[N, H] (=) from dy[N, H]; accumulates parameter gradients. x is the forward input.
  void backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& rope);

 private:
  ops::AttentionShape shape_{};
  Param q_proj_, k_proj_, v_proj_, o_proj_;
  // Saved by forward for backward:
  Buffer q_, k_, v_;   // after RoPE: [N, heads*hd], [N, groups*hd], [N, groups*hd]
  Buffer saved_;       // ops::attention_saved_shape
  Buffer att_;         // attention output before o_proj [N, heads*hd]
  // Backward temporaries:
  Buffer datt_, dq_, dk_, dv_;
};

}  // namespace deco
