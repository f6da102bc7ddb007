// AdamW over the flat parameter buffer (deco-model.md section 4): decoupled
// weight decay on matrices only, moments in float32 with the parameters'
// layout, bias correction, and the clipping factor applied to the gradient.
#pragma once

#include "model/params.h"
#include "trainer/config.h"

namespace deco {

class AdamW {
 public:
  AdamW(const OptimizerConfig& config, const ParamLayout& layout, DType dtype, Device device);

  // One update of every parameter with learning rate `lr`, after the
  // gradients were scaled by `grad_scale` (clipping). Counts the step.
  void step(const ParamStore& params, const ParamStore& grads, double lr, double grad_scale);

  int64_t steps_taken() const { return step_; }
  // Resuming: the moments come from the checkpoint, the count from its state.
  void restore_steps(int64_t steps) { step_ = steps; }
  const ParamStore& exp_avg() const { return m_; }
  const ParamStore& exp_avg_sq() const { return v_; }

 private:
  OptimizerConfig config_;
  ParamStore m_, v_;
  int64_t step_ = 0;
};

}  // namespace deco
