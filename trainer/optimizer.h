// AdamW over the flat parameter buffer (deco-model.md section 4): decoupled
// weight decay on matrices only, moments in float32 with the parameters'
// layout, bias correction, and the clipping factor applied to the gradient.
#pragma once

#include <memory>
#include <vector>

#include "kernels/ops.h"
#include "model/params.h"
#include "trainer/config.h"

namespace deco {

class AdamW {
 public:
  // `owned`: the flat ranges this rank updates and keeps moments for (the
  // ZeRO-1 distributed optimizer's shards); empty means every parameter.
  AdamW(const OptimizerConfig& config, const ParamLayout& layout, DType dtype, Device device,
        std::vector<FlatRange> owned = {});

  // One update of the owned parameters with learning rate `lr`, after the
  // gradients were scaled by `grad_scale` (clipping). Counts the step.
  void step(const ParamStore& params, const ParamStore& grads, double lr, double grad_scale);

  int64_t steps_taken() const { return step_; }
  // Resuming: the moments come from the checkpoint, the count from its state.
  void restore_steps(int64_t steps) { step_ = steps; }
  bool sharded() const { return !owned_.empty(); }
  const std::vector<FlatRange>& owned() const { return owned_; }
  // The moments in the parameters' layout; only without sharding.
  const ParamStore& exp_avg() const;
  const ParamStore& exp_avg_sq() const;
  int64_t state_bytes() const;  // both moments
  // The moments as flat tensors: the whole layout, or the shard buffer
  // (the owned ranges back to back).
  Tensor exp_avg_flat() const { return m_ ? m_->flat() : m_shard_.tensor(); }
  Tensor exp_avg_sq_flat() const { return v_ ? v_->flat() : v_shard_.tensor(); }
  // What one step updates: stretches of the flat buffers (with their
  // moments' place and decay rule), neighbours with the same rule merged.
  std::vector<ops::AdamWChunk> segments() const;

 private:
  OptimizerConfig config_;
  const ParamLayout* layout_;
  std::vector<FlatRange> owned_;
  std::unique_ptr<ParamStore> m_, v_;  // unsharded
  Buffer m_shard_, v_shard_;           // sharded: the owned ranges back to back
  Buffer chunks_;                      // I64 [chunks, 4]: the fused update's table, on the device
  int64_t step_ = 0;
};

}  // namespace deco
